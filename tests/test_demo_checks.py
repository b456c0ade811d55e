"""The demo's pretraining checks: an oracle scores 0, the image-blind baseline scores itself."""

import pytest
import torch
from mimir_fast import create_model
from mimir_fast.demo_checks import (
    denoising_check,
    masked_patch_check,
    position_mean,
    regional_rebuild_check,
)

TINY = dict(
    img_size=16,
    in_chans=1,
    embed_dim=32,
    depth=1,
    num_heads=2,
    decoder_embed_dim=32,
    decoder_depth=1,
    decoder_num_heads=2,
)


def _model(norm_pix: bool):
    return create_model("vit_tiny_patch4_32", norm_pix_loss=norm_pix, **TINY).eval()


def _data():
    gen = torch.Generator().manual_seed(0)
    return torch.rand(7, 1, 16, 16, generator=gen), torch.rand(20, 1, 16, 16, generator=gen)


def test_position_mean_of_pixel_patches_is_the_mean_image():
    model, (_, train) = _model(False), _data()
    mean = position_mean(model, train)  # (L, P)
    torch.testing.assert_close(model.unpatchify(mean[None]), train.mean(0, keepdim=True))


@pytest.mark.parametrize("norm_pix", [False, True], ids=["pixels", "norm-pix"])
def test_masked_patch_check_oracle_and_baseline(monkeypatch, norm_pix):
    model, (test, train) = _model(norm_pix), _data()
    truth = model.patchify(test)
    if norm_pix:
        truth = (truth - truth.mean(-1, keepdim=True)) / (truth.var(-1, keepdim=True) + 1e-6) ** 0.5
    monkeypatch.setattr(model, "forward_decoder", lambda latent, ids: truth)
    oracle = masked_patch_check(model, test, train, 0.75)
    assert oracle["mse"] == pytest.approx(0.0, abs=1e-10) and oracle["baseline_mse"] > 0.01
    mean = position_mean(model, train)
    monkeypatch.setattr(model, "forward_decoder", lambda latent, ids: mean.expand_as(truth))
    blind = masked_patch_check(model, test, train, 0.75)
    assert blind["ratio"] == pytest.approx(1.0, rel=1e-5)
    # the baseline is scored on the removed patches only: a different mask ratio changes it
    assert masked_patch_check(model, test, train, 0.25)["baseline_mse"] != blind["baseline_mse"]


def test_regional_rebuild_check_scores_an_oracle_zero_and_an_untrained_model_above_it(
    monkeypatch,
):
    model, (test, train) = _model(False), _data()
    untrained = regional_rebuild_check(model, test, train, groups=4)
    want = ((train.mean(0, keepdim=True) - test) ** 2).mean()
    assert untrained["baseline_mse"] == pytest.approx(float(want), rel=1e-6)
    assert untrained["mse"] > 0
    truth = model.patchify(test).repeat_interleave(4, 0)  # pass g of image i at row i * 4 + g
    monkeypatch.setattr(model, "forward_decoder", lambda latent, ids: truth)
    assert regional_rebuild_check(model, test, train, groups=4)["mse"] == pytest.approx(0.0)


def test_denoising_check_baseline_is_the_better_image_blind_answer(monkeypatch):
    model, (test, train) = _model(False), _data()
    out = denoising_check(model, test, train, "constant:50")
    assert out["baseline_mse"] == min(out["identity_mse"], out["mean_image_mse"])
    # sigma 50/255: the noisy input's MSE is about (50/255)^2
    assert out["identity_mse"] == pytest.approx((50 / 255) ** 2, rel=0.15)
    big = denoising_check(model, test, train, "constant:250")
    assert big["baseline"] == "mean training image"  # noise far above the images' spread
    monkeypatch.setattr(model, "forward_decoder", lambda latent, ids: model.patchify(test))
    assert denoising_check(model, test, train, "constant:50")["mse"] == pytest.approx(0.0)
    before = torch.random.get_rng_state()
    denoising_check(model, test, train, "gamma:25,3", seed=3)
    assert torch.equal(torch.random.get_rng_state(), before)  # the global RNG is untouched
