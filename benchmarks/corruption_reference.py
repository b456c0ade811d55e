"""Plain numpy/scipy/PIL versions of the common corruptions (Hendrycks & Dietterich 2019).

An independent reference for ``mimir_fast.data.corrupt``: written from the paper's
definitions with scipy, scikit-image and PIL doing the filtering, the resampling and the JPEG
coding. The tests compare the Rust corruptions with it, and the benchmark times it as the
"numpy" provider (per sample, inside a torch DataLoader).

Parameter sets: CIFAR-10-C's for images whose larger side is at most 64 px, ImageNet-C's for
larger ones (the rule ``mimir_fast`` follows). Frost is left out (it needs texture photos).
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image
from scipy import ndimage
from skimage import color, filters, util

__all__ = ["CORRUPTIONS", "PARAMS", "corrupt_image", "motion_offsets", "params", "plasma_fractal"]

CORRUPTIONS = (
    "gaussian_noise", "shot_noise", "impulse_noise",
    "defocus_blur", "glass_blur", "motion_blur", "zoom_blur",
    "snow", "fog", "brightness",
    "contrast", "elastic_transform", "pixelate", "jpeg_compression",
)  # fmt: skip

# name -> (CIFAR-10-C severities 1..5, ImageNet-C severities 1..5), as published.
PARAMS: dict[str, tuple[list, list]] = {
    "gaussian_noise": ([0.04, 0.06, 0.08, 0.09, 0.10], [0.08, 0.12, 0.18, 0.26, 0.38]),
    "shot_noise": ([500, 250, 100, 75, 50], [60, 25, 12, 5, 3]),
    "impulse_noise": ([0.01, 0.02, 0.03, 0.05, 0.07], [0.03, 0.06, 0.09, 0.17, 0.27]),
    "defocus_blur": (
        [(0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)],
        [(3, 0.1), (4, 0.5), (6, 0.5), (8, 0.5), (10, 0.5)],
    ),
    "glass_blur": (
        [(0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2)],
        [(0.7, 1, 2), (0.9, 2, 1), (1, 2, 3), (1.1, 3, 2), (1.5, 4, 2)],
    ),
    "motion_blur": (
        [(6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5)],
        [(10, 3), (15, 5), (15, 8), (15, 12), (20, 15)],
    ),
    "zoom_blur": (
        [np.arange(1, s, 0.01) for s in (1.06, 1.11, 1.16, 1.21, 1.26)],
        [
            np.arange(1, 1.11, 0.01),
            np.arange(1, 1.16, 0.01),
            np.arange(1, 1.21, 0.02),
            np.arange(1, 1.26, 0.02),
            np.arange(1, 1.31, 0.03),
        ],
    ),  # fmt: skip
    "snow": (
        [
            (0.1, 0.2, 1, 0.6, 8, 3, 0.95),
            (0.1, 0.2, 1, 0.5, 10, 4, 0.9),
            (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9),
            (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85),
            (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8),
        ],
        [
            (0.1, 0.3, 3, 0.5, 10, 4, 0.8),
            (0.2, 0.3, 2, 0.5, 12, 4, 0.7),
            (0.55, 0.3, 4, 0.9, 12, 8, 0.7),
            (0.55, 0.3, 4.5, 0.85, 12, 8, 0.65),
            (0.55, 0.3, 2.5, 0.85, 12, 12, 0.55),
        ],
    ),  # fmt: skip
    "fog": (
        [(0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75)],
        [(1.5, 2), (2, 2), (2.5, 1.7), (2.5, 1.5), (3, 1.4)],
    ),
    "brightness": ([0.05, 0.1, 0.15, 0.2, 0.3], [0.1, 0.2, 0.3, 0.4, 0.5]),
    "contrast": ([0.75, 0.5, 0.4, 0.3, 0.15], [0.4, 0.3, 0.2, 0.1, 0.05]),
    "elastic_transform": (  # (alpha, sigma, affine jitter) in pixels
        [
            tuple(32 * v for v in p)
            for p in [
                (0, 0, 0.08),
                (0.05, 0.2, 0.07),
                (0.08, 0.06, 0.06),
                (0.1, 0.04, 0.05),
                (0.1, 0.03, 0.03),
            ]
        ],
        [
            tuple(244 * v for v in p)
            for p in [
                (2, 0.7, 0.1),
                (2, 0.08, 0.2),
                (0.05, 0.01, 0.02),
                (0.07, 0.01, 0.02),
                (0.12, 0.01, 0.02),
            ]
        ],
    ),  # fmt: skip
    "pixelate": ([0.95, 0.9, 0.85, 0.75, 0.65], [0.6, 0.5, 0.4, 0.3, 0.25]),
    "jpeg_compression": ([80, 65, 58, 50, 40], [25, 18, 15, 10, 7]),
}


def params(name: str, severity: int, h: int, w: int):
    """The published parameters of ``name`` at ``severity`` for an ``h`` x ``w`` image."""
    return PARAMS[name][0 if max(h, w) <= 64 else 1][severity - 1]


# --- helpers ---------------------------------------------------------------------------------


def clipped_zoom(x: np.ndarray, z: float) -> np.ndarray:
    """Zoom the centre of an (H, W, C) array by ``z >= 1`` back to (H, W) (scipy, linear)."""
    h, w = x.shape[:2]
    ch, cw = int(np.ceil(h / z)), int(np.ceil(w / z))
    top, left = (h - ch) // 2, (w - cw) // 2
    big = ndimage.zoom(x[top : top + ch, left : left + cw], (z, z, 1), order=1)
    th, tw = (big.shape[0] - h) // 2, (big.shape[1] - w) // 2
    return big[th : th + h, tw : tw + w]


def motion_offsets(radius: float, sigma: float, angle: float):
    """ImageMagick's motion-blur taps: weights and integer (dy, dx) along ``angle`` degrees."""
    i = np.arange(2 * int(np.ceil(radius)) + 1)
    weights = np.exp(-(i**2) / (2 * sigma**2))
    a = np.deg2rad(angle)
    dx = np.ceil(i * np.cos(a) - 0.5).astype(int)
    dy = np.ceil(i * np.sin(a) - 0.5).astype(int)
    return weights / weights.sum(), dy, dx


