//! Common corruptions of Hendrycks & Dietterich (2019), "Benchmarking Neural Network
//! Robustness to Common Corruptions and Perturbations" (ImageNet-C / CIFAR-10-C), made on the
//! fly at the five published severities.
//!
//! Fourteen of the fifteen corruptions: noise (gaussian, shot, impulse), blur (defocus, glass,
//! motion, zoom), weather (snow, fog, brightness) and digital (contrast, elastic transform,
//! pixelate, JPEG). Frost blends the image with texture photographs that do not ship with
//! this package (nor offline), so it is left out and asking for it is an error.
//!
//! **Which parameters.** Images whose larger side is at most 64 pixels take the CIFAR-10-C
//! parameter set, larger images the ImageNet-C set (defined for 224 px). Sizes in those sets
//! (blur radii, displacements, zoom) are in pixels as published; they are not rescaled.
//!
//! An image is worked on as `C` planes of `f32` in `[0, 1]` ([`Planes`]); the result is
//! clipped to `[0, 1]`, and rounded to the nearest integer for `u8` images. Every random draw
//! of an image comes from its own generator ([`corruption_rng`]) keyed on
//! `(seed, epoch, index)`, so a batch does not depend on the number of threads.

mod blur;
mod digital;
mod draws;
mod filters;
mod jpeg;
mod noise;
pub mod py;
mod weather;

use rand_pcg::Pcg64Mcg;
use rayon::prelude::*;

use crate::rng::{key_hash, rng_from_seed, splitmix64, Purpose};

/// The corruptions, in the paper's order (frost, the 11th, left out).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Corruption {
    GaussianNoise,
    ShotNoise,
    ImpulseNoise,
    DefocusBlur,
    GlassBlur,
    MotionBlur,
    ZoomBlur,
    Snow,
    Fog,
    Brightness,
    Contrast,
    ElasticTransform,
    Pixelate,
    JpegCompression,
}

/// The names Python uses, in the order of [`Corruption::ALL`].
pub const NAMES: [&str; 14] = [
    "gaussian_noise",
    "shot_noise",
    "impulse_noise",
    "defocus_blur",
    "glass_blur",
    "motion_blur",
    "zoom_blur",
    "snow",
    "fog",
    "brightness",
    "contrast",
    "elastic_transform",
    "pixelate",
    "jpeg_compression",
];

impl Corruption {
    pub const ALL: [Corruption; 14] = [
        Corruption::GaussianNoise,
        Corruption::ShotNoise,
        Corruption::ImpulseNoise,
        Corruption::DefocusBlur,
        Corruption::GlassBlur,
        Corruption::MotionBlur,
        Corruption::ZoomBlur,
        Corruption::Snow,
        Corruption::Fog,
        Corruption::Brightness,
        Corruption::Contrast,
        Corruption::ElasticTransform,
        Corruption::Pixelate,
        Corruption::JpegCompression,
    ];

    /// The corruption called `name`; the error names the option and the choices.
    pub fn parse(name: &str) -> Result<Self, String> {
        if let Some(k) = NAMES.iter().position(|&n| n == name) {
            return Ok(Self::ALL[k]);
        }
        if name == "frost" {
            return Err(
                "corruption 'frost' is not available: frost needs texture photographs \
                        that do not ship with mimir_fast"
                    .into(),
            );
        }
        Err(format!(
            "corruption must be one of {}; got {name:?}",
            NAMES.join(", ")
        ))
    }
}

/// A corruption at a severity in `1..=5`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CorruptSpec {
    pub kind: Corruption,
    pub severity: u8,
}

impl CorruptSpec {
    /// Checked: an unknown name or a severity outside `1..=5` is an error naming the option.
    pub fn new(name: &str, severity: i64) -> Result<Self, String> {
        let kind = Corruption::parse(name)?;
        if !(1..=5).contains(&severity) {
            return Err(format!(
                "severity must be an integer in 1..5, got {severity}"
            ));
        }
        Ok(CorruptSpec {
            kind,
            severity: severity as u8,
        })
    }
}

