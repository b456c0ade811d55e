//! AVX2 lanes (see [`super::lanes`]). The round trip uses [`Avx2`] only after
//! `is_x86_feature_detected!` found AVX2 and FMA; that is what makes every intrinsic below
//! sound to call. No closures here: a closure would not inherit the caller's features, and
//! its intrinsics would become calls.
#![allow(clippy::undocumented_unsafe_blocks)] // the module's invariant, above

use super::lanes::{byte_to_unit, fix, rgb_of, ycc_of, Lanes, Rates, CHROMA_BIAS, HALF};
use crate::corrupt::unit_to_u8;
use crate::deinterleave::div255;
use std::arch::x86_64::*;
use std::ops::{Add, Mul, Sub};

#[derive(Clone, Copy)]
pub(super) struct Avx2(__m256i);

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
            Avx2::store_bytes(Avx2::eight_units(s), o);
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
            Avx2::store_units(Avx2::load_bytes(s), o);
        }
        for (o, &v) in outs.into_remainder().iter_mut().zip(srcs.remainder()) {
            *o = byte_to_unit(i32::from(v));
        }
    }
    #[inline(always)]
    fn rgb_to_ycc([r, g, b]: [&[f32]; 3], [y, cb, cr]: [&mut [u8]; 3]) {
        let n = y.len();
        let mut x = 0;
        while x + 8 <= n {
            let rgb = [
                Avx2::eight_units(&r[x..]),
                Avx2::eight_units(&g[x..]),
                Avx2::eight_units(&b[x..]),
            ];
            let luma = [fix(0.299), fix(0.587), fix(0.114)];
            let blue = [-fix(0.16874), -fix(0.33126), fix(0.5)];
            let red = [fix(0.5), -fix(0.41869), -fix(0.08131)];
            Avx2::store_bytes(Avx2::fixed(rgb, luma, HALF), &mut y[x..]);
            Avx2::store_bytes(Avx2::fixed(rgb, blue, CHROMA_BIAS), &mut cb[x..]);
            Avx2::store_bytes(Avx2::fixed(rgb, red, CHROMA_BIAS), &mut cr[x..]);
            x += 8;
        }
        for x in x..n {
            [y[x], cb[x], cr[x]] = ycc_of([unit_to_u8(r[x]), unit_to_u8(g[x]), unit_to_u8(b[x])]);
        }
    }
    #[inline(always)]
    fn ycc_to_rgb([y, cb, cr]: [&[u8]; 3], [r, g, b]: [&mut [f32]; 3]) {
        let n = r.len();
        let mut x = 0;
        let (zero, top) = (unsafe { _mm256_setzero_si256() }, splat(255));
        while x + 8 <= n {
            let l = Avx2::load_bytes(&y[x..]);
            let (u, v) = unsafe {
                (
                    _mm256_sub_epi32(Avx2::load_bytes(&cb[x..]), splat(128)),
                    _mm256_sub_epi32(Avx2::load_bytes(&cr[x..]), splat(128)),
                )
            };
            let uv = [zero, u, v];
            let red = Avx2::fixed(uv, [0, 0, fix(1.402)], HALF);
            let green = Avx2::fixed(uv, [0, -fix(0.34414), -fix(0.71414)], HALF);
            let blue = Avx2::fixed(uv, [0, fix(1.772), 0], HALF);
            unsafe {
                let (r8, g8, b8) = (
                    _mm256_add_epi32(l, red),
                    _mm256_add_epi32(l, green),
                    _mm256_add_epi32(l, blue),
                );
                Avx2::store_units(
                    _mm256_min_epi32(_mm256_max_epi32(r8, zero), top),
                    &mut r[x..],
                );
                Avx2::store_units(
                    _mm256_min_epi32(_mm256_max_epi32(g8, zero), top),
                    &mut g[x..],
                );
                Avx2::store_units(
                    _mm256_min_epi32(_mm256_max_epi32(b8, zero), top),
                    &mut b[x..],
                );
            }
            x += 8;
        }
        for x in x..n {
            let [rv, gv, bv] = rgb_of([y[x], cb[x], cr[x]]);
            (r[x], g[x], b[x]) = (byte_to_unit(rv), byte_to_unit(gv), byte_to_unit(bv));
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
    /// `unit_to_u8` of eight values, in `i32` lanes: clamped (NaN to 0), scaled,
    /// truncated, plus one where the exact remainder is at least a half.
    #[inline(always)]
    fn eight_units(src: &[f32]) -> __m256i {
        let src = &src[..8];
        unsafe {
            let x = _mm256_max_ps(_mm256_loadu_ps(src.as_ptr()), _mm256_setzero_ps());
            let x = _mm256_mul_ps(_mm256_min_ps(x, _mm256_set1_ps(1.0)), _mm256_set1_ps(255.0));
            let t = _mm256_cvttps_epi32(x);
            let rest = _mm256_sub_ps(x, _mm256_cvtepi32_ps(t));
            let up = _mm256_castps_si256(_mm256_cmp_ps::<_CMP_GE_OQ>(rest, _mm256_set1_ps(0.5)));
            _mm256_sub_epi32(t, up) // up: -1 or 0
        }
    }

    /// Eight `i32` lanes in 0..=255 as bytes into `out[..8]`.
    #[inline(always)]
    fn store_bytes(v: __m256i, out: &mut [u8]) {
        let out = &mut out[..8];
        unsafe {
            let words =
                _mm_packus_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
            _mm_storel_epi64(out.as_mut_ptr().cast(), _mm_packus_epi16(words, words));
        }
    }

    /// Eight bytes from `src[..8]` as `i32` lanes.
    #[inline(always)]
    fn load_bytes(src: &[u8]) -> __m256i {
        let src = &src[..8];
        unsafe { _mm256_cvtepu8_epi32(_mm_loadl_epi64(src.as_ptr().cast())) }
    }

    /// Eight `i32` lanes in 0..=255, over 255, into `out[..8]`.
    #[inline(always)]
    fn store_units(v: __m256i, out: &mut [f32]) {
        let out = &mut out[..8];
        unsafe { _mm256_storeu_ps(out.as_mut_ptr(), div255(_mm256_cvtepi32_ps(v))) };
    }

    /// `(a * ka + b * kb + c * kc + bias) >> 16` in each lane.
    #[inline(always)]
    fn fixed([a, b, c]: [__m256i; 3], [ka, kb, kc]: [i32; 3], bias: i32) -> __m256i {
        unsafe {
            let ab = _mm256_add_epi32(
                _mm256_mullo_epi32(a, splat(ka)),
                _mm256_mullo_epi32(b, splat(kb)),
            );
            let cd = _mm256_add_epi32(_mm256_mullo_epi32(c, splat(kc)), splat(bias));
            _mm256_srai_epi32::<16>(_mm256_add_epi32(ab, cd))
        }
    }

    /// The lanes as an array (for tests).
    #[cfg(test)]
    pub(super) fn to_array(self) -> [i32; 8] {
        let mut out = [0i32; 8];
        unsafe { _mm256_storeu_si256(out.as_mut_ptr().cast(), self.0) };
        out
    }
}
