//! Noise: Gaussian, shot (Poisson) and impulse (salt and pepper), drawn independently for
//! every value of every channel.
//!
//! With one seed, every severity of a noise reads the same 32-bit words (common random
//! numbers): the Gaussian scales the same normals, shot noise takes the same quantile of each
//! severity's Poisson, and impulse noise replaces nested sets of values. A value's noise grows
//! with the severity rather than being drawn anew.

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

/// The Poisson(`lambda`) pmf in `f64`, up to where the tail is below 1e-18.
fn poisson_pmf(lambda: f64) -> Vec<f64> {
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
    pmf
}

/// One photon count of a table: the words that draw it end at `last_word`; its value `k / c`.
#[derive(Clone, Copy)]
struct Count {
    last_word: u32,
    value: f32,
}

/// The inverse CDFs of `Poisson(x * c)` for the 256 8-bit intensities `x` at one photon count
/// `c`, kept per thread (a loader's worker meets the same `c` on every image).
///
/// A 32-bit word `u` draws the count `k` with `C(k - 1) <= u < C(k)`, where `C(k)` is the CDF
/// times 2^32, rounded (so each probability is within 2^-32 of the pmf's). A guide table
/// (Chen & Asau 1974) of at least twice as many entries as counts gives, from the top bits of
/// `u`, the first count the word can draw: most words need one comparison.
pub(super) struct ShotTables {
    c: f64,
    /// Per intensity: where its guide starts and the shift from a word to its guide entry.
    guides: [(u32, u32); 256],
    /// For each range of words, the index in `counts` of the first count it can draw.
    guide: Vec<u32>,
    counts: Vec<Count>,
}

impl ShotTables {
    pub(super) fn new(c: f64) -> Self {
        let mut tables = ShotTables {
            c,
            guides: [(0, 0); 256],
            guide: Vec::new(),
            counts: Vec::new(),
        };
        for (level, &x) in U8_TO_F32.iter().enumerate() {
            tables.push_level(level, &poisson_pmf(f64::from(x) * c));
        }
        tables
    }

    /// The counts of one intensity that at least one word draws, and its guide.
    fn push_level(&mut self, level: usize, pmf: &[f64]) {
        const WORDS: u64 = 1 << 32;
        let total: f64 = pmf.iter().sum();
        let (mut below, mut ends) = (0.0, Vec::new()); // C(k) of the counts kept
        for (k, p) in pmf.iter().enumerate() {
            below += p / total;
            let end = match (below.min(1.0) * WORDS as f64).round() as u64 {
                _ if k == pmf.len() - 1 => WORDS,
                end => end,
            };
            if end > ends.last().copied().unwrap_or(0) {
                ends.push(end);
                self.counts.push(Count {
                    last_word: (end - 1) as u32,
                    value: (k as f64 / self.c) as f32,
                });
            }
            if end == WORDS {
                break;
            }
        }
        let first = self.counts.len() - ends.len();
        let bits = (2 * ends.len()).next_power_of_two().trailing_zeros(); // at least 1
        self.guides[level] = (self.guide.len() as u32, 32 - bits);
        let mut k = 0;
        for j in 0u64..1 << bits {
            let start = j << (32 - bits); // the range's first word
            while ends[k] <= start {
                k += 1; // stops at the last count, which ends at 2^32
            }
            self.guide.push((first + k) as u32);
        }
    }

    /// The value intensity `level` draws from the word `u`.
    #[inline(always)]
    pub(super) fn sample(&self, level: u16, u: u32) -> f32 {
        let (start, shift) = self.guides[usize::from(level) & 255];
        let mut i = self.guide[start as usize + (u >> shift) as usize] as usize;
        i += usize::from(u > self.counts[i].last_word); // no branch: most words stop here
        while u > self.counts[i].last_word {
            i += 1; // a level's last count ends at u32::MAX
        }
        self.counts[i].value
    }

    /// `block[i]`: a draw for `level[i]` from `words[i]`.
    fn draw(&self, level: &[u16], words: &[u32], block: &mut [f32]) {
        for ((v, &l), &u) in block.iter_mut().zip(level).zip(words) {
            *v = self.sample(l, u);
        }
    }
}

thread_local! {
    static SHOT_TABLES: RefCell<Option<ShotTables>> = const { RefCell::new(None) };
}

/// Not an 8-bit intensity (see `levels`).
const NO_LEVEL: u16 = 256;

/// `out[i]`: the 8-bit intensity `block[i]` is exactly, or `NO_LEVEL` (NaN and values out of
/// [0, 1] included); true if all are intensities. Written to vectorise: `k / 255` in `f32` is
/// the loader's `U8_TO_F32[k]`.
fn levels(block: &[f32], out: &mut [u16]) -> bool {
    let mut all = true;
    for (o, &v) in out.iter_mut().zip(block) {
        let k = (v.clamp(0.0, 1.0) * 255.0 + 0.5) as i32; // NaN casts to 0
        let exact = k as f32 / 255.0 == v;
        *o = if exact { k as u16 } else { NO_LEVEL };
        all &= exact;
    }
    all
}

/// `Poisson(x * c) / c`. Values at an 8-bit intensity (every value of a `u8` image) invert
/// that intensity's CDF at one 32-bit word each; others draw from `rand_distr`'s Poisson.
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
    let lanes = Lanes::from_rng(rng);
    SHOT_TABLES.with(|cell| {
        let mut cached = cell.borrow_mut();
        let tables = match &mut *cached {
            Some(tables) if tables.c == c => tables,
            other => other.insert(ShotTables::new(c)),
        };
        let mut level = [0u16; BLOCK];
        with_words(img, lanes, |block, words| {
            let level = &mut level[..block.len()];
            if levels(block, level) {
                return tables.draw(level, words, block);
            }
            for ((v, &l), &u) in block.iter_mut().zip(level.iter()).zip(words) {
                *v = match l {
                    NO_LEVEL => exact(*v, rng),
                    l => tables.sample(l, u),
                };
            }
        });
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