/// Which published parameter set applies to an image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Table {
    /// CIFAR-10-C: images whose larger side is at most 64 px.
    Cifar,
    /// ImageNet-C: larger images.
    ImageNet,
}

impl Table {
    pub fn for_size(h: usize, w: usize) -> Table {
        if h.max(w) <= 64 {
            Table::Cifar
        } else {
            Table::ImageNet
        }
    }

    /// The entry of `sets` (`[cifar, imagenet]`) for `severity` (1..=5).
    pub fn pick<T: Copy>(self, sets: &[[T; 5]; 2], severity: u8) -> T {
        sets[self as usize][usize::from(severity.clamp(1, 5)) - 1]
    }
}

/// One image as `c` planes of `h * w` values in `[0, 1]` (channel-major).
#[derive(Clone, Debug, PartialEq)]
pub struct Planes {
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub data: Vec<f32>,
}

impl Planes {
    pub fn new(c: usize, h: usize, w: usize) -> Self {
        Planes {
            c,
            h,
            w,
            data: vec![0.0; c * h * w],
        }
    }
    pub fn plane(&self, ch: usize) -> &[f32] {
        &self.data[ch * self.h * self.w..(ch + 1) * self.h * self.w]
    }
    pub fn plane_mut(&mut self, ch: usize) -> &mut [f32] {
        let n = self.h * self.w;
        &mut self.data[ch * n..(ch + 1) * n]
    }
    /// Apply `f` to every plane, replacing it with the result.
    pub fn map_planes(&mut self, mut f: impl FnMut(&[f32]) -> Vec<f32>) {
        for ch in 0..self.c {
            let out = f(self.plane(ch));
            self.plane_mut(ch).copy_from_slice(&out);
        }
    }
}

/// The generator of one image's corruption: keyed on `(seed, epoch, index)` and apart from the
/// loader's other streams (the augmentation key, re-mixed with a tag of its own).
pub fn corruption_rng(seed: u64, epoch: u64, index: u64) -> Pcg64Mcg {
    const TAG: u64 = 0x636F_7272_7570_7431; // "corrupt1"
    rng_from_seed(splitmix64(
        key_hash(seed, epoch, index, Purpose::Augment) ^ TAG,
    ))
}

/// Corrupt one image in place (values end clipped to `[0, 1]`, NaN to 0).
#[cfg(test)]
pub fn apply(spec: CorruptSpec, img: &mut Planes, rng: &mut Pcg64Mcg) {
    apply_unclipped(spec, img, rng);
    for v in &mut img.data {
        *v = if v.is_nan() { 0.0 } else { v.clamp(0.0, 1.0) };
    }
}

/// Corrupt one image in place, leaving the clipping to the caller.
fn apply_unclipped(spec: CorruptSpec, img: &mut Planes, rng: &mut Pcg64Mcg) {
    if img.h == 0 || img.w == 0 || img.c == 0 {
        return;
    }
    let t = Table::for_size(img.h, img.w);
    let s = spec.severity;
    match spec.kind {
        Corruption::GaussianNoise => noise::gaussian(img, t, s, rng),
        Corruption::ShotNoise => noise::shot(img, t, s, rng),
        Corruption::ImpulseNoise => noise::impulse(img, t, s, rng),
        Corruption::DefocusBlur => blur::defocus(img, t, s),
        Corruption::GlassBlur => blur::glass(img, t, s, rng),
        Corruption::MotionBlur => blur::motion(img, t, s, rng),
        Corruption::ZoomBlur => blur::zoom(img, t, s),
        Corruption::Snow => weather::snow(img, t, s, rng),
        Corruption::Fog => weather::fog(img, t, s, rng),
        Corruption::Brightness => weather::brightness(img, t, s),
        Corruption::Contrast => digital::contrast(img, t, s),
        Corruption::ElasticTransform => digital::elastic(img, t, s, rng),
        Corruption::Pixelate => digital::pixelate(img, t, s),
        Corruption::JpegCompression => digital::jpeg(img, t, s),
    }
}

