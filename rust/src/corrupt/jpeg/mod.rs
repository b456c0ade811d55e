//! JPEG compression and decompression as libjpeg(-turbo) does them with its defaults, which
//! is what PIL's `save(..., "JPEG", quality=q)` then `open` give: RGB to YCbCr, 4:2:0 chroma
//! (2x2 means), the 8x8 integer DCT ("islow", 13-bit constants), quantisation by the JPEG
//! standard's tables scaled to the quality, then dequantisation, the integer IDCT,
//! triangular ("fancy") chroma upsampling and YCbCr to RGB, all in libjpeg's fixed-point
//! arithmetic. The Huffman coding between the two halves is lossless and left out. Other
//! channel counts: each channel as a grayscale JPEG.

#[cfg(target_arch = "x86_64")]
mod avx2;
mod blocks;
mod lanes;

#[cfg(target_arch = "x86_64")]
use avx2::Avx2;
use blocks::{code_plane, Quant};
use lanes::{Lanes, Portable};

/// The standard's example tables (ITU T.81 Annex K), row-major.
const LUMA: [u16; 64] = [
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56,
    14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113,
    92, 49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99,
];
const CHROMA: [u16; 64] = [
    17, 18, 24, 47, 99, 99, 99, 99, 18, 21, 26, 66, 99, 99, 99, 99, 24, 26, 56, 99, 99, 99, 99, 99,
    47, 66, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99,
    99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99,
];

/// libjpeg's quality scaling: percent `5000 / q` below 50, `200 - 2 q` from 50, entries
/// rounded and kept in 1..=255 (baseline JPEG).
fn scaled_table(base: &[u16; 64], quality: u8) -> [i32; 64] {
    let q = i32::from(quality.clamp(1, 100));
    let scale = if q < 50 { 5000 / q } else { 200 - 2 * q };
    base.map(|b| ((i32::from(b) * scale + 50) / 100).clamp(1, 255))
}

/// `plane` (`h` x `w`) as 8-bit values, padded to `(ph, pw)` by repeating its last row and
/// column.
#[inline(always)]
fn padded_u8<L: Lanes>(plane: &[f32], (h, w): (usize, usize), (ph, pw): (usize, usize)) -> Vec<u8> {
    let mut out = vec![0u8; ph * pw];
    for (y, row) in out.chunks_exact_mut(pw).enumerate() {
        L::units_to_bytes(&mut row[..w], &plane[y.min(h - 1) * w..][..w]);
        let last = row[w - 1];
        row[w..].fill(last);
    }
    out
}

/// A grayscale JPEG round trip of one plane.
#[inline(always)]
fn gray<L: Lanes>(plane: &mut [f32], (h, w): (usize, usize), quant: &Quant) {
    let dims = (h.div_ceil(8) * 8, w.div_ceil(8) * 8);
    let mut px = padded_u8::<L>(plane, (h, w), dims);
    code_plane::<L>(&mut px, dims, (h, w), quant);
    for (out, row) in plane.chunks_exact_mut(w).zip(px.chunks_exact(dims.1)) {
        L::bytes_to_units(out, row);
    }
}

/// 2x2 means with libjpeg's alternating bias (1, 2, 1, ...) along each output row, for the
/// first `rows` output rows; the rows after them repeat the last (libjpeg pads a component
/// at the bottom after downsampling it).
#[inline(always)]
fn downsample(full: &[u8], (ph, pw): (usize, usize), rows: usize) -> Vec<u8> {
    let ow = pw / 2;
    let mut out = vec![0u8; ph / 2 * ow];
    for (y, row) in out.chunks_exact_mut(ow).take(rows).enumerate() {
        let (a, b) = (&full[2 * y * pw..][..pw], &full[(2 * y + 1) * pw..][..pw]);
        for (x, o) in row.iter_mut().enumerate() {
            let sum = u16::from(a[2 * x]) + u16::from(a[2 * x + 1]);
            let sum = sum + u16::from(b[2 * x]) + u16::from(b[2 * x + 1]);
            *o = ((sum + 1 + (x as u16 & 1)) >> 2) as u8;
        }
    }
    let (done, rest) = out.split_at_mut(rows * ow);
    let last = &done[(rows - 1) * ow..];
    for row in rest.chunks_exact_mut(ow) {
        row.copy_from_slice(last);
    }
    out
}

