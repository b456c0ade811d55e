//! Per-sample augmentation: random crop with zero padding, random-resized-crop, horizontal
//! flip, and the conversion of an (H, W, C) uint8 image to the (C, S, S) output layout.

use fast_image_resize as fir;
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

impl AugmentSpec {
    pub fn validate(&self) -> Result<(), String> {
        let (s0, s1) = self.scale;
        if !(s0.is_finite() && s1.is_finite() && 0.0 < s0 && s0 <= s1 && s1 <= 1.0) {
            return Err(format!(
                "rrc_scale must satisfy 0 < lo <= hi <= 1, got ({s0}, {s1})"
            ));
        }
        let (r0, r1) = self.ratio;
        if !(r0.is_finite() && r1.is_finite() && 0.0 < r0 && r0 <= r1) {
            return Err(format!(
                "rrc_ratio must satisfy 0 < lo <= hi, got ({r0}, {r1})"
            ));
        }
        if self.padding > 1 << 16 {
            return Err(format!("padding {} is unreasonably large", self.padding));
        }
        Ok(())
    }
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
}

/// `v as f32 / 255` for every byte, correctly rounded (what `x.float() / 255` gives).
static U8_TO_F32: [f32; 256] = {
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
    let plane = s * s;
    let zero = T::from_u8(0);
    for y in 0..s {
        let sy = (y + p.top) as isize - padding as isize;
        let row_ok = sy >= 0 && (sy as usize) < s;
        for x in 0..s {
            let xs = if p.flip { s - 1 - x } else { x };
            let sx = (xs + p.left) as isize - padding as isize;
            let o = y * s + x;
            if row_ok && sx >= 0 && (sx as usize) < s {
                let base = ((sy as usize) * s + sx as usize) * c;
                for ch in 0..c {
                    out[ch * plane + o] = T::from_u8(src[base + ch]);
                }
            } else {
                for ch in 0..c {
                    out[ch * plane + o] = zero;
                }
            }
        }
    }
}

/// Filter taps of PIL's antialiased bilinear (triangle) resampling for one axis.
struct Taps {
    start: Vec<usize>,
    len: Vec<usize>,
    stride: usize,
    weights: Vec<f32>,
}

fn taps(in_size: usize, box0: f64, box1: f64, out_size: usize) -> Taps {
    let scale = (box1 - box0) / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = filterscale; // triangle support is 1
    let stride = (support.ceil() as usize) * 2 + 1;
    let mut t = Taps {
        start: Vec::with_capacity(out_size),
        len: Vec::with_capacity(out_size),
        stride,
        weights: vec![0.0; out_size * stride],
    };
    let ss = 1.0 / filterscale;
    for xx in 0..out_size {
        let center = box0 + (xx as f64 + 0.5) * scale;
        let xmin = ((center - support + 0.5).max(0.0)) as usize;
        let xmax = (((center + support + 0.5).max(0.0)) as usize).min(in_size);
        let n = xmax.saturating_sub(xmin).min(stride);
        let row = &mut t.weights[xx * stride..xx * stride + stride];
        let mut total = 0.0f64;
        let mut tmp = [0.0f64; 64];
        let mut wbuf: Vec<f64> = Vec::new();
        let buf: &mut [f64] = if n <= 64 {
            &mut tmp[..n]
        } else {
            wbuf.resize(n, 0.0);
            &mut wbuf
        };
        for (x, b) in buf.iter_mut().enumerate() {
            let d = ((x + xmin) as f64 - center + 0.5) * ss;
            let wgt = (1.0 - d.abs()).max(0.0);
            *b = wgt;
            total += wgt;
        }
        for (r, b) in row.iter_mut().zip(buf.iter()) {
            *r = if total > 0.0 { (b / total) as f32 } else { 0.0 };
        }
        t.start.push(xmin);
        t.len.push(n);
    }
    t
}

/// Per-thread work buffers of [`resize_box`] (reused across samples).
#[derive(Default)]
pub struct ResizeScratch {
    resizer: fir::Resizer,
    /// The resized box, `(s, s, c)` uint8.
    px: Vec<u8>,
    /// One vertically filtered row (float fallback).
    row: Vec<f32>,
}

