//! Per-sample augmentation: the random parameters (padding crop, random-resized-crop box,
//! horizontal flip) and the crop with zero padding into the (C, S, S) output layout. The
//! resize of a random-resized-crop box is in `resize.rs`.

use crate::deinterleave::rgb_to_planes;
use rand::Rng;

/// Which augmentation the loader applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AugmentKind {
    None,
    Crop,
    Flip,
    CropFlip,
    Rrc,
    RrcFlip,
}

impl AugmentKind {
    /// Parse the Python option string.
    pub fn parse(s: &str) -> Result<Self, String> {
        Ok(match s {
            "none" => AugmentKind::None,
            "crop" => AugmentKind::Crop,
            "flip" => AugmentKind::Flip,
            "crop_flip" => AugmentKind::CropFlip,
            "rrc" => AugmentKind::Rrc,
            "rrc_flip" => AugmentKind::RrcFlip,
            other => {
                return Err(format!(
                    "augment must be one of 'crop_flip', 'crop', 'flip', 'rrc_flip', 'rrc', 'none'; got {other:?}"
                ))
            }
        })
    }
    pub fn crops_with_padding(self) -> bool {
        matches!(self, AugmentKind::Crop | AugmentKind::CropFlip)
    }
    pub fn is_rrc(self) -> bool {
        matches!(self, AugmentKind::Rrc | AugmentKind::RrcFlip)
    }
    pub fn flips(self) -> bool {
        matches!(
            self,
            AugmentKind::Flip | AugmentKind::CropFlip | AugmentKind::RrcFlip
        )
    }
}

/// Augmentation settings shared by all samples.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AugmentSpec {
    pub kind: AugmentKind,
    pub padding: usize,
    pub scale: (f64, f64),
    pub ratio: (f64, f64),
}

/// The random parameters of one sample.
///
/// For a padding crop, `(top, left)` is the window's corner in the zero-padded image (each in
/// `0..=2 * padding`) and `(h, w)` is the output size. For random-resized-crop it is the crop
/// box in the source image. `flip` mirrors the output horizontally (applied last).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AugParams {
    pub top: usize,
    pub left: usize,
    pub h: usize,
    pub w: usize,
    pub flip: bool,
}

/// Draw one sample's parameters for a source of size `(src_h, src_w)` and output `out`.
///
/// Draw order (fixed, part of the determinism contract): crop parameters first, then the
/// flip coin (`random::<f64>() < 0.5`), drawn only when the kind flips.
pub fn sample_params<R: Rng>(
    spec: &AugmentSpec,
    src_h: usize,
    src_w: usize,
    out: usize,
    rng: &mut R,
) -> AugParams {
    let mut p = AugParams {
        top: spec.padding,
        left: spec.padding,
        h: out,
        w: out,
        flip: false,
    };
    if spec.kind.crops_with_padding() {
        p.top = rng.random_range(0..=2 * spec.padding);
        p.left = rng.random_range(0..=2 * spec.padding);
    } else if spec.kind.is_rrc() {
        let (top, left, h, w) = rrc_box(src_h, src_w, spec.scale, spec.ratio, rng);
        p = AugParams {
            top,
            left,
            h,
            w,
            flip: false,
        };
    }
    if spec.kind.flips() {
        p.flip = rng.random::<f64>() < 0.5;
    }
    p
}

/// torchvision's RandomResizedCrop box: `(top, left, h, w)`.
///
/// Ten attempts at an area fraction uniform in `scale` and a log-uniform aspect ratio, with
/// Python's round-half-to-even; otherwise the central crop clamped to the ratio range.
pub fn rrc_box<R: Rng>(
    h: usize,
    w: usize,
    scale: (f64, f64),
    ratio: (f64, f64),
    rng: &mut R,
) -> (usize, usize, usize, usize) {
    let area = (h * w) as f64;
    let (lr0, lr1) = (ratio.0.ln(), ratio.1.ln());
    for _ in 0..10 {
        let target = area * (scale.0 + (scale.1 - scale.0) * rng.random::<f64>());
        let aspect = (lr0 + (lr1 - lr0) * rng.random::<f64>()).exp();
        let cw = (target * aspect).sqrt().round_ties_even();
        let ch = (target / aspect).sqrt().round_ties_even();
        if cw >= 1.0 && ch >= 1.0 && cw <= w as f64 && ch <= h as f64 {
            let (cw, ch) = (cw as usize, ch as usize);
            let top = rng.random_range(0..=h - ch);
            let left = rng.random_range(0..=w - cw);
            return (top, left, ch, cw);
        }
    }
    let in_ratio = w as f64 / h as f64;
    let (ch, cw) = if in_ratio < ratio.0 {
        let cw = w;
        (((cw as f64) / ratio.0).round_ties_even() as usize, cw)
    } else if in_ratio > ratio.1 {
        let ch = h;
        (ch, ((ch as f64) * ratio.1).round_ties_even() as usize)
    } else {
        (h, w)
    };
    let (ch, cw) = (ch.clamp(1, h), cw.clamp(1, w));
    ((h - ch) / 2, (w - cw) / 2, ch, cw)
}

