"""Fuzzing: random and invalid inputs across the public API fail with clear Python errors.

Parts:

- ``loader``: random valid and invalid ``Loader`` configurations and arrays; a working loader
  must deliver the promised shapes and dtypes.
- ``images``: random, truncated and bit-flipped PNG/JPEG files in an image folder, read by
  ``ImageFolder`` (PIL) and by the Rust loader (with and without ``skip_corrupt``).
- ``npy``: random, truncated, bit-flipped and header-edited ``.npy`` files through ``load_npy``,
  ``build_dataset("npy:...")`` and ``Loader.from_npy``.
- ``models``: truncated, bit-flipped and header-edited safetensors model files and training
  checkpoints through ``load_tensors``, ``MaskedViT.load`` and ``train.load_checkpoint``.
- ``train_config`` and ``cli``: random ``TrainConfig.from_dict`` dicts and ``mimir-fast``
  argument lists (pretrain/finetune always with ``--dry-run``: nothing trains).

The native parts run in one child process under an address-space limit and a timeout, so an
abort, a segfault or a hang is counted instead of killing the test session; a Rust panic
turned into an "internal error" is counted as a panic. Every part is a bounded hypothesis run
with ``derandomize=True`` (the same cases on every run). Counts are printed (``pytest -s``) and
added to the terminal summary.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import math
import os
import struct
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

# Cases per part (2100 in all; a case of the file parts checks two to four calls).
BUDGET = {"loader": 400, "images": 300, "npy": 350, "models": 300, "train_config": 500, "cli": 250}
CHILD_TIMEOUT_S = 150  # the native parts together take ~20 s on 2 busy cores
CHILD_MEMORY_LIMIT = 8 << 30  # address space of the child: an allocation bomb fails there, not here

CLEAN_ERRORS = (ValueError, TypeError, OSError)
EXAMPLES_KEPT = 5


def _settings(n: int):
    return settings(
        max_examples=n,
        deadline=None,
        derandomize=True,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
        print_blob=False,
    )


class Tally:
    """Outcome counts of one part, with a few examples of each bad outcome."""

    BAD = ("unclear", "panic", "wrong")

    def __init__(self, part: str):
        self.part = part
        self.counts: Counter = Counter()
        self.examples: dict[str, list[str]] = {}
        self.cases = 0  # generated cases; a case may check several calls
        self.type_errors = 0

    def start(self, case: str) -> None:
        """Count a case and name it on stderr: the last one named is the culprit of a crash or a
        hang."""
        print(f"CASE {self.part} {self.cases}: {case[:400]}", file=sys.stderr, flush=True)
        self.cases += 1

    def ok(self) -> None:
        self.counts["ok"] += 1

    def error(self, exc: BaseException, case: str, must_name: str | None = None) -> None:
        """Classify a raised exception: clean (allowed type, message, names the file) or not."""
        msg = str(exc)
        if type(exc).__name__ == "PanicException" or "internal error" in msg or "panicked" in msg:
            self.bad("panic", f"{type(exc).__name__}: {msg} <- {case}")
        elif not isinstance(exc, CLEAN_ERRORS) or not msg.strip():
            self.bad("unclear", f"{type(exc).__name__}: {msg!r} <- {case}")
        elif must_name is not None and must_name not in msg:
            self.bad(
                "unclear",
                f"message does not name {must_name}: {type(exc).__name__}: {msg} <- {case}",
            )
        else:
            self.counts["clean_error"] += 1

    def bad(self, kind: str, text: str) -> None:
        self.counts[kind] += 1
        kept = self.examples.setdefault(kind, [])
        if len(kept) < EXAMPLES_KEPT:
            kept.append(text[:600])

    def result(self) -> dict:
        counts = {k: self.counts.get(k, 0) for k in ("ok", "clean_error", *self.BAD)}
        return {
            "part": self.part,
            "cases": self.cases,
            "checks": sum(self.counts.values()),
            "type_errors": self.type_errors,
            **counts,
            "examples": self.examples,
        }


# ================================================================= loader configurations
_AUGMENTS = ("crop_flip", "crop", "flip", "rrc_flip", "rrc", "none")
_NAN, _INF = float("nan"), float("inf")


@st.composite
def _loader_case(draw):
    """(images, labels, kwargs): each argument valid most of the time, else a bad value of it."""
    all_valid = draw(st.booleans())

    def pick(valid, invalid):
        return draw(invalid) if not all_valid and draw(st.integers(0, 7)) == 0 else draw(valid)

    n = pick(st.integers(1, 20), st.sampled_from([0]))
    size = draw(st.sampled_from([4, 6, 8]))
    chans = draw(st.sampled_from([None, 1, 3]))
    shape = (n, size, size) if chans is None else (n, size, size, chans)
    shape = pick(
        st.just(shape),
        st.sampled_from(
            [
                (n, size),
                (n, size, size, 3, 1),
                (n, size, size + 2, 3),
                (n, 0, 0, 3),
                (n, size, size, 0),
            ]
        ),
    )
    dtype = pick(
        st.sampled_from(["uint8", "float32", "float64"]),
        st.sampled_from(["int16", "bool", "nan", "big"]),
    )
    labels_kind = pick(
        st.sampled_from(["none", "ok"]), st.sampled_from(["short", "float", "2d", "str"])
    )

    kw = {
        "batch_size": pick(st.integers(1, 8), st.sampled_from([0, -1, 2.5, "4", None, True, 2**70]))
    }
    if draw(st.booleans()):
        kw["shuffle"] = draw(st.booleans())
    if draw(st.booleans()):
        kw["seed"] = pick(st.integers(-(10**20), 10**20), st.sampled_from([1.5, "x", None, True]))
    if draw(st.booleans()):
        kw["drop_last"] = draw(st.booleans())
    if draw(st.booleans()):
        ws = draw(st.integers(1, 3))
        kw["world_size"] = pick(st.just(ws), st.sampled_from([0, -2, 1.5, 2**70]))
        kw["rank"] = pick(st.integers(0, ws - 1), st.sampled_from([-1, ws, 1.0, "0"]))
    augment = pick(st.sampled_from(_AUGMENTS), st.sampled_from(["bad", "", None, 3, "CROP"]))
    kw["augment"] = augment
    if draw(st.booleans()):
        kw["padding"] = pick(st.integers(0, 5), st.sampled_from([-1, 2**17, 2**70, 1.5, "2"]))
    if draw(st.booleans()):
        kw["rrc_scale"] = pick(
            st.tuples(st.floats(0.05, 0.5), st.floats(0.5, 1.0)),
            st.sampled_from([(0, 1), (0.5, 0.2), (0.2, 1.5), (_NAN, 1), 3, "ab", (1, 2, 3)]),
        )
    if draw(st.booleans()):
        kw["rrc_ratio"] = pick(
            st.tuples(st.floats(0.5, 1.0), st.floats(1.0, 2.0)),
            st.sampled_from([(0, 1), (2, 1), (_INF, _INF), None]),
        )
    out_size = size
    if augment in ("rrc", "rrc_flip"):
        out_size = draw(st.sampled_from([4, 8, 12]))
        kw["image_size"] = out_size
    elif draw(st.booleans()):
        kw["image_size"] = size
    if not all_valid and draw(st.integers(0, 11)) == 0:
        kw["image_size"] = draw(st.sampled_from([0, -8, size + 1, 10**6, 2**40, 7.5, "8"]))
    num_masks = pick(st.integers(0, 3), st.sampled_from([-1, 1.5, 2**40, 10**6]))
    if num_masks != 0:
        kw["num_masks"] = num_masks
        kw["patch_size"] = pick(
            st.sampled_from([p for p in (1, 2, 4) if out_size % p == 0]),
            st.sampled_from([0, -4, 3, 5, 2**40, None]),
        )
        kw["mask_ratio"] = pick(
            st.floats(0.0, 0.75), st.sampled_from([1.0, -0.1, _NAN, _INF, "0.5", None, 0.999])
        )
    sigma = pick(
        st.one_of(
            st.none(),
            st.just("gamma"),
            st.tuples(st.just("gamma"), st.floats(0.5, 40), st.floats(0.5, 5)),
            st.tuples(st.just("uniform"), st.floats(0, 10), st.floats(10, 60)),
            st.tuples(st.just("constant"), st.floats(0, 50)),
        ),
        st.sampled_from(
            [
                ("gamma", -1, 3),
                ("gamma", _NAN, 1),
                ("uniform", 5, 1),
                ("constant", -1),
                ("constant", _INF),
                ("bogus", 1),
                5,
                (),
                ("gamma", "x", 1),
                ("uniform", 1),
                [None],
            ]
        ),
    )
    if sigma is not None:
        kw["sigma"] = sigma
    if draw(st.booleans()):
        kw["noisy"] = draw(st.booleans()) and (sigma is not None or not all_valid)
    kw["output"] = pick(st.sampled_from(["float", "uint8"]), st.sampled_from(["int8", None, 1]))
    kw["num_threads"] = pick(st.sampled_from([None, 1, 2]), st.sampled_from([0, -1, 2**40, 1.5]))
    kw["prefetch"] = pick(st.integers(0, 3), st.sampled_from([-1, 2**40, 1.5]))
    if draw(st.booleans()):
        kw["pin_memory"] = draw(st.booleans())
    if not all_valid and draw(st.integers(0, 30)) == 0:
        kw["unknown_option"] = 1
    seed = draw(st.integers(0, 2**32 - 1))
    return shape, dtype, labels_kind, kw, seed


def _make_images(shape, dtype, labels_kind, seed):
    rng = np.random.default_rng(seed)
    n = shape[0]
    if dtype == "uint8":
        x = rng.integers(0, 256, shape, dtype=np.uint8)
    elif dtype in ("float32", "float64"):
        x = rng.random(shape).astype(dtype)
    elif dtype == "int16":
        x = rng.integers(0, 256, shape).astype(np.int16)
    elif dtype == "bool":
        x = rng.random(shape) > 0.5
    elif dtype == "nan":
        x = rng.random(shape).astype(np.float32)
        x.reshape(-1)[: max(1, x.size // 7)] = np.nan
    else:  # "big": float values outside [0, 1]
        x = rng.random(shape).astype(np.float32) * 300
    labels = {
        "none": None,
        "ok": np.arange(n) % 3,
        "short": np.arange(max(0, n - 1)),
        "float": np.linspace(0, 1, n),
        "2d": np.zeros((n, 2), np.int64),
        "str": ["a"] * n,
    }[labels_kind]
    return x, labels


def _expected_batches(n: int, kw: dict) -> list[int]:
    ws, rank, bs = kw.get("world_size", 1), kw.get("rank", 0), kw["batch_size"]
    per = n // ws
    del rank
    sizes = [bs] * (per // bs)
    if not kw.get("drop_last", True) and per % bs:
        sizes.append(per % bs)
    return sizes


def _check_loader(loader, x: np.ndarray, kw: dict) -> str | None:
    """None if every batch has the promised shapes, dtypes and values, else what is wrong."""
    import torch

    n = x.shape[0]
    c = 1 if x.ndim == 3 else x.shape[3]
    s = kw.get("image_size") or x.shape[1]
    sizes = _expected_batches(n, kw)
    if len(loader) != len(sizes):
        return f"len(loader) {len(loader)} != {len(sizes)}"
    num_masks = kw.get("num_masks", 0)
    got = []
    for b in loader:
        m = len(b)
        got.append(m)
        want_dtype = torch.uint8 if kw["output"] == "uint8" else torch.float32
        if b.images.shape != (m, c, s, s) or b.images.dtype != want_dtype:
            return (
                f"images {tuple(b.images.shape)} {b.images.dtype}, want {(m, c, s, s)} {want_dtype}"
            )
        if want_dtype == torch.float32 and not (b.images.min() >= 0 and b.images.max() <= 1):
            return "float images outside [0, 1]"
        if b.labels.dtype != torch.int64 or b.labels.shape != (m,):
            return f"labels {b.labels.dtype} {tuple(b.labels.shape)}"
        if b.indices.shape != (m,) or not (0 <= int(b.indices.min()) and int(b.indices.max()) < n):
            return "indices out of range"
        if len(b.masks) != num_masks:
            return f"{len(b.masks)} masks, want {num_masks}"
        if num_masks:
            length = (s // kw["patch_size"]) ** 2
            keep = int(length * (1 - kw["mask_ratio"]))
            for ids_keep, mask, ids_restore in b.masks:
                if (
                    ids_keep.shape != (m, keep)
                    or mask.shape != (m, length)
                    or ids_restore.shape != (m, length)
                ):
                    return (
                        f"mask shapes {tuple(ids_keep.shape)} {tuple(mask.shape)}, "
                        f"want keep {keep} of {length}"
                    )
                if not torch.equal(mask.sum(1), torch.full((m,), float(length - keep))):
                    return "mask does not remove L - len_keep patches"
                if not torch.equal(ids_restore.sort(1).values, torch.arange(length).expand(m, -1)):
                    return "ids_restore is not a permutation"
        if "sigma" in kw:
            if b.sigma is None or b.sigma.shape != (m,) or not bool((b.sigma >= 0).all()):
                return "sigma missing, mis-shaped or negative"
        elif b.sigma is not None:
            return "sigma without a sigma spec"
        if kw.get("noisy") and (b.noisy is None or b.noisy.shape != (m, c, s, s)):
            return "noisy missing or mis-shaped"
    if got != sizes:
        return f"batch sizes {got}, want {sizes}"
    return None


def fuzz_loader(n: int) -> dict:
    from mimir_fast.data import Loader

    tally = Tally("loader")

    @_settings(n)
    @given(_loader_case())
    def run(case):
        shape, dtype, labels_kind, kw, seed = case
        text = f"shape={shape} dtype={dtype} labels={labels_kind} kw={kw}"
        tally.start(text)
        x, labels = _make_images(shape, dtype, labels_kind, seed)
        try:
            loader = Loader(x, labels, **kw)
            problem = _check_loader(loader, np.asarray(x), kw)
            loader.close()
        except BaseException as e:
            if isinstance(e, KeyboardInterrupt):
                raise
            tally.error(e, text)
            return
        if problem:
            tally.bad("wrong", f"{problem} <- {text}")
        else:
            tally.ok()

    run()
    return tally.result()


# ================================================================= corrupt files
def _mutate(draw, data: bytes, header_end: int) -> tuple[str, bytes]:
    """A random corruption of ``data``: truncation, bit flips (often in the header), overwrites,
    insertions, junk, random bytes or nothing."""
    op = draw(
        st.sampled_from(
            [
                "none",
                "truncate",
                "flip",
                "flip_header",
                "overwrite",
                "insert",
                "junk_tail",
                "random",
                "empty",
                "prefix_only",
            ]
        )
    )
    b = bytearray(data)
    if op == "truncate":
        cut = draw(st.integers(0, len(b) - 1))
        return f"truncate@{cut}", bytes(b[:cut])
    if op in ("flip", "flip_header"):
        hi = min(header_end, len(b)) if op == "flip_header" else len(b)
        flips = draw(
            st.lists(st.tuples(st.integers(0, hi - 1), st.integers(0, 7)), min_size=1, max_size=6)
        )
        for pos, bit in flips:
            b[pos] ^= 1 << bit
        return f"{op}{flips}", bytes(b)
    if op == "overwrite":
        pos = draw(st.integers(0, len(b) - 1))
        junk = draw(st.binary(min_size=1, max_size=32))
        b[pos : pos + len(junk)] = junk
        return f"overwrite@{pos}:{junk.hex()}", bytes(b)
    if op == "insert":
        pos = draw(st.integers(0, len(b)))
        junk = draw(st.binary(min_size=1, max_size=32))
        return f"insert@{pos}:{junk.hex()}", bytes(b[:pos]) + junk + bytes(b[pos:])
    if op == "junk_tail":
        return "junk_tail", bytes(b) + draw(st.binary(min_size=1, max_size=64))
    if op == "random":
        junk = draw(st.binary(min_size=1, max_size=300))
        keep_magic = draw(st.booleans())
        return f"random(magic={keep_magic}):{junk[:16].hex()}", (
            bytes(b[:8]) if keep_magic else b""
        ) + junk
    if op == "empty":
        return "empty", b""
    if op == "prefix_only":
        return "prefix_only", bytes(b[:header_end])
    return "none", bytes(b)


def _encoded_images() -> dict[str, bytes]:
    from PIL import Image

    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8))
    gray = Image.fromarray(rng.integers(0, 256, (10, 10), dtype=np.uint8))
    out = {}
    for name, im, fmt in (
        ("png", rgb, "PNG"),
        ("jpeg", rgb, "JPEG"),
        ("png_gray", gray, "PNG"),
        ("jpeg_gray", gray, "JPEG"),
    ):
        buf = io.BytesIO()
        im.save(buf, fmt)
        out[name] = buf.getvalue()
    return out


def fuzz_images(n: int, work: Path) -> dict:
    import torch
    from mimir_fast.data import ImageFolder, Loader
    from PIL import Image

    encoded = _encoded_images()
    tally = Tally("images")
    root = work / "images"
    (root / "a").mkdir(parents=True)
    (root / "b").mkdir()
    Image.fromarray(np.full((9, 7, 3), 200, np.uint8)).save(root / "b" / "good.png")

    @st.composite
    def case(draw):
        kind = draw(st.sampled_from(sorted(encoded)))
        data = encoded[kind]
        header_end = 40 if kind.startswith("png") else min(len(data), 200)
        what, mutated = _mutate(draw, data, header_end)
        ext = draw(st.sampled_from([".png", ".jpg", ".jpeg", ".PNG"]))
        augment = draw(st.sampled_from(["rrc_flip", "none", "crop_flip"]))
        return kind, what, mutated, ext, augment

    @_settings(n)
    @given(case())
    def run(c):
        kind, what, data, ext, augment = c
        for old in (root / "a").iterdir():
            old.unlink()
        path = root / "a" / f"x{ext}"
        path.write_bytes(data)
        text = f"{kind} {what} as {path.name}, augment={augment}"
        tally.start(text)
        # PIL through ImageFolder
        try:
            ds = ImageFolder(root, image_size=8)
            for i in range(len(ds)):
                img, _ = ds[i]
                if (
                    img.shape != (3, 8, 8)
                    or img.dtype != torch.float32
                    or not (0 <= img.min() <= img.max() <= 1)
                ):
                    tally.bad(
                        "wrong", f"ImageFolder item {i}: {tuple(img.shape)} {img.dtype} <- {text}"
                    )
                    return
            tally.ok()
        except BaseException as e:
            if isinstance(e, KeyboardInterrupt):
                raise
            tally.error(e, "ImageFolder " + text, must_name=str(path))
        # Rust decoding through the loader, raising and skipping
        for skip in (False, True):
            try:
                loader = Loader.from_image_folder(
                    root,
                    image_size=8,
                    batch_size=2,
                    shuffle=False,
                    drop_last=False,
                    num_threads=1,
                    augment=augment,
                    skip_corrupt=skip,
                )
                batches = list(loader)
                got = sum(len(b) for b in batches)
                skipped = sum(b.skipped for b in batches)
                if got + skipped != 2 or any(b.images.shape[1:] != (3, 8, 8) for b in batches):
                    tally.bad(
                        "wrong", f"loader skip={skip}: {got} images + {skipped} skipped <- {text}"
                    )
                else:
                    tally.ok()
            except BaseException as e:
                if isinstance(e, KeyboardInterrupt):
                    raise
                if skip and "decode" in str(e):
                    tally.bad("wrong", f"skip_corrupt=True raised {e} <- {text}")
                else:
                    tally.error(e, f"Loader skip={skip} " + text, must_name=str(path))

    run()
    return tally.result()


def _npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def _npy_with_header(header: str, data: bytes, version: int = 1, hlen_delta: int = 0) -> bytes:
    total = 10 + len(header) + 1
    header = header + " " * ((64 - total % 64) % 64) + "\n"
    raw = header.encode("latin1")
    hlen = max(0, len(raw) + hlen_delta)
    if version == 1:
        head = b"\x93NUMPY\x01\x00" + struct.pack("<H", min(hlen, 0xFFFF))
    else:
        head = b"\x93NUMPY" + bytes([version, 0]) + struct.pack("<I", hlen)
    return head + raw + data


_SHAPE_DIMS = [0, 1, 2, 3, 5, 8, -1, 2**31, 2**32, 2**33, 2**62, 2**64, 10**20]
_DESCRS = [
    "|u1",
    "<u1",
    "u1",
    "<f4",
    "<f8",
    "|b1",
    "<i2",
    "|O",
    ">u2",
    "<c8",
    "|V8",
    "garbage",
    "'",
    "<U3",
]


def fuzz_npy(n: int, work: Path) -> dict:
    import torch
    from mimir_fast.data import Loader, build_dataset, load_npy

    rng = np.random.default_rng(1)
    arrays = {
        "u8_4d": rng.integers(0, 256, (5, 8, 8, 3), dtype=np.uint8),
        "u8_3d": rng.integers(0, 256, (4, 8, 8), dtype=np.uint8),
        "f32": rng.random((3, 8, 8, 1)).astype(np.float32),
    }
    labels = np.arange(5, dtype=np.int64) % 2
    tally = Tally("npy")
    folder = work / "npy"
    folder.mkdir()

    @st.composite
    def case(draw):
        name = draw(st.sampled_from(sorted(arrays)))
        arr = arrays[name]
        target = draw(st.sampled_from(["images", "images", "labels"]))
        base = _npy_bytes(labels if target == "labels" else arr)
        if draw(st.integers(0, 3)) == 0:  # rewrite the header's dict
            descr = draw(st.sampled_from(_DESCRS)) if draw(st.booleans()) else "|u1"
            shape = tuple(draw(st.lists(st.sampled_from(_SHAPE_DIMS), min_size=0, max_size=5)))
            if draw(st.booleans()):
                shape = arr.shape
            fortran = draw(st.sampled_from(["False", "True", "0", "None"]))
            header = (
                "{" + f"'descr': '{descr}', 'fortran_order': {fortran}, 'shape': {shape}, " + "}"
            )
            if draw(st.integers(0, 5)) == 0:
                header = draw(
                    st.sampled_from(["{}", "{'descr': '|u1'}", "not a dict", "{'shape': (1,2,3,}"])
                )
            version = draw(st.sampled_from([1, 1, 2, 3, 0, 9]))
            delta = draw(st.sampled_from([0, 0, 0, -3, 5, 10**6]))
            data = _npy_bytes(arr)[128:] if len(_npy_bytes(arr)) > 128 else b""
            what = f"header {header!r} v{version} d{delta}"
            return name, target, what, _npy_with_header(header, data, version, delta)
        what, data = _mutate(draw, base, 128)
        return name, target, what, data

    @_settings(n)
    @given(case(), st.booleans(), st.sampled_from(["none", "rrc"]))
    def run(c, mmap, augment):
        name, target, what, data = c
        img_path, lbl_path = folder / "images.npy", folder / "labels.npy"
        if target == "images":
            img_path.write_bytes(data)
            lbl_path.unlink(missing_ok=True)
            labels_arg, bad_path = None, img_path
        else:
            img_path.write_bytes(_npy_bytes(arrays["u8_4d"]))
            lbl_path.write_bytes(data)
            labels_arg, bad_path = str(lbl_path), lbl_path
        text = f"{target}: {name} {what} mmap={mmap} augment={augment}"
        tally.start(text)
        try:
            ds = load_npy(img_path, labels_arg, mmap=mmap)
            for i in (0, len(ds) - 1):
                img, label = ds[i]
                if img.ndim != 3 or img.dtype != torch.float32 or not isinstance(label, int):
                    tally.bad(
                        "wrong", f"load_npy item {i}: {tuple(img.shape)} {img.dtype} <- {text}"
                    )
                    return
            tally.ok()
        except BaseException as e:
            if isinstance(e, KeyboardInterrupt):
                raise
            tally.error(e, "load_npy " + text, must_name=bad_path.name)
        if target == "images":
            try:
                build_dataset(f"npy:{img_path}")
                tally.ok()
            except BaseException as e:
                if isinstance(e, KeyboardInterrupt):
                    raise
                tally.error(e, "build_dataset " + text, must_name=bad_path.name)
        try:
            kw = {"augment": "rrc", "image_size": 8} if augment == "rrc" else {"augment": "none"}
            loader = Loader.from_npy(
                img_path, labels_arg, batch_size=2, drop_last=False, num_threads=1, **kw
            )
            for b in loader:
                if b.images.ndim != 4 or b.images.shape[2:] != (8, 8):
                    tally.bad("wrong", f"Loader.from_npy batch {tuple(b.images.shape)} <- {text}")
                    return
            tally.ok()
        except BaseException as e:
            if isinstance(e, KeyboardInterrupt):
                raise
            tally.error(e, "Loader.from_npy " + text, must_name=bad_path.name)

    run()
    return tally.result()


# ================================================================= model files and checkpoints
TINY = dict(
    img_size=8,
    patch_size=4,
    in_chans=1,
    embed_dim=8,
    depth=1,
    num_heads=2,
    decoder_embed_dim=8,
    decoder_depth=1,
    decoder_num_heads=2,
    num_classes=3,
)


def _split_safetensors(data: bytes) -> tuple[dict, bytes]:
    (hlen,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + hlen]), data[8 + hlen :]


def _join_safetensors(header: dict, body: bytes, hlen_delta: int = 0) -> bytes:
    raw = json.dumps(header).encode()
    raw += b" " * ((8 - len(raw) % 8) % 8)
    return struct.pack("<Q", max(0, len(raw) + hlen_delta)) + raw + body


def _canonical(data: bytes) -> bytes:
    """The same file with its header's keys sorted: safetensors writes the metadata in a per-process
    hash order, and the byte-level mutations must hit the same bytes on every run."""
    header, body = _split_safetensors(data)
    header = {
        k: (dict(sorted(v.items())) if k == "__metadata__" else v)
        for k, v in sorted(header.items())
    }
    return _join_safetensors(header, body)


_ODD_VALUES = [
    0,
    -1,
    3,
    7,
    10**9,
    2**62,
    2**70,
    0.5,
    -1.0,
    "nan",
    "inf",
    "x",
    "",
    None,
    True,
    [1, 2],
    {"a": 1},
]


def _edit_header(draw, header: dict) -> str:
    """Change one thing in a safetensors header (in place); returns what changed."""
    meta = header.get("__metadata__", {})
    tensor_names = [k for k in header if k != "__metadata__"]
    op = draw(
        st.sampled_from(
            [
                "config_value",
                "config_value",
                "config_drop",
                "config_extra",
                "meta_text",
                "format",
                "dtype",
                "shape",
                "offsets",
                "drop_tensor",
                "rename_tensor",
            ]
        )
    )
    if op.startswith("config") and "config" in meta:
        config = json.loads(meta["config"])
        key = draw(st.sampled_from(sorted(config)))
        if op == "config_value":
            config[key] = draw(st.sampled_from(_ODD_VALUES))
        elif op == "config_drop":
            del config[key]
        else:
            config["unknown_field"] = 1
        meta["config"] = json.dumps(config)
        return f"{op} {key}={config.get(key)!r}"
    if op == "meta_text":
        key = draw(st.sampled_from(sorted(meta) or ["config"]))
        meta[key] = draw(st.sampled_from(["{", "[1]", "null", '"text"', "1e999", ""]))
        return f"meta {key}={meta[key]!r}"
    if op == "format":
        meta["format"] = json.dumps(draw(st.sampled_from(["mimir_fast.MaskedViT/9", "x", 1])))
        return f"format={meta['format']}"
    name = draw(st.sampled_from(tensor_names))
    if op == "dtype":
        header[name]["dtype"] = draw(
            st.sampled_from(["F16", "BF16", "F64", "I64", "U8", "BOOL", "XX", ""])
        )
        return f"{name} dtype={header[name]['dtype']}"
    if op == "shape":
        header[name]["shape"] = draw(
            st.lists(st.sampled_from([0, 1, 2, 3, 8, 2**40, -1]), max_size=4)
        )
        return f"{name} shape={header[name]['shape']}"
    if op == "offsets":
        a, b = header[name]["data_offsets"]
        header[name]["data_offsets"] = [
            draw(st.sampled_from([a, b, 0, a + 4, 2**40, -8])),
            draw(st.sampled_from([a, b, b + 4, 2**63, 0])),
        ]
        return f"{name} offsets={header[name]['data_offsets']}"
    if op == "drop_tensor":
        del header[name]
        return f"drop {name}"
    header[name.replace(".", "_", 1) + "x"] = header.pop(name)
    return f"rename {name}"


def fuzz_models(n: int, work: Path) -> dict:
    import torch
    from mimir_fast._io import load_tensors
    from mimir_fast.models import MaskedViT

    train_module = importlib.import_module(
        "mimir_fast.training"
    )  # the package's `train` is the function
    folder = work / "models"
    folder.mkdir()
    torch.manual_seed(0)
    model = MaskedViT(**TINY, kernels="torch")
    model.save(folder / "model.safetensors")
    config = train_module.TrainConfig(method="finetune", epochs=1, batch_size=2)
    optimizer = torch.optim.AdamW(model.param_groups(), lr=1e-3)
    model(torch.rand(2, 1, 8, 8)).sum().backward()
    optimizer.step()
    train_module.save_checkpoint(
        folder / "ckpt.safetensors", model, optimizer, config, step=1, epoch=0
    )
    bases = {
        kind: _canonical((folder / f"{kind}.safetensors").read_bytes())
        for kind in ("model", "ckpt")
    }
    tally = Tally("models")
    outside = Counter()  # load_checkpoint lives in train.py: counted, reported, not asserted here
    outside_examples: list[str] = []

    @st.composite
    def case(draw):
        kind = draw(st.sampled_from(sorted(bases)))
        data = bases[kind]
        if draw(st.integers(0, 2)) == 0:
            header, body = _split_safetensors(data)
            what = _edit_header(draw, header)
            delta = draw(st.sampled_from([0, 0, 0, 0, -8, 8, 10**6]))
            return kind, f"{what} hlen{delta:+d}", _join_safetensors(header, body, delta)
        hlen = struct.unpack("<Q", data[:8])[0]
        what, mutated = _mutate(draw, data, 8 + hlen)
        return kind, what, mutated

    @_settings(n)
    @given(case())
    def run(c):
        kind, what, data = c
        path = folder / "fuzzed.safetensors"
        path.write_bytes(data)
        text = f"{kind}: {what}"
        tally.start(text)
        try:
            load_tensors(path)
            tally.ok()
        except BaseException as e:
            if isinstance(e, KeyboardInterrupt):
                raise
            tally.error(e, "load_tensors " + text, must_name=str(path))
        try:
            loaded = MaskedViT.load(path, kernels="torch")
            with torch.no_grad():
                logits = loaded(
                    torch.rand(
                        2, loaded.config.in_chans, loaded.config.img_size, loaded.config.img_size
                    )
                )
            if logits.shape != (2, loaded.config.num_classes):
                tally.bad("wrong", f"loaded model gives logits {tuple(logits.shape)} <- {text}")
            else:
                tally.ok()
        except BaseException as e:
            if isinstance(e, KeyboardInterrupt):
                raise
            tally.error(e, "MaskedViT.load " + text, must_name=str(path))
        if kind == "ckpt":
            fresh = MaskedViT(**TINY, kernels="torch")
            opt = torch.optim.AdamW(fresh.param_groups(), lr=1e-3)
            try:
                train_module.load_checkpoint(path, fresh, opt, config)
                outside["ok"] += 1
            except BaseException as e:
                if isinstance(e, KeyboardInterrupt):
                    raise
                clean = isinstance(e, CLEAN_ERRORS) and str(path) in str(e)
                outside["clean_error" if clean else "unclear"] += 1
                if not clean and len(outside_examples) < EXAMPLES_KEPT:
                    outside_examples.append(f"{type(e).__name__}: {e!s:.200} <- {text}")

    run()
    result = tally.result()
    result["load_checkpoint"] = {**outside, "examples": outside_examples}
    return result


# ================================================================= the child process
def _child_main(work: str) -> None:
    _limit_memory()
    os.environ.setdefault("TRITON_INTERPRET", "1")
    import torch

    torch.set_num_threads(1)
    work_dir = Path(work)
    for part, fn in (
        ("loader", lambda: fuzz_loader(BUDGET["loader"])),
        ("images", lambda: fuzz_images(BUDGET["images"], work_dir)),
        ("npy", lambda: fuzz_npy(BUDGET["npy"], work_dir)),
        ("models", lambda: fuzz_models(BUDGET["models"], work_dir)),
    ):
        started = time.perf_counter()
        result = fn()
        result["seconds"] = round(time.perf_counter() - started, 2)
        print("RESULT " + json.dumps(result), flush=True)


def _limit_memory() -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (CHILD_MEMORY_LIMIT, CHILD_MEMORY_LIMIT))


SUMMARY: list[str] = []


class _SummaryPlugin:
    def pytest_terminal_summary(self, terminalreporter):
        if SUMMARY:
            terminalreporter.section("fuzzing")
            for line in SUMMARY:
                terminalreporter.write_line(line)


def _report(request, line: str) -> None:
    print(line)
    SUMMARY.append(line)
    pm = request.config.pluginmanager
    if not pm.has_plugin("mimir-fuzz-summary"):
        pm.register(_SummaryPlugin(), "mimir-fuzz-summary")


def _format(result: dict) -> str:
    return (
        f"fuzz {result['part']:<12s} cases {result['cases']:5d}  "
        f"checks {result.get('checks', 0):5d}  "
        f"ok {result['ok']:5d}  clean errors {result['clean_error']:5d}  "
        f"unclear {result['unclear']}  "
        f"panics {result['panic']}  wrong {result['wrong']}  crashes {result.get('crashes', 0)}  "
        f"hangs {result.get('hangs', 0)}"
        + (f"  ({result['seconds']} s)" if "seconds" in result else "")
    )


@pytest.fixture(scope="module", autouse=True)
def native_child(tmp_path_factory):
    """The child process running the native parts, started before this module's first test so
    that it runs beside the in-process parts; output goes to files (a full pipe would block it)."""
    work = tmp_path_factory.mktemp("fuzz")
    env = {**os.environ, "RUST_BACKTRACE": "0", "PYTHONFAULTHANDLER": "1"}
    with open(work / "stdout.txt", "w+") as out, open(work / "stderr.txt", "w+") as err:
        proc = subprocess.Popen(
            [sys.executable, __file__, "--child", str(work)], stdout=out, stderr=err, env=env
        )
        yield {"proc": proc, "out": out, "err": err, "started": time.perf_counter()}
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def native_results(native_child):
    """Per native part: its counts, plus crashes and hangs (from the child's exit)."""
    proc = native_child["proc"]
    left = CHILD_TIMEOUT_S - (time.perf_counter() - native_child["started"])
    try:
        rc, hung = proc.wait(timeout=max(1.0, left)), False
    except subprocess.TimeoutExpired:
        proc.kill()
        rc, hung = proc.wait(), True
    native_child["out"].seek(0)
    native_child["err"].seek(0)
    stdout, stderr = native_child["out"].read(), native_child["err"].read()
    results = {}
    for line in stdout.splitlines():
        if line.startswith("RESULT "):
            r = json.loads(line[len("RESULT ") :])
            results[r["part"]] = r
    cases = [ln for ln in stderr.splitlines() if ln.startswith("CASE ")]
    last_case = cases[-1] if cases else "(none)"
    for part in ("loader", "images", "npy", "models"):
        if part not in results:  # the child died or hung in (or before) this part
            results[part] = {
                "part": part,
                "cases": 0,
                "ok": 0,
                "clean_error": 0,
                "unclear": 0,
                "panic": 0,
                "wrong": 0,
                "examples": {},
                "crashes": int(not hung),
                "hangs": int(hung),
                "last_case": last_case,
                "stderr_tail": stderr[-3000:],
                "rc": rc,
            }
            break
    results["_meta"] = {
        "seconds": round(time.perf_counter() - native_child["started"], 1),
        "rc": rc,
        "hung": hung,
        "rust_panic_messages": sum("panicked at" in ln for ln in stderr.splitlines()),
    }
    return results


# ============================================================ TrainConfig and the CLI (in-process)
def _train_fields() -> dict:
    import dataclasses

    from mimir_fast.training import TrainConfig

    return {f.name: f for f in dataclasses.fields(TrainConfig)}


_JSONISH = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**6), 10**6),
    st.sampled_from([2**70, -(2**70)]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.lists(st.integers(-3, 3), max_size=3),
    st.dictionaries(st.text(max_size=4), st.integers(), max_size=2),
)
_GOOD_VALUES = {
    "method": ["mae", "nim", "finetune", "bogus"],
    "model": ["vit_tiny_patch4_32", "nope"],
    "data": ["digits", "npy:/nonexistent.npy"],
    "epochs": [1, 2, 0, -1],
    "batch_size": [1, 64, 0],
    "lr": [None, 1e-3, 0.0, -1.0],
    "mask_ratio": [0.0, 0.75, 1.0],
    "noise": ["gamma:25,3", "uniform:0,30", "gamma:0,1", "bogus:1", "uniform:a,b"],
    "betas": [(0.9, 0.95), [0.9, 0.999], (1.0, 0.5), (0.9,)],
    "augment": ["crop_flip", "none", "rrc_flip", "x"],
    "amp": ["auto", "off", "fp8"],
    "resume": [None, "auto"],
    "max_steps": [None, 1, 0],
}


