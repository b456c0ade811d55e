//! Eight lanes of `i32` and what the block transforms do with them: a portable array, and
//! an AVX2 register for CPUs that have it. Both give the same integers.

use std::ops::{Add, Mul, Sub};

use super::super::unit_to_u8;

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
}

/// `v / 255` for `v` in 0..=255, correctly rounded (the same `f32` as the division, checked
/// for every `v` in a test) by a multiply in `f64`, which vectorises where division is slow.
#[inline(always)]
pub(super) fn byte_to_unit(v: i32) -> f32 {
    (f64::from(v) * (1.0 / 255.0)) as f32
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

#[cfg(target_arch = "x86_64")]
pub(super) use avx2::Avx2;

#[cfg(target_arch = "x86_64")]
mod avx2 {
    //! AVX2 lanes. The one way to make an [`Avx2`] is [`Lanes::load_centred`], and the block
    //! code calls it only after `is_x86_feature_detected!("avx2")`; that is what makes every
    //! intrinsic below sound to call. No closures here: a closure would not inherit the
    //! caller's AVX2, and its intrinsics would become calls.
    #![allow(clippy::undocumented_unsafe_blocks)] // the module's invariant, above

    use super::{Lanes, Rates};
    use crate::corrupt::unit_to_u8;
    use std::arch::x86_64::*;
    use std::ops::{Add, Mul, Sub};

    #[derive(Clone, Copy)]
    pub(in super::super) struct Avx2(__m256i);

    #[inline(always)]
    fn splat(x: i32) -> __m256i {
        unsafe { _mm256_set1_epi32(x) }
    }

    #[inline(always)]
    fn load(a: &[u32; 8]) -> __m256i {
        unsafe { _mm256_loadu_si256(a.as_ptr().cast()) }
    }

    impl Add for Avx2 {
        type Output = Self;
        #[inline(always)]
        fn add(self, o: Self) -> Self {
            Avx2(unsafe { _mm256_add_epi32(self.0, o.0) })
        }
    }

    impl Sub for Avx2 {
        type Output = Self;
        #[inline(always)]
        fn sub(self, o: Self) -> Self {
            Avx2(unsafe { _mm256_sub_epi32(self.0, o.0) })
        }
    }

    impl Mul<i32> for Avx2 {
        type Output = Self;
        #[inline(always)]
        fn mul(self, c: i32) -> Self {
            Avx2(unsafe { _mm256_mullo_epi32(self.0, splat(c)) })
        }
    }

    impl Lanes for Avx2 {
        #[inline(always)]
        fn load_centred(src: &[u8]) -> Self {
            let src = &src[..8];
            unsafe {
                let bytes = _mm_loadl_epi64(src.as_ptr().cast());
                Avx2(_mm256_sub_epi32(_mm256_cvtepu8_epi32(bytes), splat(128)))
            }
        }
        #[inline(always)]
        fn store_limited(self, dst: &mut [u8]) {
            let dst = &mut dst[..8];
            unsafe {
                let i = _mm256_and_si256(self.0, splat(1023));
                let low = _mm256_min_epi32(_mm256_add_epi32(i, splat(128)), splat(255));
                let high = _mm256_max_epi32(_mm256_sub_epi32(i, splat(896)), splat(0));
                let wrapped = _mm256_cmpgt_epi32(i, splat(511));
                let v = _mm256_blendv_epi8(low, high, wrapped);
                let words =
                    _mm_packus_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
                _mm_storel_epi64(dst.as_mut_ptr().cast(), _mm_packus_epi16(words, words));
            }
        }
        #[inline(always)]
        fn up(self, n: u32) -> Self {
            Avx2(unsafe { _mm256_sll_epi32(self.0, _mm_cvtsi32_si128(n as i32)) })
        }
        #[inline(always)]
        fn descale(self, n: u32) -> Self {
            unsafe {
                let v = _mm256_add_epi32(self.0, splat(1 << (n - 1)));
                Avx2(_mm256_sra_epi32(v, _mm_cvtsi32_si128(n as i32)))
            }
        }
        #[inline(always)]
        fn requantize(self, rates: &Rates) -> Self {
            unsafe {
                let sign = _mm256_srai_epi32::<31>(self.0);
                let q = _mm256_add_epi32(_mm256_abs_epi32(self.0), load(&rates.corr));
                let q = _mm256_srlv_epi32(
                    _mm256_mullo_epi32(q, load(&rates.recip)),
                    load(&rates.shift),
                );
                let q = _mm256_sub_epi32(_mm256_xor_si256(q, sign), sign);
                let factor = _mm256_loadu_si256(rates.factor.as_ptr().cast());
                Avx2(_mm256_mullo_epi32(q, factor))
            }
        }
        #[inline(always)]
        fn first(self) -> i32 {
            unsafe { _mm256_cvtsi256_si32(self.0) }
        }
        #[inline(always)]
        fn only_dc(b: &[Self; 8]) -> bool {
            unsafe {
                let mut any = _mm256_blend_epi32::<1>(b[0].0, _mm256_setzero_si256());
                for v in &b[1..] {
                    any = _mm256_or_si256(any, v.0);
                }
                _mm256_testz_si256(any, any) == 1
            }
        }
        #[inline(always)]
        fn units_to_bytes(out: &mut [u8], src: &[f32]) {
            let n = out.len().min(src.len());
            let (mut outs, mut srcs) = (out[..n].chunks_exact_mut(8), src[..n].chunks_exact(8));
            for (o, s) in (&mut outs).zip(&mut srcs) {
                Avx2::eight_to_bytes(o, s);
            }
            for (o, &v) in outs.into_remainder().iter_mut().zip(srcs.remainder()) {
                *o = unit_to_u8(v);
            }
        }
        #[inline(always)]
        fn bytes_to_units(out: &mut [f32], src: &[u8]) {
            let n = out.len().min(src.len());
            let (mut outs, mut srcs) = (out[..n].chunks_exact_mut(8), src[..n].chunks_exact(8));
            for (o, s) in (&mut outs).zip(&mut srcs) {
                unsafe {
                    // byte_to_unit, four lanes of f64 at a time.
                    let v = _mm_cvtepu8_epi32(_mm_loadl_epi64(s.as_ptr().cast()));
                    let w = _mm_cvtepu8_epi32(_mm_loadl_epi64(s.as_ptr().add(4).cast()));
                    let scale = _mm256_set1_pd(1.0 / 255.0);
                    let low = _mm256_cvtpd_ps(_mm256_mul_pd(_mm256_cvtepi32_pd(v), scale));
                    let high = _mm256_cvtpd_ps(_mm256_mul_pd(_mm256_cvtepi32_pd(w), scale));
                    _mm_storeu_ps(o.as_mut_ptr(), low);
                    _mm_storeu_ps(o.as_mut_ptr().add(4), high);
                }
            }
            for (o, &v) in outs.into_remainder().iter_mut().zip(srcs.remainder()) {
                *o = super::byte_to_unit(i32::from(v));
            }
        }
        #[inline(always)]
        fn transpose(b: &mut [Self; 8]) {
            let r = [
                b[0].0, b[1].0, b[2].0, b[3].0, b[4].0, b[5].0, b[6].0, b[7].0,
            ];
            unsafe {
                // Pairs of rows interleaved (2x2 tiles), then pairs of pairs (4x4 tiles in
                // each 128-bit half), then the halves exchanged.
                let t = [
                    _mm256_unpacklo_epi32(r[0], r[1]),
                    _mm256_unpackhi_epi32(r[0], r[1]),
                    _mm256_unpacklo_epi32(r[2], r[3]),
                    _mm256_unpackhi_epi32(r[2], r[3]),
                    _mm256_unpacklo_epi32(r[4], r[5]),
                    _mm256_unpackhi_epi32(r[4], r[5]),
                    _mm256_unpacklo_epi32(r[6], r[7]),
                    _mm256_unpackhi_epi32(r[6], r[7]),
                ];
                let u = [
                    _mm256_unpacklo_epi64(t[0], t[2]),
                    _mm256_unpackhi_epi64(t[0], t[2]),
                    _mm256_unpacklo_epi64(t[1], t[3]),
                    _mm256_unpackhi_epi64(t[1], t[3]),
                    _mm256_unpacklo_epi64(t[4], t[6]),
                    _mm256_unpackhi_epi64(t[4], t[6]),
                    _mm256_unpacklo_epi64(t[5], t[7]),
                    _mm256_unpackhi_epi64(t[5], t[7]),
                ];
                for k in 0..4 {
                    b[k] = Avx2(_mm256_permute2x128_si256::<0x20>(u[k], u[k + 4]));
                    b[k + 4] = Avx2(_mm256_permute2x128_si256::<0x31>(u[k], u[k + 4]));
                }
            }
        }
    }

    impl Avx2 {
        /// `unit_to_u8` of eight values: clamped (NaN to 0), scaled, truncated, plus one
        /// where the exact remainder is at least a half.
        #[inline(always)]
        fn eight_to_bytes(out: &mut [u8], src: &[f32]) {
            let (out, src) = (&mut out[..8], &src[..8]);
            unsafe {
                let x = _mm256_max_ps(_mm256_loadu_ps(src.as_ptr()), _mm256_setzero_ps());
                let x = _mm256_mul_ps(_mm256_min_ps(x, _mm256_set1_ps(1.0)), _mm256_set1_ps(255.0));
                let t = _mm256_cvttps_epi32(x);
                let rest = _mm256_sub_ps(x, _mm256_cvtepi32_ps(t));
                let up =
                    _mm256_castps_si256(_mm256_cmp_ps::<_CMP_GE_OQ>(rest, _mm256_set1_ps(0.5)));
                let v = _mm256_sub_epi32(t, up); // up: -1 or 0
                let words =
                    _mm_packus_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
                _mm_storel_epi64(out.as_mut_ptr().cast(), _mm_packus_epi16(words, words));
            }
        }

        /// The lanes as an array (for tests).
        #[cfg(test)]
        pub(in super::super) fn to_array(self) -> [i32; 8] {
            let mut out = [0i32; 8];
            unsafe { _mm256_storeu_si256(out.as_mut_ptr().cast(), self.0) };
            out
        }
    }
}
