//! Eight lanes of `i32` and what the block transforms do with them: a portable array, and
//! an AVX2 register for CPUs that have it. Both give the same integers.

use std::ops::{Add, Mul, Sub};

use super::super::unit_to_u8;
use crate::augment::U8_TO_F32;

/// The quantisation of one row of coefficients, a lane a coefficient: libjpeg-turbo's
/// reciprocal, rounding correction and shift of each divisor, and the dequantisation factor.
#[derive(Clone, Copy)]
pub(super) struct Rates {
    pub(super) recip: [u32; 8],
    pub(super) corr: [u32; 8],
    pub(super) shift: [u32; 8],
    pub(super) factor: [i32; 8],
}

/// Eight `i32` lanes, worked on element-wise, and the loads, stores and shuffles of a block.
pub(super) trait Lanes:
    Copy + Add<Output = Self> + Sub<Output = Self> + Mul<i32, Output = Self>
{
    /// Eight samples from `src[..8]`, less 128 (libjpeg's level shift).
    fn load_centred(src: &[u8]) -> Self;
    /// libjpeg's output range limit of each lane into `dst[..8]`: `x + 128` clamped to
    /// 0..=255 for `|x| <= 512`, wrapping (mod 1024) beyond, as its lookup table does.
    fn store_limited(self, dst: &mut [u8]);
    /// `x << n`.
    fn up(self, n: u32) -> Self;
    /// `x / 2^n` rounded (half up), libjpeg's DESCALE.
    fn descale(self, n: u32) -> Self;
    /// Quantised (divided, rounded to nearest, halves away from zero) and dequantised.
    fn requantize(self, rates: &Rates) -> Self;
    /// Lane 0.
    fn first(self) -> i32;
    /// Whether every lane of every vector is zero, lane 0 of `b[0]` (the DC) aside.
    fn only_dc(b: &[Self; 8]) -> bool;
    /// Swap rows and columns.
    fn transpose(b: &mut [Self; 8]);
    /// `unit_to_u8` of each of `src` into `out`, as far as the shorter goes (the round
    /// trip's way in).
    fn units_to_bytes(out: &mut [u8], src: &[f32]) {
        for (o, &v) in out.iter_mut().zip(src) {
            *o = unit_to_u8(v);
        }
    }
    /// `v / 255` of each of `src` into `out`, as far as the shorter goes (its way out).
    fn bytes_to_units(out: &mut [f32], src: &[u8]) {
        for (o, &v) in out.iter_mut().zip(src) {
            *o = byte_to_unit(i32::from(v));
        }
    }
    /// One row of colour: `unit_to_u8` of each red, green and blue, then [`ycc_of`], for
    /// the `ycc[0].len()` pixels.
    fn rgb_to_ycc([r, g, b]: [&[f32]; 3], [y, cb, cr]: [&mut [u8]; 3]) {
        for x in 0..y.len() {
            [y[x], cb[x], cr[x]] = ycc_of([r[x], g[x], b[x]].map(unit_to_u8));
        }
    }
    /// One row of colour back: [`rgb_of`], over 255, for the `rgb[0].len()` pixels.
    fn ycc_to_rgb([y, cb, cr]: [&[u8]; 3], [r, g, b]: [&mut [f32]; 3]) {
        for x in 0..r.len() {
            let rgb = rgb_of([y[x], cb[x], cr[x]]);
            (r[x], g[x], b[x]) = (
                byte_to_unit(rgb[0]),
                byte_to_unit(rgb[1]),
                byte_to_unit(rgb[2]),
            );
        }
    }
}

/// `round(x * 2^16)`, libjpeg's FIX for its colour conversions.
pub(super) const fn fix(x: f64) -> i32 {
    (x * 65536.0 + 0.5) as i32
}
pub(super) const HALF: i32 = 1 << 15;
/// The rounding and the +128 of the chroma channels, together.
pub(super) const CHROMA_BIAS: i32 = (128 << 16) + HALF - 1;

/// libjpeg's RGB to YCbCr of one pixel, in 16-bit fixed point.
#[inline(always)]
pub(super) fn ycc_of([r, g, b]: [u8; 3]) -> [u8; 3] {
    let (r, g, b) = (i32::from(r), i32::from(g), i32::from(b));
    [
        (fix(0.299) * r + fix(0.587) * g + fix(0.114) * b + HALF) >> 16,
        (-fix(0.16874) * r - fix(0.33126) * g + fix(0.5) * b + CHROMA_BIAS) >> 16,
        (fix(0.5) * r - fix(0.41869) * g - fix(0.08131) * b + CHROMA_BIAS) >> 16,
    ]
    .map(|v| v as u8)
}

