"""Tests for mimir_fast.data: datasets, spec strings and transforms."""

from __future__ import annotations

import math
import os
import pickle
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from mimir_fast.data import (
    CIFAR,
    ArrayDataset,
    Compose,
    ImageFolder,
    RandomCropWithPadding,
    RandomHorizontalFlip,
    RandomResizedCrop,
    build_dataset,
    default_train_transform,
    load_digits,
    load_npy,
)
from PIL import Image
from sklearn.datasets import load_digits as sk_load_digits

# --- digits ---------------------------------------------------------------------------------


def test_digits_shapes_and_range():
    ds = load_digits("train")
    img, label = ds[0]
    assert img.shape == (1, 32, 32) and img.dtype == torch.float32
    assert isinstance(label, int)
    assert (ds.num_classes, ds.in_chans, ds.image_size) == (10, 1, 32)
    imgs = torch.stack([ds[i][0] for i in range(0, len(ds), 50)])
    assert imgs.min() >= 0.0 and imgs.max() <= 1.0
    assert imgs.max() > 0.9  # strokes reach near full intensity, so /16 then *255 was applied
    assert set(np.unique(ds.labels)) == set(range(10))
    assert load_digits("train", image_size=16)[0][0].shape == (1, 16, 16)


def test_digits_split_disjoint_covering_stratified():
    train, test, full = load_digits("train"), load_digits("test"), load_digits("all")
    assert len(full) == 1797
    assert len(np.intersect1d(train.indices, test.indices)) == 0
    assert np.array_equal(np.sort(np.concatenate([train.indices, test.indices])), np.arange(1797))
    target = sk_load_digits().target
    assert np.array_equal(train.labels, target[train.indices])
    assert np.array_equal(test.labels, target[test.indices])
    for c in range(10):
        assert (test.labels == c).sum() == math.ceil(0.2 * (target == c).sum())
    # The split is fixed by the seed and changes with it.
    assert np.array_equal(load_digits("test").indices, test.indices)
    assert not np.array_equal(load_digits("test", seed=1).indices, test.indices)


def test_digits_upscale_recovers_original():
    orig = sk_load_digits().images / 16.0  # (N, 8, 8) in [0, 1]
    ds = load_digits("test")
    idx = ds.indices[:40]
    up = torch.stack([ds[i][0] for i in range(40)])  # (40, 1, 32, 32)
    pooled = F.avg_pool2d(up, 4)[:, 0].numpy().astype(np.float64)  # (40, 8, 8)
    # Bilinear x4 (align_corners=False) samples each 4-pixel block at offsets -3/8, -1/8, 1/8, 3/8
    # around the source pixel, so block-averaging equals a separable [1/8, 3/4, 1/8] filter
    # with edge replication. Only uint8 rounding (<= 0.5/255 per pixel) separates the two.
    k = np.array([0.125, 0.75, 0.125])
    p = np.pad(orig[idx], ((0, 0), (1, 1), (1, 1)), mode="edge")
    rows = sum(k[j] * p[:, j : j + 8, :] for j in range(3))
    expect = sum(k[j] * rows[:, :, j : j + 8] for j in range(3))
    assert np.abs(pooled - expect).max() <= 0.5 / 255 + 1e-6
    # And it is a faithful (smoothed) copy of the original digit.
    assert np.corrcoef(pooled.ravel(), orig[idx].ravel())[0, 1] > 0.95
    assert np.abs(pooled - orig[idx]).mean() < 0.1


def test_digits_bad_args():
    with pytest.raises(ValueError, match="split"):
        load_digits("val")
    with pytest.raises(ValueError, match="test_fraction"):
        load_digits(test_fraction=0.0)


# --- ArrayDataset ---------------------------------------------------------------------------


def test_array_channels_last_uint8():
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, size=(5, 4, 4, 3), dtype=np.uint8)
    ds = ArrayDataset(imgs, np.array([0, 1, 2, 1, 0]))
    assert (len(ds), ds.num_classes, ds.in_chans, ds.image_size) == (5, 3, 3, 4)
    img, label = ds[3]
    assert img.shape == (3, 4, 4) and img.dtype == torch.float32 and label == 1
    for c, y, x in [(0, 0, 0), (2, 1, 3), (1, 3, 2)]:
        assert img[c, y, x].item() == pytest.approx(imgs[3, y, x, c] / 255.0)


