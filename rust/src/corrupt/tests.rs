use super::blur::arange;
use super::digital::BoxResize;
use super::filters::{border_index, clipped_zoom, filter_taps, motion_taps, separable, Border};
use super::weather::plasma;
use super::*;
use crate::rng::rng_from_seed;
use rand::Rng;

fn test_image(c: usize, h: usize, w: usize) -> Planes {
    let mut img = Planes::new(c, h, w);
    for (k, v) in img.data.iter_mut().enumerate() {
        *v = ((k * 37 + k / 7 * 11) % 256) as f32 / 255.0;
    }
    img
}

#[test]
fn names_round_trip_and_bad_input_is_refused() {
    for (k, kind) in Corruption::ALL.iter().enumerate() {
        assert_eq!(Corruption::parse(NAMES[k]).unwrap(), *kind);
    }
    assert!(Corruption::parse("frost")
        .unwrap_err()
        .contains("frost needs texture"));
    assert!(Corruption::parse("rain")
        .unwrap_err()
        .contains("corruption must be"));
    assert!(CorruptSpec::new("fog", 0).unwrap_err().contains("severity"));
    assert!(CorruptSpec::new("fog", 6).is_err());
    assert_eq!(CorruptSpec::new("fog", 5).unwrap().severity, 5);
}

#[test]
fn table_by_size() {
    assert_eq!(Table::for_size(32, 32), Table::Cifar);
    assert_eq!(Table::for_size(64, 10), Table::Cifar);
    assert_eq!(Table::for_size(65, 64), Table::ImageNet);
}

#[test]
fn border_modes() {
    let idx = |i, m| border_index(i, 4, m);
    assert_eq!((idx(-1, Border::Nearest), idx(5, Border::Nearest)), (0, 3));
    assert_eq!(
        (
            idx(-1, Border::Reflect),
            idx(-2, Border::Reflect),
            idx(4, Border::Reflect)
        ),
        (0, 1, 3)
    );
    assert_eq!(
        (
            idx(-1, Border::Mirror),
            idx(-2, Border::Mirror),
            idx(4, Border::Mirror)
        ),
        (1, 2, 2)
    );
    assert_eq!(border_index(-3, 1, Border::Mirror), 0);
}

#[test]
fn arange_matches_numpy_lengths() {
    let lens: Vec<usize> = [1.06, 1.11, 1.16, 1.21, 1.26]
        .iter()
        .map(|&s| arange(1.0, s, 0.01).len())
        .collect();
    assert_eq!(lens, vec![7, 12, 16, 21, 26]);
}

#[test]
fn zoom_by_one_is_identity() {
    let img = test_image(1, 9, 7);
    assert_eq!(clipped_zoom(&img.data, 9, 7, 1.0), img.data);
}

#[test]
fn motion_taps_sum_to_one_and_follow_the_angle() {
    let taps = motion_taps(6.0, 2.0, 0.0);
    assert_eq!(taps.len(), 13);
    let total: f32 = taps.iter().map(|t| t.2).sum();
    assert!((total - 1.0).abs() < 1e-5);
    assert!(taps.iter().all(|&(dy, dx, _)| dy == 0 && dx >= 0));
    let down = motion_taps(6.0, 2.0, 90.0);
    assert!(down.iter().all(|&(dy, dx, _)| dx == 0 && dy >= 0));
}

#[test]
fn plasma_is_normalised() {
    let mut rng = corruption_rng(1, 0, 0);
    let m = plasma(32, 2.0, &mut rng);
    let lo = m.iter().copied().fold(f32::INFINITY, f32::min);
    let hi = m.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    assert_eq!((lo, hi), (0.0, 1.0));
}

