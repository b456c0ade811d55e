//! Bulk random draws for the per-value noises: 32-bit words from eight generators run in
//! lockstep (so the compiler vectorises them) and standard normals from those words by the
//! ziggurat method.

use std::sync::OnceLock;

use rand::Rng;

/// Eight xoshiro128++ generators (Blackman & Vigna) side by side, seeded from `rng`: each
/// call gives one 32-bit word of each.
pub struct Lanes {
    s: [[u32; 8]; 4],
}

impl Lanes {
    pub fn from_rng<R: Rng>(rng: &mut R) -> Self {
        let mut s = [[0u32; 8]; 4];
        s.iter_mut().flatten().for_each(|v| *v = rng.next_u32());
        for lane in 0..8 {
            if s.iter().all(|row| row[lane] == 0) {
                s[0][lane] = 1; // the one state xoshiro must avoid
            }
        }
        Lanes { s }
    }

    /// Fill `out` with words: word `k` from generator `k % 8`.
    pub fn fill(&mut self, out: &mut [u32]) {
        let whole = out.len() / 8 * 8;
        let (body, rest) = out.split_at_mut(whole);
        self.fill_eights(body);
        if !rest.is_empty() {
            let mut words = [0u32; 8];
            self.fill_eights(&mut words);
            rest.copy_from_slice(&words[..rest.len()]);
        }
    }

    /// `out.len()` a multiple of 8: four generators to a 128-bit register (SSE2, which every
    /// x86-64 CPU has).
    #[cfg(target_arch = "x86_64")]
    fn fill_eights(&mut self, out: &mut [u32]) {
        use std::arch::x86_64::*;
        macro_rules! rotl {
            ($x:expr, $k:literal) => {
                _mm_or_si128(_mm_slli_epi32($x, $k), _mm_srli_epi32($x, 32 - $k))
            };
        }
        // SAFETY: SSE2 is part of x86-64; loads and stores are unaligned ones within the
        // arrays and the chunks of 8 of `out`.
        unsafe {
            let half = |row: &[u32; 8], h: usize| {
                _mm_loadu_si128(row.as_ptr().add(4 * h).cast::<__m128i>())
            };
            let mut st = self.s.map(|row| [half(&row, 0), half(&row, 1)]);
            for chunk in out.chunks_exact_mut(8) {
                for (h, dst) in chunk.chunks_exact_mut(4).enumerate() {
                    let [s0, s1, s2, s3] = [st[0][h], st[1][h], st[2][h], st[3][h]];
                    let word = _mm_add_epi32(rotl!(_mm_add_epi32(s0, s3), 7), s0);
                    _mm_storeu_si128(dst.as_mut_ptr().cast::<__m128i>(), word);
                    let t = _mm_slli_epi32(s1, 9);
                    let s2 = _mm_xor_si128(s2, s0);
                    let s3 = _mm_xor_si128(s3, s1);
                    let s1 = _mm_xor_si128(s1, s2);
                    let s0 = _mm_xor_si128(s0, s3);
                    [st[0][h], st[1][h]] = [s0, s1];
                    [st[2][h], st[3][h]] = [_mm_xor_si128(s2, t), rotl!(s3, 11)];
                }
            }
            for (row, regs) in self.s.iter_mut().zip(st) {
                _mm_storeu_si128(row.as_mut_ptr().cast::<__m128i>(), regs[0]);
                _mm_storeu_si128(row.as_mut_ptr().add(4).cast::<__m128i>(), regs[1]);
            }
        }
    }

    #[cfg(not(target_arch = "x86_64"))]
    fn fill_eights(&mut self, out: &mut [u32]) {
        for chunk in out.chunks_exact_mut(8) {
            for (lane, word) in chunk.iter_mut().enumerate() {
                let mut state = self.s.map(|row| row[lane]);
                *word = xoshiro128pp(&mut state);
                self.s
                    .iter_mut()
                    .zip(state)
                    .for_each(|(row, v)| row[lane] = v);
            }
        }
    }
}