def test_array_grayscale_float_and_tensor():
    imgs = np.linspace(0, 1, 2 * 3 * 3, dtype=np.float32).reshape(2, 3, 3)
    ds = ArrayDataset(torch.from_numpy(imgs))
    assert (ds.in_chans, ds.num_classes) == (1, 1)
    assert np.array_equal(ds.labels, [0, 0]) and ds.labels.dtype == np.int64
    img, label = ds[1]
    assert img.shape == (1, 3, 3) and label == 0
    assert torch.equal(img[0], torch.from_numpy(imgs[1]))
    assert ArrayDataset(imgs, [0, 1], num_classes=5).num_classes == 5


def test_array_transform_applied():
    ds = ArrayDataset(np.zeros((2, 4, 4), np.uint8), transform=lambda t: t + 0.5)
    assert torch.all(ds[0][0] == 0.5)


@pytest.mark.parametrize(
    "images, labels, kw, match",
    [
        (np.zeros((2, 4), np.uint8), None, {}, "ndim"),
        (np.zeros((2, 4, 4, 3, 1), np.uint8), None, {}, "ndim"),
        (np.zeros((2, 4, 5, 3), np.uint8), None, {}, "square"),
        (np.zeros((2, 3, 4, 4), np.uint8), None, {}, "channels-first"),
        (np.zeros((3, 4, 4), np.uint8), [0, 1], {}, "3 images but 2 labels"),
        (np.zeros((2, 4, 4), np.uint8), [0, -1], {}, "non-negative"),
        (np.zeros((2, 4, 4), np.uint8), [0, 3], {"num_classes": 3}, "out of range"),
        (np.zeros((2, 4, 4), np.uint8), [0.0, 1.0], {}, "integers"),
        (np.zeros((2, 4, 4), np.uint8), [[0], [1]], {}, "1-D"),
        (np.full((2, 4, 4), 1.5, np.float32), None, {}, r"\[0, 1\]"),
        (np.full((2, 4, 4), -0.1, np.float64), None, {}, r"\[0, 1\]"),
        (np.full((2, 4, 4), np.nan, np.float32), None, {}, "NaN"),
        (np.full((2, 4, 4), np.inf, np.float32), None, {}, "NaN or inf"),
        (np.zeros((2, 4, 4), np.int32), None, {}, "unsupported image dtype"),
        (np.zeros((2, 4, 4), bool), None, {}, "unsupported image dtype"),
        (np.zeros((0, 4, 4), np.uint8), None, {}, "empty"),
    ],
)
def test_array_validation(images, labels, kw, match):
    with pytest.raises(ValueError, match=match):
        ArrayDataset(images, labels, **kw)


def test_array_memmap_stays_mapped(tmp_path):
    imgs = np.arange(4 * 6 * 6 * 3, dtype=np.uint8).reshape(4, 6, 6, 3)
    np.save(tmp_path / "x.npy", imgs)
    np.save(tmp_path / "y.npy", np.array([3, 1, 0, 2]))
    ds = load_npy(tmp_path / "x.npy", tmp_path / "y.npy")
    assert isinstance(ds.images, np.memmap)
    assert (ds.num_classes, ds.in_chans, ds.image_size) == (4, 3, 6)
    img, label = ds[2]
    assert label == 0
    assert torch.equal(img, torch.from_numpy(imgs[2]).permute(2, 0, 1).float() / 255)
    assert not isinstance(load_npy(tmp_path / "x.npy", mmap=False).images, np.memmap)
    # A float memmap is validated and still kept mapped.
    np.save(tmp_path / "f.npy", imgs.astype(np.float32) / 255)
    assert isinstance(load_npy(tmp_path / "f.npy").images, np.memmap)


def test_load_npy_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.npy"):
        load_npy(tmp_path / "nope.npy")
    bad = tmp_path / "bad.npy"
    bad.write_bytes(b"this is not an npy file at all")
    with pytest.raises(ValueError, match="bad.npy"):
        load_npy(bad)
    truncated = tmp_path / "trunc.npy"
    np.save(truncated, np.zeros((10, 8, 8), np.uint8))
    truncated.write_bytes(truncated.read_bytes()[:200])
    with pytest.raises(ValueError, match="trunc.npy"):
        load_npy(truncated)
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="obj.npy"):
        load_npy(tmp_path / "obj.npy")