#[test]
fn every_corruption_is_deterministic_in_range_and_changes_the_image() {
    for &(c, s) in &[(3usize, 32usize), (1, 16), (3, 80)] {
        let clean = test_image(c, s, s);
        for &kind in &Corruption::ALL {
            for severity in 1..=5u8 {
                let spec = CorruptSpec { kind, severity };
                let mut a = clean.clone();
                let mut b = clean.clone();
                apply(spec, &mut a, &mut corruption_rng(5, 0, 1));
                apply(spec, &mut b, &mut corruption_rng(5, 0, 1));
                assert_eq!(a, b, "{kind:?} {severity}");
                assert!(a.data.iter().all(|v| (0.0..=1.0).contains(v)), "{kind:?}");
                assert_ne!(a.data, clean.data, "{kind:?} {severity} at {s}px");
            }
        }
    }
}

#[test]
fn batch_matches_single_images_in_both_layouts() {
    let spec = CorruptSpec::new("glass_blur", 3).unwrap();
    let (n, h, w, c) = (3, 12, 10, 3);
    let chw: Vec<f32> = (0..n * c * h * w)
        .map(|k| (k % 251) as f32 / 251.0)
        .collect();
    let mut hwc = vec![0f32; chw.len()];
    for i in 0..n {
        for ch in 0..c {
            for px in 0..h * w {
                hwc[i * h * w * c + px * c + ch] = chw[i * h * w * c + ch * h * w + px];
            }
        }
    }
    let mut a = chw.clone();
    corrupt_batch(spec, &mut a, (h, w, c), false, 9);
    let mut b = hwc.clone();
    corrupt_batch(spec, &mut b, (h, w, c), true, 9);
    for i in 0..n {
        let mut one = chw[i * h * w * c..(i + 1) * h * w * c].to_vec();
        corrupt_chw(
            spec,
            &mut one,
            (c, h, w),
            &mut corruption_rng(9, 0, i as u64),
        );
        assert_eq!(one, a[i * h * w * c..(i + 1) * h * w * c]);
        for ch in 0..c {
            for px in 0..h * w {
                assert_eq!(b[i * h * w * c + px * c + ch], one[ch * h * w + px]);
            }
        }
    }
}

/// `filter_taps` read every value through `border_index`, one at a time.
fn direct_filter(
    p: &[f32],
    h: usize,
    w: usize,
    taps: &[(isize, isize, f32)],
    b: Border,
) -> Vec<f32> {
    let mut out = vec![0f32; h * w];
    for (k, o) in out.iter_mut().enumerate() {
        let (y, x) = ((k / w) as isize, (k % w) as isize);
        for &(dy, dx, kv) in taps {
            *o += kv * p[border_index(y + dy, h, b) * w + border_index(x + dx, w, b)];
        }
    }
    out
}

#[test]
fn filters_equal_a_direct_correlation_bit_for_bit() {
    // Taps reaching past the plane on every side (radius 7 on a 3 x 5 plane) and inside it.
    let taps: Vec<(isize, isize, f32)> = (0..40)
        .map(|k| {
            (
                (k % 15) as isize - 7,
                (k * 7 % 13) as isize - 6,
                0.01 + k as f32 * 0.03,
            )
        })
        .collect();
    let k1: Vec<f32> = (0..9).map(|k| 0.05 + k as f32 * 0.02).collect();
    for &(h, w) in &[(3usize, 5usize), (1, 1), (17, 40)] {
        let p = test_image(1, h, w).data;
        for b in [Border::Nearest, Border::Reflect, Border::Mirror] {
            assert_eq!(
                filter_taps(&p, h, w, &taps, b),
                direct_filter(&p, h, w, &taps, b)
            );
            let rows: Vec<_> = k1
                .iter()
                .enumerate()
                .map(|(j, &v)| (0, j as isize - 4, v))
                .collect();
            let cols: Vec<_> = k1
                .iter()
                .enumerate()
                .map(|(j, &v)| (j as isize - 4, 0, v))
                .collect();
            let two_pass = direct_filter(&direct_filter(&p, h, w, &rows, b), h, w, &cols, b);
            assert_eq!(separable(&p, h, w, &k1, b), two_pass, "{b:?} {h}x{w}");
        }
    }
}