def test_train_config_from_random_dicts(request):
    from mimir_fast.training import TrainConfig

    fields = _train_fields()
    tally = Tally("train_config")
    started = time.perf_counter()

    @_settings(BUDGET["train_config"])
    @given(
        st.dictionaries(
            st.sampled_from(sorted(fields) + ["not_a_field"]),
            st.one_of(_JSONISH, st.sampled_from([v for vs in _GOOD_VALUES.values() for v in vs])),
            max_size=6,
        )
    )
    def run(d):
        tally.cases += 1
        try:
            config = TrainConfig.from_dict(d)
        except (ValueError, TypeError) as e:
            if not str(e).strip():
                tally.bad("unclear", f"empty {type(e).__name__} <- {d!r}")
            else:
                tally.counts["clean_error"] += 1
                tally.type_errors += isinstance(e, TypeError)
            return
        except Exception as e:  # noqa: BLE001 - any other type is a finding
            tally.bad("unclear", f"{type(e).__name__}: {e} <- {d!r}")
            return
        # Accepted: the config must survive a round trip through its dict.
        if TrainConfig.from_dict(config.to_dict()) != config and not _has_nan(config.to_dict()):
            tally.bad("wrong", f"to_dict/from_dict round trip changed {d!r}")
            return
        tally.ok()
        odd = _off_type_values(config, d)
        if odd:
            suspicious.append(f"{odd} <- {d!r}"[:300])

    suspicious: list[str] = []
    run()
    result = {**tally.result(), "seconds": round(time.perf_counter() - started, 2)}
    _report(request, _format(result))
    _report(
        request,
        f"fuzz {'':12s} TypeError messages (e.g. \"'<' not supported ...\"): "
        f"{result['type_errors']}; accepted with values off their type or not finite: "
        f"{len(suspicious)}" + "".join(f"\n    {x}" for x in suspicious[:EXAMPLES_KEPT]),
    )
    assert result["unclear"] == 0 and result["wrong"] == 0, result["examples"]
    assert result["ok"] > 0 and result["clean_error"] > 0


