//! Per-sample noise levels (sigma on the 0..255 scale) and host-side noisy images.

use rand::Rng;
use rand_distr::{Distribution, Gamma, StandardNormal};

use crate::rng::{rng_for, rng_from_seed, Purpose};

/// How sigma is drawn for each sample (the parameters are checked on the Python side, by
/// `mimir_fast.noise.parse_sigma_spec`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum SigmaSpec {
    /// Gamma with shape `k` and scale `theta` (mean `k * theta`); NIM uses Gamma(25, 3).
    Gamma { k: f64, theta: f64 },
    /// Uniform on `[a, b)`.
    Uniform { a: f64, b: f64 },
    /// The same value for every sample.
    Constant(f64),
}

impl SigmaSpec {
    /// Draw sigma for one sample from its own generator.
    pub fn sample(&self, seed: u64, epoch: u64, index: u64) -> f32 {
        let mut rng = rng_for(seed, epoch, index, Purpose::Sigma);
        self.sample_with(&mut rng)
    }

    /// Draw sigma from the given generator (parameters must be valid).
    pub fn sample_with<R: Rng>(&self, rng: &mut R) -> f32 {
        match *self {
            SigmaSpec::Gamma { k, theta } => match Gamma::new(k, theta) {
                Ok(g) => g.sample(rng) as f32,
                Err(_) => f32::NAN,
            },
            SigmaSpec::Uniform { a, b } => (a + (b - a) * rng.random::<f64>()) as f32,
            SigmaSpec::Constant(v) => v as f32,
        }
    }
}

/// The per-sample seed handed to the device (non-negative, fits an int64).
pub fn noise_seed(seed: u64, epoch: u64, index: u64) -> i64 {
    let mut rng = rng_for(seed, epoch, index, Purpose::NoiseSeed);
    (rng.random::<u64>() >> 1) as i64
}

/// `noisy = clean + sigma / 255 * z` with `z ~ N(0, 1)` drawn from `noise_seed` (no clamping).
pub fn add_noise(clean: &[f32], noisy: &mut [f32], sigma: f32, seed: i64) {
    let mut rng = rng_from_seed(seed as u64);
    let s = sigma / 255.0;
    for (o, &c) in noisy.iter_mut().zip(clean) {
        let z: f32 = StandardNormal.sample(&mut rng);
        *o = c + s * z;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn moments(spec: SigmaSpec, n: u64) -> (f64, f64) {
        let xs: Vec<f64> = (0..n).map(|i| f64::from(spec.sample(11, 2, i))).collect();
        let mean = xs.iter().sum::<f64>() / n as f64;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n as f64 - 1.0);
        (mean, var)
    }

    #[test]
    fn gamma_moments() {
        let (k, theta) = (25.0, 3.0);
        let n = 40_000u64;
        let (mean, var) = moments(SigmaSpec::Gamma { k, theta }, n);
        let true_mean = k * theta;
        let true_var = k * theta * theta;
        // mean: 5 standard errors; variance: SE of s^2 is sqrt((mu4 - sigma^4 (n-3)/(n-1)) / n),
        // for Gamma mu4 = (3k^2 + 6k) theta^4.
        let se_mean = (true_var / n as f64).sqrt();
        assert!((mean - true_mean).abs() < 5.0 * se_mean, "mean {mean}");
        let mu4 = (3.0 * k * k + 6.0 * k) * theta.powi(4);
        let se_var = ((mu4 - true_var * true_var) / n as f64).sqrt();
        assert!((var - true_var).abs() < 5.0 * se_var, "var {var}");
    }

    #[test]
    fn uniform_moments_and_range() {
        let (a, b) = (10.0, 50.0);
        let n = 40_000u64;
        let spec = SigmaSpec::Uniform { a, b };
        for i in 0..1000 {
            let s = f64::from(spec.sample(1, 0, i));
            assert!((a..=b).contains(&s));
        }
        let (mean, var) = moments(spec, n);
        let true_var = (b - a).powi(2) / 12.0;
        assert!((mean - (a + b) / 2.0).abs() < 5.0 * (true_var / n as f64).sqrt());
        let mu4 = (b - a).powi(4) / 80.0;
        let se_var = ((mu4 - true_var * true_var) / n as f64).sqrt();
        assert!((var - true_var).abs() < 5.0 * se_var);
    }

    #[test]
    fn constant_is_constant() {
        assert_eq!(SigmaSpec::Constant(12.5).sample(0, 0, 3), 12.5);
        assert_eq!(SigmaSpec::Constant(12.5).sample(4, 1, 9), 12.5);
    }

    #[test]
    fn noise_is_deterministic_and_scaled() {
        let clean = vec![0.5f32; 20_000];
        let mut a = vec![0f32; clean.len()];
        let mut b = vec![0f32; clean.len()];
        add_noise(&clean, &mut a, 51.0, 1234);
        add_noise(&clean, &mut b, 51.0, 1234);
        assert_eq!(a, b);
        let n = a.len() as f64;
        let mean = a.iter().map(|&x| f64::from(x)).sum::<f64>() / n;
        let sd = (a
            .iter()
            .map(|&x| (f64::from(x) - mean).powi(2))
            .sum::<f64>()
            / n)
            .sqrt();
        assert!((mean - 0.5).abs() < 5.0 * 0.2 / n.sqrt());
        assert!((sd - 0.2).abs() < 0.01, "sd {sd}");
        assert!(noise_seed(1, 2, 3) >= 0);
        assert_eq!(noise_seed(1, 2, 3), noise_seed(1, 2, 3));
        assert_ne!(noise_seed(1, 2, 3), noise_seed(1, 2, 4));
    }
}
