//! Weather: snow (motion-blurred flakes over a brightened image), fog (a plasma fractal
//! added and the range compressed) and brightness (the HSV value raised). Frost is left out:
//! it needs texture photographs that do not ship.

use rand::Rng;
use rand_distr::{Distribution, StandardNormal};

use super::filters::{clipped_zoom, filter_taps, motion_taps, Border};
use super::{Planes, Table};

/// Snow: flake-field mean and sd, its zoom, the threshold below which a flake is dropped,
/// the motion blur's radius and sigma, and the weight of the original image.
#[allow(clippy::type_complexity)]
const SNOW: [[(f64, f64, f64, f64, f64, f64, f32); 5]; 2] = [
    [
        (0.1, 0.2, 1.0, 0.6, 8.0, 3.0, 0.95),
        (0.1, 0.2, 1.0, 0.5, 10.0, 4.0, 0.9),
        (0.15, 0.3, 1.75, 0.55, 10.0, 4.0, 0.9),
        (0.25, 0.3, 2.25, 0.6, 12.0, 6.0, 0.85),
        (0.3, 0.3, 1.25, 0.65, 14.0, 12.0, 0.8),
    ],
    [
        (0.1, 0.3, 3.0, 0.5, 10.0, 4.0, 0.8),
        (0.2, 0.3, 2.0, 0.5, 12.0, 4.0, 0.7),
        (0.55, 0.3, 4.0, 0.9, 12.0, 8.0, 0.7),
        (0.55, 0.3, 4.5, 0.85, 12.0, 8.0, 0.65),
        (0.55, 0.3, 2.5, 0.85, 12.0, 12.0, 0.55),
    ],
];
/// Fog: strength of the fractal and the decay of its roughness per octave.
const FOG: [[(f64, f64); 5]; 2] = [
    [(0.2, 3.0), (0.5, 3.0), (0.75, 2.5), (1.0, 2.0), (1.5, 1.75)],
    [(1.5, 2.0), (2.0, 2.0), (2.5, 1.7), (2.5, 1.5), (3.0, 1.4)],
];
/// Added to the HSV value.
const BRIGHTNESS: [[f32; 5]; 2] = [[0.05, 0.1, 0.15, 0.2, 0.3], [0.1, 0.2, 0.3, 0.4, 0.5]];

/// The luma of an image (ITU-R 601 weights for RGB, the plane itself for gray, else the mean).
fn gray(img: &Planes) -> Vec<f32> {
    let n = img.h * img.w;
    match img.c {
        1 => img.plane(0).to_vec(),
        3 => (0..n)
            .map(|k| 0.299 * img.data[k] + 0.587 * img.data[n + k] + 0.114 * img.data[2 * n + k])
            .collect(),
        c => (0..n)
            .map(|k| (0..c).map(|ch| img.data[ch * n + k]).sum::<f32>() / c as f32)
            .collect(),
    }
}

/// Snow: a Gaussian flake field (zoomed, thresholded, clipped, motion-blurred along an angle
/// uniform in [-135, -45) degrees) added twice (also rotated by 180 degrees) to
/// `b * x + (1 - b) * max(x, 1.5 * gray + 0.5)`.
pub fn snow<R: Rng>(img: &mut Planes, t: Table, s: u8, rng: &mut R) {
    let (loc, sd, zoom, threshold, radius, sigma, b) = t.pick(&SNOW, s);
    let (h, w) = (img.h, img.w);
    let n = h * w;
    let field: Vec<f32> = (0..n)
        .map(|_| {
            let z: f64 = StandardNormal.sample(rng);
            (loc + sd * z) as f32
        })
        .collect();
    let mut layer = clipped_zoom(&field, h, w, zoom);
    for v in &mut layer {
        *v = if f64::from(*v) < threshold {
            0.0
        } else {
            v.clamp(0.0, 1.0)
        };
    }
    let angle = rng.random_range(-135.0..-45.0);
    let layer = filter_taps(
        &layer,
        h,
        w,
        &motion_taps(radius, sigma, angle),
        Border::Nearest,
    );
    let g = gray(img);
    for ch in 0..img.c {
        for (k, v) in img.plane_mut(ch).iter_mut().enumerate() {
            let lifted = v.max(g[k] * 1.5 + 0.5);
            *v = b * *v + (1.0 - b) * lifted + layer[k] + layer[n - 1 - k];
        }
    }
}

