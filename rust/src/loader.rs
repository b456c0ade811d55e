//! The loader: epoch order and sharding, per-sample work on a rayon pool, and a producer
//! thread that keeps a bounded queue of ready batches.

use std::cell::RefCell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use rand::Rng;
use rayon::prelude::*;

use crate::augment::{
    center_box, crop_pad_flip, resize_box, resize_rows_read, sample_params, AugParams, AugmentSpec,
    OutPixel, ResizeScratch,
};
use crate::decode::DecodeScratch;
use crate::masking::{draw_mask, len_keep};
use crate::noise::{add_noise, noise_seed, SigmaSpec};
use crate::rng::{rng_for, Purpose};
use crate::source::Source;

/// Everything the user configures (validated by [`Core::new`]).
#[derive(Clone, Debug)]
pub struct Config {
    pub batch_size: usize,
    pub shuffle: bool,
    pub seed: u64,
    pub drop_last: bool,
    pub rank: usize,
    pub world_size: usize,
    pub augment: AugmentSpec,
    /// Output height and width; `None`: the source's size (arrays) or 224 (files).
    pub image_size: Option<usize>,
    pub num_masks: usize,
    pub mask_ratio: f64,
    pub patch_size: Option<usize>,
    pub sigma: Option<SigmaSpec>,
    pub noisy: bool,
    pub output_u8: bool,
    /// Worker threads; `None` or 0: the number of available cores.
    pub num_threads: Option<usize>,
    pub prefetch: usize,
    pub skip_corrupt: bool,
    /// Decode a sequential JPEG only down to the rows its random-resized-crop box reads
    /// (the output is identical either way; off only to test that).
    pub partial_decode: bool,
}

/// Output pixels of a batch, `(B, C, S, S)` flattened.
pub enum Pixels {
    F32(Vec<f32>),
    U8(Vec<u8>),
}

/// One patch mask per sample of a batch, flattened `(B, len_keep)`, `(B, L)`, `(B, L)`.
pub struct MaskSet {
    pub ids_keep: Vec<i64>,
    pub mask: Vec<f32>,
    pub ids_restore: Vec<i64>,
}

/// A ready batch.
pub struct Batch {
    pub n: usize,
    pub images: Pixels,
    pub labels: Vec<i64>,
    pub indices: Vec<i64>,
    pub masks: Vec<MaskSet>,
    pub sigma: Option<Vec<f32>>,
    pub noise_seed: Option<Vec<i64>>,
    pub noisy: Option<Vec<f32>>,
    /// Samples of this batch skipped as unreadable (`skip_corrupt`).
    pub skipped: usize,
}

/// Per-thread buffers of the per-sample work, reused across the samples of a batch.
#[derive(Default)]
struct SampleScratch {
    decode: DecodeScratch,
    resize: ResizeScratch,
}

thread_local! {
    /// This thread's [`SampleScratch`] (kept across batches).
    static SCRATCH: RefCell<SampleScratch> = RefCell::new(SampleScratch::default());
}

/// Why a sample could not be produced.
enum SampleErr {
    Corrupt(String),
    Internal(String),
    Stopped,
}

/// The shared state of a loader.
pub struct Core {
    source: Source,
    labels: Vec<i64>,
    cfg: Config,
    size: usize,
    channels: usize,
    num_patches: usize,
    len_keep: usize,
    pool: rayon::ThreadPool,
    buffers: Arc<BufferPool>,
}

/// Image buffers of earlier batches, given back when Python frees their arrays: a new batch
/// reuses one instead of faulting in (and having the kernel zero) tens of megabytes of fresh
/// pages. Every sample's pixels are overwritten, so a reused buffer is not cleared.
pub struct BufferPool {
    f32: Mutex<Vec<Vec<f32>>>,
    u8: Mutex<Vec<Vec<u8>>>,
    capacity: usize,
}

/// Output pixel types with a shelf in the [`BufferPool`].
pub trait PooledPixel: OutPixel {
    fn shelf(pool: &BufferPool) -> &Mutex<Vec<Vec<Self>>>;
}

impl PooledPixel for f32 {
    fn shelf(pool: &BufferPool) -> &Mutex<Vec<Vec<f32>>> {
        &pool.f32
    }
}

impl PooledPixel for u8 {
    fn shelf(pool: &BufferPool) -> &Mutex<Vec<Vec<u8>>> {
        &pool.u8
    }
}