/// The box of torchvision-style "resize the short side to `s`, then center crop `s`",
/// expressed in source coordinates (the crop is taken before resizing; same result up to
/// rounding of the box).
pub fn center_box(h: usize, w: usize) -> (usize, usize, usize, usize) {
    let side = h.min(w);
    ((h - side) / 2, (w - side) / 2, side, side)
}

/// An output element type: float in [0, 1] or uint8.
pub trait OutPixel: Copy + Default + Send + Sync + 'static {
    fn from_u8(v: u8) -> Self;
    /// From a value on the 0..255 scale.
    fn from_f32_255(v: f32) -> Self;
    /// The pixels of `src` (`planes.len()` bytes each) into `planes[ch][at..]`, in reverse
    /// order where `flip`.
    fn planes_from_pixels(planes: &mut [&mut [Self]], at: usize, src: &[u8], flip: bool) {
        pixels_one_by_one(planes, at, src, flip);
    }
}

/// [`OutPixel::planes_from_pixels`] a value at a time.
fn pixels_one_by_one<T: OutPixel>(planes: &mut [&mut [T]], at: usize, src: &[u8], flip: bool) {
    let c = planes.len();
    let n = src.len() / c;
    for (ch, plane) in planes.iter_mut().enumerate() {
        let values = src.chunks_exact(c).map(|px| T::from_u8(px[ch]));
        let inside = &mut plane[at..at + n];
        if flip {
            inside
                .iter_mut()
                .rev()
                .zip(values)
                .for_each(|(o, v)| *o = v);
        } else {
            inside.iter_mut().zip(values).for_each(|(o, v)| *o = v);
        }
    }
}

/// `v as f32 / 255` for every byte, correctly rounded (what `x.float() / 255` gives).
pub(crate) static U8_TO_F32: [f32; 256] = {
    let mut t = [0.0f32; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = i as f32 / 255.0;
        i += 1;
    }
    t
};

impl OutPixel for f32 {
    #[inline]
    fn from_u8(v: u8) -> Self {
        U8_TO_F32[usize::from(v)]
    }
    #[inline]
    fn from_f32_255(v: f32) -> Self {
        v.clamp(0.0, 255.0) * (1.0 / 255.0)
    }
    fn planes_from_pixels(planes: &mut [&mut [Self]], at: usize, src: &[u8], flip: bool) {
        if let [r, g, b] = planes {
            let n = src.len() / 3;
            let rows = [&mut r[at..at + n], &mut g[at..at + n], &mut b[at..at + n]];
            rgb_to_planes(rows, src, flip);
        } else {
            pixels_one_by_one(planes, at, src, flip);
        }
    }
}

impl OutPixel for u8 {
    #[inline]
    fn from_u8(v: u8) -> Self {
        v
    }
    #[inline]
    fn from_f32_255(v: f32) -> Self {
        v.round().clamp(0.0, 255.0) as u8
    }
}