def motion_blur_fixed(x: np.ndarray, radius: float, sigma: float, angle: float) -> np.ndarray:
    """Motion blur of an (H, W, C) array along ``angle`` (edge pixels repeated)."""
    weights, dy, dx = motion_offsets(radius, sigma, angle)
    h, w = x.shape[:2]
    p = len(weights)
    xp = np.pad(x, ((p, p), (p, p), (0, 0)), mode="edge")
    out = np.zeros_like(x, dtype=np.float64)
    for wt, oy, ox in zip(weights, dy, dx):
        out += wt * xp[p + oy : p + oy + h, p + ox : p + ox + w]
    return out


def plasma_fractal(n: int, decay: float, rng: np.random.Generator) -> np.ndarray:
    """Diamond-square fractal on an ``n`` x ``n`` torus, normalised to [0, 1]."""
    m = np.zeros((n, n))
    step, wibble = n, 100.0
    while step >= 2:
        half = step // 2
        corners = m[0:n:step, 0:n:step]
        sq = corners + np.roll(corners, -1, 0)
        sq = sq + np.roll(sq, -1, 1)
        m[half:n:step, half:n:step] = sq / 4 + wibble * rng.uniform(-wibble, wibble, sq.shape)
        centres = m[half:n:step, half:n:step]
        across = corners + np.roll(corners, -1, 1) + centres + np.roll(centres, 1, 0)
        down = corners + np.roll(corners, -1, 0) + centres + np.roll(centres, 1, 1)
        m[0:n:step, half:n:step] = across / 4 + wibble * rng.uniform(-wibble, wibble, sq.shape)
        m[half:n:step, 0:n:step] = down / 4 + wibble * rng.uniform(-wibble, wibble, sq.shape)
        step //= 2
        wibble /= decay
    m -= m.min()
    return m / m.max()


def _disk_kernel(radius: float, alias_blur: float) -> np.ndarray:
    half, ksize = (8, 3) if radius <= 8 else (int(radius), 5)
    grid = np.arange(-half, half + 1)
    xx, yy = np.meshgrid(grid, grid)
    disk = (xx**2 + yy**2 <= radius**2).astype(np.float64)
    disk /= disk.sum()
    g = np.exp(-((np.arange(ksize) - (ksize - 1) / 2) ** 2) / (2 * alias_blur**2))
    g /= g.sum()
    disk = ndimage.correlate1d(disk, g, axis=0, mode="mirror")
    return ndimage.correlate1d(disk, g, axis=1, mode="mirror")


def _gray(x: np.ndarray) -> np.ndarray:
    if x.shape[2] == 3:
        return (x @ np.array([0.299, 0.587, 0.114]))[..., None]
    return x.mean(axis=2, keepdims=True)


# --- the corruptions on float (H, W, C) images in [0, 1] -------------------------------------


def _noise(name: str, x: np.ndarray, p, rng: np.random.Generator) -> np.ndarray:
    if name == "gaussian_noise":
        return x + rng.normal(scale=p, size=x.shape)
    if name == "shot_noise":
        return rng.poisson(x * p) / p
    return util.random_noise(x, mode="s&p", amount=p, rng=rng)


def _glass(x: np.ndarray, p, rng: np.random.Generator) -> np.ndarray:
    sigma, d, passes = p
    h, w = x.shape[:2]
    x = filters.gaussian(x, sigma=sigma, channel_axis=-1, mode="nearest", truncate=4.0)
    for _ in range(passes):
        for y in range(h - d, d, -1):
            for xx in range(w - d, d, -1):
                dx, dy = rng.integers(-d, d, size=2)
                a, b = x[y, xx].copy(), x[y + dy, xx + dx].copy()
                x[y, xx], x[y + dy, xx + dx] = b, a
    return filters.gaussian(x, sigma=sigma, channel_axis=-1, mode="nearest", truncate=4.0)


