//! Image buffers of earlier batches, kept for reuse once Python frees their arrays.

use std::sync::Mutex;

use crate::augment::OutPixel;
use crate::batch::Pixels;

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
    /// A pool keeping at most `capacity` buffers of each pixel type.
    pub fn new(capacity: usize) -> Self {
        BufferPool {
            f32: Mutex::new(Vec::new()),
            u8: Mutex::new(Vec::new()),
            capacity,
        }
    }

    /// A buffer of `n` pixels: a returned one when there is one (contents stale), else new.
    pub fn take<T: PooledPixel>(&self, n: usize) -> Vec<T> {
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