/// libjpeg's YCbCr to RGB of one pixel, clamped to 0..=255.
#[inline(always)]
pub(super) fn rgb_of([l, u, v]: [u8; 3]) -> [i32; 3] {
    let (l, u, v) = (i32::from(l), i32::from(u) - 128, i32::from(v) - 128);
    [
        l + ((fix(1.402) * v + HALF) >> 16),
        l + ((-fix(0.34414) * u + HALF - fix(0.71414) * v) >> 16),
        l + ((fix(1.772) * u + HALF) >> 16),
    ]
    .map(|x| x.clamp(0, 255))
}

/// `v / 255` for `v` in 0..=255 (the loader's table of the divisions).
#[inline(always)]
pub(super) fn byte_to_unit(v: i32) -> f32 {
    U8_TO_F32[v as usize]
}

/// The output range limit of one value (see [`Lanes::store_limited`]).
#[inline(always)]
pub(super) fn range_limit(x: i32) -> u8 {
    let i = x & 1023;
    (if i < 512 {
        (i + 128).min(255)
    } else {
        (i - 896).max(0)
    }) as u8
}

/// The divided-and-rounded value of one lane (see [`Lanes::requantize`]), branch-free.
#[inline(always)]
fn quantize(t: i32, rates: &Rates, k: usize) -> i32 {
    let sign = t >> 31; // 0 or -1
    let q = (((t ^ sign) - sign) as u32 + rates.corr[k]) * rates.recip[k];
    ((q >> rates.shift[k]) as i32 ^ sign) - sign
}

/// Portable lanes: an array the compiler may vectorise.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(super) struct Portable(pub(super) [i32; 8]);

impl Portable {
    #[inline(always)]
    fn map(self, f: impl Fn(i32) -> i32) -> Self {
        Portable(self.0.map(f))
    }
    #[inline(always)]
    fn zip(self, o: Self, f: impl Fn(i32, i32) -> i32) -> Self {
        Portable(std::array::from_fn(|k| f(self.0[k], o.0[k])))
    }
}

impl Add for Portable {
    type Output = Self;
    #[inline(always)]
    fn add(self, o: Self) -> Self {
        self.zip(o, |a, b| a + b)
    }
}

impl Sub for Portable {
    type Output = Self;
    #[inline(always)]
    fn sub(self, o: Self) -> Self {
        self.zip(o, |a, b| a - b)
    }
}

impl Mul<i32> for Portable {
    type Output = Self;
    #[inline(always)]
    fn mul(self, c: i32) -> Self {
        self.map(|a| a * c)
    }
}

impl Lanes for Portable {
    #[inline(always)]
    fn load_centred(src: &[u8]) -> Self {
        Portable(std::array::from_fn(|k| i32::from(src[k]) - 128))
    }
    #[inline(always)]
    fn store_limited(self, dst: &mut [u8]) {
        for (o, &v) in dst[..8].iter_mut().zip(&self.0) {
            *o = range_limit(v);
        }
    }
    #[inline(always)]
    fn up(self, n: u32) -> Self {
        self.map(|a| a << n)
    }
    #[inline(always)]
    fn descale(self, n: u32) -> Self {
        self.map(|a| (a + (1 << (n - 1))) >> n)
    }
    #[inline(always)]
    fn requantize(self, rates: &Rates) -> Self {
        Portable(std::array::from_fn(|k| {
            quantize(self.0[k], rates, k) * rates.factor[k]
        }))
    }
    #[inline(always)]
    fn first(self) -> i32 {
        self.0[0]
    }
    #[inline(always)]
    fn only_dc(b: &[Self; 8]) -> bool {
        b[0].0[1..].iter().all(|&x| x == 0) && b[1..].iter().all(|v| v.0 == [0; 8])
    }
    #[inline(always)]
    fn transpose(b: &mut [Self; 8]) {
        for i in 0..8 {
            for j in i + 1..8 {
                let t = b[i].0[j];
                b[i].0[j] = b[j].0[i];
                b[j].0[i] = t;
            }
        }
    }
}
