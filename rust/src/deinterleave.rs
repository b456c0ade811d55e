//! Interleaved RGB bytes to three `f32` planes in `[0, 1]` (`v / 255`, correctly rounded):
//! the loader's last step for most images. AVX2 shuffles and FMA eight pixels at a time
//! where the CPU has them, else one value at a time from a table; the same floats either way.

use crate::augment::U8_TO_F32;

/// Pixel `x` of `src` (3 bytes a pixel) into `planes[ch][x]`, or into `planes[ch][n - 1 - x]`
/// where `flip`, for the `n` pixels of the shortest plane.
pub fn rgb_to_planes(planes: [&mut [f32]; 3], src: &[u8], flip: bool) {
    let n = planes
        .iter()
        .map(|p| p.len())
        .min()
        .unwrap_or(0)
        .min(src.len() / 3);
    let [r, g, b] = planes;
    let (r, g, b) = (&mut r[..n], &mut g[..n], &mut b[..n]);
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has AVX2 and FMA (checked just above).
        done = unsafe { wide::rgb_to_planes([r, g, b], src, flip) };
    }
    for x in done..n {
        let at = if flip { n - 1 - x } else { x };
        r[at] = U8_TO_F32[usize::from(src[3 * x])];
        g[at] = U8_TO_F32[usize::from(src[3 * x + 1])];
        b[at] = U8_TO_F32[usize::from(src[3 * x + 2])];
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) use wide::div255;

#[cfg(target_arch = "x86_64")]
mod wide {
    use std::arch::x86_64::*;

    /// `v / 255` in each lane for integers `v` in 0..=255: the product with 1/255, corrected
    /// by its exact residual (the correctly rounded quotient for every byte, as the tests
    /// check).
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    pub(crate) fn div255(v: __m256) -> __m256 {
        let q = _mm256_mul_ps(v, _mm256_set1_ps(1.0 / 255.0));
        let residual = _mm256_fnmadd_ps(q, _mm256_set1_ps(255.0), v);
        _mm256_fmadd_ps(residual, _mm256_set1_ps(1.0 / 255.0), q)
    }

    /// The first pixels, eight at a time while 24 bytes remain; returns how many.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn rgb_to_planes(planes: [&mut [f32]; 3], src: &[u8], flip: bool) -> usize {
        let n = planes[0].len();
        // Bytes of each channel in the 16 bytes at 3x (`low`) and at 3x + 8 (`high`); -1
        // (0x80) leaves a zero to be ORed with the other half.
        const Z: i8 = -1;
        let low = [
            _mm_setr_epi8(0, 3, 6, 9, 12, 15, Z, Z, Z, Z, Z, Z, Z, Z, Z, Z),
            _mm_setr_epi8(1, 4, 7, 10, 13, Z, Z, Z, Z, Z, Z, Z, Z, Z, Z, Z),
            _mm_setr_epi8(2, 5, 8, 11, 14, Z, Z, Z, Z, Z, Z, Z, Z, Z, Z, Z),
        ];
        let high = [
            _mm_setr_epi8(Z, Z, Z, Z, Z, Z, 10, 13, Z, Z, Z, Z, Z, Z, Z, Z),
            _mm_setr_epi8(Z, Z, Z, Z, Z, 8, 11, 14, Z, Z, Z, Z, Z, Z, Z, Z),
            _mm_setr_epi8(Z, Z, Z, Z, Z, 9, 12, 15, Z, Z, Z, Z, Z, Z, Z, Z),
        ];
        let reverse = _mm256_setr_epi32(7, 6, 5, 4, 3, 2, 1, 0);
        let mut x = 0;
        while x + 8 <= n && 3 * x + 24 <= src.len() {
            // SAFETY: bytes 3x..3x + 24 are in `src` (the loop's condition).
            let (a, b) = unsafe {
                (
                    _mm_loadu_si128(src.as_ptr().add(3 * x).cast()),
                    _mm_loadu_si128(src.as_ptr().add(3 * x + 8).cast()),
                )
            };
            for ch in 0..3 {
                let bytes =
                    _mm_or_si128(_mm_shuffle_epi8(a, low[ch]), _mm_shuffle_epi8(b, high[ch]));
                let units = div255(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(bytes)));
                let (units, at) = if flip {
                    (_mm256_permutevar8x32_ps(units, reverse), n - 8 - x)
                } else {
                    (units, x)
                };
                let plane = &mut planes[ch][at..at + 8];
                // SAFETY: `plane` holds the eight floats written.
                unsafe { _mm256_storeu_ps(plane.as_mut_ptr(), units) };
            }
            x += 8;
        }
        x
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn planes_hold_each_byte_over_255_flipped_or_not() {
        // Every byte value in every channel and position, widths off the multiple of 8.
        for n in [0, 1, 7, 8, 9, 23, 64, 85] {
            let src: Vec<u8> = (0..3 * n).map(|k| (k * 97 + 13) as u8).collect();
            for flip in [false, true] {
                let mut planes = vec![vec![-1f32; n]; 3];
                let [r, g, b] = &mut planes[..] else {
                    unreachable!()
                };
                rgb_to_planes([r, g, b], &src, flip);
                for x in 0..n {
                    let at = if flip { n - 1 - x } else { x };
                    for ch in 0..3 {
                        let want = f32::from(src[3 * x + ch]) / 255.0;
                        assert_eq!(planes[ch][at], want, "n {n} flip {flip} x {x} ch {ch}");
                    }
                }
            }
        }
        let every: Vec<u8> = (0..=255).flat_map(|v| [v, 255 - v, v / 2]).collect();
        let mut planes = vec![vec![0f32; 256]; 3];
        let [r, g, b] = &mut planes[..] else {
            unreachable!()
        };
        rgb_to_planes([r, g, b], &every, false);
        for v in 0..=255u8 {
            assert_eq!(planes[0][usize::from(v)], f32::from(v) / 255.0);
        }
    }
}