def _has_nan(d: dict) -> bool:
    return any(isinstance(v, float) and math.isnan(v) for v in d.values())


def _off_type_values(config, given: dict) -> dict:
    """Fields of an accepted config whose given value is not of the field's annotated type, or is
    a non-finite number."""
    from mimir_fast.cli.train_fields import field_types

    def fits(value, base: str) -> bool:
        if isinstance(value, float) and not math.isfinite(value):
            return False
        if base in ("int", "float") and isinstance(value, bool):
            return False
        want = {"int": int, "float": (int, float), "str": str, "bool": bool, "dict": dict}.get(base)
        return want is None or isinstance(value, want)

    types = field_types()
    return {
        name: value
        for name, value in given.items()
        if name in types
        and not (value is None and types[name].optional)
        and not fits(value, types[name].base)
    }


_FLAG_VALUES = [
    "1",
    "0",
    "-1",
    "2.5",
    "nan",
    "inf",
    "none",
    "true",
    "maybe",
    "",
    "digits",
    '{"depth": 2}',
    '{"bogus": 1}',
    "[1]",
    "{",
    "mae",
    "finetune",
    "nim",
    "0.9",
    "1e-3",
    "8/255",
    "x" * 40,
]


def test_cli_random_argument_lists(request, tmp_path, monkeypatch):
    from mimir_fast import cli

    monkeypatch.delenv("MIMIR_FAST_DEBUG", raising=False)
    monkeypatch.chdir(tmp_path)  # nothing is written outside the test's folder
    flags = sorted(
        {"--" + name.replace("_", "-") for name in _train_fields()}
        | {"--batch_size", "--no-progress"}
    )
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}      ")
    configs = {
        ".toml": "epochs = 'two'\n[",
        ".json": '{"epochs": "x"}',
        ".yaml": "epochs: [1, 2\n",
        ".yml": "- 1\n- 2\n",
        ".cfg": "x=1",
    }
    for suffix, text in configs.items():
        (tmp_path / f"c{suffix}").write_text(text)
    tally = Tally("cli")
    started = time.perf_counter()

    @st.composite
    def argv(draw):
        command = draw(
            st.sampled_from(["pretrain", "finetune", "evaluate", "nonsense", "--help", ""])
        )
        args: list[str] = []
        if command in ("pretrain", "finetune"):
            args = [command, "--dry-run"]  # never train
            for _ in range(draw(st.integers(0, 5))):
                args.append(draw(st.sampled_from(flags + ["--config", "-h", "--", "--bogus"])))
                if draw(st.integers(0, 4)) > 0:
                    args.append(draw(st.sampled_from(_FLAG_VALUES + [f"c{s}" for s in configs])))
        elif command == "evaluate":
            args = [
                command,
                draw(st.sampled_from([str(corrupt), "missing.safetensors", str(tmp_path)])),
            ]
            for _ in range(draw(st.integers(0, 3))):
                args.append(
                    draw(
                        st.sampled_from(
                            [
                                "--eps",
                                "--attacks",
                                "--steps",
                                "--norm",
                                "--threat",
                                "--batch-size",
                                "--bogus",
                            ]
                        )
                    )
                )
                args.append(draw(st.sampled_from(_FLAG_VALUES)))
        elif command:
            args = [command] + draw(st.lists(st.sampled_from(_FLAG_VALUES), max_size=2))
        return args

    @_settings(BUDGET["cli"])
    @given(argv())
    def run(args):
        tally.cases += 1
        out, err = io.StringIO(), io.StringIO()
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                rc = cli.main(args)
        except BaseException as e:  # noqa: BLE001 - main() must turn every problem into a status
            tally.bad("unclear", f"{type(e).__name__} escaped main(): {e} <- {args}")
            return
        if rc == 0:
            if (
                args[:2] in (["pretrain", "--dry-run"], ["finetune", "--dry-run"])
                and "-h" not in args
                and "--help" not in args
            ):
                try:
                    json.loads(out.getvalue())
                except json.JSONDecodeError:
                    tally.bad("wrong", f"--dry-run printed no JSON config <- {args}")
                    return
            tally.ok()
        elif not err.getvalue().strip():
            tally.bad("unclear", f"status {rc} without a message <- {args}")
        elif "Traceback" in err.getvalue():
            tally.bad("unclear", f"status {rc} with a traceback <- {args}")
        else:
            tally.counts["clean_error"] += 1

    run()
    result = {**tally.result(), "seconds": round(time.perf_counter() - started, 2)}
    _report(request, _format(result))
    assert result["unclear"] == 0 and result["wrong"] == 0, result["examples"]
    assert result["ok"] > 0 and result["clean_error"] > 0


