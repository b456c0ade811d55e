//! Noise: Gaussian, shot (Poisson) and impulse (salt and pepper), drawn independently for
//! every value of every channel.

use rand::Rng;
use rand_distr::{Distribution, Poisson, StandardNormal};

use super::{Planes, Table};

/// Standard deviation of the added noise (values in [0, 1]).
const GAUSSIAN: [[f32; 5]; 2] = [
    [0.04, 0.06, 0.08, 0.09, 0.10],
    [0.08, 0.12, 0.18, 0.26, 0.38],
];
/// Photons per unit intensity: `x' = Poisson(x * c) / c`.
const SHOT: [[f64; 5]; 2] = [
    [500.0, 250.0, 100.0, 75.0, 50.0],
    [60.0, 25.0, 12.0, 5.0, 3.0],
];
/// Fraction of values replaced, half by 0 and half by 1.
const IMPULSE: [[f64; 5]; 2] = [
    [0.01, 0.02, 0.03, 0.05, 0.07],
    [0.03, 0.06, 0.09, 0.17, 0.27],
];

/// `x + N(0, c^2)`.
pub fn gaussian<R: Rng>(img: &mut Planes, t: Table, s: u8, rng: &mut R) {
    let c = t.pick(&GAUSSIAN, s);
    for v in &mut img.data {
        let z: f32 = StandardNormal.sample(rng);
        *v += c * z;
    }
}

/// `Poisson(x * c) / c`.
pub fn shot<R: Rng>(img: &mut Planes, t: Table, s: u8, rng: &mut R) {
    let c = t.pick(&SHOT, s);
    for v in &mut img.data {
        let lambda = f64::from(v.max(0.0)) * c;
        let k = match Poisson::new(lambda) {
            Ok(p) => p.sample(rng),
            Err(_) => 0.0, // lambda == 0: no photons
        };
        *v = (k / c) as f32;
    }
}

/// Each value becomes, with probability `c`, 0 or 1 (a fair coin).
pub fn impulse<R: Rng>(img: &mut Planes, t: Table, s: u8, rng: &mut R) {
    let amount = t.pick(&IMPULSE, s);
    for v in &mut img.data {
        if rng.random::<f64>() < amount {
            *v = if rng.random::<f64>() < 0.5 { 1.0 } else { 0.0 };
        }
    }
}