impl BufferPool {
    fn new(capacity: usize) -> Self {
        BufferPool {
            f32: Mutex::new(Vec::new()),
            u8: Mutex::new(Vec::new()),
            capacity,
        }
    }

    /// A buffer of `n` pixels: a returned one when there is one (contents stale), else new.
    fn take<T: PooledPixel>(&self, n: usize) -> Vec<T> {
        let reused = T::shelf(self)
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop();
        match reused {
            Some(mut v) => {
                v.resize(n, T::default());
                v
            }
            None => zeroed_output(n),
        }
    }

    /// Keep a freed batch's pixels for reuse (up to the pool's capacity).
    pub fn give(&self, pixels: Pixels) {
        fn shelve<T>(shelf: &Mutex<Vec<Vec<T>>>, v: Vec<T>, capacity: usize) {
            let mut shelf = shelf.lock().unwrap_or_else(|e| e.into_inner());
            if shelf.len() < capacity {
                shelf.push(v);
            }
        }
        match pixels {
            Pixels::F32(v) => shelve(&self.f32, v, self.capacity),
            Pixels::U8(v) => shelve(&self.u8, v, self.capacity),
        }
    }
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".to_string()
    }
}

impl Core {
    /// Check the configuration against the source; errors are user-facing messages.
    pub fn new(source: Source, labels: Option<Vec<i64>>, cfg: Config) -> Result<Self, String> {
        let n = source.len();
        if n == 0 {
            return Err("the dataset is empty".into());
        }
        let labels = match labels {
            Some(l) => {
                if l.len() != n {
                    return Err(format!(
                        "got {n} images but {} labels; the counts must match",
                        l.len()
                    ));
                }
                l
            }
            None => vec![0; n],
        };
        if cfg.batch_size == 0 {
            return Err("batch_size must be >= 1".into());
        }
        if cfg.world_size == 0 {
            return Err("world_size must be >= 1".into());
        }
        if cfg.rank >= cfg.world_size {
            return Err(format!(
                "rank must be in [0, world_size), got rank={} with world_size={}",
                cfg.rank, cfg.world_size
            ));
        }
        cfg.augment.validate()?;
        let size = match (cfg.image_size, source.fixed_size()) {
            (Some(0), _) => return Err("image_size must be >= 1".into()),
            (Some(s), _) => s,
            (None, Some((h, _))) => h,
            (None, None) => 224,
        };
        if let Some((h, w)) = source.fixed_size() {
            if !cfg.augment.kind.is_rrc() && (h != size || w != size) {
                return Err(format!(
                    "images are {h}x{w} but the output is {size}x{size}; without augment='rrc_flip' \
                     or 'rrc' the array images must be square and of size image_size"
                ));
            }
        }
        let (num_patches, keep) = if cfg.num_masks > 0 {
            let p = cfg
                .patch_size
                .ok_or("num_masks > 0 needs patch_size (the ViT's patch size)")?;
            if p == 0 || size % p != 0 {
                return Err(format!(
                    "patch_size={p} must be >= 1 and divide image_size={size}"
                ));
            }
            if !(cfg.mask_ratio.is_finite() && (0.0..1.0).contains(&cfg.mask_ratio)) {
                return Err(format!(
                    "mask_ratio must be in [0, 1), got {}",
                    cfg.mask_ratio
                ));
            }
            let l = (size / p) * (size / p);
            let k = len_keep(l, cfg.mask_ratio);
            if k == 0 {
                return Err(format!(
                    "mask_ratio={} keeps no patch of the {l} (len_keep = int(L * (1 - ratio)) = 0)",
                    cfg.mask_ratio
                ));
            }
            (l, k)
        } else {
            (0, 0)
        };
        if let Some(s) = &cfg.sigma {
            s.validate()?;
        }
        if cfg.noisy && cfg.sigma.is_none() {
            return Err("noisy=True needs sigma (e.g. ('gamma', 25, 3))".into());
        }
        let threads = match cfg.num_threads {
            Some(t) if t > 0 => t,
            _ => std::thread::available_parallelism().map_or(1, |n| n.get()),
        };
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("mimir-loader-{i}"))
            .build()
            .map_err(|e| format!("cannot start {threads} loader threads: {e}"))?;
        let channels = source.channels();
        let buffers = Arc::new(BufferPool::new(cfg.prefetch + 2));
        Ok(Core {
            source,
            labels,
            cfg,
            size,
            channels,
            num_patches,
            len_keep: keep,
            pool,
            buffers,
        })
    }

    pub fn image_size(&self) -> usize {
        self.size
    }
    /// Where freed batch image buffers go back for reuse.
    pub fn buffers(&self) -> &Arc<BufferPool> {
        &self.buffers
    }
    pub fn channels(&self) -> usize {
        self.channels
    }
    pub fn num_patches(&self) -> usize {
        self.num_patches
    }
    pub fn len_keep(&self) -> usize {
        self.len_keep
    }
    pub fn num_samples(&self) -> usize {
        self.source.len()
    }
    pub fn num_threads(&self) -> usize {
        self.pool.current_num_threads()
    }

    /// Samples per rank: `N // world_size` (the remainder of the permutation is dropped).
    pub fn samples_per_rank(&self) -> usize {
        self.source.len() / self.cfg.world_size
    }

    /// Batches per epoch for this rank.
    pub fn num_batches(&self) -> usize {
        let per = self.samples_per_rank();
        if self.cfg.drop_last {
            per / self.cfg.batch_size
        } else {
            per.div_ceil(self.cfg.batch_size)
        }
    }

    /// This rank's dataset indices for `epoch`, in delivery order.
    pub fn rank_indices(&self, epoch: u64) -> Vec<u32> {
        epoch_order(
            self.source.len(),
            self.cfg.shuffle,
            self.cfg.seed,
            epoch,
            self.cfg.rank,
            self.cfg.world_size,
        )
    }

    /// The augmentation parameters of dataset index `index` in `epoch` (for tests/debugging).
    pub fn debug_params(&self, index: usize, epoch: u64) -> Result<AugParams, String> {
        if index >= self.source.len() {
            return Err(format!(
                "index {index} out of range for {} samples",
                self.source.len()
            ));
        }
        let (h, w) = match self.source.fixed_size() {
            Some(hw) => hw,
            None => {
                let img = self.source.get(index)?;
                (img.h, img.w)
            }
        };
        let mut rng = rng_for(self.cfg.seed, epoch, index as u64, Purpose::Augment);
        Ok(self.params_for(h, w, &mut rng))
    }

    fn params_for<R: Rng>(&self, h: usize, w: usize, rng: &mut R) -> AugParams {
        if self.cfg.augment.kind.is_rrc() {
            sample_params(&self.cfg.augment, h, w, self.size, rng)
        } else {
            sample_params(&self.cfg.augment, self.size, self.size, self.size, rng)
        }
    }

    /// Produce one sample's pixels into `out` (C, S, S).
    fn fill_image<T: OutPixel>(
        &self,
        index: usize,
        epoch: u64,
        out: &mut [T],
        scratch: &mut SampleScratch,
    ) -> Result<(), String> {
        let tmp = &mut scratch.resize;
        let mut rng = rng_for(self.cfg.seed, epoch, index as u64, Purpose::Augment);
        let s = self.size;
        let rrc = self.cfg.augment.kind.is_rrc();
        let mut params = None;
        let img = self.source.get_with(index, &mut scratch.decode, |h, w| {
            let p = self.params_for(h, w, &mut rng);
            params = Some(p);
            if rrc && self.cfg.partial_decode {
                resize_rows_read(&p, s)
            } else {
                h
            }
        })?;
        let p = params.ok_or("internal error: no augmentation parameters")?;
        if rrc {
            resize_box(&img.data, img.h, img.w, img.c, &p, s, out, tmp);
        } else if img.h == s && img.w == s {
            crop_pad_flip(&img.data, s, img.c, self.cfg.augment.padding, &p, out);
        } else {
            // Files without rrc: resize the central square to S (as ImageFolder does), then
            // crop with padding / flip that base image.
            let (top, left, bh, bw) = center_box(img.h, img.w);
            let cbox = AugParams {
                top,
                left,
                h: bh,
                w: bw,
                flip: false,
            };
            let c = img.c;
            let mut chw = vec![0u8; c * s * s];
            resize_box(&img.data, img.h, img.w, c, &cbox, s, &mut chw, tmp);
            let mut hwc = vec![0u8; c * s * s];
            for ch in 0..c {
                for px in 0..s * s {
                    hwc[px * c + ch] = chw[ch * s * s + px];
                }
            }
            crop_pad_flip(&hwc, s, c, self.cfg.augment.padding, &p, out);
        }
        Ok(())
    }

    fn fill_images<T: PooledPixel>(
        &self,
        idx: &[u32],
        epoch: u64,
        stop: &AtomicBool,
    ) -> (Vec<T>, Vec<Result<(), SampleErr>>) {
        let chw = self.channels * self.size * self.size;
        let mut buf = self.buffers.take::<T>(idx.len() * chw);
        let status: Vec<Result<(), SampleErr>> = self.pool.install(|| {
            buf.par_chunks_mut(chw)
                .zip(idx.par_iter())
                .map(|(out, &i)| {
                    if stop.load(Ordering::Relaxed) {
                        return Err(SampleErr::Stopped);
                    }
                    let r = catch_unwind(AssertUnwindSafe(|| {
                        SCRATCH.with(|cell| match cell.try_borrow_mut() {
                            Ok(mut tmp) => self.fill_image(i as usize, epoch, out, &mut tmp),
                            Err(_) => self.fill_image(
                                i as usize,
                                epoch,
                                out,
                                &mut SampleScratch::default(),
                            ),
                        })
                    }));
                    match r {
                        Ok(Ok(())) => Ok(()),
                        Ok(Err(msg)) => Err(SampleErr::Corrupt(msg)),
                        Err(p) => Err(SampleErr::Internal(format!(
                            "internal error while loading sample {i}: {}",
                            panic_message(&*p)
                        ))),
                    }
                })
                .collect()
        });
        (buf, status)
    }

    /// Build batch `batch` of `epoch` from this rank's `order`.
    pub fn make_batch(
        &self,
        order: &[u32],
        epoch: u64,
        batch: usize,
        stop: &AtomicBool,
    ) -> Result<Option<Batch>, String> {
        let bs = self.cfg.batch_size;
        let start = batch * bs;
        let end = (start + bs).min(order.len());
        let idx = &order[start..end];
        let (images, status) = if self.cfg.output_u8 {
            let (b, s) = self.fill_images::<u8>(idx, epoch, stop);
            (Pixels::U8(b), s)
        } else {
            let (b, s) = self.fill_images::<f32>(idx, epoch, stop);
            (Pixels::F32(b), s)
        };
        let mut keep = vec![true; idx.len()];
        let mut skipped = 0;
        for (k, st) in status.into_iter().enumerate() {
            match st {
                Ok(()) => {}
                Err(SampleErr::Stopped) => return Ok(None),
                Err(SampleErr::Internal(m)) => return Err(m),
                Err(SampleErr::Corrupt(m)) => {
                    if self.cfg.skip_corrupt {
                        keep[k] = false;
                        skipped += 1;
                    } else {
                        return Err(m);
                    }
                }
            }
        }
        let idx: Vec<u32> = idx
            .iter()
            .zip(&keep)
            .filter(|(_, &k)| k)
            .map(|(&i, _)| i)
            .collect();
        let chw = self.channels * self.size * self.size;
        let images = match images {
            Pixels::F32(v) => Pixels::F32(compact(v, chw, &keep)),
            Pixels::U8(v) => Pixels::U8(compact(v, chw, &keep)),
        };
        let n = idx.len();
        let (seed, l, lk) = (self.cfg.seed, self.num_patches, self.len_keep);
        let mut masks = Vec::with_capacity(self.cfg.num_masks);
        for m in 0..self.cfg.num_masks {
            let mut ms = MaskSet {
                ids_keep: vec![0; n * lk],
                mask: vec![0.0; n * l],
                ids_restore: vec![0; n * l],
            };
            self.pool.install(|| {
                ms.ids_keep
                    .par_chunks_mut(lk)
                    .zip(ms.mask.par_chunks_mut(l))
                    .zip(ms.ids_restore.par_chunks_mut(l))
                    .zip(idx.par_iter())
                    .for_each_init(
                        || vec![0u32; l],
                        |scratch, (((keep, mask), restore), &i)| {
                            let mut rng =
                                rng_for(seed, epoch, u64::from(i), Purpose::Mask(m as u32));
                            draw_mask(&mut rng, keep, mask, restore, scratch);
                        },
                    )
            });
            masks.push(ms);
        }
        let (sigma, seeds) = match &self.cfg.sigma {
            Some(spec) => (
                Some(
                    idx.iter()
                        .map(|&i| spec.sample(seed, epoch, u64::from(i)))
                        .collect::<Vec<_>>(),
                ),
                Some(
                    idx.iter()
                        .map(|&i| noise_seed(seed, epoch, u64::from(i)))
                        .collect::<Vec<_>>(),
                ),
            ),
            None => (None, None),
        };
        let noisy = match (self.cfg.noisy, &sigma, &seeds) {
            (true, Some(sig), Some(sd)) => {
                let mut out = vec![0f32; n * chw];
                self.pool.install(|| match &images {
                    Pixels::F32(clean) => out
                        .par_chunks_mut(chw)
                        .zip(clean.par_chunks(chw))
                        .enumerate()
                        .for_each(|(k, (o, c))| add_noise(c, o, sig[k], sd[k])),
                    Pixels::U8(clean) => out
                        .par_chunks_mut(chw)
                        .zip(clean.par_chunks(chw))
                        .enumerate()
                        .for_each(|(k, (o, c))| {
                            let cf: Vec<f32> = c.iter().map(|&v| f32::from_u8(v)).collect();
                            add_noise(&cf, o, sig[k], sd[k])
                        }),
                });
                Some(out)
            }
            _ => None,
        };
        Ok(Some(Batch {
            n,
            images,
            labels: idx.iter().map(|&i| self.labels[i as usize]).collect(),
            indices: idx.iter().map(|&i| i64::from(i)).collect(),
            masks,
            sigma,
            noise_seed: seeds,
            noisy,
            skipped,
        }))
    }

    /// Start producing `epoch` from batch `start_batch` on a background thread.
    pub fn start(self: &Arc<Self>, epoch: u64, start_batch: usize) -> EpochIter {
        let (tx, rx) = sync_channel::<Result<Batch, String>>(self.cfg.prefetch);
        let stop = Arc::new(AtomicBool::new(false));
        let core = Arc::clone(self);
        let stop2 = Arc::clone(&stop);
        let handle = std::thread::Builder::new()
            .name("mimir-loader-producer".into())
            .spawn(move || {
                let order = core.rank_indices(epoch);
                for b in start_batch..core.num_batches() {
                    if stop2.load(Ordering::Relaxed) {
                        break;
                    }
                    let r = catch_unwind(AssertUnwindSafe(|| {
                        core.make_batch(&order, epoch, b, &stop2)
                    }))
                    .unwrap_or_else(|p| {
                        Err(format!(
                            "internal error in the loader: {}",
                            panic_message(&*p)
                        ))
                    });
                    let item = match r {
                        Ok(Some(batch)) => Ok(batch),
                        Ok(None) => break, // stopped
                        Err(e) => Err(e),
                    };
                    let failed = item.is_err();
                    if tx.send(item).is_err() || failed {
                        break;
                    }
                }
            });
        match handle {
            Ok(h) => EpochIter {
                rx: Some(rx),
                stop,
                handle: Some(h),
                spawn_error: None,
            },
            Err(e) => EpochIter {
                rx: None,
                stop,
                handle: None,
                spawn_error: Some(format!("cannot start the loader thread: {e}")),
            },
        }
    }
}