/// The words of one intensity's table, taken as a black box: each draws a count, in order, and
/// the share of the 2^32 words that draw each count is within 2^-32 of the Poisson pmf.
#[test]
fn shot_noise_tables_invert_the_poisson_cdf() {
    use super::noise::ShotTables;
    use crate::augment::U8_TO_F32;
    const WORDS: u64 = 1 << 32;
    let mut rng = Pcg64Mcg::new(7);
    for c in [3.0, 12.0, 60.0, 500.0] {
        let tables = ShotTables::new(c);
        for level in 0..=255u16 {
            let draw = |u: u64| (f64::from(tables.sample(level, u as u32)) * c).round() as u64;
            // `ends[k]`: the first word that draws more than `k` photons (by bisection)
            let first_above = |k: u64| {
                let (mut lo, mut hi) = (0, WORDS);
                while lo < hi {
                    let mid = (lo + hi) / 2;
                    if draw(mid) > k {
                        hi = mid
                    } else {
                        lo = mid + 1
                    }
                }
                lo
            };
            let lambda = f64::from(U8_TO_F32[usize::from(level)]) * c;
            let (mut ends, mut log_p, mut seen, mut distance) = (vec![], -lambda, 0.0, 0.0);
            while ends.last() != Some(&WORDS) {
                let (k, start) = (ends.len() as u64, ends.last().copied().unwrap_or(0));
                let end = first_above(k);
                let p = log_p.exp(); // ln pmf by sums of logs
                distance += ((end - start) as f64 / WORDS as f64 - p).abs();
                seen += p;
                log_p += lambda.ln() - ((k + 1) as f64).ln();
                ends.push(end);
            }
            distance += (1.0 - seen).max(0.0); // counts no word draws
            let bound = ends.len() as f64 / WORDS as f64 + 1e-12;
            assert!(
                distance < bound,
                "c {c}, level {level}: {distance} vs {bound}"
            );
            for _ in 0..2000 {
                let u = u64::from(rng.random::<u32>());
                let k = ends.partition_point(|&e| e <= u) as u64;
                assert_eq!(draw(u), k, "c {c}, level {level}, word {u}");
            }
        }
    }
}

#[test]
fn pixelate_resizes_are_means_of_input_ranges() {
    // As PIL's BOX filter gives (checked with `Image.resize(..., Image.BOX)` on float images).
    let (h, w) = (1usize, 10usize);
    let row: Vec<f32> = (0..w).map(|k| k as f32).collect();
    let img = Planes {
        c: 1,
        h,
        w,
        data: row,
    };
    let small = BoxResize::new((h, w), (1, 4)).apply(&img.data);
    assert_eq!(small, vec![1.0, 3.5, 6.0, 8.5]);
    let back = BoxResize::new((1, 4), (h, w)).apply(&small);
    assert_eq!(back, vec![1.0, 1.0, 3.5, 3.5, 3.5, 6.0, 6.0, 8.5, 8.5, 8.5]);
    let column = BoxResize::new((w, 1), (4, 1)).apply(&img.data);
    assert_eq!(column, small);
}

#[test]
fn unit_to_u8_rounds_like_round() {
    let reference = |v: f32| {
        if v.is_nan() {
            0
        } else {
            (v.clamp(0.0, 1.0) * 255.0).round() as u8
        }
    };
    let mut values = vec![
        f32::NAN,
        -1.0,
        -0.0,
        0.0,
        1.0,
        2.0,
        f32::INFINITY,
        f32::NEG_INFINITY,
    ];
    for k in 0..=255u32 {
        // around every half-way point: (k + 0.5) / 255, a few ulps either side
        let half = (k as f32 + 0.5) / 255.0;
        let mut v = half;
        for _ in 0..4 {
            v = f32::from_bits(v.to_bits() - 1);
        }
        for _ in 0..9 {
            values.push(v);
            v = f32::from_bits(v.to_bits() + 1);
        }
    }
    let mut rng = rng_from_seed(1);
    values.extend((0..200_000).map(|_| rng.random_range(-0.1f32..1.1)));
    for v in values {
        assert_eq!(unit_to_u8(v), reference(v), "{v:e}");
    }
}
