//! Unit tests of the loader: determinism, sharding, batch contents and the checks that
//! need the source.

use super::*;
use crate::augment::AugmentKind;
use crate::noise::SigmaSpec;
use crate::source::Bytes;

fn cfg() -> Config {
    Config {
        batch_size: nonzero(4),
        shuffle: true,
        seed: 3,
        drop_last: true,
        rank: 0,
        world_size: nonzero(1),
        augment: AugmentKind::CropFlip,
        padding: 2,
        rrc_scale: (0.2, 1.0),
        rrc_ratio: (0.75, 4.0 / 3.0),
        image_size: None,
        num_masks: 2,
        mask_ratio: 0.75,
        patch_size: Some(nonzero(2)),
        sigma: Some(SigmaSpec::Gamma {
            k: 25.0,
            theta: 3.0,
        }),
        noisy: true,
        output_u8: false,
        num_threads: Some(nonzero(2)),
        prefetch: 2,
        skip_corrupt: false,
        partial_decode: true,
        corruption: None,
    }
}

fn nonzero(n: usize) -> NonZeroUsize {
    NonZeroUsize::new(n).unwrap()
}

fn core(n: usize, c: Config) -> Arc<Core> {
    let data: Vec<u8> = (0..n * 8 * 8 * 3).map(|v| (v * 31 % 256) as u8).collect();
    let src = Source::array(Bytes::Owned(data), &[n, 8, 8, 3]).unwrap();
    let labels = (0..n as i64).map(|i| i % 10).collect();
    Arc::new(Core::new(src, Some(labels), c).unwrap())
}

#[test]
fn shards_are_disjoint_equal_and_cover() {
    for (n, world) in [(10usize, 3usize), (9, 3), (100, 4), (5, 1)] {
        let mut all = Vec::new();
        for rank in 0..world {
            let s = epoch_order(n, true, 1, 7, rank, world);
            assert_eq!(s.len(), n / world);
            all.extend(s);
        }
        let mut sorted = all.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), all.len(), "overlap");
        assert_eq!(all.len(), n / world * world);
    }
    assert_ne!(
        epoch_order(50, true, 1, 0, 0, 1),
        epoch_order(50, true, 1, 1, 0, 1)
    );
    assert_eq!(epoch_order(5, false, 1, 0, 0, 1), vec![0, 1, 2, 3, 4]);
}

type Seen = (Vec<f32>, Vec<i64>, Vec<i64>, Vec<f32>);

fn collect(core: &Arc<Core>, epoch: u64, start: usize) -> Vec<Seen> {
    let mut it = core.start(epoch, start);
    let mut out = Vec::new();
    while let Some(b) = it.next_batch() {
        let b = b.unwrap();
        let Pixels::F32(img) = b.images else { panic!() };
        out.push((
            img,
            b.indices,
            b.masks[1].ids_keep.clone(),
            b.noisy.unwrap(),
        ));
    }
    out
}

#[test]
fn deterministic_across_threads_and_resume() {
    let a = core(22, cfg());
    let mut c1 = cfg();
    c1.num_threads = Some(nonzero(1));
    c1.prefetch = 0;
    let b = core(22, c1);
    let ra = collect(&a, 4, 0);
    let rb = collect(&b, 4, 0);
    assert_eq!(ra.len(), 5); // 22 // 4 with drop_last
    assert_eq!(ra, rb);
    let resumed = collect(&a, 4, 3);
    assert_eq!(resumed[..], ra[3..]);
    assert_ne!(collect(&a, 5, 0), ra);
}

#[test]
fn batch_contents() {
    let mut c = cfg();
    c.drop_last = false;
    c.shuffle = false;
    c.batch_size = nonzero(5);
    let core = core(12, c);
    assert_eq!(core.num_batches(), 3);
    let mut it = core.start(0, 0);
    let mut sizes = Vec::new();
    while let Some(b) = it.next_batch() {
        let b = b.unwrap();
        sizes.push(b.n);
        assert_eq!(b.masks.len(), 2);
        assert_eq!(b.masks[0].ids_keep.len(), b.n * 4); // L = 16, keep 4
        assert_eq!(
            b.labels,
            b.indices.iter().map(|i| i % 10).collect::<Vec<_>>()
        );
    }
    assert_eq!(sizes, vec![5, 5, 2]);
}

#[test]
fn early_drop_joins_producer() {
    let core = core(200, cfg());
    for _ in 0..20 {
        let mut it = core.start(0, 0);
        let _ = it.next_batch().unwrap().unwrap();
        drop(it); // must not hang
    }
}

#[test]
fn configs_that_do_not_fit_the_source_are_rejected() {
    // The options alone are checked in Python (LoaderConfig); these checks need the source.
    let src = || Source::array(Bytes::Owned(vec![0; 2 * 64 * 3]), &[2, 8, 8, 3]).unwrap();
    let mut c = cfg();
    c.patch_size = Some(nonzero(3));
    assert!(Core::new(src(), None, c).err().unwrap().contains("divide"));
    let mut c = cfg();
    c.patch_size = None;
    assert!(Core::new(src(), None, c)
        .err()
        .unwrap()
        .contains("patch_size"));
    let mut c = cfg();
    c.image_size = Some(nonzero(16));
    assert!(Core::new(src(), None, c)
        .err()
        .unwrap()
        .contains("image_size"));
    let mut c = cfg();
    c.mask_ratio = 0.99;
    assert!(Core::new(src(), None, c)
        .err()
        .unwrap()
        .contains("keeps no patch"));
    assert!(Core::new(src(), Some(vec![1]), cfg())
        .err()
        .unwrap()
        .contains("labels"));
    let no_files = Source::Files { paths: Vec::new() };
    assert!(Core::new(no_files, None, cfg())
        .err()
        .unwrap()
        .contains("empty"));
}

#[test]
fn corrupt_files_error_or_skip() {
    let dir = std::env::temp_dir().join(format!("mimir_loader_{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let good = dir.join("good.png");
    let img = image::RgbImage::from_pixel(10, 12, image::Rgb([1, 2, 3]));
    img.save(&good).unwrap();
    let bad = dir.join("bad.png");
    std::fs::write(&bad, b"\x89PNG\r\n\x1a\ngarbage").unwrap();
    let paths = vec![good.clone(), bad.clone(), good.clone(), good.clone()];
    let mut c = cfg();
    c.shuffle = false;
    c.image_size = Some(nonzero(8));
    c.augment = AugmentKind::RrcFlip;
    let core = Arc::new(
        Core::new(
            Source::Files {
                paths: paths.clone(),
            },
            None,
            c.clone(),
        )
        .unwrap(),
    );
    let err = core.start(0, 0).next_batch().unwrap().err().unwrap();
    assert!(err.contains("bad.png"), "{err}");
    c.skip_corrupt = true;
    let core = Arc::new(Core::new(Source::Files { paths }, None, c).unwrap());
    let b = core.start(0, 0).next_batch().unwrap().unwrap();
    assert_eq!((b.n, b.skipped), (3, 1));
    assert_eq!(b.indices, vec![0, 2, 3]);
    std::fs::remove_dir_all(&dir).unwrap();
}
