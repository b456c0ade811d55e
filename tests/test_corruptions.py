"""Common corruptions (mimir_fast.data.corrupt and the Loader's corruption option) against an
independent numpy/scipy/PIL reference written from the paper's definitions
(benchmarks/corruption_reference.py).

Tolerances (8-bit images, differences on the 0..255 scale):
* deterministic corruptions (brightness, contrast, defocus, zoom, pixelate, motion blur at its
  recovered angle), every severity, 32 and 224 px: mean abs difference < 0.35 and max <= 1
  (5 for zoom: scipy and Rust round the zoomed size the same, but a coordinate may fall on the
  other side of a pixel), i.e. rounding;
* JPEG: equal to PIL's (libjpeg-turbo's) encode-decode round trip, byte for byte, for colour
  and gray images of many sizes (odd, narrow, not multiples of 8 or 16), smooth and noisy;
* random corruptions (noise, glass, elastic, snow, fog): moments against their theory with 5
  standard errors, or the per-image mean abs change against the reference's over 24 images with
  5 standard errors of the difference of means.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from mimir_fast.data import CORRUPTION_FAMILIES, CORRUPTIONS, Loader, corrupt
from scipy import ndimage, stats

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import corruption_reference as ref  # noqa: E402

DETERMINISTIC = ("brightness", "contrast", "defocus_blur", "zoom_blur", "pixelate")
RANDOM = ("glass_blur", "elastic_transform", "snow", "fog")
MONOTONE = (  # mean abs change grows with severity under the published parameters
    "gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "zoom_blur", "fog",
    "brightness", "contrast", "jpeg_compression",
)  # fmt: skip


def images(n: int, size: int, c: int = 3, seed: int = 0) -> np.ndarray:
    """Smooth random uint8 images (a luma field, milder colour) with a sharp-edged block."""
    rng = np.random.default_rng(seed)
    s = size / 12
    lum = ndimage.gaussian_filter(rng.normal(size=(n, size, size, 1)), (0, s, s, 0))
    chroma = ndimage.gaussian_filter(rng.normal(size=(n, size, size, c)), (0, 2 * s, 2 * s, 0))
    base = lum + 0.3 * chroma
    lo, hi = base.min(axis=(1, 2, 3), keepdims=True), base.max(axis=(1, 2, 3), keepdims=True)
    x = 0.1 + 0.8 * (base - lo) / (hi - lo)
    q = size // 4
    x[:, q : 2 * q, q : 3 * q] = rng.uniform(0.2, 0.8, (n, 1, 1, 1)) + rng.uniform(
        -0.1, 0.1, (n, 1, 1, c)
    )
    return np.rint(x * 255).astype(np.uint8)


def reference(x: np.ndarray, name: str, severity: int, **kw) -> np.ndarray:
    return np.stack([ref.corrupt_image(im, name, severity, **kw) for im in x])


def diff(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.abs(a.astype(np.float64) - b.astype(np.float64))


@pytest.mark.parametrize("size", [32, 224])
@pytest.mark.parametrize("name", DETERMINISTIC)
def test_deterministic_corruptions_match_the_reference(name: str, size: int) -> None:
    x = images(2 if size == 224 else 4, size)
    for s in range(1, 6):
        d = diff(corrupt(x, name, s), reference(x, name, s))
        assert d.mean() < 0.35, (s, d.mean())
        assert d.max() <= (5 if name == "zoom_blur" else 1), (s, d.max())


def _motion_angles(severity: int, size: int) -> list[float]:
    """One angle per distinct set of motion-blur taps in [-45, 45)."""
    seen: dict[tuple, float] = {}
    for a in np.arange(-45, 45, 0.05):
        _, dy, dx = ref.motion_offsets(*ref.params("motion_blur", severity, size, size), a)
        seen.setdefault((tuple(dy), tuple(dx)), float(a))
    return list(seen.values())


def test_motion_blur_matches_the_reference_at_its_angle() -> None:
    x = images(3, 32)
    found = []
    for s in range(1, 6):
        ours = corrupt(x, "motion_blur", s, seed=s)
        for k in range(len(x)):
            errs = [
                (diff(ours[k], ref.corrupt_image(x[k], "motion_blur", s, angle=a)).mean(), a)
                for a in _motion_angles(s, 32)
            ]
            err, angle = min(errs)
            assert err < 0.35, (s, k, err)
            found.append(angle)
    assert np.ptp(found) > 30  # the angle is drawn, not fixed


@pytest.mark.parametrize(
    "shape", [(32, 32), (224, 224), (37, 50), (50, 37), (80, 66), (17, 3), (2, 2), (1, 1)]
)
def test_jpeg_matches_pil(shape: tuple[int, int]) -> None:
    h, w = shape
    rng = np.random.default_rng(h * 1000 + w)
    smooth = rng.integers(0, 256, (1, -(-h // 8), -(-w // 8), 3), dtype=np.uint8)
    smooth = smooth.repeat(8, axis=1).repeat(8, axis=2)[:, :h, :w]
    noisy = rng.integers(0, 256, (1, h, w, 3), dtype=np.uint8)
    for x in (np.concatenate([smooth, noisy]), np.ascontiguousarray(noisy[..., :1])):
        for s in range(1, 6):
            ours = corrupt(x, "jpeg_compression", s)
            pil = reference(x, "jpeg_compression", s)
            assert np.array_equal(ours, pil), (shape, x.shape[-1], s, diff(ours, pil).max())
            assert h * w < 64 or diff(ours, x).mean() > 0


def _clipped_poisson_moments(rate: float, top: int) -> tuple[float, float, float]:
    """Mean, variance and 4th central moment of min(Poisson(rate), top)."""
    k = np.arange(top + 1, dtype=np.float64)
    pmf = stats.poisson.pmf(k, rate)
    pmf[-1] += stats.poisson.sf(top, rate)
    mean = (k * pmf).sum()
    return mean, ((k - mean) ** 2 * pmf).sum(), ((k - mean) ** 4 * pmf).sum()


def _gray_tensor(value: float, n: int = 4, size: int = 64) -> torch.Tensor:
    return torch.full((n, 3, size, size), value)


@pytest.mark.parametrize("size", [32, 224])
def test_noise_moments(size: int) -> None:
    x = _gray_tensor(0.5, 4 if size == 32 else 1, size)
    n = x.numel()
    for s in range(1, 6):
        c = ref.params("gaussian_noise", s, size, size)
        z = (corrupt(x, "gaussian_noise", s, seed=s) - x).double()
        if c < 0.15:  # no clipping within 3 sd
            assert abs(z.mean()) < 5 * c / n**0.5
            assert abs(z.std() - c) < 5 * c / (2 * n) ** 0.5
        lam = ref.params("shot_noise", s, size, size)
        k = corrupt(x, "shot_noise", s, seed=s).double() * lam
        assert torch.allclose(k, k.round(), atol=1e-3)  # photon counts / lam
        mean, var, mu4 = _clipped_poisson_moments(0.5 * lam, lam)
        assert abs(k.mean() - mean) < 5 * (var / n) ** 0.5, s
        assert abs(k.var() - var) < 5 * ((mu4 - var**2) / n) ** 0.5, s
        amount = ref.params("impulse_noise", s, size, size)
        y = corrupt(x, "impulse_noise", s, seed=s)
        salt, pepper = (y == 1).double().mean(), (y == 0).double().mean()
        sd = (amount / 2 * (1 - amount / 2) / n) ** 0.5
        assert abs(salt - amount / 2) < 5 * sd and abs(pepper - amount / 2) < 5 * sd
        assert ((y == 0) | (y == 1) | (y == 0.5)).all()


@pytest.mark.parametrize("size", [32, 224])
def test_noises_draw_the_same_words_at_every_severity(size: int) -> None:
    """One seed, two severities: the Gaussian's normals are the same, scaled; shot noise takes
    the same quantile of each severity's Poisson (its noise strongly correlated, where another
    seed's is not); impulse noise replaces a superset of the values, with the same colours."""
    x = _gray_tensor(128 / 255, 1, size)  # an 8-bit intensity (shot noise's tables)

    def noise(name: str, severity: int, seed: int = 9) -> torch.Tensor:
        return corrupt(x, name, severity, seed=seed) - x

    def correlation(a: torch.Tensor, b: torch.Tensor) -> float:
        return float(np.corrcoef(a.flatten().numpy(), b.flatten().numpy())[0, 1])

    for s, t in ((1, 2), (3, 4), (4, 5)):
        z_s, z_t = noise("gaussian_noise", s), noise("gaussian_noise", t)
        inside = (z_s.abs() < 0.49) & (z_t.abs() < 0.49)  # neither clipped
        assert inside.float().mean() > 0.8
        c_s, c_t = (ref.params("gaussian_noise", k, size, size) for k in (s, t))
        torch.testing.assert_close(z_s[inside] / c_s, z_t[inside] / c_t, atol=1e-5, rtol=0)
        z_s, z_t = noise("shot_noise", s), noise("shot_noise", t)
        assert correlation(z_s, z_t) > 0.9, (s, t, correlation(z_s, z_t))
        assert abs(correlation(z_s, noise("shot_noise", t, seed=10))) < 0.05
        y_s, y_t = x + noise("impulse_noise", s), x + noise("impulse_noise", t)
        hit = (y_s - x).abs() > 1e-6
        assert hit.any() and torch.equal(y_t[hit], y_s[hit])
        assert ((y_t - x).abs() > 1e-6).sum() > hit.sum()


