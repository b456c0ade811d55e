//! Digital: contrast (scaled about the channel mean), elastic transform (an affine jitter
//! then a smoothed random displacement field), pixelate (box down- and up-sampling, PIL's
//! BOX filter) and JPEG compression.

use rand::Rng;

use super::filters::{gaussian_blur, Border, Warp};
use super::{Planes, Table};

/// Contrast: the factor applied about the mean.
const CONTRAST: [[f32; 5]; 2] = [[0.75, 0.5, 0.4, 0.3, 0.15], [0.4, 0.3, 0.2, 0.1, 0.05]];
/// Elastic: displacement scale `alpha`, smoothing sigma and affine jitter, as fractions of
/// [`ELASTIC_SIZE`] (32 px for CIFAR-10-C; ImageNet-C's code multiplies by 244).
const ELASTIC: [[(f64, f64, f64); 5]; 2] = [
    [
        (0.0, 0.0, 0.08),
        (0.05, 0.2, 0.07),
        (0.08, 0.06, 0.06),
        (0.1, 0.04, 0.05),
        (0.1, 0.03, 0.03),
    ],
    [
        (2.0, 0.7, 0.1),
        (2.0, 0.08, 0.2),
        (0.05, 0.01, 0.02),
        (0.07, 0.01, 0.02),
        (0.12, 0.01, 0.02),
    ],
];
const ELASTIC_SIZE: [f64; 2] = [32.0, 244.0];
/// Pixelate: the side of the small image as a fraction of the original's.
const PIXELATE: [[f64; 5]; 2] = [[0.95, 0.9, 0.85, 0.75, 0.65], [0.6, 0.5, 0.4, 0.3, 0.25]];
/// JPEG quality.
const JPEG: [[u8; 5]; 2] = [[80, 65, 58, 50, 40], [25, 18, 15, 10, 7]];

/// The sum of `values` in `f64`, over eight running sums (which vectorise).
fn sum_f64(values: &[f32]) -> f64 {
    let mut acc = [0f64; 8];
    let chunks = values.chunks_exact(8);
    let rest: f64 = chunks.remainder().iter().map(|&v| f64::from(v)).sum();
    for chunk in chunks {
        for (a, &v) in acc.iter_mut().zip(chunk) {
            *a += f64::from(v);
        }
    }
    acc.iter().sum::<f64>() + rest
}

/// `(x - mean) * c + mean`, the mean per channel over the image.
pub fn contrast(img: &mut Planes, t: Table, s: u8) {
    let c = t.pick(&CONTRAST, s);
    for ch in 0..img.c {
        let p = img.plane_mut(ch);
        let mean = (sum_f64(p) / p.len() as f64) as f32;
        p.iter_mut().for_each(|v| *v = (*v - mean) * c + mean);
    }
}

/// The affine map (row-major 2x3) taking each `p[i]` to `q[i]` (points as `(x, y)`), or
/// `None` when the `p` are collinear.
fn affine_from(p: &[(f64, f64); 3], q: &[(f64, f64); 3]) -> Option<[f64; 6]> {
    let [(x0, y0), (x1, y1), (x2, y2)] = *p;
    let det = x0 * (y1 - y2) - y0 * (x1 - x2) + (x1 * y2 - x2 * y1);
    if det.abs() < 1e-12 {
        return None;
    }
    // Inverse of [[x0 y0 1] [x1 y1 1] [x2 y2 1]] by cofactors (transposed).
    let inv = [
        [(y1 - y2) / det, (y2 - y0) / det, (y0 - y1) / det],
        [(x2 - x1) / det, (x0 - x2) / det, (x1 - x0) / det],
        [
            (x1 * y2 - x2 * y1) / det,
            (x2 * y0 - x0 * y2) / det,
            (x0 * y1 - x1 * y0) / det,
        ],
    ];
    let mut m = [0f64; 6];
    let qx = [q[0].0, q[1].0, q[2].0];
    let qy = [q[0].1, q[1].1, q[2].1];
    for (row, vals) in [qx, qy].iter().enumerate() {
        for (col, coeffs) in inv.iter().enumerate() {
            m[row * 3 + col] = (0..3).map(|i| coeffs[i] * vals[i]).sum();
        }
    }
    Some(m)
}

/// A field of `U(-1, 1)` values smoothed by a Gaussian (`sigma`, cut at 3 sigma, reflected
/// edges) and scaled by `alpha`.
fn displacement<R: Rng>(h: usize, w: usize, sigma: f64, alpha: f64, rng: &mut R) -> Vec<f32> {
    let field: Vec<f32> = (0..h * w).map(|_| rng.random_range(-1.0f32..1.0)).collect();
    let smooth = gaussian_blur(&field, h, w, sigma, 3.0, Border::Reflect);
    smooth.iter().map(|v| v * alpha as f32).collect()
}