# ================================================================= gaps found by fuzzing, fixed
@pytest.mark.parametrize(
    "kw,fragment",
    [
        (
            dict(prefetch=2**40),
            "prefetch must be <= 1024",
        ),  # the native queue used to abort allocating it
        (dict(num_masks=2**40, patch_size=2), "num_masks must be <= 1024"),  # used to abort
        (dict(num_threads=2**40), "num_threads must be <= 1024"),
        (
            dict(augment="rrc", image_size=2**40),
            "image_size must be <= 65536",
        ),  # S * S overflowed natively
        (
            dict(augment="rrc", image_size=60000),
            r"one batch would need .* GiB",
        ),  # used to abort allocating it
        (dict(sigma=("gamma", "x", 1)), "sigma parameters must be numbers"),
    ],
)
def test_loader_rejects_absurd_sizes_before_the_native_side_allocates(kw, fragment):
    from mimir_fast.data import Loader

    with pytest.raises(ValueError, match=fragment):
        Loader(np.zeros((8, 8, 8, 3), np.uint8), batch_size=4, **kw)


@pytest.mark.parametrize("bad,fragment", [(np.nan, "NaN"), (1.5, r"\[0, 1\]"), (-0.1, r"\[0, 1\]")])
def test_loader_rejects_float_images_outside_0_1(bad, fragment):
    """They used to be clipped (NaN turned into 0) silently."""
    from mimir_fast.data import Loader

    x = np.full((4, 8, 8, 3), 0.5, np.float32)
    x[2, 3, 4, 1] = bad
    with pytest.raises(ValueError, match=fragment):
        Loader(x, batch_size=2)
    x[2, 3, 4, 1] = 1.0
    assert len(Loader(x, batch_size=2)) == 2