/// Resize the box `(top, left, bh, bw)` of an `(h, w, c)` uint8 image to `(s, s)` with
/// antialiased bilinear filtering (PIL's `BILINEAR` with `box=`), flip if asked, and write
/// `(c, s, s)` into `out`.
///
/// For 1 to 4 channels this runs `fast_image_resize`'s SIMD convolution in 8-bit fixed point
/// (like PIL: horizontal pass, rounding to uint8, vertical pass), then converts once while
/// transposing into `out`. Other channel counts use a float implementation of the same filter.
#[allow(clippy::too_many_arguments)]
pub fn resize_box<T: OutPixel>(
    src: &[u8],
    h: usize,
    w: usize,
    c: usize,
    p: &AugParams,
    s: usize,
    out: &mut [T],
    scratch: &mut ResizeScratch,
) {
    debug_assert_eq!(src.len(), h * w * c);
    debug_assert_eq!(out.len(), s * s * c);
    if resize_box_u8(src, h, w, c, p, s, scratch) {
        hwc_to_chw(&scratch.px, c, s, p.flip, out);
    } else {
        resize_box_f32(src, h, w, c, p, s, out, &mut scratch.row);
    }
}

/// How many top source rows [`resize_box`] reads for the box `p` and output size `s`: the
/// box and the bilinear filter's reach below it (half an output row's span, rounded up
/// generously).
pub fn resize_rows_read(p: &AugParams, s: usize) -> usize {
    p.top + p.h + p.h.div_ceil(s.max(1)) + 1
}

/// The fixed-point path: the resized box into `scratch.px` as `(s, s, c)`; false when this
/// pixel layout is not supported (or the resizer refuses), so the caller falls back.
fn resize_box_u8(
    src: &[u8],
    h: usize,
    w: usize,
    c: usize,
    p: &AugParams,
    s: usize,
    scratch: &mut ResizeScratch,
) -> bool {
    use fir::PixelType as PT;
    let pt = match c {
        1 => PT::U8,
        2 => PT::U8x2,
        3 => PT::U8x3,
        4 => PT::U8x4,
        _ => return false,
    };
    let (Ok(h32), Ok(w32), Ok(s32)) = (u32::try_from(h), u32::try_from(w), u32::try_from(s)) else {
        return false;
    };
    let Ok(src_img) = fir::images::ImageRef::new(w32, h32, src, pt) else {
        return false;
    };
    let n = s * s * c;
    if scratch.px.len() != n {
        scratch.px.resize(n, 0);
    }
    let Ok(mut dst) = fir::images::Image::from_slice_u8(s32, s32, &mut scratch.px, pt) else {
        return false;
    };
    let opts = fir::ResizeOptions::new()
        .resize_alg(fir::ResizeAlg::Convolution(fir::FilterType::Bilinear))
        .crop(p.left as f64, p.top as f64, p.w as f64, p.h as f64)
        // Channels are independent: no alpha premultiplication for 2 or 4 channels.
        .use_alpha(false);
    scratch.resizer.resize(&src_img, &mut dst, &opts).is_ok()
}

/// `(s, s, c)` uint8 to `(c, s, s)` output pixels, mirroring each row when `flip`.
fn hwc_to_chw<T: OutPixel>(px: &[u8], c: usize, s: usize, flip: bool, out: &mut [T]) {
    let plane = s * s;
    match c {
        3 => {
            let (o0, rest) = out.split_at_mut(plane);
            let (o1, o2) = rest.split_at_mut(plane);
            for y in 0..s {
                let row = &px[y * s * 3..(y + 1) * s * 3];
                let r0 = &mut o0[y * s..(y + 1) * s];
                let r1 = &mut o1[y * s..(y + 1) * s];
                let r2 = &mut o2[y * s..(y + 1) * s];
                if flip {
                    for (x, q) in row.chunks_exact(3).rev().enumerate() {
                        r0[x] = T::from_u8(q[0]);
                        r1[x] = T::from_u8(q[1]);
                        r2[x] = T::from_u8(q[2]);
                    }
                } else {
                    for (x, q) in row.chunks_exact(3).enumerate() {
                        r0[x] = T::from_u8(q[0]);
                        r1[x] = T::from_u8(q[1]);
                        r2[x] = T::from_u8(q[2]);
                    }
                }
            }
        }
        _ => {
            for y in 0..s {
                let row = &px[y * s * c..(y + 1) * s * c];
                for (x, q) in row.chunks_exact(c).enumerate() {
                    let ox = if flip { s - 1 - x } else { x };
                    for (ch, &v) in q.iter().enumerate() {
                        out[ch * plane + y * s + ox] = T::from_u8(v);
                    }
                }
            }
        }
    }
}

