//! Image filters the corruptions share: border modes, Gaussian and general 2-D filters,
//! bilinear sampling ([`Warp`]), the central zoom ("clipped zoom") and a one-sided line blur.

/// How a filter reads outside the image (the names of `scipy.ndimage`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Border {
    /// Repeat the edge pixel (`aaa|abcd|ddd`).
    Nearest,
    /// Mirror about the edge's outer side (`cba|abcd|dcb`, OpenCV's `BORDER_REFLECT`).
    Reflect,
    /// Mirror about the edge pixel (`dcb|abcd|cba`, OpenCV's `BORDER_REFLECT_101`).
    Mirror,
}

/// The index inside `0..n` that position `i` reads under `border` (`n >= 1`).
#[inline]
pub fn border_index(i: isize, n: usize, border: Border) -> usize {
    let n_i = n as isize;
    if (0..n_i).contains(&i) {
        return i as usize;
    }
    match border {
        Border::Nearest => i.clamp(0, n_i - 1) as usize,
        Border::Reflect => {
            let period = 2 * n_i;
            let m = i.rem_euclid(period);
            (if m < n_i { m } else { period - 1 - m }) as usize
        }
        Border::Mirror => {
            if n == 1 {
                return 0;
            }
            let period = 2 * n_i - 2;
            let m = i.rem_euclid(period);
            (if m < n_i { m } else { period - m }) as usize
        }
    }
}

/// scipy's Gaussian kernel: radius `int(truncate * sigma + 0.5)`, normalised weights.
pub fn gaussian_kernel(sigma: f64, truncate: f64) -> Vec<f32> {
    if sigma <= 0.0 {
        return vec![1.0];
    }
    let r = (truncate * sigma + 0.5) as isize;
    let w: Vec<f64> = (-r..=r)
        .map(|x| (-0.5 * (x * x) as f64 / (sigma * sigma)).exp())
        .collect();
    let s: f64 = w.iter().sum();
    w.iter().map(|v| (v / s) as f32).collect()
}

/// Correlate each row and then each column of an `h` x `w` plane with the centred 1-D
/// kernel `k`.
pub fn separable(plane: &[f32], h: usize, w: usize, k: &[f32], border: Border) -> Vec<f32> {
    let r = (k.len() / 2) as isize;
    let across: Vec<_> = (k.iter().enumerate())
        .map(|(j, &kv)| (0, j as isize - r, kv))
        .collect();
    let down: Vec<_> = across.iter().map(|&(_, d, kv)| (d, 0, kv)).collect();
    filter_taps(
        &filter_taps(plane, h, w, &across, border),
        h,
        w,
        &down,
        border,
    )
}

/// A Gaussian blur (`sigma` in pixels, kernel cut at `truncate` sigmas).
pub fn gaussian_blur(
    plane: &[f32],
    h: usize,
    w: usize,
    sigma: f64,
    truncate: f64,
    border: Border,
) -> Vec<f32> {
    separable(plane, h, w, &gaussian_kernel(sigma, truncate), border)
}

/// The plane with `ry` rows above and below and `rx` columns on either side, read through
/// `border`.
fn pad(
    plane: &[f32],
    (h, w): (usize, usize),
    (ry, rx): (usize, usize),
    border: Border,
) -> Vec<f32> {
    let mut out = Vec::with_capacity((h + 2 * ry) * (w + 2 * rx));
    for py in 0..h + 2 * ry {
        let y = border_index(py as isize - ry as isize, h, border);
        let row = &plane[y * w..(y + 1) * w];
        let outside = |x: isize| row[border_index(x, w, border)];
        out.extend((0..rx).map(|px| outside(px as isize - rx as isize)));
        out.extend_from_slice(row);
        out.extend((0..rx).map(|px| outside((w + px) as isize)));
    }
    out
}

/// `out` (rows of `w`) gets, per tap `(offset, k)` in order, `k` times the padded plane (rows
/// of `pw`) from `offset` on: plain multiply-adds (no fusing, so every CPU gives the same
/// bits), with AVX2 where the CPU has it.
fn correlate(out: &mut [f32], padded: &[f32], (pw, w): (usize, usize), taps: &[(usize, f32)]) {
    #[inline(always)]
    fn plain(out: &mut [f32], padded: &[f32], (pw, w): (usize, usize), taps: &[(usize, f32)]) {
        for (y, dst) in out.chunks_exact_mut(w).enumerate() {
            for &(offset, k) in taps {
                let start = y * pw + offset;
                for (o, &v) in dst.iter_mut().zip(&padded[start..start + w]) {
                    *o += k * v;
                }
            }
        }
    }
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx2")]
        unsafe fn wide(
            out: &mut [f32],
            padded: &[f32],
            dims: (usize, usize),
            taps: &[(usize, f32)],
        ) {
            plain(out, padded, dims, taps)
        }
        if std::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2 (checked just above).
            return unsafe { wide(out, padded, (pw, w), taps) };
        }
    }
    plain(out, padded, (pw, w), taps)
}

/// Correlate a plane with a 2-D kernel given as `(dy, dx, weight)` taps: each output is the
/// sum over the taps in their order, reading outside the plane through `border`.
pub fn filter_taps(
    plane: &[f32],
    h: usize,
    w: usize,
    taps: &[(isize, isize, f32)],
    border: Border,
) -> Vec<f32> {
    let ry = taps.iter().map(|t| t.0.unsigned_abs()).max().unwrap_or(0);
    let rx = taps.iter().map(|t| t.1.unsigned_abs()).max().unwrap_or(0);
    let padded = pad(plane, (h, w), (ry, rx), border);
    let pw = w + 2 * rx;
    let offsets: Vec<(usize, f32)> = taps
        .iter()
        .map(|&(dy, dx, k)| {
            let (py, px) = ((dy + ry as isize) as usize, (dx + rx as isize) as usize);
            (py * pw + px, k)
        })
        .collect();
    let mut out = vec![0f32; h * w];
    correlate(&mut out, &padded, (pw, w), &offsets);
    out
}