def test_npy_header_claiming_a_huge_array_is_rejected_without_reading_it(tmp_path):
    from mimir_fast.data import load_npy

    header = "{'descr': '<f4', 'fortran_order': False, 'shape': (100000000000, 8, 8), }"
    path = tmp_path / "huge.npy"
    path.write_bytes(_npy_with_header(header, bytes(64)))
    for mmap in (False, True):  # without the check, mmap=False allocated the whole array first
        with pytest.raises(ValueError, match=r"huge\.npy is truncated: its header says float32"):
            load_npy(path, mmap=mmap)


def test_npy_data_errors_name_the_file(tmp_path):
    from mimir_fast.data import build_dataset

    x = np.random.default_rng(0).random((3, 8, 8)).astype(np.float32)
    x[1, 2, 3] = np.nan
    np.save(tmp_path / "nan.npy", x)
    with pytest.raises(ValueError, match=r"nan\.npy: float images contain NaN"):
        build_dataset(f"npy:{tmp_path / 'nan.npy'}")
    (tmp_path / "tok.npy").write_bytes(_npy_with_header("{'descr': '|u1', 'shape': (1,", b""))
    with pytest.raises(
        ValueError, match=r"cannot read .*tok\.npy as a \.npy array"
    ):  # was a TokenError
        build_dataset(f"npy:{tmp_path / 'tok.npy'}")