/// A pixel type the corruptions read and write (`u8` on 0..255, `f32` in `[0, 1]`).
pub trait Pixel: Copy + Send + Sync {
    fn to_unit(self) -> f32;
    fn from_unit(v: f32) -> Self;
}

impl Pixel for u8 {
    #[inline]
    fn to_unit(self) -> f32 {
        f32::from(self) / 255.0
    }
    #[inline]
    fn from_unit(v: f32) -> Self {
        unit_to_u8(v)
    }
}

/// `round(clamp(v, 0, 1) * 255)`, halves away from zero and NaN to 0, without a call to
/// `roundf` (which x86-64 has no baseline instruction for): the truncated value plus one when
/// the exact remainder is at least a half.
#[inline(always)]
#[allow(clippy::manual_clamp)] // clamp keeps NaN; max/min map it to 0
pub fn unit_to_u8(v: f32) -> u8 {
    let x = v.max(0.0).min(1.0) * 255.0; // NaN: 0 (`max` takes the number)
                                         // SAFETY: x is finite and in [0, 255], so its truncation fits an i32.
    let t = unsafe { x.to_int_unchecked::<i32>() };
    (t + i32::from(x - t as f32 >= 0.5)) as u8
}

impl Pixel for f32 {
    #[inline]
    fn to_unit(self) -> f32 {
        self
    }
    #[inline]
    #[allow(clippy::manual_clamp)] // clamp keeps NaN; max/min map it to 0
    fn from_unit(v: f32) -> Self {
        v.max(0.0).min(1.0)
    }
}

thread_local! {
    /// The planes a worker corrupts its images in, kept between images.
    static PLANES: std::cell::RefCell<Vec<f32>> = std::cell::RefCell::default();
}

/// Corrupt one (C, H, W) image in place.
pub fn corrupt_chw<T: Pixel>(
    spec: CorruptSpec,
    data: &mut [T],
    (c, h, w): (usize, usize, usize),
    rng: &mut Pcg64Mcg,
) {
    let mut planes = PLANES.with(|cell| cell.take());
    planes.clear();
    planes.extend(data.iter().map(|&v| v.to_unit()));
    let mut img = Planes {
        c,
        h,
        w,
        data: planes,
    };
    apply_unclipped(spec, &mut img, rng);
    for (o, &v) in data.iter_mut().zip(&img.data) {
        *o = T::from_unit(v); // clipped, NaN to 0
    }
    PLANES.with(|cell| cell.replace(img.data));
}

/// Corrupt one (H, W, C) image in place.
pub fn corrupt_hwc<T: Pixel>(
    spec: CorruptSpec,
    data: &mut [T],
    (h, w, c): (usize, usize, usize),
    rng: &mut Pcg64Mcg,
) {
    let mut img = Planes::new(c, h, w);
    for (px, chunk) in data.chunks_exact(c).enumerate() {
        for (ch, &v) in chunk.iter().enumerate() {
            img.data[ch * h * w + px] = v.to_unit();
        }
    }
    apply_unclipped(spec, &mut img, rng);
    for (px, chunk) in data.chunks_exact_mut(c).enumerate() {
        for (ch, o) in chunk.iter_mut().enumerate() {
            *o = T::from_unit(img.data[ch * h * w + px]);
        }
    }
}

/// Corrupt a batch of `n` images in place, in parallel; image `i` draws from
/// `corruption_rng(seed, 0, i)`. `channels_last`: (N, H, W, C), else (N, C, H, W).
pub fn corrupt_batch<T: Pixel>(
    spec: CorruptSpec,
    data: &mut [T],
    (h, w, c): (usize, usize, usize),
    channels_last: bool,
    seed: u64,
) {
    let per = h * w * c;
    if per == 0 {
        return;
    }
    data.par_chunks_mut(per).enumerate().for_each(|(i, img)| {
        let mut rng = corruption_rng(seed, 0, i as u64);
        if channels_last {
            corrupt_hwc(spec, img, (h, w, c), &mut rng);
        } else {
            corrupt_chw(spec, img, (c, h, w), &mut rng);
        }
    });
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;