/// One step of xoshiro128++ on the state `s`, its output word.
#[cfg(any(test, not(target_arch = "x86_64")))]
pub fn xoshiro128pp(s: &mut [u32; 4]) -> u32 {
    let word = s[0].wrapping_add(s[3]).rotate_left(7).wrapping_add(s[0]);
    let t = s[1] << 9;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = s[3].rotate_left(11);
    word
}

/// Layers of the ziggurat (Marsaglia & Tsang 2000, 128 layers) and its right edge.
const LAYERS: usize = 128;
const EDGE: f64 = 3.442_619_855_899;
/// The area of each layer (and of the base strip with the tail).
const AREA: f64 = 9.912_563_035_262_17e-3;
/// A word's low 7 bits pick the layer; its other 25, as a signed integer `j` in
/// `[-2^24, 2^24)`, the point `j * width[layer]` (bits apart, as Doornik 2005 advises).
const SCALE: f64 = 16_777_216.0; // 2^24

struct Ziggurat {
    /// `|j| < accept[i]`: the point lies under the next layer's edge, inside the curve.
    accept: [u32; LAYERS],
    width: [f32; LAYERS],
    /// The density `exp(-x^2 / 2)` at each layer's edge.
    density: [f64; LAYERS],
}

fn ziggurat() -> &'static Ziggurat {
    static TABLES: OnceLock<Ziggurat> = OnceLock::new();
    TABLES.get_or_init(|| {
        let f = |x: f64| (-0.5 * x * x).exp();
        let mut z = Ziggurat {
            accept: [0; LAYERS],
            width: [0.0; LAYERS],
            density: [0.0; LAYERS],
        };
        // Layer 0 is the base strip of width AREA / f(EDGE) (it holds the tail's area).
        let q = AREA / f(EDGE);
        z.accept[0] = (EDGE / q * SCALE) as u32;
        z.width[0] = (q / SCALE) as f32;
        z.width[LAYERS - 1] = (EDGE / SCALE) as f32;
        z.density[0] = 1.0;
        z.density[LAYERS - 1] = f(EDGE);
        let (mut x, mut outer) = (EDGE, EDGE);
        for i in (1..LAYERS - 1).rev() {
            x = (-2.0 * (AREA / x + f(x)).ln()).sqrt();
            z.accept[i + 1] = (x / outer * SCALE) as u32;
            outer = x;
            z.density[i] = f(x);
            z.width[i] = (x / SCALE) as f32;
        }
        z.accept[1] = 0;
        z
    })
}

/// Standard normals by the ziggurat, one 32-bit word each (the rare points outside a layer's
/// core take more draws from `rng`).
pub struct Normals<'a, R: Rng> {
    tables: &'static Ziggurat,
    rng: &'a mut R,
}

impl<'a, R: Rng> Normals<'a, R> {
    pub fn new(rng: &'a mut R) -> Self {
        Normals {
            tables: ziggurat(),
            rng,
        }
    }

    /// One normal from the word `u`.
    #[inline]
    pub fn of_word(&mut self, u: u32) -> f32 {
        let layer = (u & (LAYERS as u32 - 1)) as usize;
        let j = (u as i32) >> 7;
        if j.unsigned_abs() < self.tables.accept[layer] {
            return j as f32 * self.tables.width[layer];
        }
        self.outside(j, layer)
    }