/// The float implementation of [`resize_box`] (vertical-first), for any channel count.
#[allow(clippy::too_many_arguments)]
fn resize_box_f32<T: OutPixel>(
    src: &[u8],
    h: usize,
    w: usize,
    c: usize,
    p: &AugParams,
    s: usize,
    out: &mut [T],
    tmp: &mut Vec<f32>,
) {
    let tx = taps(w, p.left as f64, (p.left + p.w) as f64, s);
    let ty = taps(h, p.top as f64, (p.top + p.h) as f64, s);
    // Columns of the source that the horizontal taps touch.
    let x0 = tx.start.iter().copied().min().unwrap_or(0);
    let x1 = tx
        .start
        .iter()
        .zip(&tx.len)
        .map(|(a, b)| a + b)
        .max()
        .unwrap_or(0);
    let span = x1.saturating_sub(x0) * c;
    tmp.clear();
    tmp.resize(span, 0.0);
    let plane = s * s;
    for yy in 0..s {
        // Vertical pass first, over whole (contiguous) rows: vectorises well.
        let row = &mut tmp[..span];
        row.fill(0.0);
        let n = ty.len[yy];
        let wts = &ty.weights[yy * ty.stride..yy * ty.stride + n];
        for (k, &wt) in wts.iter().enumerate() {
            let sy = ty.start[yy] + k;
            let srow = &src[(sy * w + x0) * c..(sy * w + x0) * c + span];
            for (a, &v) in row.iter_mut().zip(srow) {
                *a += wt * f32::from(v);
            }
        }
        // Horizontal pass on the filtered row, written to (c, s, s), mirrored when flipping.
        let base = yy * s;
        for xx in 0..s {
            let ox = if p.flip { s - 1 - xx } else { xx };
            let n = tx.len[xx];
            let wts = &tx.weights[xx * tx.stride..xx * tx.stride + n];
            let px = &row[(tx.start[xx] - x0) * c..(tx.start[xx] - x0 + n) * c];
            if c == 3 {
                let (mut a0, mut a1, mut a2) = (0.0f32, 0.0f32, 0.0f32);
                for (q, &wt) in px.chunks_exact(3).zip(wts) {
                    a0 += wt * q[0];
                    a1 += wt * q[1];
                    a2 += wt * q[2];
                }
                out[base + ox] = T::from_f32_255(a0);
                out[plane + base + ox] = T::from_f32_255(a1);
                out[2 * plane + base + ox] = T::from_f32_255(a2);
            } else {
                for ch in 0..c {
                    let mut acc = 0.0f32;
                    for (q, &wt) in px.chunks_exact(c).zip(wts) {
                        acc += wt * q[ch];
                    }
                    out[ch * plane + base + ox] = T::from_f32_255(acc);
                }
            }
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
        let s = 6;
        let c = 2;
        let src: Vec<u8> = (0..s * s * c).map(|v| (v % 251) as u8 + 1).collect();
        let p = AugParams {
            top: 1,
            left: 5,
            h: s,
            w: s,
            flip: false,
        };
        let mut out = vec![0u8; s * s * c];
        crop_pad_flip(&src, s, c, 3, &p, &mut out);
        for ch in 0..c {
            for y in 0..s {
                for x in 0..s {
                    let (sy, sx) = (y as isize + 1 - 3, x as isize + 5 - 3);
                    let want = if sy >= 0 && sx >= 0 && (sy as usize) < s && (sx as usize) < s {
                        src[(sy as usize * s + sx as usize) * c + ch]
                    } else {
                        0
                    };
                    assert_eq!(out[ch * s * s + y * s + x], want);
                }
            }
        }
        // Flip mirrors each output row.
        let pf = AugParams { flip: true, ..p };
        let mut outf = vec![0u8; s * s * c];
        crop_pad_flip(&src, s, c, 3, &pf, &mut outf);
        for ch in 0..c {
            for y in 0..s {
                for x in 0..s {
                    assert_eq!(
                        outf[ch * s * s + y * s + x],
                        out[ch * s * s + y * s + s - 1 - x]
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

    #[test]
    fn resize_identity_and_constant() {
        // Same size, full box: identity.
        let (h, w, c) = (5, 5, 3);
        let src: Vec<u8> = (0..h * w * c).map(|v| (v * 7 % 256) as u8).collect();
        let p = AugParams {
            top: 0,
            left: 0,
            h,
            w,
            flip: false,
        };
        let mut out = vec![0u8; h * w * c];
        let mut tmp = ResizeScratch::default();
        resize_box(&src, h, w, c, &p, 5, &mut out, &mut tmp);
        for ch in 0..c {
            for y in 0..h {
                for x in 0..w {
                    assert_eq!(out[ch * 25 + y * 5 + x], src[(y * w + x) * c + ch]);
                }
            }
        }
        // A constant image stays constant at any scale.
        let src = vec![77u8; 40 * 30];
        let p = AugParams {
            top: 3,
            left: 2,
            h: 25,
            w: 20,
            flip: true,
        };
        let mut out = vec![0u8; 16 * 16];
        resize_box(&src, 30, 40, 1, &p, 16, &mut out, &mut tmp);
        assert!(out.iter().all(|&v| v == 77));
    }

    #[test]
    fn fixed_point_path_matches_float_path() {
        // The SIMD fixed-point resize (1-4 channels) and the float one agree to a level or
        // two, for up- and downscaling boxes, with and without flipping.
        for c in [1usize, 2, 3, 4] {
            let (h, w) = (37, 53);
            let src: Vec<u8> = (0..h * w * c)
                .map(|v| ((v * 37 + v / 7 * 11) % 256) as u8)
                .collect();
            for (i, &(top, left, bh, bw, s)) in [
                (0, 0, 37, 53, 16),
                (3, 5, 30, 20, 24),
                (10, 12, 9, 14, 20),
                (1, 2, 35, 50, 35),
            ]
            .iter()
            .enumerate()
            {
                let p = AugParams {
                    top,
                    left,
                    h: bh,
                    w: bw,
                    flip: i % 2 == 1,
                };
                let mut fixed = vec![0u8; c * s * s];
                let mut float = vec![0u8; c * s * s];
                let mut scratch = ResizeScratch::default();
                resize_box(&src, h, w, c, &p, s, &mut fixed, &mut scratch);
                resize_box_f32(&src, h, w, c, &p, s, &mut float, &mut Vec::new());
                let worst = fixed
                    .iter()
                    .zip(&float)
                    .map(|(a, b)| a.abs_diff(*b))
                    .max()
                    .unwrap();
                assert!(worst <= 2, "c={c} box {i}: max diff {worst}");
            }
        }
    }

    #[test]
    fn downscale_by_two_uses_triangle_taps() {
        // Rows are the ramp 0, 10, ..., 70; 2x downscale: interior taps 1/8, 3/8, 3/8, 1/8.
        let src: Vec<u8> = (0..64).map(|v| ((v % 8) * 10) as u8).collect();
        let p = AugParams {
            top: 0,
            left: 0,
            h: 8,
            w: 8,
            flip: false,
        };
        let mut out = vec![0u8; 16];
        let mut tmp = ResizeScratch::default();
        resize_box(&src, 8, 8, 1, &p, 4, &mut out, &mut tmp);
        for y in 0..4 {
            assert_eq!(out[y * 4 + 1], 25);
            assert_eq!(out[y * 4 + 2], 45);
            assert_eq!(out[y * 4], 7); // edge: taps 0..2 renormalised, 12.5 / 1.75
        }
    }
}

#[cfg(test)]
mod timing {
    use super::*;

    /// `cargo test --release timing -- --ignored --nocapture`: resize cost per image.
    #[test]
    #[ignore]
    fn time_resize() {
        let (h, w) = (400, 450);
        let src: Vec<u8> = (0..h * w * 3).map(|v| (v * 7 % 251) as u8).collect();
        let p = AugParams {
            top: 20,
            left: 30,
            h: 330,
            w: 300,
            flip: true,
        };
        let mut out = vec![0f32; 3 * 224 * 224];
        let mut tmp = ResizeScratch::default();
        let t = std::time::Instant::now();
        for _ in 0..200 {
            resize_box(&src, h, w, 3, &p, 224, &mut out, &mut tmp);
        }
        println!("resize: {:.3} ms", t.elapsed().as_secs_f64() * 1e3 / 200.0);
    }
}