def test_image_folder_decompression_bomb_is_a_value_error(tmp_path):
    """PIL's DecompressionBombError is not an OSError: it escaped ImageFolder unwrapped."""
    import zlib

    from mimir_fast.data import ImageFolder
    from PIL import Image

    (tmp_path / "c").mkdir()
    buf = io.BytesIO()
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    data[16:24] = struct.pack(">II", 60000, 60000)  # IHDR width and height, with a matching CRC
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])) & 0xFFFFFFFF)
    (tmp_path / "c" / "bomb.png").write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"cannot decode image .*bomb\.png"):
        ImageFolder(tmp_path, image_size=8)[0]


def _retyped_model_file(tmp_path, **changes) -> Path:
    from mimir_fast.models import MaskedViT

    path = tmp_path / "model.safetensors"
    MaskedViT(**TINY, kernels="torch").save(path)
    header, body = _split_safetensors(path.read_bytes())
    config = json.loads(header["__metadata__"]["config"])
    header["__metadata__"]["config"] = json.dumps({**config, **changes})
    path.write_bytes(_join_safetensors(header, body))
    return path


@pytest.mark.parametrize(
    "changes,fragment",
    [
        (
            dict(depth=10**9),
            "holds 1 blocks but the config says 1000000000",
        ),  # used to build 10^9 blocks
        (dict(decoder_depth=10**9), "holds 1 decoder_blocks"),
        (
            dict(embed_dim=2**20),
            r"patch_embed\.proj\.weight: file \(8, 1, 4, 4\) vs config \(1048576",
        ),
        (dict(img_size=2**20), r"pos_embed: file \(1, 5, 8\) vs config"),
        (dict(mlp_ratio=1e6), r"mlp\.fc1\.weight: file \(32, 8\) vs config \(8000000, 8\)"),
        (
            dict(mlp_ratio="4"),
            "mlp_ratio must be a finite number",
        ),  # used to be a TypeError deep in Block
        (dict(norm_eps=-1), "norm_eps must be a finite number > 0"),
        (dict(decoder_depth="2"), "decoder_depth must be an integer"),
        (dict(qkv_bias="yes"), "qkv_bias must be True or False"),
        (dict(drop_path_rate=None), "drop_path_rate must be in"),
    ],
)
def test_model_file_with_altered_config_is_rejected_before_building(tmp_path, changes, fragment):
    from mimir_fast.models import MaskedViT

    path = _retyped_model_file(tmp_path, **changes)
    started = time.perf_counter()
    with pytest.raises(ValueError, match=fragment) as info:
        MaskedViT.load(path)
    assert str(path) in str(info.value)
    assert time.perf_counter() - started < 5