def _two_sample(a: np.ndarray, b: np.ndarray) -> float:
    se = np.sqrt(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b))
    return abs(a.mean() - b.mean()) / max(se, 1e-9)


@pytest.mark.parametrize("name", RANDOM)
def test_random_corruptions_match_the_reference_in_distribution(name: str) -> None:
    n = 24
    x = images(n, 32, seed=1)
    for s in range(1, 6):
        ours = np.stack([corrupt(x[i], name, s, seed=100 * s + i) for i in range(n)])
        theirs = np.stack(
            [ref.corrupt_image(x[i], name, s, np.random.default_rng(100 * s + i)) for i in range(n)]
        )
        a, b = diff(ours, x).mean(axis=(1, 2, 3)), diff(theirs, x).mean(axis=(1, 2, 3))
        assert _two_sample(a, b) < 5, (s, a.mean(), b.mean())


def test_fog_adds_a_full_range_fractal() -> None:
    x = torch.from_numpy(images(4, 32)).permute(0, 3, 1, 2).float() / 255 * 0.5
    for s in range(1, 6):
        c = ref.params("fog", s, 32, 32)[0]
        y = corrupt(x, "fog", s, seed=s).double()
        top = x.amax(dim=(1, 2, 3), keepdim=True).double()
        frac = (y * (top + c) / top - x.double()) / c  # the fractal, the same in every channel
        assert torch.allclose(frac, frac[:, :1].expand_as(frac), atol=1e-4)
        zeros = torch.zeros(4, dtype=torch.float64)
        assert torch.allclose(frac.amin(dim=(1, 2, 3)), zeros, atol=1e-4)
        assert torch.allclose(frac.amax(dim=(1, 2, 3)), zeros + 1, atol=1e-4)


