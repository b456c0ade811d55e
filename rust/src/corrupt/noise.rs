//! Noise: Gaussian, shot (Poisson) and impulse (salt and pepper), drawn independently for
//! every value of every channel.

use std::cell::RefCell;

use rand::Rng;
use rand_distr::{Distribution, Poisson};

use super::draws::{Lanes, Normals};
use super::{Planes, Table};
use crate::augment::U8_TO_F32;

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

/// Values drawn for at a time: the words of one block fill a buffer on the stack.
const BLOCK: usize = 256;

/// Call `f` on the values of `img` a block at a time, with one word of `lanes` per value.
fn with_words(img: &mut Planes, mut lanes: Lanes, mut f: impl FnMut(&mut [f32], &[u32])) {
    let mut words = [0u32; BLOCK];
    for block in img.data.chunks_mut(BLOCK) {
        let words = &mut words[..block.len()];
        lanes.fill(words);
        f(block, words);
    }
}

/// `x + N(0, c^2)`, the normals by the ziggurat from one 32-bit word each.
pub fn gaussian<R: Rng>(img: &mut Planes, t: Table, s: u8, rng: &mut R) {
    let c = t.pick(&GAUSSIAN, s);
    let lanes = Lanes::from_rng(rng);
    let mut normals = Normals::new(rng);
    with_words(img, lanes, |block, words| {
        normals.add_scaled(block, words, c)
    });
}

/// The largest photon count whose rates are sampled from tables (the published counts reach
/// 500).
const MAX_TABLE_RATE: f64 = 700.0;

/// `Poisson(lambda) / c` as an alias table (Walker; Vose's construction): cell `i` of `n`
/// holds `(threshold, [i / c, alias_i / c])`, and a uniform `u` picks cell `floor(u * n)` and,
/// by its fractional part against the threshold, one of the two values. The probabilities
/// are the Poisson pmf up to where the tail is below 1e-18, in `f64`.
struct PoissonTable {
    cells: Vec<(f64, [f32; 2])>,
}

impl PoissonTable {
    /// `lambda` in `[0, MAX_TABLE_RATE]` (`exp(-lambda)` must not underflow).
    fn new(lambda: f64, c: f64) -> Self {
        let mut pmf = Vec::new();
        let (mut p, mut k) = ((-lambda).exp(), 0.0f64);
        loop {
            pmf.push(p);
            k += 1.0;
            p *= lambda / k;
            if k > lambda && p < 1e-18 {
                break;
            }
        }
        let n = pmf.len();
        let total: f64 = pmf.iter().sum();
        let mut scaled: Vec<f64> = pmf.iter().map(|p| p / total * n as f64).collect();
        let (mut small, mut large): (Vec<usize>, Vec<usize>) =
            (0..n).partition(|&i| scaled[i] < 1.0);
        let mut threshold = vec![1.0f64; n];
        let mut alias: Vec<usize> = (0..n).collect();
        while let (Some(&lo), Some(&hi)) = (small.last(), large.last()) {
            small.pop();
            threshold[lo] = scaled[lo];
            alias[lo] = hi;
            scaled[hi] += scaled[lo] - 1.0;
            if scaled[hi] < 1.0 {
                large.pop();
                small.push(hi);
            }
        }
        let value = |k: usize| (k as f64 / c) as f32;
        let cells = (0..n)
            .map(|i| (threshold[i], [value(i), value(alias[i])]))
            .collect();
        PoissonTable { cells }
    }

    #[inline]
    fn sample<R: Rng>(&self, rng: &mut R) -> f32 {
        let x = rng.random::<f64>() * self.cells.len() as f64;
        let i = (x as usize).min(self.cells.len() - 1);
        let (threshold, values) = self.cells[i];
        values[usize::from(x - (i as f64) >= threshold)] // no branch to mispredict
    }
}

/// The probability of each value of the table for `lambda`, added up over its cells.
#[cfg(test)]
pub fn poisson_table_pmf(lambda: f64) -> Vec<f64> {
    let table = PoissonTable::new(lambda, 1.0);
    let n = table.cells.len() as f64;
    let mut pmf = vec![0f64; table.cells.len()];
    for &(threshold, [own, alias]) in &table.cells {
        pmf[own as usize] += threshold.min(1.0) / n;
        pmf[alias as usize] += (1.0 - threshold).max(0.0) / n;
    }
    pmf
}

/// The tables of the 256 intensities at one photon count `c`, kept per thread (a loader's
/// worker meets the same `c` on every image).
#[derive(Default)]
struct ShotTables {
    c_bits: u64,
    levels: Vec<PoissonTable>,
}

thread_local! {
    static SHOT_TABLES: RefCell<ShotTables> = RefCell::default();
}

/// The 8-bit intensity `v` is exactly, if any.
#[inline]
fn level(v: f32) -> Option<usize> {
    if !(0.0..=1.0).contains(&v) {
        return None;
    }
    let k = (v * 255.0 + 0.5) as usize; // rounds: v >= 0
    (U8_TO_F32[k] == v).then_some(k)
}

/// `Poisson(x * c) / c`. Values at an 8-bit intensity (every value of a `u8` image) draw from
/// that intensity's table; others from `rand_distr`'s Poisson.
pub fn shot<R: Rng>(img: &mut Planes, t: Table, s: u8, rng: &mut R) {
    let c = t.pick(&SHOT, s);
    let exact = |v: f32, rng: &mut R| {
        match Poisson::new(f64::from(v.max(0.0)) * c) {
            Ok(p) => (p.sample(rng) / c) as f32,
            Err(_) => 0.0, // a rate of 0 (or NaN): no photons
        }
    };
    if c > MAX_TABLE_RATE {
        img.data.iter_mut().for_each(|v| *v = exact(*v, rng));
        return;
    }
    SHOT_TABLES.with(|cell| {
        let mut tables = cell.borrow_mut();
        if tables.c_bits != c.to_bits() || tables.levels.is_empty() {
            tables.c_bits = c.to_bits();
            tables.levels = U8_TO_F32
                .iter()
                .map(|&v| PoissonTable::new(f64::from(v) * c, c))
                .collect();
        }
        for v in &mut img.data {
            *v = match level(*v) {
                Some(l) => tables.levels[l].sample(rng),
                None => exact(*v, rng),
            };
        }
    });
}

/// Each value becomes, with probability `c`, 0 or 1 (a fair coin): one 32-bit word per value,
/// its low 31 bits below `c * 2^31` to be replaced and its top bit for salt (1) or pepper (0).
/// With one seed the replaced values of a severity are among those of every higher one, with
/// the same colour, as with two independent uniforms per value.
pub fn impulse<R: Rng>(img: &mut Planes, t: Table, s: u8, rng: &mut R) {
    let amount = t.pick(&IMPULSE, s);
    let below = (amount * 2_147_483_648.0) as u32; // c * 2^31
    with_words(img, Lanes::from_rng(rng), |block, words| {
        for (v, &u) in block.iter_mut().zip(words) {
            let (hit, replacement) = (u & 0x7FFF_FFFF < below, (u >> 31) as f32);
            *v = if hit { replacement } else { *v }; // a select, not a branch
        }
    });
}