/// A zeroed buffer of `n` output pixels for the workers to fill.
///
/// A batch of 224x224 float images is tens of MB: a fresh anonymous mapping that the workers
/// fault in 4 KiB at a time. On Linux the aligned interior is advised as transparent huge
/// pages (honoured when THP is `madvise` or `always`), which cuts those faults ~500-fold.
fn zeroed_output<T: OutPixel>(n: usize) -> Vec<T> {
    let v = vec![T::default(); n];
    #[cfg(target_os = "linux")]
    {
        const HUGE: usize = 2 << 20;
        let bytes = std::mem::size_of_val(v.as_slice());
        if bytes >= 4 * HUGE {
            let start = v.as_ptr() as usize;
            let first = start.next_multiple_of(HUGE);
            let last = (start + bytes) / HUGE * HUGE;
            if last > first {
                // SAFETY: `first..last` lies inside `v`'s allocation, and MADV_HUGEPAGE only
                // changes how the kernel backs those pages, never their contents. Failure is
                // harmless (the hint is ignored), so the result is not checked.
                unsafe {
                    libc::madvise(
                        first as *mut libc::c_void,
                        last - first,
                        libc::MADV_HUGEPAGE,
                    );
                }
            }
        }
    }
    v
}

/// Keep the `stride`-sized rows of `v` whose flag is set.
fn compact<T: Copy>(mut v: Vec<T>, stride: usize, keep: &[bool]) -> Vec<T> {
    if keep.iter().all(|&k| k) {
        return v;
    }
    let mut dst = 0;
    for (src, &k) in keep.iter().enumerate() {
        if k {
            if dst != src {
                v.copy_within(src * stride..(src + 1) * stride, dst * stride);
            }
            dst += 1;
        }
    }
    v.truncate(dst * stride);
    v
}