/// Elastic transform: the three points `centre + (s, s), (s, -s), (-s, -s)` (`s` a third of
/// the smaller side) moved by `U(-affine, affine)` each define an affine warp (bilinear,
/// mirrored edges); then every pixel reads from `(y + dy, x + dx)` (bilinear, reflected
/// edges), `dx`, `dy` smoothed random fields.
pub fn elastic<R: Rng>(img: &mut Planes, t: Table, s: u8, rng: &mut R) {
    let (a, sg, af) = t.pick(&ELASTIC, s);
    let size = ELASTIC_SIZE[t as usize];
    let (alpha, sigma, jitter) = (a * size, sg * size, af * size);
    let (h, w) = (img.h, img.w);
    let (cx, cy, sq) = ((w / 2) as f64, (h / 2) as f64, (h.min(w) / 3) as f64);
    let src = [(cx + sq, cy + sq), (cx + sq, cy - sq), (cx - sq, cy - sq)];
    let mut dst = src;
    for pt in &mut dst {
        pt.0 += rng.random_range(-jitter..jitter);
        pt.1 += rng.random_range(-jitter..jitter);
    }
    // The output pixel at q reads the input at the inverse map of q.
    let inv = affine_from(&dst, &src).unwrap_or([1.0, 0.0, 0.0, 0.0, 1.0, 0.0]);
    let affine = Warp::new(
        h,
        w,
        Border::Mirror,
        (0..h * w).map(|k| {
            let (xf, yf) = ((k % w) as f64, (k / w) as f64);
            let sx = inv[0] * xf + inv[1] * yf + inv[2];
            let sy = inv[3] * xf + inv[4] * yf + inv[5];
            (sy, sx)
        }),
    );
    img.map_planes(|p| affine.apply(p));
    if alpha == 0.0 || sigma <= 0.0 {
        return;
    }
    let dx = displacement(h, w, sigma, alpha, rng);
    let dy = displacement(h, w, sigma, alpha, rng);
    let field = Warp::new(
        h,
        w,
        Border::Reflect,
        (0..h * w).map(|k| {
            let y = (k / w) as f64 + f64::from(dy[k]);
            let x = (k % w) as f64 + f64::from(dx[k]);
            (y, x)
        }),
    );
    img.map_planes(|p| field.apply(p));
}

/// PIL's BOX resampling weights from `n_in` to `n_out` samples: `(first input, weights)` per
/// output sample.
fn box_weights(n_in: usize, n_out: usize) -> Vec<(usize, Vec<f32>)> {
    let scale = n_in as f64 / n_out as f64;
    let filter_scale = scale.max(1.0);
    let support = 0.5 * filter_scale;
    (0..n_out)
        .map(|i| {
            let center = (i as f64 + 0.5) * scale;
            let lo = ((center - support + 0.5) as isize).max(0) as usize;
            let hi = ((center + support + 0.5) as usize).min(n_in);
            let mut ws: Vec<f64> = (lo..hi)
                .map(|x| {
                    let u = (x as f64 - center + 0.5) / filter_scale;
                    if u > -0.5 && u <= 0.5 {
                        1.0
                    } else {
                        0.0
                    }
                })
                .collect();
            let total: f64 = ws.iter().sum();
            if total > 0.0 {
                ws.iter_mut().for_each(|v| *v /= total);
            }
            (lo, ws.iter().map(|&v| v as f32).collect())
        })
        .collect()
}

/// One axis of PIL's BOX resampling: per output sample its first input and its weights (a
/// range of `weights`); `copies` when every sample takes one input with weight 1 (always so
/// when enlarging).
struct BoxAxis {
    taps: Vec<(usize, std::ops::Range<usize>)>,
    weights: Vec<f32>,
    copies: Option<Vec<usize>>,
}

impl BoxAxis {
    fn new(n_in: usize, n_out: usize) -> Self {
        let (mut taps, mut weights) = (Vec::with_capacity(n_out), Vec::new());
        for (lo, ws) in box_weights(n_in, n_out) {
            taps.push((lo, weights.len()..weights.len() + ws.len()));
            weights.extend(ws);
        }
        let copies = taps
            .iter()
            .map(|(lo, r)| matches!(weights[r.clone()], [1.0]).then_some(*lo))
            .collect();
        BoxAxis {
            taps,
            weights,
            copies,
        }
    }

    /// Resample the rows (the vertical axis) of a plane `w` wide.
    fn rows(&self, p: &[f32], w: usize) -> Vec<f32> {
        let mut out = vec![0f32; self.taps.len() * w];
        for (dst, (lo, r)) in out.chunks_exact_mut(w).zip(&self.taps) {
            let ws = &self.weights[r.clone()];
            for (k, &c) in ws.iter().enumerate() {
                let src = &p[(lo + k) * w..(lo + k + 1) * w];
                if c == 1.0 && ws.len() == 1 {
                    dst.copy_from_slice(src);
                } else {
                    dst.iter_mut().zip(src).for_each(|(o, &v)| *o += c * v);
                }
            }
        }
        out
    }

