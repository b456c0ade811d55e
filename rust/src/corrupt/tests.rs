use super::blur::arange;
use super::filters::{border_index, clipped_zoom, motion_taps, Border};
use super::weather::plasma;
use super::*;

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
    let lo = m.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = m.iter().copied().fold(f64::NEG_INFINITY, f64::max);
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