# --- CIFAR ----------------------------------------------------------------------------------


def _cifar_images(n: int, seed: int) -> np.ndarray:
    """Random (n, 32, 32, 3) uint8 images."""
    return np.random.default_rng(seed).integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)


def _pack(images: np.ndarray) -> np.ndarray:
    """Encode (n, 32, 32, 3) into the CIFAR row layout: 1024 R, then G, then B values per row."""
    n = len(images)
    data = np.empty((n, 3072), np.uint8)
    for i in range(n):
        for c in range(3):
            for y in range(32):
                data[i, c * 1024 + y * 32 : c * 1024 + (y + 1) * 32] = images[i, :, :, c][y]
    return data


def _dump(path, obj) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=4)


def _make_cifar10(folder) -> tuple[np.ndarray, list[int], np.ndarray, list[int]]:
    folder.mkdir(parents=True)
    train_imgs, train_labels = [], []
    for k in range(1, 6):
        imgs, labels = _cifar_images(2, seed=k), [k, (k * 3) % 10]
        _dump(
            folder / f"data_batch_{k}",
            {b"batch_label": b"b", b"data": _pack(imgs), b"labels": labels},
        )
        train_imgs.append(imgs)
        train_labels += labels
    test_imgs, test_labels = _cifar_images(3, seed=9), [9, 0, 4]
    _dump(folder / "test_batch", {b"data": _pack(test_imgs), b"labels": test_labels})
    names = [
        b"airplane",
        b"automobile",
        b"bird",
        b"cat",
        b"deer",
        b"dog",
        b"frog",
        b"horse",
        b"ship",
        b"truck",
    ]
    _dump(folder / "batches.meta", {b"label_names": names, b"num_vis": 3072})
    return np.concatenate(train_imgs), train_labels, test_imgs, test_labels


def test_cifar10_decoding(tmp_path):
    train_imgs, train_labels, test_imgs, test_labels = _make_cifar10(
        tmp_path / "cifar-10-batches-py"
    )
    for root in (tmp_path, tmp_path / "cifar-10-batches-py"):
        ds = CIFAR(root, train=True)
        assert ds.variant == "cifar10" and len(ds) == 10
        assert (ds.num_classes, ds.in_chans, ds.image_size) == (10, 3, 32)
        assert ds.classes[0] == "airplane" and ds.classes[9] == "truck"
        assert list(ds.labels) == train_labels
    ds = CIFAR(tmp_path, train=True)
    for i, c, y, x in [(0, 0, 0, 0), (3, 1, 5, 17), (9, 2, 31, 2), (6, 0, 12, 31)]:
        img, label = ds[i]
        assert img.shape == (3, 32, 32) and label == train_labels[i]
        assert img[c, y, x].item() == pytest.approx(train_imgs[i, y, x, c] / 255.0)
    test = CIFAR(tmp_path, train=False)
    assert list(test.labels) == test_labels
    assert torch.equal(test[2][0], torch.from_numpy(test_imgs[2]).permute(2, 0, 1).float() / 255)


def test_cifar10_known_pixel(tmp_path):
    # Hand-built row: value 7 only at plane c=2 (blue), y=3, x=5 -> flat offset 2*1024 + 3*32 + 5.
    folder = tmp_path / "c10"
    folder.mkdir()
    data = np.zeros((1, 3072), np.uint8)
    data[0, 2 * 1024 + 3 * 32 + 5] = 7
    for k in range(1, 6):
        _dump(folder / f"data_batch_{k}", {b"data": data, b"labels": [k]})
    ds = CIFAR(folder)
    img = ds[0][0]
    assert img[2, 3, 5].item() == pytest.approx(7 / 255)
    assert img.sum().item() == pytest.approx(7 / 255)
    assert ds.classes is None  # no batches.meta
    with pytest.raises(FileNotFoundError, match="test_batch"):
        CIFAR(folder, train=False)