    /// Resample along each row of a plane `w` wide. Sums of weights take eight rows at a
    /// time: eight sums (each in the taps' order, as one row alone) side by side instead of
    /// one waiting on its last addition.
    fn columns(&self, p: &[f32], w: usize) -> Vec<f32> {
        let n_out = self.taps.len();
        let mut out = vec![0f32; p.len() / w * n_out];
        if let Some(idx) = &self.copies {
            for (dst, row) in out.chunks_exact_mut(n_out).zip(p.chunks_exact(w)) {
                dst.iter_mut().zip(idx).for_each(|(o, &i)| *o = row[i]);
            }
            return out;
        }
        let mut dsts = out.chunks_exact_mut(8 * n_out);
        let mut eights = p.chunks_exact(8 * w);
        for (dst, rows) in (&mut dsts).zip(&mut eights) {
            let rows: [&[f32]; 8] = std::array::from_fn(|j| &rows[j * w..(j + 1) * w]);
            for (o, (lo, r)) in self.taps.iter().enumerate() {
                let mut sums = [0f32; 8];
                for (k, &c) in self.weights[r.clone()].iter().enumerate() {
                    for j in 0..8 {
                        sums[j] += c * rows[j][lo + k];
                    }
                }
                for (j, sum) in sums.into_iter().enumerate() {
                    dst[j * n_out + o] = sum;
                }
            }
        }
        let rest = dsts.into_remainder().chunks_exact_mut(n_out);
        for (dst, row) in rest.zip(eights.remainder().chunks_exact(w)) {
            for (o, (lo, r)) in dst.iter_mut().zip(&self.taps) {
                let ws = &self.weights[r.clone()];
                *o = ws
                    .iter()
                    .zip(&row[*lo..])
                    .map(|(&c, &v)| c * v)
                    .sum::<f32>();
            }
        }
        out
    }
}

/// PIL's BOX resize from `(h, w)` to `(oh, ow)`: the two axes in the order that does less
/// work (the shrinking one first).
pub(super) struct BoxResize {
    rows: BoxAxis,
    columns: BoxAxis,
    rows_first: bool,
    widths: (usize, usize),
}

impl BoxResize {
    pub(super) fn new((h, w): (usize, usize), (oh, ow): (usize, usize)) -> Self {
        BoxResize {
            rows: BoxAxis::new(h, oh),
            columns: BoxAxis::new(w, ow),
            rows_first: oh <= h,
            widths: (w, ow),
        }
    }

    pub(super) fn apply(&self, p: &[f32]) -> Vec<f32> {
        let (w, ow) = self.widths;
        if self.rows_first {
            self.columns.columns(&self.rows.rows(p, w), w)
        } else {
            self.rows.rows(&self.columns.columns(p, w), ow)
        }
    }
}

/// The two resizes of pixelate for one image size and small size, kept per thread (a loader's
/// worker meets the same sizes on every image).
type PixelateResizes = ((usize, usize, usize, usize), BoxResize, BoxResize);

thread_local! {
    static PIXELATE_RESIZES: std::cell::RefCell<Option<PixelateResizes>> = const {
        std::cell::RefCell::new(None)
    };
}

/// Pixelate: BOX-resize to `int(side * c)` and back.
pub fn pixelate(img: &mut Planes, t: Table, s: u8) {
    let c = t.pick(&PIXELATE, s);
    let (h, w) = (img.h, img.w);
    let small = (
        ((h as f64 * c) as usize).max(1),
        ((w as f64 * c) as usize).max(1),
    );
    let key = (h, w, small.0, small.1);
    PIXELATE_RESIZES.with(|cell| {
        let mut cached = cell.borrow_mut();
        if cached.as_ref().is_none_or(|(k, ..)| *k != key) {
            let down = BoxResize::new((h, w), small);
            *cached = Some((key, down, BoxResize::new(small, (h, w))));
        }
        let (_, down, up) = cached.as_ref().expect("just set");
        img.map_planes(|p| up.apply(&down.apply(p)));
    });
}

/// JPEG compression at the severity's quality (libjpeg's arithmetic, see [`super::jpeg`]):
/// RGB images as one colour JPEG (4:2:0), any other channel count one grayscale JPEG per
/// channel.
pub fn jpeg(img: &mut Planes, t: Table, s: u8) {
    super::jpeg::round_trip(&mut img.data, (img.c, img.h, img.w), t.pick(&JPEG, s));
}