/// A plasma fractal on an `n` x `n` torus (`n` a power of two) by the diamond-square
/// algorithm: each octave sets square centres, then diamond centres, to the mean of their
/// four neighbours plus `wibble * U(-wibble, wibble)`; `wibble` starts at 100 and is divided
/// by `decay` per octave. Normalised to [0, 1] (in `f64`, then stored as `f32`).
pub fn plasma<R: Rng>(n: usize, decay: f64, rng: &mut R) -> Vec<f32> {
    assert!(n.is_power_of_two(), "plasma: n must be a power of two");
    let mut m = vec![0f64; n * n];
    let at = |y: usize, x: usize| (y & (n - 1)) * n + (x & (n - 1)); // n: a power of two
    let (mut step, mut wibble) = (n, 100.0f64);
    while step >= 2 {
        let half = step / 2;
        for y in (0..n).step_by(step) {
            for x in (0..n).step_by(step) {
                let sum = m[at(y, x)]
                    + m[at(y + step, x)]
                    + m[at(y, x + step)]
                    + m[at(y + step, x + step)];
                m[at(y + half, x + half)] = sum / 4.0 + wibble * rng.random_range(-wibble..wibble);
            }
        }
        for y in (0..n).step_by(step) {
            for x in (0..n).step_by(step) {
                let sum = m[at(y, x)]
                    + m[at(y, x + step)]
                    + m[at(y + half, x + half)]
                    + m[at(y + n - half, x + half)];
                m[at(y, x + half)] = sum / 4.0 + wibble * rng.random_range(-wibble..wibble);
                let sum = m[at(y, x)]
                    + m[at(y + step, x)]
                    + m[at(y + half, x + half)]
                    + m[at(y + half, x + n - half)];
                m[at(y + half, x)] = sum / 4.0 + wibble * rng.random_range(-wibble..wibble);
            }
        }
        step /= 2;
        wibble /= decay;
    }
    // The range in one pass over eight lanes (which vectorise); the values are finite.
    let (mut lo, mut hi) = ([f64::INFINITY; 8], [f64::NEG_INFINITY; 8]);
    for chunk in m.chunks(8) {
        for (k, &v) in chunk.iter().enumerate() {
            lo[k] = if v < lo[k] { v } else { lo[k] };
            hi[k] = if v > hi[k] { v } else { hi[k] };
        }
    }
    let lo = lo.iter().copied().fold(f64::INFINITY, f64::min);
    let span = hi.iter().copied().fold(f64::NEG_INFINITY, f64::max) - lo;
    m.iter()
        .map(|v| {
            if span > 0.0 {
                ((v - lo) / span) as f32
            } else {
                0.0
            }
        })
        .collect()
}

/// Fog: `(x + c * F) * m / (m + c)`, `F` the plasma fractal of the next power of two
/// (cropped from its top left) and `m` the image's largest value.
pub fn fog<R: Rng>(img: &mut Planes, t: Table, s: u8, rng: &mut R) {
    let (c, decay) = t.pick(&FOG, s);
    let (h, w) = (img.h, img.w);
    let n = h.max(w).next_power_of_two().max(2);
    let map = plasma(n, decay, rng);
    let max = img.data.iter().copied().fold(0f32, f32::max);
    let scale = max / (max + c as f32);
    let c = c as f32;
    for ch in 0..img.c {
        for (y, row) in img.plane_mut(ch).chunks_exact_mut(w).enumerate() {
            for (v, &f) in row.iter_mut().zip(&map[y * n..y * n + w]) {
                *v = (*v + c * f) * scale;
            }
        }
    }
}

/// Brightness: the HSV value `V = max_c x_c` becomes `min(V + c, 1)` with hue and saturation
/// kept, i.e. every channel scales by `V' / V` (black becomes gray `V'`).
pub fn brightness(img: &mut Planes, t: Table, s: u8) {
    let add = t.pick(&BRIGHTNESS, s);
    let n = img.h * img.w;
    for k in 0..n {
        let v = (0..img.c)
            .map(|ch| img.data[ch * n + k])
            .fold(0f32, f32::max);
        let v2 = (v + add).min(1.0);
        for ch in 0..img.c {
            let x = &mut img.data[ch * n + k];
            *x = if v > 0.0 { *x * (v2 / v) } else { v2 };
        }
    }
}