def test_cifar100(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    imgs = _cifar_images(4, seed=3)
    fine, coarse = [99, 0, 42, 7], [19, 0, 3, 1]
    _dump(folder / "train", {b"data": _pack(imgs), b"fine_labels": fine, b"coarse_labels": coarse})
    _dump(folder / "test", {b"data": _pack(imgs[:1]), b"fine_labels": [5], b"coarse_labels": [2]})
    names = [f"class{k}".encode() for k in range(100)]
    _dump(folder / "meta", {b"fine_label_names": names, b"coarse_label_names": names[:20]})
    ds = CIFAR(tmp_path)
    assert ds.variant == "cifar100" and ds.num_classes == 100
    assert list(ds.labels) == fine and ds.classes[42] == "class42"
    assert torch.equal(ds[1][0], torch.from_numpy(imgs[1]).permute(2, 0, 1).float() / 255)
    assert list(CIFAR(folder, train=False).labels) == [5]


def test_cifar_missing_and_corrupt(tmp_path):
    with pytest.raises(FileNotFoundError, match="CIFAR folder not found"):
        CIFAR(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="cifar-10-batches-py"):
        CIFAR(tmp_path / "empty")
    folder = tmp_path / "c10"
    _make_cifar10(folder)
    os.remove(folder / "data_batch_3")
    with pytest.raises(FileNotFoundError, match="data_batch_3"):
        CIFAR(folder)
    (folder / "data_batch_3").write_bytes(b"\x80\x04garbage")
    with pytest.raises(ValueError, match="data_batch_3"):
        CIFAR(folder)
    _dump(folder / "data_batch_3", {b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]})
    with pytest.raises(ValueError, match=r"data_batch_3.*\(N, 3072\)"):
        CIFAR(folder)


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_cifar_malicious_pickle_refused(tmp_path):
    folder = tmp_path / "c10"
    _make_cifar10(folder)
    _dump(folder / "test_batch", {b"data": _Evil(), b"labels": [0]})
    with pytest.raises(ValueError, match=r"test_batch.*refusing to load global"):
        CIFAR(folder, train=False)
    _dump(
        folder / "test_batch", {b"data": np.zeros((1, 3072), np.uint8), b"labels": [0], b"x": print}
    )
    with pytest.raises(ValueError, match="builtins.print"):
        CIFAR(folder, train=False)


# --- ImageFolder ----------------------------------------------------------------------------


