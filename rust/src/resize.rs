//! The resize of random-resized-crop: PIL's antialiased bilinear filter over a box of an
//! (H, W, C) uint8 image, written flipped or not to the (C, S, S) output layout.

use fast_image_resize as fir;

use crate::augment::{AugParams, OutPixel};

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
