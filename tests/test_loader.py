"""Tests for the native data loader (mimir_fast.data.loader.Loader)."""

from __future__ import annotations

import gc
import math
import os
import pickle
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from mimir_fast.data import ArrayDataset, load_digits
from mimir_fast.data.loader import Loader, LoaderBatch
from mimir_fast.models.masked_vit import MaskedViT
from PIL import Image


def _images(n: int, size: int = 32, c: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, c), dtype=np.uint8)


def _all(loader) -> list[LoaderBatch]:
    return list(loader)


def _same(a: LoaderBatch, b: LoaderBatch) -> bool:
    if not (
        torch.equal(a.images, b.images)
        and torch.equal(a.indices, b.indices)
        and torch.equal(a.labels, b.labels)
        and len(a.masks) == len(b.masks)
    ):
        return False
    for ma, mb in zip(a.masks, b.masks):
        if not all(torch.equal(x, y) for x, y in zip(ma, mb)):
            return False
    for x, y in ((a.sigma, b.sigma), (a.noise_seed, b.noise_seed), (a.noisy, b.noisy)):
        if (x is None) != (y is None) or (x is not None and not torch.equal(x, y)):
            return False
    return True


def _threads() -> int:
    """Live loader producer threads of this process (other libraries may start their own)."""
    names = []
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/comm") as f:
                names.append(f.read().strip())
        except FileNotFoundError:  # the thread ended meanwhile
            pass
    return sum(name.startswith("mimir-loader-p") for name in names)


def _threads_settled(at_most: int, timeout: float = 5.0) -> int:
    """``_threads()`` once it is <= ``at_most`` or ``timeout`` has passed: a joined thread can
    stay listed in /proc for a moment after its join returned (the kernel reaps it later)."""
    deadline = time.monotonic() + timeout
    while (n := _threads()) > at_most and time.monotonic() < deadline:
        time.sleep(0.01)
    return n


# --- masks ----------------------------------------------------------------------------------