    /// `block[k] += c * normal(words[k])`: the values and the draws from `rng` of `of_word`
    /// one value after another; with AVX2, eight layer cores at a time.
    pub fn add_scaled(&mut self, block: &mut [f32], words: &[u32], c: f32) {
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2 (checked just above).
            return unsafe { self.add_scaled_avx2(block, words, c) };
        }
        for (v, &u) in block.iter_mut().zip(words) {
            *v += c * self.of_word(u);
        }
    }

    /// `add_scaled` with the core test, the product and the sum eight lanes at a time (the
    /// same roundings: no fused multiply-add); the lanes outside their core go to `outside`
    /// in order, as the one-by-one loop takes them.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn add_scaled_avx2(&mut self, block: &mut [f32], words: &[u32], c: f32) {
        use std::arch::x86_64::*;
        let n = block.len().min(words.len());
        let z = self.tables;
        let (low_bits, scale) = (_mm256_set1_epi32(LAYERS as i32 - 1), _mm256_set1_ps(c));
        let mut k = 0;
        while k + 8 <= n {
            // SAFETY: k + 8 <= n bounds the loads and the store; the gathered indices are
            // below LAYERS, the tables' length.
            let (v, mut outside) = unsafe {
                let u = _mm256_loadu_si256(words.as_ptr().add(k).cast::<__m256i>());
                let layer = _mm256_and_si256(u, low_bits);
                let j = _mm256_srai_epi32(u, 7);
                let accept = _mm256_i32gather_epi32::<4>(z.accept.as_ptr().cast::<i32>(), layer);
                let width = _mm256_i32gather_ps::<4>(z.width.as_ptr(), layer);
                let inside = _mm256_cmpgt_epi32(accept, _mm256_abs_epi32(j));
                let x = _mm256_mul_ps(_mm256_cvtepi32_ps(j), width);
                let v = _mm256_loadu_ps(block.as_ptr().add(k));
                let sum = _mm256_add_ps(v, _mm256_mul_ps(scale, x));
                _mm256_storeu_ps(block.as_mut_ptr().add(k), sum);
                (v, !_mm256_movemask_ps(_mm256_castsi256_ps(inside)) & 0xff)
            };
            if outside != 0 {
                let mut before = [0f32; 8];
                // SAFETY: an unaligned store into an array of 8.
                unsafe { _mm256_storeu_ps(before.as_mut_ptr(), v) };
                while outside != 0 {
                    let lane = outside.trailing_zeros() as usize;
                    outside &= outside - 1;
                    let u = words[k + lane];
                    let layer = (u & (LAYERS as u32 - 1)) as usize;
                    block[k + lane] = before[lane] + c * self.outside((u as i32) >> 7, layer);
                }
            }
            k += 8;
        }
        for (v, &u) in block[k..n].iter_mut().zip(&words[k..n]) {
            *v += c * self.of_word(u);
        }
    }

    /// A point outside its layer's core: the tail for layer 0, else the wedge test; a
    /// rejected point starts over with a fresh word.
    #[cold]
    fn outside(&mut self, mut j: i32, mut layer: usize) -> f32 {
        let z = self.tables;
        loop {
            let x = f64::from(j) * f64::from(z.width[layer]);
            if layer == 0 {
                // Beyond EDGE (Marsaglia 1964): x = -ln(U1) / EDGE while 2 (-ln U2) < x^2.
                loop {
                    let a = -(1.0 - self.rng.random::<f64>()).ln() / EDGE;
                    let b = -(1.0 - self.rng.random::<f64>()).ln();
                    if b + b >= a * a {
                        return (if j >= 0 { EDGE + a } else { -EDGE - a }) as f32;
                    }
                }
            }
            let (lo, hi) = (z.density[layer], z.density[layer - 1]);
            if lo + self.rng.random::<f64>() * (hi - lo) < (-0.5 * x * x).exp() {
                return x as f32;
            }
            let u = self.rng.next_u32();
            layer = (u & (LAYERS as u32 - 1)) as usize;
            j = (u as i32) >> 7;
            if j.unsigned_abs() < z.accept[layer] {
                return j as f32 * z.width[layer];
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::rng_from_seed;

    #[test]
    fn lanes_are_eight_xoshiro128pp_generators() {
        let mut lanes = Lanes::from_rng(&mut rng_from_seed(3));
        let mut states: Vec<[u32; 4]> = (0..8).map(|k| lanes.s.map(|row| row[k])).collect();
        let mut words = vec![0u32; 8 * 300 + 5];
        lanes.fill(&mut words);
        for (k, &word) in words.iter().enumerate() {
            assert_eq!(word, xoshiro128pp(&mut states[k % 8]), "word {k}");
        }
    }

    #[test]
    fn add_scaled_equals_of_word_one_by_one() {
        // Words from the lanes and words made to miss their layer's core (layer 0: the tail;
        // others: the wedge), at lengths that leave a remainder after the eights.
        let mut lanes = Lanes::from_rng(&mut rng_from_seed(5));
        let mut words = vec![0u32; 4099];
        lanes.fill(&mut words);
        for (k, w) in words.iter_mut().enumerate().filter(|(k, _)| k % 13 == 0) {
            let layer = (k / 13 % LAYERS) as u32;
            *w = (((1u32 << 24) - 1 - k as u32) << 7) | layer; // |j| near 2^24
        }
        let base: Vec<f32> = (0..words.len()).map(|k| (k % 17) as f32 / 17.0).collect();
        for n in [0, 7, 8, 9, 4099] {
            let (mut one, mut bulk) = (rng_from_seed(9), rng_from_seed(9));
            let mut expected = base[..n].to_vec();
            let mut normals = Normals::new(&mut one);
            for (v, &u) in expected.iter_mut().zip(&words[..n]) {
                *v += 0.26 * normals.of_word(u);
            }
            let mut got = base[..n].to_vec();
            Normals::new(&mut bulk).add_scaled(&mut got, &words[..n], 0.26);
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&got), bits(&expected), "n = {n}");
            assert_eq!(
                one.random::<u64>(),
                bulk.random::<u64>(),
                "same draws from rng, n = {n}"
            );
        }
    }

    /// The standard normal CDF by Simpson's rule on the density (error far below 1e-10).
    fn normal_cdf(x: f64) -> f64 {
        let n = 20_000;
        let h = x / n as f64;
        let f = |t: f64| (-0.5 * t * t).exp() / (2.0 * std::f64::consts::PI).sqrt();
        let inner: f64 = (1..n)
            .map(|i| f(i as f64 * h) * if i % 2 == 1 { 4.0 } else { 2.0 })
            .sum();
        0.5 + h / 3.0 * (f(0.0) + inner + f(x))
    }

    #[test]
    fn ziggurat_draws_have_the_normal_distribution() {
        // A chi-square test on 180 bins of width 0.05 over [-4.5, 4.5] plus the two tails,
        // from 4M draws: the layers' cores, their wedges and the tail beyond the edge.
        let mut rng = rng_from_seed(11);
        let mut lanes = Lanes::from_rng(&mut rng);
        let mut normals = Normals::new(&mut rng);
        let (n, bins, width) = (4_000_000usize, 180usize, 0.05f64);
        let mut counts = vec![0f64; bins + 2];
        let mut words = vec![0u32; 4096];
        let (mut sum, mut sq, mut beyond_edge) = (0f64, 0f64, 0usize);
        for _ in 0..n / words.len() + 1 {
            lanes.fill(&mut words);
            for &u in &words {
                let x = f64::from(normals.of_word(u));
                sum += x;
                sq += x * x;
                beyond_edge += usize::from(x.abs() > EDGE);
                let k = ((x + 4.5) / width).floor();
                counts[(k.clamp(-1.0, bins as f64) + 1.0) as usize] += 1.0;
            }
        }
        let total: f64 = counts.iter().sum();
        let edges: Vec<f64> = (0..=bins).map(|k| -4.5 + k as f64 * width).collect();
        let cdf: Vec<f64> = edges.iter().map(|&e| normal_cdf(e)).collect();
        let mut probs = vec![cdf[0]];
        probs.extend(cdf.windows(2).map(|w| w[1] - w[0]));
        probs.push(1.0 - cdf[bins]);
        let chi2: f64 = counts
            .iter()
            .zip(&probs)
            .map(|(&c, &p)| (c - total * p).powi(2) / (total * p))
            .sum();
        assert!(chi2 < 260.0, "chi-square {chi2} over {} bins", bins + 2);
        let (mean, var) = (sum / total, sq / total - (sum / total).powi(2));
        assert!(
            mean.abs() < 3e-3 && (var - 1.0).abs() < 3e-3,
            "{mean} {var}"
        );
        let tail = 2.0 * (1.0 - normal_cdf(EDGE)) * total; // about 2300 draws
        let got = beyond_edge as f64;
        assert!(
            (got - tail).abs() < 5.0 * tail.sqrt(),
            "{got} beyond the edge, {tail} expected"
        );
    }
}
