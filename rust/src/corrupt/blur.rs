//! Blur: defocus (an anti-aliased disk), glass (blur, local pixel swaps, blur), motion (a
//! one-sided line along a random angle) and zoom (the mean of central zooms).

use rand::Rng;

use super::filters::{clipped_zoom, filter_taps, gaussian_blur, motion_taps, separable, Border};
use super::{Planes, Table};

/// Disk radius and the sigma of the Gaussian that anti-aliases it.
const DEFOCUS: [[(f64, f64); 5]; 2] = [
    [(0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1.0, 0.2), (1.5, 0.1)],
    [(3.0, 0.1), (4.0, 0.5), (6.0, 0.5), (8.0, 0.5), (10.0, 0.5)],
];
/// Gaussian sigma, largest swap distance, passes of swaps.
const GLASS: [[(f64, usize, usize); 5]; 2] = [
    [
        (0.05, 1, 1),
        (0.25, 1, 1),
        (0.4, 1, 1),
        (0.25, 1, 2),
        (0.4, 1, 2),
    ],
    [
        (0.7, 1, 2),
        (0.9, 2, 1),
        (1.0, 2, 3),
        (1.1, 3, 2),
        (1.5, 4, 2),
    ],
];
/// Radius and sigma of the motion kernel.
pub const MOTION: [[(f64, f64); 5]; 2] = [
    [(6.0, 1.0), (6.0, 1.5), (6.0, 2.0), (8.0, 2.0), (9.0, 2.5)],
    [
        (10.0, 3.0),
        (15.0, 5.0),
        (15.0, 8.0),
        (15.0, 12.0),
        (20.0, 15.0),
    ],
];
/// Zoom factors `numpy.arange(1, stop, step)`, as `(stop, step)`.
const ZOOM: [[(f64, f64); 5]; 2] = [
    [
        (1.06, 0.01),
        (1.11, 0.01),
        (1.16, 0.01),
        (1.21, 0.01),
        (1.26, 0.01),
    ],
    [
        (1.11, 0.01),
        (1.16, 0.01),
        (1.21, 0.02),
        (1.26, 0.02),
        (1.31, 0.03),
    ],
];

/// The taps of the defocus kernel: the disk `x^2 + y^2 <= r^2` on a grid of half-width
/// `max(8, r)`, normalised, then blurred by a 3x3 (5x5 beyond radius 8) Gaussian of sigma
/// `alias_blur` with mirrored edges.
fn disk_taps(radius: f64, alias_blur: f64) -> Vec<(isize, isize, f32)> {
    let (half, ksize) = if radius <= 8.0 {
        (8isize, 3usize)
    } else {
        (radius as isize, 5usize)
    };
    let n = (2 * half + 1) as usize;
    let mut disk = vec![0f32; n * n];
    for (k, v) in disk.iter_mut().enumerate() {
        let (y, x) = ((k / n) as isize - half, (k % n) as isize - half);
        if ((x * x + y * y) as f64) <= radius * radius {
            *v = 1.0;
        }
    }
    let total: f32 = disk.iter().sum();
    disk.iter_mut().for_each(|v| *v /= total);
    // OpenCV's getGaussianKernel(ksize, sigma).
    let mid = (ksize as f64 - 1.0) / 2.0;
    let g: Vec<f64> = (0..ksize)
        .map(|i| (-(i as f64 - mid).powi(2) / (2.0 * alias_blur * alias_blur)).exp())
        .collect();
    let gs: f64 = g.iter().sum();
    let g: Vec<f32> = g.iter().map(|v| (v / gs) as f32).collect();
    let kernel = separable(&disk, n, n, &g, Border::Mirror);
    kernel
        .iter()
        .enumerate()
        .filter(|(_, &v)| v != 0.0)
        .map(|(k, &v)| ((k / n) as isize - half, (k % n) as isize - half, v))
        .collect()
}

/// Correlate every channel with the defocus disk (mirrored edges).
pub fn defocus(img: &mut Planes, t: Table, s: u8) {
    let (radius, alias) = t.pick(&DEFOCUS, s);
    let taps = disk_taps(radius, alias);
    let (h, w) = (img.h, img.w);
    img.map_planes(|p| filter_taps(p, h, w, &taps, Border::Mirror));
}

/// Gaussian blur; then, `passes` times, every pixel `(y, x)` from the bottom right to
/// `(d + 1, d + 1)` swaps with `(y + dy, x + dx)`, `dx, dy` uniform integers in `[-d, d)`;
/// then the blur again.
pub fn glass<R: Rng>(img: &mut Planes, t: Table, s: u8, rng: &mut R) {
    let (sigma, d, passes) = t.pick(&GLASS, s);
    let (c, h, w) = (img.c, img.h, img.w);
    img.map_planes(|p| gaussian_blur(p, h, w, sigma, 4.0, Border::Nearest));
    let di = d as i64;
    for _ in 0..passes {
        for y in (d + 1..=h.saturating_sub(d)).rev() {
            for x in (d + 1..=w.saturating_sub(d)).rev() {
                let dx = rng.random_range(-di..di) as isize;
                let dy = rng.random_range(-di..di) as isize;
                let a = y * w + x;
                let b = (y as isize + dy) as usize * w + (x as isize + dx) as usize;
                for ch in 0..c {
                    img.data.swap(ch * h * w + a, ch * h * w + b);
                }
            }
        }
    }
    img.map_planes(|p| gaussian_blur(p, h, w, sigma, 4.0, Border::Nearest));
}

/// A one-sided motion blur along an angle uniform in [-45, 45) degrees (edges repeated).
pub fn motion<R: Rng>(img: &mut Planes, t: Table, s: u8, rng: &mut R) {
    let (radius, sigma) = t.pick(&MOTION, s);
    let angle = rng.random_range(-45.0..45.0);
    let taps = motion_taps(radius, sigma, angle);
    let (h, w) = (img.h, img.w);
    img.map_planes(|p| filter_taps(p, h, w, &taps, Border::Nearest));
}

/// `numpy.arange(start, stop, step)`.
pub fn arange(start: f64, stop: f64, step: f64) -> Vec<f64> {
    let n = ((stop - start) / step).ceil().max(0.0) as usize;
    (0..n).map(|k| start + k as f64 * step).collect()
}

/// `(x + sum_z zoom(x, z)) / (len(z) + 1)` over the severity's zoom factors.
pub fn zoom(img: &mut Planes, t: Table, s: u8) {
    let (stop, step) = t.pick(&ZOOM, s);
    let factors = arange(1.0, stop, step);
    let (h, w) = (img.h, img.w);
    let k = factors.len() as f32 + 1.0;
    img.map_planes(|p| {
        let mut acc = p.to_vec();
        for &z in &factors {
            for (a, v) in acc.iter_mut().zip(clipped_zoom(p, h, w, z)) {
                *a += v;
            }
        }
        acc.iter().map(|a| a / k).collect()
    });
}