def _write_image(path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def test_imagefolder_classes_sizes_values(tmp_path):
    red = np.zeros((20, 30, 3), np.uint8)
    red[..., 0] = 200
    _write_image(tmp_path / "cat" / "a.png", red)
    _write_image(tmp_path / "cat" / "b.PNG", np.full((12, 12, 3), 60, np.uint8))
    _write_image(tmp_path / "ant" / "x.jpg", np.full((40, 16, 3), 128, np.uint8))
    gray = np.arange(64, dtype=np.uint8).reshape(8, 8) * 4
    _write_image(tmp_path / "ant" / "g.png", gray)  # grayscale file -> converted to RGB
    (tmp_path / "ant" / "notes.txt").write_text("ignored")
    ds = ImageFolder(tmp_path, image_size=8)
    assert ds.classes == ["ant", "cat"]
    assert len(ds) == 4 and ds.num_classes == 2 and ds.in_chans == 3
    assert list(ds.labels) == [0, 0, 1, 1]
    assert [os.path.basename(p) for p, _ in ds.samples] == ["g.png", "x.jpg", "a.png", "b.PNG"]
    for i in range(4):
        img, label = ds[i]
        assert img.shape == (3, 8, 8) and label == ds.labels[i]
        assert img.min() >= 0 and img.max() <= 1
    g = ds[0][0]  # 8x8 already: no resize, exact values, all channels equal
    assert torch.equal(g[0], torch.from_numpy(gray).float() / 255) and torch.equal(g[0], g[2])
    jpg = ds[1][0]
    assert torch.allclose(jpg, torch.full_like(jpg, 128 / 255), atol=3 / 255)
    r = ds[2][0]  # constant colour survives the resize + crop
    assert (
        torch.allclose(r[0], torch.full((8, 8), 200 / 255), atol=1 / 255) and r[1:].max() < 1 / 255
    )
    assert ImageFolder(tmp_path, image_size=5)[1][0].shape == (3, 5, 5)


def test_imagefolder_transform_gets_full_image(tmp_path):
    _write_image(tmp_path / "c" / "a.png", np.zeros((10, 14, 3), np.uint8))
    seen = []
    ds = ImageFolder(
        tmp_path, image_size=4, transform=lambda t: seen.append(t.shape) or t[:, :4, :4]
    )
    assert ds[0][0].shape == (3, 4, 4) and seen == [(3, 10, 14)]


def test_imagefolder_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        ImageFolder(tmp_path / "absent")
    with pytest.raises(ValueError, match="no class subfolders"):
        ImageFolder(tmp_path)
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "readme.txt").write_text("x")
    with pytest.raises(ValueError, match="no images"):
        ImageFolder(tmp_path)
    _write_image(tmp_path / "a" / "good.png", np.zeros((8, 8, 3), np.uint8))
    _write_image(
        tmp_path / "a" / "trunc.png",
        np.random.default_rng(0).integers(0, 256, (64, 64, 3), np.uint8),
    )
    data = (tmp_path / "a" / "trunc.png").read_bytes()
    (tmp_path / "a" / "trunc.png").write_bytes(data[: len(data) // 2])
    (tmp_path / "a" / "zz.jpg").write_bytes(b"not a jpeg")
    ds = ImageFolder(tmp_path, image_size=8)
    assert [os.path.basename(p) for p, _ in ds.samples] == ["good.png", "trunc.png", "zz.jpg"]
    assert ds[0][0].shape == (3, 8, 8)
    with pytest.raises(ValueError, match="trunc.png"):
        ds[1]
    with pytest.raises(ValueError, match="zz.jpg"):
        ds[2]


# --- transforms -----------------------------------------------------------------------------


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_crop_with_padding_is_shifted_padded_copy():
    img = torch.rand(3, 8, 8) * 0.9 + 0.1  # strictly positive, so zero padding is recognisable
    t = RandomCropWithPadding(8, padding=2)
    padded = torch.zeros(3, 12, 12)
    padded[:, 2:10, 2:10] = img
    offsets = set()
    for seed in range(30):
        out = t(img, generator=_gen(seed))
        assert out.shape == (3, 8, 8)
        matches = [
            (dy, dx)
            for dy in range(5)
            for dx in range(5)
            if torch.equal(out, padded[:, dy : dy + 8, dx : dx + 8])
        ]
        assert len(matches) == 1
        offsets.add(matches[0])
    assert len(offsets) > 5  # offsets really vary
    assert torch.equal(t(img, generator=_gen(3)), t(img, generator=_gen(3)))
    assert RandomCropWithPadding(6, padding=0)(img, generator=_gen(0)).shape == (3, 6, 6)
    with pytest.raises(ValueError):
        RandomCropWithPadding(20, padding=2)(img)


def test_horizontal_flip():
    img = torch.rand(2, 5, 7)
    assert torch.equal(RandomHorizontalFlip(p=1.0)(img), torch.flip(img, dims=[2]))
    assert torch.equal(RandomHorizontalFlip(p=0.0)(img), img)
    flips = [torch.equal(RandomHorizontalFlip()(img, generator=_gen(s)), img) for s in range(40)]
    assert 5 < sum(flips) < 35
    with pytest.raises(ValueError):
        RandomHorizontalFlip(p=1.5)


def test_random_resized_crop():
    img = torch.rand(3, 40, 60)
    t = RandomResizedCrop(16)
    outs = [t(img, generator=_gen(s)) for s in range(10)]
    for out in outs:
        assert out.shape == (3, 16, 16) and out.dtype == torch.float32
        assert out.min() >= 0 and out.max() <= 1
    assert torch.equal(t(img, generator=_gen(7)), outs[7])
    assert not torch.equal(outs[0], outs[1])
    # Fallback: an impossible aspect range forces the center crop; a constant image stays constant.
    wide = torch.full((1, 4, 100), 0.25)
    out = RandomResizedCrop(8, scale=(0.9, 1.0), ratio=(1.0, 1.0))(wide, generator=_gen(0))
    assert out.shape == (1, 8, 8) and torch.allclose(out, torch.full_like(out, 0.25))
    # Scale 1 and ratio 1 on a square image is a plain resize of the whole image.
    sq = torch.rand(1, 12, 12)
    full = RandomResizedCrop(12, scale=(1.0, 1.0), ratio=(1.0, 1.0))(sq, generator=_gen(0))
    assert torch.allclose(full, sq, atol=1e-6)


def test_compose_and_default_transforms():
    img = torch.rand(3, 32, 32)
    t = default_train_transform(32, kind="cifar")
    assert isinstance(t, Compose) and isinstance(t.transforms[0], RandomCropWithPadding)
    assert t.transforms[0].padding == 4
    assert torch.equal(t(img, generator=_gen(1)), t(img, generator=_gen(1)))
    big = default_train_transform(24, kind="imagenet")
    assert isinstance(big.transforms[0], RandomResizedCrop)
    assert big(torch.rand(3, 50, 40), generator=_gen(0)).shape == (3, 24, 24)
    with pytest.raises(ValueError, match="kind"):
        default_train_transform(32, kind="mnist")
    ds = load_digits("test", transform=default_train_transform(32))
    assert ds[0][0].shape == (1, 32, 32)


# --- build_dataset --------------------------------------------------------------------------


def test_build_dataset_specs(tmp_path):
    d = build_dataset("digits", "test")
    assert len(d) == len(load_digits("test")) and d.image_size == 32
    assert build_dataset("digits", image_size=16).image_size == 16

    _make_cifar10(tmp_path / "cifar" / "cifar-10-batches-py")
    assert len(build_dataset(f"cifar:{tmp_path / 'cifar'}", "train")) == 10
    assert len(build_dataset(f"cifar:{tmp_path / 'cifar'}", "test")) == 3
    with pytest.raises(ValueError, match="image_size"):
        build_dataset(f"cifar:{tmp_path / 'cifar'}", image_size=64)

    flat = tmp_path / "flat"
    _write_image(flat / "a" / "1.png", np.zeros((8, 8, 3), np.uint8))
    _write_image(flat / "b" / "1.png", np.zeros((8, 8, 3), np.uint8))
    for split in ("train", "test"):
        ds = build_dataset(f"imagefolder:{flat}", split, image_size=8)
        assert ds.classes == ["a", "b"] and ds[0][0].shape == (3, 8, 8)
    assert build_dataset(f"imagefolder:{flat}").image_size == 224

    tree = tmp_path / "tree"
    _write_image(tree / "train" / "a" / "1.png", np.zeros((8, 8, 3), np.uint8))
    _write_image(tree / "train" / "a" / "2.png", np.zeros((8, 8, 3), np.uint8))
    _write_image(tree / "val" / "a" / "1.png", np.zeros((8, 8, 3), np.uint8))
    assert len(build_dataset(f"imagefolder:{tree}", "train", image_size=8)) == 2
    assert len(build_dataset(f"imagefolder:{tree}", "test", image_size=8)) == 1

    np.save(tmp_path / "x.npy", np.zeros((3, 4, 4), np.uint8))
    np.save(tmp_path / "y.npy", np.array([0, 2, 1]))
    ds = build_dataset(f"npy:{tmp_path / 'x.npy'}")
    assert len(ds) == 3 and ds.num_classes == 1
    ds = build_dataset(f"npy:{tmp_path / 'x.npy'},{tmp_path / 'y.npy'}", "test")
    assert list(ds.labels) == [0, 2, 1] and ds.num_classes == 3


def test_build_dataset_errors(tmp_path):
    for spec in ("mnist", "cifar", "digits:/x", "ftp://host/data"):
        with pytest.raises(ValueError, match="accepted forms"):
            build_dataset(spec)
    with pytest.raises(ValueError, match="missing a path"):
        build_dataset("npy:")
    with pytest.raises(ValueError, match="split"):
        build_dataset("digits", "val")
    half = tmp_path / "half"
    _write_image(half / "train" / "a" / "1.png", np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(FileNotFoundError, match="val"):
        build_dataset(f"imagefolder:{half}", "test")


def test_digits_without_scikit_learn_names_the_extra(monkeypatch):
    from mimir_fast.data import digits

    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)  # import fails
    digits._digits_upscaled.cache_clear()
    try:
        with pytest.raises(ImportError, match=r"mimir-fast\[demo\]"):
            digits.load_digits(image_size=9)
    finally:
        digits._digits_upscaled.cache_clear()
