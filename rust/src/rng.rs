//! Per-sample random number generators keyed on `(seed, epoch, index, purpose)`.
//!
//! Every random draw of the loader comes from a generator built here from a hash of its
//! key, never from a generator shared between threads, so a batch does not depend on the
//! number of threads, on prefetching or on where iteration started.

use rand_pcg::Pcg64Mcg;

/// What a generator is used for; part of its key so the streams are independent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Purpose {
    /// The epoch's permutation of the dataset (index is unused).
    Shuffle,
    /// Augmentation parameters of one sample.
    Augment,
    /// The `k`-th patch mask of one sample.
    Mask(u32),
    /// The noise level sigma of one sample.
    Sigma,
    /// The seed handed to the device to draw the noise field.
    NoiseSeed,
}

impl Purpose {
    fn code(self) -> u64 {
        match self {
            Purpose::Shuffle => 1,
            Purpose::Augment => 2,
            Purpose::Sigma => 3,
            Purpose::NoiseSeed => 4,
            Purpose::Mask(k) => 0x100 + u64::from(k),
        }
    }
}

/// SplitMix64's output function: a bijective 64-bit mixer.
pub fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A 64-bit hash of the key, chaining SplitMix64 over its parts.
pub fn key_hash(seed: u64, epoch: u64, index: u64, purpose: Purpose) -> u64 {
    let mut h = splitmix64(seed ^ 0x6D69_6D69_725F_6661); // "mimir_fa"
    h = splitmix64(h ^ epoch);
    h = splitmix64(h ^ index);
    splitmix64(h ^ purpose.code())
}

/// The generator for one key (128-bit PCG state from two hashes).
pub fn rng_for(seed: u64, epoch: u64, index: u64, purpose: Purpose) -> Pcg64Mcg {
    let a = key_hash(seed, epoch, index, purpose);
    let b = splitmix64(a ^ 0xA5A5_A5A5_A5A5_A5A5);
    Pcg64Mcg::new((u128::from(a) << 64) | u128::from(b))
}

/// A generator from a single 64-bit seed (used for host-side noise from `noise_seed`).
pub fn rng_from_seed(seed: u64) -> Pcg64Mcg {
    let a = splitmix64(seed);
    let b = splitmix64(a ^ 0x5A5A_5A5A_5A5A_5A5A);
    Pcg64Mcg::new((u128::from(a) << 64) | u128::from(b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::Rng;

    #[test]
    fn same_key_same_stream() {
        let mut a = rng_for(7, 3, 42, Purpose::Augment);
        let mut b = rng_for(7, 3, 42, Purpose::Augment);
        for _ in 0..100 {
            assert_eq!(a.random::<u64>(), b.random::<u64>());
        }
    }

    #[test]
    fn different_keys_differ() {
        let base = rng_for(7, 3, 42, Purpose::Augment).random::<u64>();
        assert_ne!(base, rng_for(8, 3, 42, Purpose::Augment).random::<u64>());
        assert_ne!(base, rng_for(7, 4, 42, Purpose::Augment).random::<u64>());
        assert_ne!(base, rng_for(7, 3, 43, Purpose::Augment).random::<u64>());
        assert_ne!(base, rng_for(7, 3, 42, Purpose::Sigma).random::<u64>());
        let m0 = rng_for(7, 3, 42, Purpose::Mask(0)).random::<u64>();
        let m1 = rng_for(7, 3, 42, Purpose::Mask(1)).random::<u64>();
        assert_ne!(m0, m1);
    }

    #[test]
    fn splitmix_known_value() {
        // First output of the reference SplitMix64 generator seeded with 0.
        assert_eq!(splitmix64(0), 0xE220_A839_7B1D_CDAF);
    }
}
