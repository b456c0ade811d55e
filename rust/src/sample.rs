//! Per-sample work on the worker threads: read or decode one image, augment it into its
//! slot of the batch buffer, and turn a failure (or a panic) into a [`SampleErr`].

use std::cell::RefCell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};

use rayon::prelude::*;

use crate::augment::{center_box, crop_pad_flip, AugParams, OutPixel};
use crate::buffer_pool::PooledPixel;
use crate::corrupt::{corrupt_chw, corruption_rng, Pixel};
use crate::decode::DecodeScratch;
use crate::loader::Core;
use crate::resize::{resize_box, resize_rows_read, ResizeScratch};
use crate::rng::{rng_for, Purpose};

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
pub enum SampleErr {
    Corrupt(String),
    Internal(String),
    Stopped,
}

/// The message of a caught panic.
pub fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".to_string()
    }
}

impl Core {
    /// Produce one sample's pixels into `out` (C, S, S).
    fn fill_image<T: OutPixel + Pixel>(
        &self,
        index: usize,
        epoch: u64,
        out: &mut [T],
        scratch: &mut SampleScratch,
    ) -> Result<(), String> {
        let tmp = &mut scratch.resize;
        let mut rng = rng_for(self.cfg.seed, epoch, index as u64, Purpose::Augment);
        let s = self.size;
        let rrc = self.augment.kind.is_rrc();
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
            crop_pad_flip(&img.data, s, img.c, self.augment.padding, &p, out);
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
            crop_pad_flip(&hwc, s, c, self.augment.padding, &p, out);
        }
        if let Some(spec) = self.cfg.corruption {
            // After the other transforms, from the sample's own corruption stream.
            let mut rng = corruption_rng(self.cfg.seed, epoch, index as u64);
            corrupt_chw(spec, out, (self.channels, s, s), &mut rng);
        }
        Ok(())
    }

    pub(crate) fn fill_images<T: PooledPixel + Pixel>(
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
}