@pytest.mark.parametrize("size", [32, 224])
def test_severity_order(size: int) -> None:
    """Mean abs change grows with severity where the published parameters make it so; for the
    others it follows the reference's instead: glass (more blur hides swaps), motion (radius 6
    and 8 at sigma 2 are one kernel), elastic (the affine jitter shrinks with severity),
    pixelate (30 px from 32 shifts more than 28 px) and snow (severities 2 and 3 about tie)."""
    x = images(8 if size == 32 else 1, size, seed=3)
    for name in CORRUPTIONS:
        ours = [diff(corrupt(x, name, s, seed=7), x).mean() for s in range(1, 6)]
        if name in MONOTONE:
            assert all(np.diff(ours) > 0), (name, ours)
        elif size == 32:
            theirs = [
                np.mean([diff(ref.corrupt_image(im, name, s, np.random.default_rng(k)), im).mean()
                         for k, im in enumerate(x)])
                for s in range(1, 6)
            ]  # fmt: skip
            assert np.allclose(ours, theirs, rtol=0.2, atol=0.3), (name, ours, theirs)


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_seeds_sizes_channels_and_types(name: str) -> None:
    for size in (16, 32, 224):
        x = images(2, size, 3, seed=size)
        a = corrupt(x, name, 3, seed=1)
        assert a.shape == x.shape and a.dtype == np.uint8
        assert np.array_equal(a, corrupt(x, name, 3, seed=1))
        assert diff(a, x).mean() > 0.1
        if name not in DETERMINISTIC + ("jpeg_compression",):
            assert not np.array_equal(a, corrupt(x, name, 3, seed=2))
        gray = x[..., :1]
        g = corrupt(gray, name, 3, seed=1)
        assert g.shape == gray.shape and diff(g, gray).mean() > 0.1
        if not name.endswith("noise") and size == 32:  # same draws per pixel for every channel
            rgb = corrupt(np.repeat(gray, 3, axis=-1), name, 3, seed=1)
            assert diff(rgb[..., :1], g).mean() < 1.0, name
    t = torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255
    y = corrupt(t, name, 3, seed=1)
    assert y.shape == t.shape and y.dtype == t.dtype and 0 <= y.min() and y.max() <= 1
    assert diff(np.rint(y.permute(0, 2, 3, 1).numpy() * 255), a).max() <= 1
    assert np.array_equal(corrupt(x[0], name, 3, seed=1), corrupt(x[:1], name, 3, seed=1)[0])