/// `x.floor()` for the coordinates of a warp, inline (the library call is slow on CPUs
/// without SSE4.1); exact for `|x| < 2^63`.
#[inline(always)]
fn floor(x: f64) -> f64 {
    let t = x as i64 as f64;
    if t > x {
        t - 1.0
    } else {
        t
    }
}

/// Linear interpolation at a fixed set of points, found once (the neighbours through a border
/// and the weights) and applied to any number of planes.
pub struct Warp {
    reads: Vec<([u32; 4], f32, f32)>,
}

impl Warp {
    /// The reads of an `h` x `w` plane at `points`, each `(y, x)`.
    pub fn new(
        h: usize,
        w: usize,
        border: Border,
        points: impl Iterator<Item = (f64, f64)>,
    ) -> Self {
        let reads = points
            .map(|(y, x)| {
                let (y0, x0) = (floor(y), floor(x));
                let (fy, fx) = ((y - y0) as f32, (x - x0) as f32);
                let (y0, x0) = (y0 as isize, x0 as isize);
                let ya = border_index(y0, h, border);
                let yb = border_index(y0 + 1, h, border);
                let xa = border_index(x0, w, border);
                let xb = border_index(x0 + 1, w, border);
                let at = |yy: usize, xx: usize| (yy * w + xx) as u32;
                ([at(ya, xa), at(ya, xb), at(yb, xa), at(yb, xb)], fy, fx)
            })
            .collect();
        Warp { reads }
    }

    /// The plane read at every point.
    pub fn apply(&self, plane: &[f32]) -> Vec<f32> {
        self.reads
            .iter()
            .map(|&([a, b, c, d], fy, fx)| {
                let v = |k: u32| plane[k as usize];
                let top = v(a) * (1.0 - fx) + v(b) * fx;
                let bottom = v(c) * (1.0 - fx) + v(d) * fx;
                top * (1.0 - fy) + bottom * fy
            })
            .collect()
    }
}

/// Source coordinates of the output rows (or columns) of a central zoom by `z >= 1` along an
/// axis of `n` pixels: the central `ceil(n / z)` pixels are stretched to `round(ceil(n / z) *
/// z)` with end points kept (scipy's `zoom`, `grid_mode=False`) and the centre `n` kept.
pub fn zoom_coords(n: usize, z: f64) -> Vec<f64> {
    let ch = ((n as f64 / z).ceil() as usize).clamp(1, n);
    let top = (n - ch) / 2;
    let out = ((ch as f64 * z).round_ties_even() as usize).max(n);
    let scale = if out > 1 {
        (ch as f64 - 1.0) / (out as f64 - 1.0)
    } else {
        0.0
    };
    let trim = (out - n) / 2;
    (0..n)
        .map(|i| top as f64 + (i + trim) as f64 * scale)
        .collect()
}

/// Where linear interpolation at each of `coords` reads along an axis of `n` pixels: the two
/// neighbours (through `border`) and the weight of the second.
fn lerp_axis(coords: &[f64], n: usize, border: Border) -> Vec<(usize, usize, f32)> {
    coords
        .iter()
        .map(|&c| {
            let c0 = floor(c);
            let i = c0 as isize;
            let (a, b) = (border_index(i, n, border), border_index(i + 1, n, border));
            (a, b, (c - c0) as f32)
        })
        .collect()
}

/// The central zoom of one plane by `z` (the paper's `clipped_zoom`, per axis): the
/// interpolation weights of each axis found once, then applied to every pixel.
pub fn clipped_zoom(plane: &[f32], h: usize, w: usize, z: f64) -> Vec<f32> {
    let ys = lerp_axis(&zoom_coords(h, z), h, Border::Nearest);
    let xs = lerp_axis(&zoom_coords(w, z), w, Border::Nearest);
    let mut out = Vec::with_capacity(h * w);
    for &(ya, yb, fy) in &ys {
        let (top_row, bottom_row) = (&plane[ya * w..(ya + 1) * w], &plane[yb * w..(yb + 1) * w]);
        out.extend(xs.iter().map(|&(xa, xb, fx)| {
            let top = top_row[xa] * (1.0 - fx) + top_row[xb] * fx;
            let bottom = bottom_row[xa] * (1.0 - fx) + bottom_row[xb] * fx;
            top * (1.0 - fy) + bottom * fy
        }));
    }
    out
}

/// The taps of a one-sided motion blur (ImageMagick's `-motion-blur radiusxsigma+angle`):
/// `2 * ceil(radius) + 1` samples at `i = 0, 1, ...` pixels along `angle_deg` (rounded to the
/// pixel grid), weighted `exp(-i^2 / (2 sigma^2))` and normalised.
pub fn motion_taps(radius: f64, sigma: f64, angle_deg: f64) -> Vec<(isize, isize, f32)> {
    let width = 2 * radius.ceil().max(0.0) as usize + 1;
    let weights: Vec<f64> = (0..width)
        .map(|i| (-((i * i) as f64) / (2.0 * sigma * sigma)).exp())
        .collect();
    let total: f64 = weights.iter().sum();
    let (sin, cos) = angle_deg.to_radians().sin_cos();
    weights
        .iter()
        .enumerate()
        .map(|(i, &wt)| {
            let dx = (i as f64 * cos - 0.5).ceil() as isize;
            let dy = (i as f64 * sin - 0.5).ceil() as isize;
            (dy, dx, (wt / total) as f32)
        })
        .collect()
}