@pytest.mark.parametrize("size,patch,ratio", [(32, 4, 0.75), (28, 4, 0.6), (32, 2, 0.9)])
def test_masks_are_mae_masks(size, patch, ratio):
    loader = Loader(
        _images(40, size), batch_size=16, num_masks=2, mask_ratio=ratio, patch_size=patch
    )
    L = (size // patch) ** 2
    len_keep = int(L * (1 - ratio))
    assert (loader.num_patches, loader.len_keep) == (L, len_keep)
    for batch in loader:
        n = len(batch)
        assert len(batch.masks) == 2
        for ids_keep, mask, ids_restore in batch.masks:
            assert ids_keep.dtype == torch.int64 and ids_restore.dtype == torch.int64
            assert mask.dtype == torch.float32
            assert ids_keep.shape == (n, len_keep) and mask.shape == ids_restore.shape == (n, L)
            # ids_restore is a permutation; its inverse is ids_shuffle = [kept..., removed...]
            assert torch.equal(ids_restore.sort(1).values, torch.arange(L).expand(n, L))
            ids_shuffle = torch.argsort(ids_restore, 1)
            assert torch.equal(ids_shuffle[:, :len_keep], ids_keep)
            assert torch.equal(
                torch.gather(ids_restore, 1, ids_shuffle), torch.arange(L).expand(n, L)
            )
            assert torch.equal(mask, (ids_restore >= len_keep).float())
            assert torch.equal(mask.sum(1), torch.full((n,), float(L - len_keep)))
            assert torch.all(torch.gather(mask, 1, ids_keep) == 0)
        assert not torch.equal(batch.masks[0][0], batch.masks[1][0])  # independent masks


def test_masks_feed_masked_vit():
    loader = Loader(_images(6), batch_size=6, num_masks=2, patch_size=8, shuffle=False)
    model = MaskedViT(
        img_size=32,
        patch_size=8,
        embed_dim=32,
        depth=1,
        num_heads=2,
        decoder_embed_dim=16,
        decoder_depth=1,
        decoder_num_heads=2,
        num_classes=0,
    ).eval()
    batch = next(iter(loader))
    for ids_keep, mask, ids_restore in batch.masks:
        with torch.no_grad():
            latent, m_mask, m_restore = model.forward_encoder(batch.images, ids_keep=ids_keep)
        assert latent.shape == (6, 1 + loader.len_keep, 32)
        assert torch.equal(m_mask, mask)
        # The kept patches sit at the same positions of the shuffle in both (the model orders
        # the removed ones ascending, the loader in its shuffled order).
        assert torch.equal(
            torch.gather(m_restore, 1, ids_keep), torch.gather(ids_restore, 1, ids_keep)
        )
        # The decoder unshuffles the loader's layout correctly with the loader's ids_restore.
        with torch.no_grad():
            pred = model.forward_decoder(latent, ids_restore)
        assert pred.shape[:2] == (6, loader.num_patches)


def _chi2_crit(df: int, z: float) -> float:
    """Upper quantile of chi-square(df) by the Wilson-Hilferty cube-root normal approximation."""
    a = 2.0 / (9.0 * df)
    return df * (1.0 - a + z * math.sqrt(a)) ** 3


def _keep_chi2(counts: np.ndarray, masks: int, len_keep: int) -> float:
    """Chi-square statistic of per-patch keep counts, df = L - 1.

    Each mask keeps exactly ``len_keep`` distinct patches, so a count is Binomial(M, p) with
    p = len_keep / L and covariance -M p (1 - p) / (L - 1) between patches; then
    ``(L - 1) / L * sum((O - E)^2 / (M p (1 - p)))`` is asymptotically chi-square(L - 1).
    """
    L = len(counts)
    p = len_keep / L
    e = masks * p
    return (L - 1) / L * float(((counts - e) ** 2).sum()) / (masks * p * (1 - p))


def test_keep_frequency_is_uniform_chi_square():
    # alpha = 1e-3: z = 3.0902 is the standard normal's upper 1e-3 quantile; with df = 63 the
    # Wilson-Hilferty value is ~103.4 (tables: 103.44).
    loader = Loader(
        _images(4000, 16, 1),
        batch_size=1000,
        augment="none",
        num_masks=2,
        patch_size=2,
        mask_ratio=0.75,
    )
    L, k = loader.num_patches, loader.len_keep
    crit = _chi2_crit(L - 1, 3.0902)
    assert abs(crit - 103.44) < 0.5
    counts = np.zeros(L)
    n_masks = 0
    for batch in loader:
        for ids_keep, _, _ in batch.masks:
            counts += np.bincount(ids_keep.numpy().ravel(), minlength=L)
            n_masks += len(ids_keep)
    assert n_masks == 8000
    assert _keep_chi2(counts, n_masks, k) < crit
    # The statistic has power: a mildly biased sampler (patch 0 kept 20% more often) fails.
    biased = counts.copy()
    biased[0] *= 1.20
    biased[1:] -= (biased[0] - counts[0]) / (L - 1)
    assert _keep_chi2(biased, n_masks, k) > crit


# --- sigma and noise ------------------------------------------------------------------------


def _sigmas(sigma, n=20000) -> np.ndarray:
    loader = Loader(_images(n, 2, 1), batch_size=min(n, 5000), augment="none", sigma=sigma, seed=3)
    out = np.concatenate([b.sigma.numpy() for b in loader]).astype(np.float64)
    assert len(out) == n
    return out


def _check_moments(x: np.ndarray, mean: float, var: float, mu4: float) -> None:
    """Sample mean and variance within 5 standard errors (SE(s^2) = sqrt((mu4 - var^2) / n))."""
    n = len(x)
    assert abs(x.mean() - mean) < 5 * math.sqrt(var / n), (x.mean(), mean)
    assert abs(x.var(ddof=1) - var) < 5 * math.sqrt((mu4 - var**2) / n), (x.var(ddof=1), var)


def test_gamma_sigma_moments():
    k, theta = 25.0, 3.0
    x = _sigmas(("gamma", k, theta))
    assert (x > 0).all()
    _check_moments(x, k * theta, k * theta**2, (3 * k**2 + 6 * k) * theta**4)
    assert np.array_equal(_sigmas("gamma", 500), _sigmas(("gamma", 25, 3), 500))  # NIM's default


def test_uniform_and_constant_sigma():
    a, b = 5.0, 45.0
    x = _sigmas(("uniform", a, b))
    assert x.min() >= a and x.max() <= b
    _check_moments(x, (a + b) / 2, (b - a) ** 2 / 12, (b - a) ** 4 / 80)
    assert np.all(_sigmas(("constant", 12.5), 100) == 12.5)


def test_noise_seed_and_host_noise():
    imgs = _images(64, 16)
    loader = Loader(imgs, batch_size=64, sigma=("gamma", 25, 3), noisy=True)
    b = next(iter(loader))
    assert b.noise_seed.dtype == torch.int64 and (b.noise_seed >= 0).all()
    assert len(set(b.noise_seed.tolist())) == 64
    assert b.noisy.shape == b.images.shape and b.noisy.dtype == torch.float32
    z = (b.noisy - b.images) * 255.0 / b.sigma.view(-1, 1, 1, 1)  # standard normal
    n = z.numel()
    assert abs(float(z.mean())) < 5 / math.sqrt(n)
    assert abs(float(z.var()) - 1.0) < 5 * math.sqrt(2 / n)
    plain = Loader(imgs, batch_size=64, sigma=("gamma", 25, 3))
    p = next(iter(plain))
    assert (
        p.noisy is None
        and torch.equal(p.sigma, b.sigma)
        and torch.equal(p.noise_seed, b.noise_seed)
    )


# --- augmentation ---------------------------------------------------------------------------


def _ref_crop_flip(img: np.ndarray, pad: int, top: int, left: int, flip: bool) -> np.ndarray:
    """Numpy reference: crop of the zero-padded image, optional flip, CHW float / 255."""
    s = img.shape[0]
    padded = np.pad(img, ((pad, pad), (pad, pad), (0, 0)))
    out = padded[top : top + s, left : left + s]
    if flip:
        out = out[:, ::-1]
    return out.transpose(2, 0, 1).astype(np.float32) / np.float32(255.0)


def _find_shift(out: np.ndarray, img: np.ndarray, pad: int) -> list[tuple[int, int, bool]]:
    """All (top, left, flip) whose padded crop equals ``out`` (exhaustive search)."""
    return [
        (t, left, f)
        for t in range(2 * pad + 1)
        for left in range(2 * pad + 1)
        for f in (False, True)
        if np.array_equal(_ref_crop_flip(img, pad, t, left, f), out)
    ]


@pytest.mark.parametrize("augment", ["crop_flip", "crop", "flip", "none"])
def test_crop_flip_matches_numpy_reference(augment):
    imgs = _images(96, 32, 3, seed=5)
    loader = Loader(imgs, batch_size=32, augment=augment, padding=4, seed=11, shuffle=True)
    loader.set_epoch(2)
    seen = set()
    for batch in loader:
        for x, i in zip(batch.images.numpy(), batch.indices.tolist()):
            p = loader.debug_params(i, 2)
            ref = _ref_crop_flip(imgs[i], 4, p["top"], p["left"], p["flip"])
            assert np.array_equal(x, ref)
            # Independent of debug_params: the output is exactly one shift of the padded image.
            assert _find_shift(x, imgs[i], 4) == [(p["top"], p["left"], p["flip"])]
            seen.add((p["top"], p["left"], p["flip"]))
    tops = {t for t, _, _ in seen}
    flips = {f for _, _, f in seen}
    if augment in ("crop_flip", "crop"):
        assert tops == set(range(9))
    else:
        assert tops == {4}
    assert flips == ({False, True} if "flip" in augment else {False})


def _ref_rrc(img: np.ndarray, p: dict, size: int) -> np.ndarray:
    """PIL reference: antialiased bilinear resize of the box, optional flip, CHW / 255."""
    box = (p["left"], p["top"], p["left"] + p["width"], p["top"] + p["height"])
    im = Image.fromarray(img).resize((size, size), Image.BILINEAR, box=box)
    if p["flip"]:
        im = im.transpose(Image.FLIP_LEFT_RIGHT)
    a = np.asarray(im, dtype=np.float32) / 255.0
    return a.transpose(2, 0, 1) if a.ndim == 3 else a[None]


def _smooth(n: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    out = []
    for _ in range(n):
        f = rng.uniform(0.02, 0.3, 3)
        out.append(
            np.stack([127 + 120 * np.sin(f[c] * xx + 0.7 * f[c] * yy + c) for c in range(3)], -1)
        )
    return np.clip(np.asarray(out), 0, 255).astype(np.uint8)


def test_rrc_on_arrays_matches_pil():
    imgs = _smooth(24, 40, 40, seed=1)
    loader = Loader(
        imgs, batch_size=8, augment="rrc_flip", image_size=24, rrc_scale=(0.2, 1.0), seed=4
    )
    areas, flips = [], 0
    for batch in loader:
        for x, i in zip(batch.images.numpy(), batch.indices.tolist()):
            p = loader.debug_params(i)
            assert 0 <= p["top"] and p["top"] + p["height"] <= 40 and p["left"] + p["width"] <= 40
            areas.append(p["height"] * p["width"] / 1600)
            flips += p["flip"]
            ref = _ref_rrc(imgs[i], p, 24)
            # PIL filters in 8-bit fixed point with an intermediate rounding; we filter in float.
            assert np.abs(x - ref).max() <= 2.5 / 255 and np.abs(x - ref).mean() < 0.6 / 255
    assert 0.15 < min(areas) and max(areas) <= 1.0 and 0 < flips < 24


def _write_images(root: Path, imgs: np.ndarray, fmt: str = "png") -> list[Path]:
    paths = []
    for k, img in enumerate(imgs):
        d = root / f"c{k % 2}"
        d.mkdir(parents=True, exist_ok=True)
        p = d / f"img{k:03d}.{fmt}"
        Image.fromarray(img).save(p, **({"quality": 95} if fmt == "jpg" else {}))
        paths.append(p)
    return paths


def test_image_folder_rrc_matches_pil(tmp_path):
    imgs = np.concatenate([_smooth(6, 50, 70, seed=2), _smooth(6, 50, 70, seed=3)[:, :, ::-1]])
    _write_images(tmp_path, np.ascontiguousarray(imgs))
    loader = Loader.from_image_folder(tmp_path, image_size=32, batch_size=4, seed=9)
    assert len(loader) == 3 and loader.in_chans == 3
    for batch in loader:
        assert batch.images.shape == (4, 3, 32, 32)
        for x, i, y in zip(batch.images.numpy(), batch.indices.tolist(), batch.labels.tolist()):
            path = sorted(tmp_path.rglob("*.png"))[i]
            assert y == int(path.parent.name[1])
            with Image.open(path) as im:
                src = np.asarray(im.convert("RGB"))
            ref = _ref_rrc(src, loader.debug_params(i), 32)
            assert np.abs(x - ref).max() <= 2.5 / 255


def test_image_folder_center_crop_path_and_jpeg(tmp_path):
    imgs = _smooth(4, 48, 64, seed=7)
    _write_images(tmp_path, imgs, "jpg")
    loader = Loader.from_image_folder(
        tmp_path, image_size=32, batch_size=4, augment="none", shuffle=False
    )
    b = next(iter(loader))
    for x, i in zip(b.images.numpy(), b.indices.tolist()):
        path = sorted(tmp_path.rglob("*.jpg"))[i]
        with Image.open(path) as im:
            src = np.asarray(im.convert("RGB"))
        ref = _ref_rrc(src, {"top": 0, "left": 8, "height": 48, "width": 48, "flip": False}, 32)
        # Different JPEG decoders (PIL's libjpeg vs Rust) differ by a few levels.
        assert np.abs(x - ref).mean() < 3 / 255


def test_partial_jpeg_decode_is_exact(tmp_path):
    """Decoding a JPEG only down to the crop's rows gives the same batches as a full decode,
    for every JPEG layout (chroma subsampling, progressive, grayscale, restart markers)."""
    rng = np.random.default_rng(5)
    variants = [
        {"subsampling": 0},
        {"subsampling": 1},
        {"subsampling": 2},
        {"progressive": True},
        {"restart_marker_rows": 1},
        {"mode": "L"},
        {"subsampling": 2, "optimize": True},
    ]
    k = 0
    for v in variants:
        for _ in range(4):
            h, w = (int(x) for x in rng.integers(20, 120, 2))
            img = _smooth(1, h, w, seed=k)[0]
            img = np.clip(img + rng.normal(0, 20, img.shape), 0, 255).astype(np.uint8)
            opts = dict(v)
            im = Image.fromarray(img).convert(opts.pop("mode", "RGB"))
            d = tmp_path / f"c{k % 2}"
            d.mkdir(exist_ok=True)
            im.save(d / f"{k:03d}.jpg", quality=90, **opts)
            k += 1

    def run(partial: bool) -> list[LoaderBatch]:
        loader = Loader.from_image_folder(
            tmp_path,
            image_size=16,
            batch_size=4,
            seed=3,
            rrc_scale=(0.05, 0.6),
            partial_decode=partial,
        )
        return [b for e in range(3) for b in (loader.set_epoch(e) or _all(loader))]

    partial, full = run(True), run(False)
    assert len(partial) == len(full) == 3 * 7
    for a, b in zip(partial, full):
        assert torch.equal(a.indices, b.indices)
        assert torch.equal(a.images, b.images), a.indices


@pytest.mark.parametrize("output", ["float", "uint8"])
def test_freed_batch_buffers_are_reused_and_held_ones_kept(output):
    imgs = _images(96, size=16, seed=4)

    def make():
        return Loader(
            imgs, batch_size=8, augment="crop_flip", padding=2, seed=1, output=output, prefetch=1
        )

    held = _all(make())  # every batch kept alive: no buffer can be reused
    first = held[0].images.clone()
    ptrs, streamed = set(), []
    for b in make():  # each batch dropped after use: its buffer comes back
        ptrs.add(b.images.data_ptr())
        streamed.append(b.images.clone())
        del b
    assert len(ptrs) < len(streamed), "no buffer was reused"
    assert len({b.images.data_ptr() for b in held}) == len(held)
    for a, b in zip(held, streamed):
        assert torch.equal(a.images, b)
    assert torch.equal(held[0].images, first)


def test_grayscale_digits_and_uint8_output():
    ds = load_digits("train")
    loader = Loader.from_dataset(
        ds, batch_size=32, num_masks=1, patch_size=4, shuffle=False, augment="none"
    )
    b = next(iter(loader))
    assert b.images.shape == (32, 1, 32, 32) and loader.in_chans == 1
    ref = torch.stack([ds[i][0] for i in range(32)])
    assert torch.equal(b.images, ref)
    u8 = Loader.from_dataset(ds, batch_size=32, shuffle=False, augment="none", output="uint8")
    bu = next(iter(u8))
    assert bu.images.dtype == torch.uint8
    assert torch.equal(bu.images.float() / 255.0, b.images)


def test_float_array_dataset_is_converted_once():
    x = _images(10, 8).astype(np.float32) / 255.0
    loader = Loader.from_dataset(
        ArrayDataset(x, np.arange(10)), batch_size=10, augment="none", shuffle=False
    )
    b = next(iter(loader))
    assert torch.allclose(b.images, torch.from_numpy(x).permute(0, 3, 1, 2), atol=1e-6)
    assert torch.equal(b.labels, torch.arange(10))


# --- sources ---------------------------------------------------------------------------------


def test_npy_source_matches_in_memory(tmp_path):
    imgs = _images(50, 16)
    labels = np.arange(50) % 7
    np.save(tmp_path / "x.npy", imgs)
    np.save(tmp_path / "y.npy", labels)
    kw = dict(batch_size=8, num_masks=1, patch_size=4, sigma=("uniform", 0, 50), seed=5)
    a = _all(Loader.from_npy(tmp_path / "x.npy", tmp_path / "y.npy", **kw))
    b = _all(Loader(imgs, labels, **kw))
    assert len(a) == 6 and all(_same(x, y) for x, y in zip(a, b))
    assert torch.equal(a[0].labels, torch.from_numpy(labels[a[0].indices.numpy()]))
    np.save(tmp_path / "g.npy", imgs[..., 0])  # (N, H, W) grayscale
    g = next(iter(Loader.from_npy(tmp_path / "g.npy", batch_size=4)))
    assert g.images.shape == (4, 1, 16, 16)


def test_npy_rejects_non_uint8(tmp_path):
    np.save(tmp_path / "f.npy", np.zeros((4, 8, 8, 3), np.float32))
    with pytest.raises(ValueError, match=r"f\.npy.*uint8"):
        Loader.from_npy(tmp_path / "f.npy", batch_size=2)
    (tmp_path / "bad.npy").write_bytes(b"not an npy file at all")
    with pytest.raises(ValueError, match=r"bad\.npy"):
        Loader.from_npy(tmp_path / "bad.npy", batch_size=2)
    with pytest.raises(FileNotFoundError):
        Loader.from_npy(tmp_path / "missing.npy", batch_size=2)


def test_memmap_dataset_is_borrowed(tmp_path):
    imgs = _images(20, 8)
    np.save(tmp_path / "x.npy", imgs)
    from mimir_fast.data import load_npy

    ds = load_npy(tmp_path / "x.npy")
    assert isinstance(ds.images, np.memmap)
    loader = Loader.from_dataset(ds, batch_size=20, augment="none", shuffle=False)
    assert torch.equal(
        next(iter(loader)).images, torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 255
    )


def test_from_cifar(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    all_imgs = []
    for k in range(1, 6):
        imgs = rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
        all_imgs.append(imgs)
        data = imgs.transpose(0, 3, 1, 2).reshape(3, -1)
        with open(folder / f"data_batch_{k}", "wb") as f:
            pickle.dump({b"data": data, b"labels": [k, k, k]}, f, protocol=4)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({b"data": np.zeros((1, 3072), np.uint8), b"labels": [0]}, f, protocol=4)
    loader = Loader.from_cifar(tmp_path, batch_size=5, augment="none", shuffle=False)
    batches = _all(loader)
    assert len(batches) == 3
    ref = np.concatenate(all_imgs)
    assert torch.equal(
        batches[1].images, torch.from_numpy(ref[5:10]).permute(0, 3, 1, 2).float() / 255
    )
    assert batches[0].labels.tolist() == [1, 1, 1, 2, 2]


# --- determinism, sharding, resume ------------------------------------------------------------


def test_determinism_across_threads_prefetch_and_resume():
    imgs = _images(300, 16)
    kw = dict(batch_size=32, num_masks=2, patch_size=4, sigma="gamma", noisy=True, seed=123)
    ref = None
    for threads, prefetch in [(1, 0), (2, 2), (2, 5)]:
        loader = Loader(imgs, np.arange(300), num_threads=threads, prefetch=prefetch, **kw)
        assert loader.num_threads == threads
        loader.set_epoch(3)
        got = _all(loader)
        assert len(got) == 9
        if ref is None:
            ref = got
        else:
            assert all(_same(a, b) for a, b in zip(ref, got))
    loader = Loader(imgs, np.arange(300), **kw)
    loader.set_epoch(3, start_batch=4)
    resumed = _all(loader)
    assert len(resumed) == 5 and all(_same(a, b) for a, b in zip(ref[4:], resumed))
    loader.set_epoch(3)
    resumed = _all(loader.iter_from(7))
    assert len(resumed) == 2 and all(_same(a, b) for a, b in zip(ref[7:], resumed))
    loader.set_epoch(4)
    other = _all(loader)
    assert not torch.equal(other[0].indices, ref[0].indices)
    assert not torch.equal(other[0].sigma, ref[0].sigma)
    seeded = Loader(imgs, np.arange(300), **{**kw, "seed": 124})
    seeded.set_epoch(3)
    assert not torch.equal(next(iter(seeded)).indices, ref[0].indices)


def test_shards_disjoint_equal_and_covering():
    n, world = 100, 3
    seen = []
    for rank in range(world):
        loader = Loader(
            _images(n, 4, 1), batch_size=5, drop_last=False, rank=rank, world_size=world, seed=2
        )
        loader.set_epoch(1)
        idx = torch.cat([b.indices for b in loader]).tolist()
        assert len(idx) == n // world == 33 and len(loader) == 7
        assert idx == loader.epoch_indices().tolist()
        seen.append(set(idx))
    assert not (seen[0] & seen[1]) and not (seen[0] & seen[2]) and not (seen[1] & seen[2])
    union = seen[0] | seen[1] | seen[2]
    assert len(union) == 99 and union <= set(range(n))
    dropped = Loader(_images(n, 4, 1), batch_size=5, rank=0, world_size=world)
    assert len(dropped) == 6  # drop_last: 33 // 5
    whole = Loader(_images(n, 4, 1), batch_size=10, shuffle=False)
    assert torch.cat([b.indices for b in whole]).tolist() == list(range(n))


def test_epoch_shuffle_is_a_permutation():
    loader = Loader(_images(64, 4, 1), batch_size=64)
    a, b = loader.epoch_indices(0), loader.epoch_indices(1)
    assert sorted(a.tolist()) == sorted(b.tolist()) == list(range(64))
    assert not np.array_equal(a, b)


# --- shutdown ---------------------------------------------------------------------------------


def test_break_early_then_new_epoch():
    gc.collect()  # loaders of earlier tests may still be shutting their threads down
    loader = Loader(_images(2000, 16), batch_size=16, num_masks=1, patch_size=4, prefetch=2)
    base = _threads()  # "<= base" below: a thread of an earlier test may finish meanwhile
    for k, _ in enumerate(loader):
        assert _threads() == base + 1  # this epoch's producer
        if k == 2:
            break
    loader.set_epoch(1)  # stops the abandoned producer
    assert _threads_settled(base) <= base
    assert sum(len(b) for b in loader) == 2000
    it = iter(loader)
    next(it)
    del it  # dropping the iterator joins its producer
    assert _threads_settled(base) <= base
    it = iter(loader)
    next(it)
    it2 = iter(loader)  # a new iteration closes the previous one
    with pytest.raises(StopIteration):
        next(it)
    assert len(list(it2)) == len(loader) and _threads_settled(base) <= base


@pytest.mark.parametrize("how", ["abandon", "raise"])
def test_process_exits_cleanly_mid_epoch(how):
    code = textwrap.dedent(f"""
        import numpy as np
        from mimir_fast.data.loader import Loader
        x = np.zeros((20000, 32, 32, 3), np.uint8)
        loader = Loader(x, batch_size=64, num_masks=2, patch_size=4, prefetch=4)
        it = iter(loader)
        next(it)
        if {how!r} == "raise":
            raise SystemExit(3)
        print("ok")
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == (3 if how == "raise" else 0), r.stderr
    assert "Traceback" not in r.stderr and "panic" not in r.stderr


# --- errors -----------------------------------------------------------------------------------


def _corrupt_folder(root: Path) -> dict[str, Path]:
    imgs = _smooth(6, 40, 40)
    paths = _write_images(root, imgs[:3], "png") + _write_images(root / "j", imgs[3:], "jpg")
    png, jpg = paths[1].read_bytes(), paths[4].read_bytes()
    bad = {
        "trunc_png": root / "c0" / "trunc.png",
        "trunc_jpg": root / "c1" / "trunc.jpg",
        "garbage_jpg": root / "c0" / "garbage.jpg",
    }
    bad["trunc_png"].write_bytes(png[: len(png) * 2 // 3])
    bad["trunc_jpg"].write_bytes(jpg[: len(jpg) // 2])
    bad["garbage_jpg"].write_bytes(jpg[:200] + bytes(range(256)) * 4)
    return bad


@pytest.mark.parametrize("which", ["trunc_png", "trunc_jpg", "garbage_jpg"])
def test_corrupt_file_raises_naming_it(tmp_path, which):
    bad = _corrupt_folder(tmp_path)
    for name, p in bad.items():
        if name != which:
            p.unlink()
    loader = Loader.from_image_folder(tmp_path, image_size=16, batch_size=7, drop_last=False)
    with pytest.raises(ValueError, match=bad[which].name):
        _all(loader)


def test_skip_corrupt_counts(tmp_path):
    bad = _corrupt_folder(tmp_path)
    loader = Loader.from_image_folder(
        tmp_path, image_size=16, batch_size=3, drop_last=False, skip_corrupt=True, shuffle=False
    )
    batches = _all(loader)
    assert loader.skipped == 3 and sum(b.skipped for b in batches) == 3
    assert sum(len(b) for b in batches) == 6  # a batch is shorter by its skipped samples
    from mimir_fast.data import ImageFolder

    names = [Path(p).name for p, _ in ImageFolder(tmp_path, 16).samples]
    kept = [names[i] for b in batches for i in b.indices.tolist()]
    assert not set(kept) & {p.name for p in bad.values()}
    for b in batches:
        assert b.images.shape == (len(b), 3, 16, 16)


def test_missing_file_raises(tmp_path):
    _write_images(tmp_path, _smooth(2, 20, 20))
    loader = Loader.from_image_folder(tmp_path, image_size=8, batch_size=2)
    next(tmp_path.rglob("*.png")).unlink()
    with pytest.raises(ValueError, match=r"cannot read image .*\.png"):
        _all(loader)


@pytest.mark.parametrize(
    "kw,match",
    [
        (dict(batch_size=0), "batch_size"),
        (dict(batch_size=4, augment="jitter"), "augment"),
        (dict(batch_size=4, rank=3, world_size=3), "rank"),
        (dict(batch_size=4, world_size=0), "world_size"),
        (dict(batch_size=4, num_masks=1), "patch_size"),
        (dict(batch_size=4, num_masks=1, patch_size=5), "divide"),
        (dict(batch_size=4, num_masks=1, patch_size=4, mask_ratio=1.0), "mask_ratio"),
        (dict(batch_size=4, num_masks=1, patch_size=4, mask_ratio=0.99), "keeps no patch"),
        (dict(batch_size=4, sigma=("gamma", -1, 3)), "gamma"),
        (dict(batch_size=4, sigma=("uniform", 5, 1)), "uniform"),
        (dict(batch_size=4, sigma=("poisson", 1)), "sigma"),
        (dict(batch_size=4, noisy=True), "noisy"),
        (dict(batch_size=4, image_size=24), "image_size"),
        (dict(batch_size=4, output="half"), "output"),
        (dict(batch_size=4, rrc_scale=(0.5, 2.0)), "rrc_scale"),
        (dict(batch_size=4, num_threads=0), "num_threads"),
        (dict(batch_size=4, padding=-1), "padding"),
    ],
)
def test_bad_config_raises_value_error(kw, match):
    with pytest.raises(ValueError, match=match):
        Loader(_images(8, 16), **kw)


def test_bad_inputs_raise_value_error():
    with pytest.raises(ValueError, match="labels"):
        Loader(_images(8, 16), np.arange(7), batch_size=2)
    with pytest.raises(ValueError, match="shape"):
        Loader(np.zeros((8, 16), np.uint8), batch_size=2)
    with pytest.raises(ValueError, match="dtype"):
        Loader(np.zeros((8, 4, 4, 3), np.int32), batch_size=2)
    with pytest.raises(ValueError, match="start_batch"):
        Loader(_images(8, 16), batch_size=2).set_epoch(0, start_batch=5)
    with pytest.raises(TypeError):
        Loader.from_dataset(object(), batch_size=2)


def test_pin_memory_without_cuda_is_noop_and_repr():
    loader = Loader(_images(8, 8), batch_size=4, pin_memory=True)
    b = next(iter(loader))
    assert b.images.shape == (4, 3, 8, 8)
    if not torch.cuda.is_available():
        assert not b.images.is_pinned()
    assert "batch_size=4" in repr(loader) and loader.num_samples == 8
