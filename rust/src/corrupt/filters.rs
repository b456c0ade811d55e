//! Image filters the corruptions share: border modes, Gaussian and general 2-D filters,
//! bilinear sampling, the central zoom ("clipped zoom") and a one-sided line blur.

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
    let mut tmp = vec![0f32; h * w];
    for y in 0..h {
        let row = &plane[y * w..(y + 1) * w];
        for x in 0..w {
            let mut acc = 0f32;
            for (j, &kv) in k.iter().enumerate() {
                acc += kv * row[border_index(x as isize + j as isize - r, w, border)];
            }
            tmp[y * w + x] = acc;
        }
    }
    let mut out = vec![0f32; h * w];
    for y in 0..h {
        for (j, &kv) in k.iter().enumerate() {
            let sy = border_index(y as isize + j as isize - r, h, border);
            let src = &tmp[sy * w..(sy + 1) * w];
            for (o, &v) in out[y * w..(y + 1) * w].iter_mut().zip(src) {
                *o += kv * v;
            }
        }
    }
    out
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

/// Correlate a plane with a 2-D kernel given as `(dy, dx, weight)` taps.
pub fn filter_taps(
    plane: &[f32],
    h: usize,
    w: usize,
    taps: &[(isize, isize, f32)],
    border: Border,
) -> Vec<f32> {
    let mut out = vec![0f32; h * w];
    for &(dy, dx, kv) in taps {
        for y in 0..h {
            let sy = border_index(y as isize + dy, h, border);
            let src = &plane[sy * w..(sy + 1) * w];
            let dst = &mut out[y * w..(y + 1) * w];
            for (x, o) in dst.iter_mut().enumerate() {
                *o += kv * src[border_index(x as isize + dx, w, border)];
            }
        }
    }
    out
}

/// Linear interpolation of a plane at `(y, x)`; neighbours outside read through `border`.
#[inline]
pub fn bilinear(plane: &[f32], h: usize, w: usize, y: f64, x: f64, border: Border) -> f32 {
    let (y0, x0) = (y.floor(), x.floor());
    let (fy, fx) = ((y - y0) as f32, (x - x0) as f32);
    let (y0, x0) = (y0 as isize, x0 as isize);
    let ya = border_index(y0, h, border);
    let yb = border_index(y0 + 1, h, border);
    let xa = border_index(x0, w, border);
    let xb = border_index(x0 + 1, w, border);
    let top = plane[ya * w + xa] * (1.0 - fx) + plane[ya * w + xb] * fx;
    let bottom = plane[yb * w + xa] * (1.0 - fx) + plane[yb * w + xb] * fx;
    top * (1.0 - fy) + bottom * fy
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

/// The central zoom of one plane by `z` (the paper's `clipped_zoom`, per axis).
pub fn clipped_zoom(plane: &[f32], h: usize, w: usize, z: f64) -> Vec<f32> {
    let ys = zoom_coords(h, z);
    let xs = zoom_coords(w, z);
    let mut out = Vec::with_capacity(h * w);
    for &y in &ys {
        for &x in &xs {
            out.push(bilinear(plane, h, w, y, x, Border::Nearest));
        }
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