def test_names_and_bad_arguments() -> None:
    assert len(CORRUPTIONS) == 14 and CORRUPTIONS[0] == "gaussian_noise"
    assert sum(CORRUPTION_FAMILIES.values(), ()) == CORRUPTIONS
    x = images(1, 16)
    with pytest.raises(ValueError, match="frost needs texture photographs"):
        corrupt(x, "frost", 1)
    with pytest.raises(ValueError, match="corruption must be one of"):
        corrupt(x, "rain", 1)
    for bad in (0, 6, 2.5, "3", True):
        with pytest.raises(ValueError, match="severity"):
            corrupt(x, "fog", bad)
    with pytest.raises(ValueError, match="images"):
        corrupt(x.astype(np.int32), "fog", 1)
    for spec in ("fog:9", "rain:2", "fog", ("fog",), "frost:1"):
        with pytest.raises(ValueError, match="corruption|severity|frost"):
            Loader(x, batch_size=1, augment="none", corruption=spec)


@pytest.mark.parametrize("size", [32, 224])
def test_loader_applies_the_same_corruption(size: int) -> None:
    n = 6 if size == 32 else 2
    x = images(n, size, seed=9)
    names = CORRUPTIONS if size == 32 else ("fog", "glass_blur", "jpeg_compression")
    for name in names:
        kw = dict(batch_size=n, shuffle=False, augment="none", seed=5, corruption=f"{name}:3")
        expected = torch.from_numpy(corrupt(x, name, 3, seed=5)).permute(0, 3, 1, 2)
        loader = Loader(x, output="uint8", **kw)
        first = next(iter(loader)).images
        assert torch.equal(first, expected), name
        assert torch.equal(next(iter(loader)).images, first)  # deterministic
        floats = next(iter(Loader(x, **kw))).images
        assert (floats * 255 - expected.float()).abs().max() <= 0.5 + 1e-3, name
        if name not in DETERMINISTIC + ("jpeg_compression",):
            loader.set_epoch(1)
            assert not torch.equal(next(iter(loader)).images, first)  # a new draw per epoch


def test_benchmark_summary_pairs_the_providers_per_image(monkeypatch) -> None:
    """benchmarks/summarise_corruptions.py: ratios per corruption, over all per image."""
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from summarise_corruptions import summarise

    def bench(name: str, provider: str, seconds: float, images: int) -> dict:
        extra = {"images": images} | ({"num_workers": 2} if provider == "numpy" else {})
        return {
            "group": "corrupt-224px",
            "params": {"name": name, "provider": provider},
            "stats": {"median": seconds},
            "extra_info": extra,
        }

    raw = {
        "benchmarks": [
            bench("fog", "numpy", 8.0, 64),
            bench("fog", "mimir_fast", 1.0, 64),
            bench("glass_blur", "numpy", 32.0, 16),
            bench("glass_blur", "mimir_fast", 0.5, 16),
        ]
    }
    group = summarise(raw)["groups"]["corrupt-224px"]
    assert group["per_corruption"]["fog"]["ratio"] == 8.0
    assert group["per_corruption"]["glass_blur"]["ratio"] == 64.0
    # Per image: (8/64 + 32/16) / (1/64 + 0.5/16) = 2.125 / 0.046875.
    assert group["all_in_turn_ratio"] == pytest.approx(2.125 / 0.046875)
    assert (group["min_ratio"], group["max_ratio"], group["median_ratio"]) == (8.0, 64.0, 36.0)
    with pytest.raises(ValueError, match="no pair of timings for fog"):
        summarise({"benchmarks": raw["benchmarks"][:1]})