/// The dataset permutation of `epoch` (identity without shuffle), split into `world_size`
/// equal strided shards of `n // world_size` samples; returns `rank`'s shard.
pub fn epoch_order(
    n: usize,
    shuffle: bool,
    seed: u64,
    epoch: u64,
    rank: usize,
    world_size: usize,
) -> Vec<u32> {
    let mut order: Vec<u32> = (0..n as u32).collect();
    if shuffle {
        let mut rng = rng_for(seed, epoch, 0, Purpose::Shuffle);
        for i in 0..n.saturating_sub(1) {
            let j = rng.random_range(i..n);
            order.swap(i, j);
        }
    }
    let per = n / world_size;
    order[..per * world_size]
        .iter()
        .skip(rank)
        .step_by(world_size)
        .copied()
        .collect()
}

/// A running epoch: a bounded queue filled by a producer thread.
///
/// Dropping it stops the producer and joins it.
pub struct EpochIter {
    rx: Option<Receiver<Result<Batch, String>>>,
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
    spawn_error: Option<String>,
}

impl EpochIter {
    /// The next batch; `None` at the end of the epoch. Blocks while the producer works.
    pub fn next_batch(&mut self) -> Option<Result<Batch, String>> {
        if let Some(e) = self.spawn_error.take() {
            return Some(Err(e));
        }
        self.rx.as_ref()?.recv().ok()
    }

