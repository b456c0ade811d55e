//! Tests of the block transforms and of the colour helpers.

use super::super::byte_to_unit;
use super::*;

#[test]
fn byte_to_unit_is_the_division() {
    for v in 0..=255 {
        assert_eq!(byte_to_unit(v), v as f32 / 255.0, "{v}");
    }
}

#[test]
fn divisors_round_to_nearest() {
    // Every quantisation divisor (8 q, q in 1..=255) against a plain rounded division,
    // over every DCT output an 8-bit image can give.
    for q in 1..=255u32 {
        let d = Divisor::new(8 * q);
        for t in -16_384..=16_384i32 {
            let want = (t.abs() + (8 * q as i32) / 2) / (8 * q as i32) * t.signum();
            assert_eq!(d.quantize(t), want, "t {t} q {q}");
        }
    }
}

#[test]
fn idct_of_a_dc_only_block_is_its_shortcut() {
    // The DC-only shortcut equals the two IDCT passes on a block holding only a DC.
    for dc in (-2048..=2047).step_by(7) {
        let mut b: Blocks = [[V::default(); 8]; 8];
        b[0][0] = V([dc; 8]);
        each_line(&mut b, false, (false, true));
        each_line(&mut b, true, (false, false));
        let want = range_limit((dc * 4 + 16) >> 5);
        assert!(b
            .iter()
            .flatten()
            .all(|v| v.0.iter().all(|&x| range_limit(x) == want)));
    }
}
