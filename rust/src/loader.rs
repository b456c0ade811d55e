//! The loader's shared state ([`Core`]): the checks that need the source, epoch order and
//! sharding, and the assembly of a batch. Per-sample work is in `sample.rs`, the producer
//! thread in `epoch.rs`.

use std::num::NonZeroUsize;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use rand::Rng;
use rayon::prelude::*;

use crate::augment::{sample_params, AugParams, AugmentSpec, OutPixel};
use crate::batch::{Batch, MaskSet, Pixels};
use crate::buffer_pool::BufferPool;
use crate::config::Config;
use crate::epoch::epoch_order;
use crate::masking::{draw_mask, len_keep};
use crate::noise::{add_noise, noise_seed};
use crate::rng::{rng_for, Purpose};
use crate::sample::SampleErr;
use crate::source::Source;

/// The shared state of a loader.
pub struct Core {
    pub(crate) source: Source,
    labels: Vec<i64>,
    pub(crate) cfg: Config,
    pub(crate) augment: AugmentSpec,
    pub(crate) size: usize,
    pub(crate) channels: usize,
    num_patches: usize,
    len_keep: usize,
    pub(crate) pool: rayon::ThreadPool,
    pub(crate) buffers: Arc<BufferPool>,
}

impl Core {
    /// Check the configuration against the source; errors are user-facing messages.
    ///
    /// The options themselves were checked on the Python side (`LoaderConfig`); what is
    /// checked here needs the source: its length, its image size and the patch grid.
    pub fn new(source: Source, labels: Option<Vec<i64>>, cfg: Config) -> Result<Self, String> {
        let labels = labels_for(&source, labels)?;
        let size = output_size(&source, &cfg)?;
        let (num_patches, len_keep) = patch_grid(&cfg, size)?;
        let pool = worker_pool(cfg.num_threads)?;
        Ok(Core {
            channels: source.channels(),
            buffers: Arc::new(BufferPool::new(cfg.prefetch + 2)),
            augment: cfg.augment_spec(),
            source,
            labels,
            cfg,
            size,
            num_patches,
            len_keep,
            pool,
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
        self.source.len() / self.cfg.world_size.get()
    }

    /// Batches per epoch for this rank.
    pub fn num_batches(&self) -> usize {
        let per = self.samples_per_rank();
        let batch_size = self.cfg.batch_size.get();
        if self.cfg.drop_last {
            per / batch_size
        } else {
            per.div_ceil(batch_size)
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
            self.cfg.world_size.get(),
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

    /// One sample's augmentation parameters for a source image of `(h, w)`.
    pub(crate) fn params_for<R: Rng>(&self, h: usize, w: usize, rng: &mut R) -> AugParams {
        if self.augment.kind.is_rrc() {
            sample_params(&self.augment, h, w, self.size, rng)
        } else {
            sample_params(&self.augment, self.size, self.size, self.size, rng)
        }
    }

    /// Build batch `batch` of `epoch` from this rank's `order`; `None` once stopped.
    pub fn make_batch(
        &self,
        order: &[u32],
        epoch: u64,
        batch: usize,
        stop: &AtomicBool,
    ) -> Result<Option<Batch>, String> {
        let bs = self.cfg.batch_size.get();
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
        let Some(keep) = self.samples_to_keep(status)? else {
            return Ok(None);
        };
        let skipped = keep.iter().filter(|&&k| !k).count();
        let idx: Vec<u32> = idx
            .iter()
            .zip(&keep)
            .filter(|(_, &k)| k)
            .map(|(&i, _)| i)
            .collect();
        let images = images.retain_samples(self.channels * self.size * self.size, &keep);
        let masks = self.draw_masks(&idx, epoch);
        let (sigma, noise_seed) = self.draw_sigmas(&idx, epoch);
        let noisy = self.noisy_images(&images, sigma.as_deref(), noise_seed.as_deref());
        Ok(Some(Batch {
            n: idx.len(),
            images,
            labels: idx.iter().map(|&i| self.labels[i as usize]).collect(),
            indices: idx.iter().map(|&i| i64::from(i)).collect(),
            masks,
            sigma,
            noise_seed,
            noisy,
            skipped,
        }))
    }

    /// Which samples of a batch to keep, from their status in order: `None` once stopped.
    /// A corrupt sample is dropped with `skip_corrupt`; else its error ends the batch, as an
    /// internal error always does.
    fn samples_to_keep(
        &self,
        status: Vec<Result<(), SampleErr>>,
    ) -> Result<Option<Vec<bool>>, String> {
        let mut keep = vec![true; status.len()];
        for (k, st) in status.into_iter().enumerate() {
            match st {
                Ok(()) => {}
                Err(SampleErr::Stopped) => return Ok(None),
                Err(SampleErr::Internal(m)) => return Err(m),
                Err(SampleErr::Corrupt(m)) if !self.cfg.skip_corrupt => return Err(m),
                Err(SampleErr::Corrupt(_)) => keep[k] = false,
            }
        }
        Ok(Some(keep))
    }

    /// `num_masks` patch masks of the samples `idx`, each drawn from its own generator.
    fn draw_masks(&self, idx: &[u32], epoch: u64) -> Vec<MaskSet> {
        let (n, seed, l, lk) = (idx.len(), self.cfg.seed, self.num_patches, self.len_keep);
        (0..self.cfg.num_masks)
            .map(|m| {
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
                ms
            })
            .collect()
    }

    /// The samples' noise levels and noise seeds, or `(None, None)` without `sigma`.
    fn draw_sigmas(&self, idx: &[u32], epoch: u64) -> (Option<Vec<f32>>, Option<Vec<i64>>) {
        let Some(spec) = &self.cfg.sigma else {
            return (None, None);
        };
        let seed = self.cfg.seed;
        let sigma = idx
            .iter()
            .map(|&i| spec.sample(seed, epoch, u64::from(i)))
            .collect();
        let seeds = idx
            .iter()
            .map(|&i| noise_seed(seed, epoch, u64::from(i)))
            .collect();
        (Some(sigma), Some(seeds))
    }

    /// `images + sigma / 255 * z` as float, with `noisy=True` (and a sigma).
    fn noisy_images(
        &self,
        images: &Pixels,
        sigma: Option<&[f32]>,
        seeds: Option<&[i64]>,
    ) -> Option<Vec<f32>> {
        let (true, Some(sig), Some(sd)) = (self.cfg.noisy, sigma, seeds) else {
            return None;
        };
        let chw = self.channels * self.size * self.size;
        let mut out = vec![0f32; sig.len() * chw];
        self.pool.install(|| match images {
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
}

/// One label per sample (zeros without labels); errors for an empty source or a count
/// mismatch.
fn labels_for(source: &Source, labels: Option<Vec<i64>>) -> Result<Vec<i64>, String> {
    let n = source.len();
    if n == 0 {
        return Err("the dataset is empty".into());
    }
    match labels {
        Some(l) if l.len() != n => Err(format!(
            "got {n} images but {} labels; the counts must match",
            l.len()
        )),
        Some(l) => Ok(l),
        None => Ok(vec![0; n]),
    }
}

/// The output height and width: `image_size`, else the arrays' size, else 224. Array images
/// must already have that size unless random-resized-crop resizes them.
fn output_size(source: &Source, cfg: &Config) -> Result<usize, String> {
    let size = match (cfg.image_size, source.fixed_size()) {
        (Some(s), _) => s.get(),
        (None, Some((h, _))) => h,
        (None, None) => 224,
    };
    if let Some((h, w)) = source.fixed_size() {
        if !cfg.augment.is_rrc() && (h != size || w != size) {
            return Err(format!(
                "images are {h}x{w} but the output is {size}x{size}; without augment='rrc_flip' \
                 or 'rrc' the array images must be square and of size image_size"
            ));
        }
    }
    Ok(size)
}

/// `(L, len_keep)` of the patch masks of a `size` x `size` output; `(0, 0)` without masks.
fn patch_grid(cfg: &Config, size: usize) -> Result<(usize, usize), String> {
    if cfg.num_masks == 0 {
        return Ok((0, 0));
    }
    let p = cfg
        .patch_size
        .ok_or("num_masks > 0 needs patch_size (the ViT's patch size)")?
        .get();
    if size % p != 0 {
        return Err(format!(
            "patch_size={p} must be >= 1 and divide image_size={size}"
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
    Ok((l, k))
}

/// The worker threads: `num_threads`, or one per available core.
fn worker_pool(num_threads: Option<NonZeroUsize>) -> Result<rayon::ThreadPool, String> {
    let threads = num_threads.map_or_else(
        || std::thread::available_parallelism().map_or(1, NonZeroUsize::get),
        NonZeroUsize::get,
    );
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(|i| format!("mimir-loader-{i}"))
        .build()
        .map_err(|e| format!("cannot start {threads} loader threads: {e}"))
}

#[cfg(test)]
#[path = "loader_tests.rs"]
mod tests;