    /// Stop the producer and wait for it (idempotent).
    pub fn close(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.rx = None; // a blocked `send` fails now
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

impl Drop for EpochIter {
    fn drop(&mut self) {
        self.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::augment::AugmentKind;
    use crate::source::Bytes;

    fn cfg() -> Config {
        Config {
            batch_size: 4,
            shuffle: true,
            seed: 3,
            drop_last: true,
            rank: 0,
            world_size: 1,
            augment: AugmentSpec {
                kind: AugmentKind::CropFlip,
                padding: 2,
                scale: (0.2, 1.0),
                ratio: (0.75, 4.0 / 3.0),
            },
            image_size: None,
            num_masks: 2,
            mask_ratio: 0.75,
            patch_size: Some(2),
            sigma: Some(SigmaSpec::Gamma {
                k: 25.0,
                theta: 3.0,
            }),
            noisy: true,
            output_u8: false,
            num_threads: Some(2),
            prefetch: 2,
            skip_corrupt: false,
            partial_decode: true,
        }
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
        c1.num_threads = Some(1);
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
        c.batch_size = 5;
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
    fn bad_configs_are_rejected() {
        let src = || Source::array(Bytes::Owned(vec![0; 2 * 64 * 3]), &[2, 8, 8, 3]).unwrap();
        let mut c = cfg();
        c.batch_size = 0;
        assert!(Core::new(src(), None, c).is_err());
        let mut c = cfg();
        c.rank = 3;
        c.world_size = 3;
        assert!(Core::new(src(), None, c).is_err());
        let mut c = cfg();
        c.patch_size = Some(3);
        assert!(Core::new(src(), None, c).err().unwrap().contains("divide"));
        let mut c = cfg();
        c.image_size = Some(16);
        assert!(Core::new(src(), None, c).is_err());
        let mut c = cfg();
        c.sigma = None;
        assert!(Core::new(src(), None, c).err().unwrap().contains("noisy"));
        let mut c = cfg();
        c.mask_ratio = 0.99;
        assert!(Core::new(src(), None, c)
            .err()
            .unwrap()
            .contains("keeps no patch"));
        assert!(Core::new(src(), Some(vec![1]), cfg()).is_err());
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
        c.image_size = Some(8);
        c.augment.kind = AugmentKind::RrcFlip;
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
}