/// Crop an `(s, s)` window at `(top, left)` of the zero-padded `(s, s, c)` source, flip it
/// if asked, and write `(c, s, s)` into `out`.
pub fn crop_pad_flip<T: OutPixel>(
    src: &[u8],
    s: usize,
    c: usize,
    padding: usize,
    p: &AugParams,
    out: &mut [T],
) {
    debug_assert_eq!(src.len(), s * s * c);
    debug_assert_eq!(out.len(), s * s * c);
    if s == 0 || c == 0 {
        return;
    }
    let zero = T::from_u8(0);
    // Unflipped output column `x` reads source column `x + shift`: in the image for `x` in
    // `lo..hi`, zero padding elsewhere. Flipped, output column `s - 1 - x` takes it.
    let shift = p.left as isize - padding as isize;
    let lo = (-shift).clamp(0, s as isize) as usize;
    let hi = (s as isize - shift).clamp(lo as isize, s as isize) as usize;
    let (out_lo, out_hi) = if p.flip { (s - hi, s - lo) } else { (lo, hi) };
    let first = (lo as isize + shift).clamp(0, s as isize) as usize; // first column read
    let mut planes: Vec<&mut [T]> = out.chunks_exact_mut(s * s).collect();
    for y in 0..s {
        let sy = (y + p.top) as isize - padding as isize;
        for plane in planes.iter_mut() {
            let row = &mut plane[y * s..(y + 1) * s];
            if sy < 0 || sy as usize >= s {
                row.fill(zero);
            } else {
                row[..out_lo].fill(zero);
                row[out_hi..].fill(zero);
            }
        }
        if sy >= 0 && (sy as usize) < s {
            let start = (sy as usize * s + first) * c;
            let src_row = &src[start..start + (hi - lo) * c];
            T::planes_from_pixels(&mut planes, y * s + out_lo, src_row, p.flip);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::{rng_for, Purpose};

    fn spec(kind: AugmentKind) -> AugmentSpec {
        AugmentSpec {
            kind,
            padding: 4,
            scale: (0.2, 1.0),
            ratio: (0.75, 4.0 / 3.0),
        }
    }

    #[test]
    fn parse_names() {
        assert_eq!(
            AugmentKind::parse("crop_flip").unwrap(),
            AugmentKind::CropFlip
        );
        assert!(AugmentKind::parse("jitter").is_err());
    }

    #[test]
    fn crop_params_in_range_and_flip_fair() {
        let sp = spec(AugmentKind::CropFlip);
        let mut flips = 0;
        for i in 0..4000 {
            let mut rng = rng_for(0, 0, i, Purpose::Augment);
            let p = sample_params(&sp, 32, 32, 32, &mut rng);
            assert!(p.top <= 8 && p.left <= 8);
            flips += usize::from(p.flip);
        }
        // Binomial(4000, 1/2): sd ~ 31.6
        assert!((flips as i64 - 2000).abs() < 200, "{flips}");
    }

    #[test]
    fn crop_geometry_is_a_shift_of_the_padded_image() {
        // Every window of the padded image, flipped and not, against the definition.
        for (s, c, padding) in [(6, 2, 3), (5, 3, 0), (4, 1, 6), (1, 3, 2)] {
            let src: Vec<u8> = (0..s * s * c).map(|v| (v % 251) as u8 + 1).collect();
            for (top, left, flip) in (0..=2 * padding)
                .flat_map(|t| (0..=2 * padding).map(move |l| (t, l)))
                .flat_map(|(t, l)| [(t, l, false), (t, l, true)])
            {
                let p = AugParams {
                    top,
                    left,
                    h: s,
                    w: s,
                    flip,
                };
                let mut out = vec![0u8; s * s * c];
                crop_pad_flip(&src, s, c, padding, &p, &mut out);
                for (ch, y, x) in
                    (0..c).flat_map(|ch| (0..s).flat_map(move |y| (0..s).map(move |x| (ch, y, x))))
                {
                    let xs = if flip { s - 1 - x } else { x };
                    let sy = (y + top) as isize - padding as isize;
                    let sx = (xs + left) as isize - padding as isize;
                    let inside = (0..s as isize).contains(&sy) && (0..s as isize).contains(&sx);
                    let want = if inside {
                        src[(sy as usize * s + sx as usize) * c + ch]
                    } else {
                        0
                    };
                    let got = out[ch * s * s + y * s + x];
                    assert_eq!(
                        got, want,
                        "s {s} c {c} pad {padding} at {top},{left} {flip}"
                    );
                }
            }
        }
    }

    #[test]
    fn float_output_is_scaled() {
        let src = vec![255u8, 0, 51, 102];
        let p = AugParams {
            top: 0,
            left: 0,
            h: 2,
            w: 2,
            flip: false,
        };
        let mut out = vec![0f32; 4];
        crop_pad_flip(&src, 2, 1, 0, &p, &mut out);
        assert_eq!(out, vec![1.0, 0.0, 0.2, 0.4]);
    }

    #[test]
    fn rrc_boxes_fit() {
        let sp = spec(AugmentKind::RrcFlip);
        for i in 0..2000 {
            let mut rng = rng_for(5, 0, i, Purpose::Augment);
            let p = sample_params(&sp, 300, 451, 224, &mut rng);
            assert!(p.h >= 1 && p.w >= 1 && p.top + p.h <= 300 && p.left + p.w <= 451);
            let frac = (p.h * p.w) as f64 / (300.0 * 451.0);
            assert!(frac < 1.0 + 1e-9);
        }
        // Impossible ratio falls back to the central crop clamped to the ratio.
        let mut rng = rng_for(0, 0, 0, Purpose::Augment);
        let b = rrc_box(10, 100, (0.99, 1.0), (1.0, 1.0), &mut rng);
        assert_eq!(b, (0, 45, 10, 10));
    }
}
