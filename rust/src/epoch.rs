//! An epoch: the seeded permutation cut into rank shards, and a producer thread that keeps
//! a bounded queue of ready batches.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;

use rand::Rng;

use crate::batch::Batch;
use crate::loader::Core;
use crate::rng::{rng_for, Purpose};
use crate::sample::panic_message;

impl Core {
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
