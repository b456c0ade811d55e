"""PSNR and SSIM against scikit-image (an independent implementation) to 1e-4."""

from __future__ import annotations

import numpy as np
import pytest
import skimage.metrics as skimage_metrics  # independent implementation (dev extra: scikit-image)
import torch
from mimir_fast.metrics import psnr, ssim


def _pairs(seed: int, shape):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(shape, generator=g)
    y = (x + 0.1 * torch.randn(shape, generator=g)).clamp(0, 1)
    return x, y


@pytest.mark.parametrize("shape", [(3, 1, 32, 32), (2, 3, 17, 23), (1, 3, 11, 11)], ids=str)
def test_ssim_matches_skimage(shape):
    x, y = _pairs(0, shape)
    ours = ssim(x, y)
    assert ours.shape == (shape[0],)
    for i in range(shape[0]):
        ref = skimage_metrics.structural_similarity(
            x[i].numpy().astype(np.float64),
            y[i].numpy().astype(np.float64),
            channel_axis=0,
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
            data_range=1.0,
        )
        assert abs(float(ours[i]) - ref) <= 1e-4, (float(ours[i]), ref)


def test_ssim_properties():
    x, y = _pairs(1, (2, 1, 16, 16))
    torch.testing.assert_close(ssim(x, x), torch.ones(2))
    assert (ssim(x, y) < 1).all()
    torch.testing.assert_close(ssim(x, y), ssim(y, x))
    with pytest.raises(ValueError):
        ssim(torch.rand(1, 1, 8, 8), torch.rand(1, 1, 8, 8))  # smaller than the window
    with pytest.raises(ValueError):
        ssim(x, y[:1])


@pytest.mark.parametrize("shape", [(4, 1, 32, 32), (2, 3, 9, 7)], ids=str)
def test_psnr_matches_skimage(shape):
    x, y = _pairs(2, shape)
    ours = psnr(x, y)
    for i in range(shape[0]):
        ref = skimage_metrics.peak_signal_noise_ratio(
            x[i].numpy().astype(np.float64), y[i].numpy().astype(np.float64), data_range=1.0
        )
        assert abs(float(ours[i]) - ref) <= 1e-4
    assert float(psnr(x, y, reduction="mean")) == pytest.approx(float(ours.mean()), abs=1e-6)
    assert torch.isinf(psnr(x, x)).all()