@pytest.mark.parametrize(
    "spec,fragment",
    [
        ("uniform:0,inf", "finite"),
        ("constant:inf", "finite"),
        ("gamma:1e400,1", "finite"),
        (("gamma", "a", 1), "must be numbers"),
        (5, "noise spec must be"),
        (None, "noise spec must be"),
        ((), "noise spec must be"),
    ],
)
def test_noise_specs_are_finite_numbers(spec, fragment):
    from mimir_fast.noise import parse_sigma_spec, sample_sigma

    with pytest.raises(ValueError, match=fragment):  # inf used to pass; the others were TypeErrors
        parse_sigma_spec(spec)
    with pytest.raises(ValueError, match="n must be an integer"):
        sample_sigma("gamma:25,3", -1)


@pytest.mark.parametrize(
    "kw,fragment",
    [
        (dict(data_range=0), "data_range"),
        (dict(data_range=-1.0), "data_range"),
        (dict(data_range=float("nan")), "data_range"),
        (dict(sigma=0), "sigma"),
        (dict(sigma=float("inf")), "sigma"),
        (dict(k1=-0.01), "k1"),
        (dict(k2=0), "k2"),
    ],
)
def test_metric_arguments_are_checked(kw, fragment):
    """psnr gave -inf or wrong values and ssim NaN, a RuntimeError or an OverflowError before."""
    import torch
    from mimir_fast.metrics import psnr, ssim

    x, y = torch.rand(2, 1, 16, 16), torch.rand(2, 1, 16, 16)
    with pytest.raises(ValueError, match=fragment):
        ssim(x, y, **kw)
    if "data_range" in kw:
        with pytest.raises(ValueError, match=fragment):
            psnr(x, y, **kw)
    with pytest.raises(ValueError, match="floating-point"):
        psnr((x * 255).to(torch.uint8), (y * 255).to(torch.uint8))
    with pytest.raises(ValueError, match="non-empty"):
        psnr(x[:0], y[:0], reduction="mean")


# ============================================================== gaps the fuzzing found, now closed

