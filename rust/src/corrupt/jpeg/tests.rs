//! Tests of the block transforms and of the colour helpers.

use super::super::lanes::{byte_to_unit, Portable};
use super::super::{plain, round_trip};
use super::*;
use rand::{Rng, SeedableRng};

#[test]
fn byte_to_unit_is_the_division() {
    let bytes: Vec<u8> = (0..=255).collect();
    let mut portable = [0f32; 256];
    Portable::bytes_to_units(&mut portable, &bytes);
    for v in 0..=255 {
        assert_eq!(byte_to_unit(v), v as f32 / 255.0, "{v}");
        assert_eq!(portable[v as usize], v as f32 / 255.0, "{v}");
    }
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        use super::super::avx2::Avx2;
        let mut wide = [0f32; 255]; // not a multiple of 8: the tail too
        Avx2::bytes_to_units(&mut wide, &bytes);
        assert_eq!(wide[..], portable[..255]);
    }
}

#[test]
fn units_to_bytes_round_like_unit_to_u8() {
    // Halves, their neighbours, out-of-range values and NaN, through both lanes.
    let mut units: Vec<f32> = (0..=510).map(|k| k as f32 / 510.0).collect();
    units.extend((0..=255).flat_map(|k| {
        let half = (k as f32 + 0.5) / 255.0;
        [
            half,
            f32::from_bits(half.to_bits() - 1),
            f32::from_bits(half.to_bits() + 1),
        ]
    }));
    units.extend([
        -0.5,
        -0.0,
        1.5,
        f32::NAN,
        f32::INFINITY,
        f32::NEG_INFINITY,
        1e-30,
    ]);
    let want: Vec<u8> = units
        .iter()
        .map(|&v| crate::corrupt::unit_to_u8(v))
        .collect();
    let mut portable = vec![0u8; units.len()];
    Portable::units_to_bytes(&mut portable, &units);
    assert_eq!(portable, want);
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        let mut wide = vec![0u8; units.len()];
        super::super::avx2::Avx2::units_to_bytes(&mut wide, &units);
        assert_eq!(wide, want);
    }
}

#[test]
fn divisors_round_to_nearest() {
    // Every quantisation divisor (8 q, q in 1..=255) against a plain rounded division,
    // over every DCT output an 8-bit image can give.
    for q in 1..=255 {
        let rates = Quant::new([q; 64]).rows[0];
        for t in -16_384..=16_384i32 {
            let want = (t.abs() + (8 * q) / 2) / (8 * q) * t.signum();
            let got = Portable([t; 8]).requantize(&rates);
            assert_eq!(got.0, [want * q; 8], "t {t} q {q}");
        }
    }
}

#[test]
fn idct_of_a_dc_only_block_is_its_shortcut() {
    // The DC-only shortcut equals the two IDCT passes on a block holding only a DC.
    for dc in (-2048..=2047).step_by(7) {
        let mut b: Block<Portable> = [Portable::default(); 8];
        b[0].0[0] = dc;
        assert!(Portable::only_dc(&b));
        idct_pass(&mut b, true);
        Portable::transpose(&mut b);
        idct_pass(&mut b, false);
        let want = range_limit((dc * 4 + 16) >> 5);
        assert!(b
            .iter()
            .all(|v| v.0.iter().all(|&x| range_limit(x) == want)));
    }
}

#[test]
fn lanes_agree_with_each_other_and_with_scalars() {
    // Transposes, level shift, range limit and requantisation: the portable lanes against
    // scalar code, and the AVX2 lanes against the portable ones, on random values.
    let mut rng = rand_pcg::Pcg64Mcg::seed_from_u64(3);
    let bytes: Vec<u8> = (0..64).map(|_| rng.random()).collect();
    let mut b: Block<Portable> = std::array::from_fn(|r| Portable::load_centred(&bytes[8 * r..]));
    Portable::transpose(&mut b);
    for (r, row) in b.iter().enumerate() {
        let want: [i32; 8] = std::array::from_fn(|c| i32::from(bytes[8 * c + r]) - 128);
        assert_eq!(row.0, want);
    }
    let quant = Quant::new(std::array::from_fn(|k| 1 + (k as i32 * 37) % 255));
    let wide: Vec<i32> = (0..8).map(|_| rng.random_range(-3000..3000)).collect();
    let mut out = [0u8; 8];
    Portable(wide[..].try_into().unwrap()).store_limited(&mut out);
    assert_eq!(out, std::array::from_fn(|k| range_limit(wide[k])));
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        use super::super::avx2::Avx2;
        let mut a: Block<Avx2> = std::array::from_fn(|r| Avx2::load_centred(&bytes[8 * r..]));
        Avx2::transpose(&mut a);
        assert!(a.iter().zip(&b).all(|(x, y)| x.to_array() == y.0));
        assert_eq!(Avx2::only_dc(&a), Portable::only_dc(&b));
        for (x, rates) in a.iter().zip(&quant.rows) {
            let want = Portable(x.to_array()).requantize(rates).0;
            assert_eq!(x.requantize(rates).to_array(), want);
        }
        // 23 (b - 128) for bytes b: lanes in -2944..=2921, through every branch of the limit.
        let spread: Vec<u8> = (0..8).map(|k| (k * 37 % 256) as u8).collect();
        let v = Avx2::load_centred(&spread).up(3) * 3 - Avx2::load_centred(&spread);
        let mut got = [0u8; 8];
        v.store_limited(&mut got);
        assert_eq!(got, v.to_array().map(range_limit));
    }
}

#[test]
fn portable_round_trip_equals_the_avx2_one() {
    // Colour and grayscale, sizes off the block grid, every severity's quality: the same
    // bytes from both builds of the block code (the AVX2 one is compared with PIL in Python).
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        let mut rng = rand_pcg::Pcg64Mcg::seed_from_u64(7);
        for (c, h, w) in [(3, 37, 50), (1, 24, 17), (3, 64, 64), (2, 9, 30)] {
            for quality in [5, 15, 30, 60, 95] {
                let noise: Vec<f32> = (0..c * h * w)
                    .map(|_| f32::from(rng.random::<u8>()) / 255.0)
                    .collect();
                // Flat 8x8 tiles: blocks whose AC coefficients all vanish.
                let tiles: Vec<f32> = (0..c * h * w)
                    .map(|i| ((i / w % h / 8 * 37 + i % w / 8 * 91) % 256) as f32 / 255.0)
                    .collect();
                for img in [noise, tiles] {
                    let (mut wide, mut portable) = (img.clone(), img);
                    round_trip(&mut wide, (c, h, w), quality);
                    plain::<Portable>(&mut portable, (c, h, w), quality);
                    assert_eq!(wide, portable, "{c}x{h}x{w} quality {quality}");
                }
            }
        }
    }
}
