//! MAE's per-sample random patch masking.
//!
//! A mask is a uniformly random permutation `ids_shuffle` of the `L` patches; the first
//! `len_keep = int(L * (1 - ratio))` are kept. As in `mimir_fast.ops.random_masking`:
//! `ids_keep = ids_shuffle[..len_keep]`, `ids_restore` is the inverse permutation
//! (`ids_restore[ids_shuffle[j]] = j`) and `mask[p] = 1` exactly when patch `p` is removed.

use rand::Rng;

/// `int(L * (1 - ratio))` computed as Python does (float64 product, truncation).
pub fn len_keep(num_patches: usize, ratio: f64) -> usize {
    let v = num_patches as f64 * (1.0 - ratio);
    if v <= 0.0 {
        0
    } else {
        (v.trunc() as usize).min(num_patches)
    }
}

/// Draw one mask into the given slices.
///
/// `ids_keep` has length `len_keep`; `mask` and `ids_restore` have length `L`; `scratch`
/// is a work buffer of length `L` (receives `ids_shuffle`).
pub fn draw_mask<R: Rng>(
    rng: &mut R,
    ids_keep: &mut [i64],
    mask: &mut [f32],
    ids_restore: &mut [i64],
    scratch: &mut [u32],
) {
    let l = mask.len();
    let keep = ids_keep.len();
    debug_assert_eq!(ids_restore.len(), l);
    debug_assert_eq!(scratch.len(), l);
    for (i, s) in scratch.iter_mut().enumerate() {
        *s = i as u32;
    }
    // Fisher-Yates: position i receives a uniform pick among positions i..L.
    for i in 0..l.saturating_sub(1) {
        let j = rng.random_range(i..l);
        scratch.swap(i, j);
    }
    for (j, &p) in scratch.iter().enumerate() {
        ids_restore[p as usize] = j as i64;
        mask[p as usize] = if j >= keep { 1.0 } else { 0.0 };
    }
    for (dst, &p) in ids_keep.iter_mut().zip(scratch.iter()) {
        *dst = i64::from(p);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::{rng_for, Purpose};

    #[test]
    fn len_keep_matches_python_int() {
        assert_eq!(len_keep(256, 0.75), 64);
        assert_eq!(len_keep(49, 0.75), 12); // int(12.25)
        assert_eq!(len_keep(196, 0.0), 196);
        assert_eq!(len_keep(10, 1.0), 0);
        assert_eq!(len_keep(10, 0.33), 6); // int(6.7)
    }

    #[test]
    fn masks_are_valid_permutations() {
        for (l, ratio) in [(1usize, 0.5), (7, 0.75), (64, 0.75), (256, 0.9), (16, 0.0)] {
            let keep = len_keep(l, ratio);
            for idx in 0..50u64 {
                let mut rng = rng_for(1, 0, idx, Purpose::Mask(0));
                let mut ids_keep = vec![0i64; keep];
                let mut mask = vec![0f32; l];
                let mut restore = vec![0i64; l];
                let mut scratch = vec![0u32; l];
                draw_mask(
                    &mut rng,
                    &mut ids_keep,
                    &mut mask,
                    &mut restore,
                    &mut scratch,
                );
                // scratch is ids_shuffle: a permutation
                let mut seen = vec![false; l];
                for &p in &scratch {
                    assert!(!seen[p as usize]);
                    seen[p as usize] = true;
                }
                for (j, &p) in scratch.iter().enumerate() {
                    assert_eq!(restore[p as usize], j as i64);
                }
                assert_eq!(mask.iter().filter(|&&m| m == 0.0).count(), keep);
                for &k in &ids_keep {
                    assert_eq!(mask[k as usize], 0.0);
                }
                let removed = mask.iter().filter(|&&m| m == 1.0).count();
                assert_eq!(removed, l - keep);
            }
        }
    }

    #[test]
    fn keep_frequency_roughly_uniform() {
        let l = 16;
        let keep = 4;
        let trials = 20_000u64;
        let mut counts = vec![0u32; l];
        let mut ids_keep = vec![0i64; keep];
        let mut mask = vec![0f32; l];
        let mut restore = vec![0i64; l];
        let mut scratch = vec![0u32; l];
        for idx in 0..trials {
            let mut rng = rng_for(3, 1, idx, Purpose::Mask(0));
            draw_mask(
                &mut rng,
                &mut ids_keep,
                &mut mask,
                &mut restore,
                &mut scratch,
            );
            for &k in &ids_keep {
                counts[k as usize] += 1;
            }
        }
        // Each count ~ Binomial(trials, 1/4): sd = sqrt(20000 * 0.25 * 0.75) ~ 61; allow 6 sd.
        let expect = trials as f64 * keep as f64 / l as f64;
        let sd = (trials as f64 * 0.25 * 0.75).sqrt();
        for &c in &counts {
            assert!((f64::from(c) - expect).abs() < 6.0 * sd, "{c} vs {expect}");
        }
    }
}