def _snow(x: np.ndarray, p, rng: np.random.Generator) -> np.ndarray:
    loc, sd, z, threshold, radius, sigma, b = p
    layer = rng.normal(loc=loc, scale=sd, size=x.shape[:2])[..., None]
    layer = clipped_zoom(layer, z)
    layer[layer < threshold] = 0
    layer = motion_blur_fixed(np.clip(layer, 0, 1), radius, sigma, rng.uniform(-135, -45))
    x = b * x + (1 - b) * np.maximum(x, _gray(x) * 1.5 + 0.5)
    return x + layer + np.rot90(layer, k=2)


def _fog(x: np.ndarray, p, rng: np.random.Generator) -> np.ndarray:
    c, decay = p
    h, w = x.shape[:2]
    n = max(2, 1 << (max(h, w) - 1).bit_length())
    top = x.max()
    return (x + c * plasma_fractal(n, decay, rng)[:h, :w, None]) * top / (top + c)


def _brightness(x: np.ndarray, c: float) -> np.ndarray:
    if x.shape[2] != 3:
        return x + c
    hsv = color.rgb2hsv(x)
    hsv[..., 2] = np.clip(hsv[..., 2] + c, 0, 1)
    return color.hsv2rgb(hsv)


def _elastic(x: np.ndarray, p, rng: np.random.Generator) -> np.ndarray:
    alpha, sigma, jitter = p
    h, w = x.shape[:2]
    cx, cy, s = w // 2, h // 2, min(h, w) // 3
    src = np.array([[cx + s, cy + s], [cx + s, cy - s], [cx - s, cy - s]], dtype=np.float64)
    dst = src + rng.uniform(-jitter, jitter, size=(3, 2))
    inverse = np.linalg.solve(np.c_[dst, np.ones(3)], src)  # [x y 1] @ inverse = source
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    sx, sy = (np.stack([xx.ravel(), yy.ravel(), np.ones(h * w)], 1) @ inverse).T
    chans = range(x.shape[2])
    x = np.stack(
        [ndimage.map_coordinates(x[..., c], [sy, sx], order=1, mode="mirror") for c in chans], -1
    ).reshape(x.shape)
    if alpha == 0:
        return x
    dx, dy = (
        ndimage.gaussian_filter(rng.uniform(-1, 1, (h, w)), sigma, mode="reflect", truncate=3)
        * alpha
        for _ in range(2)
    )
    coords = [yy + dy, xx + dx]
    return np.stack(
        [ndimage.map_coordinates(x[..., c], coords, order=1, mode="reflect") for c in chans], -1
    )


def _float_corruption(name: str, x: np.ndarray, p, rng, angle) -> np.ndarray:
    if name.endswith("_noise"):
        return _noise(name, x, p, rng)
    if name == "defocus_blur":
        k = _disk_kernel(*p)
        chans = [ndimage.correlate(x[..., c], k, mode="mirror") for c in range(x.shape[2])]
        return np.stack(chans, -1)
    if name == "glass_blur":
        return _glass(x, p, rng)
    if name == "motion_blur":
        return motion_blur_fixed(x, *p, rng.uniform(-45, 45) if angle is None else angle)
    if name == "zoom_blur":
        return (x + sum(clipped_zoom(x, z) for z in p)) / (len(p) + 1)
    if name == "snow":
        return _snow(x, p, rng)
    if name == "fog":
        return _fog(x, p, rng)
    if name == "brightness":
        return _brightness(x, p)
    if name == "contrast":
        mean = x.mean(axis=(0, 1), keepdims=True)
        return (x - mean) * p + mean
    return _elastic(x, p, rng)


def _pil(x: np.ndarray) -> Image.Image:
    return Image.fromarray(x[..., 0] if x.shape[2] == 1 else x)


def _from_pil(img: Image.Image, channels: int) -> np.ndarray:
    a = np.array(img)  # a writable copy
    return a[..., None] if channels == 1 else a


def corrupt_image(
    x: np.ndarray,
    name: str,
    severity: int,
    rng: np.random.Generator | None = None,
    angle: float | None = None,
) -> np.ndarray:
    """One uint8 (H, W, C) image (C = 1 or 3) corrupted; ``angle`` fixes motion blur's angle."""
    h, w, c = x.shape
    p = params(name, severity, h, w)
    rng = np.random.default_rng(0) if rng is None else rng
    if name == "pixelate":
        small = _pil(x).resize((int(w * p), int(h * p)), Image.BOX)
        return _from_pil(small.resize((w, h), Image.BOX), c)
    if name == "jpeg_compression":
        buf = io.BytesIO()
        _pil(x).save(buf, "JPEG", quality=p)
        return _from_pil(Image.open(buf), c)
    out = _float_corruption(name, x.astype(np.float64) / 255.0, p, rng, angle)
    return np.rint(np.clip(out, 0, 1) * 255).astype(np.uint8)