/// libjpeg-turbo's 2x upsampling of a chroma plane of `(ch, cw)` samples (stored `stride`
/// wide): "fancy", each output 9/16, 3/16, 3/16, 1/16 of its four nearest inputs with the
/// library's rounding (+8 on even, +7 on odd columns) and edge rules; for planes at most 2
/// samples wide each sample repeated 2x2, as the library does there.
#[inline(always)]
fn upsample(plane: &[u8], stride: usize, (ch, cw): (usize, usize)) -> Vec<u8> {
    let ow = 2 * cw;
    let mut out = vec![0u8; 2 * ch * ow];
    if cw <= 2 {
        for (y, row) in out.chunks_exact_mut(ow).enumerate() {
            let src = &plane[y / 2 * stride..][..cw];
            for (x, o) in row.iter_mut().enumerate() {
                *o = src[x / 2];
            }
        }
        return out;
    }
    // Per output row: the column sums `3 near + far`, then the even outputs (sums x-1 and x,
    // +8) and the odd ones (sums x and x+1, +7), the edges repeating the end sum; each loop
    // plain enough to vectorise, the last one interleaving them.
    let (mut sums, mut even, mut odd) = (vec![0i16; cw], vec![0u8; cw], vec![0u8; cw]);
    for (y, row) in out.chunks_exact_mut(ow).enumerate() {
        let near = y / 2;
        let far = if y % 2 == 0 {
            near.saturating_sub(1)
        } else {
            (near + 1).min(ch - 1)
        };
        let (a, b) = (&plane[near * stride..][..cw], &plane[far * stride..][..cw]);
        for (s, (&p, &q)) in sums.iter_mut().zip(a.iter().zip(b)) {
            *s = 3 * i16::from(p) + i16::from(q);
        }
        even[0] = ((4 * sums[0] + 8) >> 4) as u8;
        for (e, (&left, &right)) in even[1..].iter_mut().zip(sums.iter().zip(&sums[1..])) {
            *e = ((3 * right + left + 8) >> 4) as u8;
        }
        for (o, (&left, &right)) in odd.iter_mut().zip(sums.iter().zip(&sums[1..])) {
            *o = ((3 * left + right + 7) >> 4) as u8;
        }
        odd[cw - 1] = ((4 * sums[cw - 1] + 7) >> 4) as u8;
        for (pair, (&e, &o)) in row.chunks_exact_mut(2).zip(even.iter().zip(&odd)) {
            pair[0] = e;
            pair[1] = o;
        }
    }
    out
}

/// A colour JPEG round trip of three planes.
#[inline(always)]
fn colour<L: Lanes>(img: &mut [f32], (h, w): (usize, usize), luma: &Quant, chroma: &Quant) {
    let n = h * w;
    let dims @ (ph, pw) = (h.div_ceil(16) * 16, w.div_ceil(16) * 16);
    let mut ycc = [vec![0u8; ph * pw], vec![0u8; ph * pw], vec![0u8; ph * pw]];
    // Converted a row at a time, then padded by repeating the last column and row (the
    // same as converting the padded image: the conversion is pixel by pixel).
    for row in 0..h {
        let rgb = [0, 1, 2].map(|ch| &img[ch * n + row * w..][..w]);
        let [y, cb, cr] = &mut ycc;
        let at = row * pw;
        L::rgb_to_ycc(
            rgb,
            [&mut y[at..at + w], &mut cb[at..at + w], &mut cr[at..at + w]],
        );
        for plane in &mut ycc {
            let last = plane[at + w - 1];
            plane[at + w..at + pw].fill(last);
        }
    }
    for plane in &mut ycc {
        for row in h..ph {
            plane.copy_within((h - 1) * pw..h * pw, row * pw);
        }
    }
    let [mut y, cb, cr] = ycc;
    code_plane::<L>(&mut y, dims, (h, w), luma);
    let cdims = (ph / 2, pw / 2);
    let real = (h.div_ceil(2), w.div_ceil(2));
    let (mut cb, mut cr) = (downsample(&cb, dims, real.0), downsample(&cr, dims, real.0));
    code_plane::<L>(&mut cb, cdims, real, chroma);
    code_plane::<L>(&mut cr, cdims, real, chroma);
    let (cb, cr) = (upsample(&cb, cdims.1, real), upsample(&cr, cdims.1, real));
    let uw = 2 * real.1;
    let (rs, rest) = img.split_at_mut(n);
    let (gs, bs) = rest.split_at_mut(n);
    for row in 0..h {
        let ycc = [
            &y[row * pw..][..w],
            &cb[row * uw..][..w],
            &cr[row * uw..][..w],
        ];
        let (ro, go) = (&mut rs[row * w..][..w], &mut gs[row * w..][..w]);
        L::ycc_to_rgb(ycc, [ro, go, &mut bs[row * w..][..w]]);
    }
}

/// JPEG at `quality` and back: three channels as one colour image, any other count one
/// grayscale image per channel. `img` is `c` planes of `h * w` values in `[0, 1]`. Integer
/// arithmetic throughout: the same bytes with or without AVX2.
pub fn round_trip(img: &mut [f32], dims: (usize, usize, usize), quality: u8) {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx2,fma")]
        unsafe fn wide(img: &mut [f32], dims: (usize, usize, usize), quality: u8) {
            plain::<Avx2>(img, dims, quality)
        }
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU has AVX2 and FMA (checked just above).
            return unsafe { wide(img, dims, quality) };
        }
    }
    plain::<Portable>(img, dims, quality)
}

/// The round trip with lanes `L` (AVX2 ones only once the CPU is known to have it).
#[inline(always)]
fn plain<L: Lanes>(img: &mut [f32], (c, h, w): (usize, usize, usize), quality: u8) {
    if h == 0 || w == 0 {
        return;
    }
    let luma = Quant::new(scaled_table(&LUMA, quality));
    if c == 3 {
        let chroma = Quant::new(scaled_table(&CHROMA, quality));
        colour::<L>(img, (h, w), &luma, &chroma);
    } else {
        for plane in img.chunks_exact_mut(h * w) {
            gray::<L>(plane, (h, w), &luma);
        }
    }
}