_NATIVE_PROBE = r"""
import glob, importlib.util, io, os, resource, struct, sys, types
resource.setrlimit(resource.RLIMIT_AS, (8 << 30, 8 << 30))
import numpy as np
so = glob.glob(os.path.join(sys.argv[1], "_native*.so"))[0]
spec = importlib.util.spec_from_file_location("mimir_fast._native", so)
native = importlib.util.module_from_spec(spec)
spec.loader.exec_module(native)  # the extension alone: no torch, starts in well under a second
cfg = types.SimpleNamespace(  # LoaderConfig's attributes, without importing the package
           batch_size=1, shuffle=False, seed=0, drop_last=False, rank=0, world_size=1,
           augment=sys.argv[3],
           padding=0, rrc_scale=(0.2, 1.0), rrc_ratio=(0.75, 4 / 3), num_masks=0, mask_ratio=0.75,
           image_size=None if sys.argv[3] == "none" else 8,
           patch_size=None, sigma=None, noisy=False, output="float", num_threads=1, prefetch=0,
           skip_corrupt=False, partial_decode=True)
path = sys.argv[2]
try:
    if path.endswith(".npy"):
        loader = native.NativeLoader.from_npy(path, None, cfg)
    else:
        loader = native.NativeLoader.from_files([path], None, cfg)
    next(loader.iter_epoch(0, 0))
    print("LOADED")
except ValueError as e:
    print("VALUEERROR", e)
"""


def _native_probe(tmp_path, path: Path, augment: str) -> subprocess.CompletedProcess:
    import mimir_fast

    script = tmp_path / "probe.py"
    script.write_text(_NATIVE_PROBE)
    return subprocess.run(
        [sys.executable, str(script), str(Path(mimir_fast.__file__).parent), str(path), augment],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "RUST_BACKTRACE": "0"},
    )


def test_jpeg_header_with_huge_dimensions_is_a_clean_error(tmp_path):
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(buf, "JPEG")
    data = bytearray(buf.getvalue())
    sof = data.find(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(
        ">HH", 65000, 65000
    )  # claims 65000 x 65000 pixels (12.7 GB of RGB)
    path = tmp_path / "huge.jpg"
    path.write_bytes(bytes(data))
    proc = _native_probe(tmp_path, path, "rrc")
    assert (
        proc.returncode == 0 and proc.stdout.startswith("VALUEERROR") and "huge.jpg" in proc.stdout
    ), f"status {proc.returncode}: {proc.stdout[-300:]} {proc.stderr[-300:]}"


@pytest.mark.parametrize("augment", ["none", "rrc"])
def test_native_npy_with_overflowing_shape_is_a_clean_error(tmp_path, augment):
    header = "{'descr': '|u1', 'fortran_order': False, 'shape': (2, 4294967296, 4294967296), }"
    path = tmp_path / "overflow.npy"
    path.write_bytes(_npy_with_header(header, bytes(256)))
    proc = _native_probe(tmp_path, path, augment)
    assert (
        proc.returncode == 0
        and proc.stdout.startswith("VALUEERROR")
        and "internal" not in proc.stdout
        and "panicked" not in proc.stderr
    ), f"status {proc.returncode}: {proc.stdout[-300:]} {proc.stderr[-300:]}"


def test_loader_from_npy_guards_the_overflowing_shape(tmp_path):
    """The Python wrapper checks the header against the file size before the native side sees it."""
    from mimir_fast.data import Loader

    header = "{'descr': '|u1', 'fortran_order': False, 'shape': (2, 4294967296, 4294967296), }"
    path = tmp_path / "overflow.npy"
    path.write_bytes(_npy_with_header(header, bytes(256)))
    with pytest.raises(ValueError, match=r"overflow\.npy is truncated"):
        Loader.from_npy(path, batch_size=1, augment="rrc", image_size=8)


@pytest.mark.parametrize(
    "field,value",
    [
        ("epochs", None),
        ("epochs", 2.5),
        ("epochs", float("nan")),
        ("batch_size", 2.5),
        ("lr", float("inf")),
        ("warmup_epochs", float("nan")),
        ("min_lr", float("nan")),
        ("checkpoint_steps", "2"),
        ("betas", 5),
        ("log_every", 1.5),
        ("seed", "x"),
        ("model_overrides", [1]),
        ("device", 3),
        ("resume", 5),
    ],
)
def test_train_config_rejects_values_of_the_wrong_type(field, value):
    from mimir_fast.training import TrainConfig

    with pytest.raises(ValueError, match=field):
        TrainConfig.from_dict({field: value})


@pytest.mark.parametrize("drop", ["train_config", "step", "optimizer_groups"])
def test_checkpoint_with_missing_metadata_is_a_clean_error(tmp_path, drop):
    import torch

    train_module = importlib.import_module("mimir_fast.training")
    from mimir_fast._io import atomic_save_tensors, load_tensors
    from mimir_fast.models import MaskedViT

    torch.manual_seed(0)
    model = MaskedViT(**TINY, kernels="torch")
    config = train_module.TrainConfig(method="finetune", epochs=1, batch_size=2)
    optimizer = torch.optim.AdamW(model.param_groups(), lr=1e-3)
    path = tmp_path / "ckpt.safetensors"
    train_module.save_checkpoint(path, model, optimizer, config, step=1, epoch=0)
    tensors, meta = load_tensors(path)
    del meta[drop]
    atomic_save_tensors(tensors, path, metadata=meta)
    with pytest.raises(ValueError, match="ckpt.safetensors"):
        train_module.load_checkpoint(path, model, optimizer, config)


def test_unknown_device_is_a_value_error(tmp_path):
    import mimir_fast

    with pytest.raises(ValueError, match="device"):  # fails before any data or model is built
        mimir_fast.train(device="gpu", out_dir=str(tmp_path), progress=False)


def test_evaluate_rejects_a_negative_max_images():
    import torch
    from mimir_fast.evaluate import evaluate

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    x, y = torch.rand(4, 1, 4, 4), torch.tensor([0, 1, 2, 0])
    with pytest.raises(ValueError, match="max_images"):
        evaluate(
            model,
            (x, y),
            attacks="fgsm",
            eps=0.1,
            max_images=-1,
            sanity_checks=False,
            progress=False,
        )


# ================================================================= the native parts' verdicts
@pytest.mark.parametrize("part", ["loader", "images", "npy", "models"])
def test_native_parts_never_crash_hang_or_panic(part, native_results, request):
    meta = native_results["_meta"]
    result = native_results.get(part)
    if result is None:
        pytest.fail(f"the child process stopped before the {part} part: {native_results}")
    _report(request, _format(result))
    if part == "models" and "load_checkpoint" in result:
        lc = result["load_checkpoint"]
        _report(
            request,
            f"fuzz   train.load_checkpoint (not asserted here): ok {lc.get('ok', 0)}  "
            f"clean errors {lc.get('clean_error', 0)}  unclear {lc.get('unclear', 0)} "
            f"{lc.get('examples') or ''}",
        )
    assert result.get("crashes", 0) == 0, (
        f"crash (rc {result.get('rc')}) at {result.get('last_case')}:\n{result.get('stderr_tail')}"
    )
    assert result.get("hangs", 0) == 0, f"hang (> {CHILD_TIMEOUT_S} s) at {result.get('last_case')}"
    assert result["panic"] == 0, result["examples"].get("panic")
    assert result["unclear"] == 0, result["examples"].get("unclear")
    assert result["wrong"] == 0, result["examples"].get("wrong")
    assert result["cases"] >= BUDGET[part] // 2, f"only {result['cases']} cases ran"
    assert result["ok"] > 0 and result["clean_error"] > 0, "the cases must cover both outcomes"
    if part == "models":  # the last part: the child must also have ended cleanly
        assert meta["rc"] == 0, f"the child process ended with status {meta['rc']}"
        assert meta["rust_panic_messages"] == 0, (
            "a Rust panic message was printed during the native parts"
        )


if __name__ == "__main__" and len(sys.argv) == 3 and sys.argv[1] == "--child":
    _child_main(sys.argv[2])
