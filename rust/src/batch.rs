//! What the loader hands over per batch: pixels, labels, patch masks and noise levels.

/// Output pixels of a batch, `(B, C, S, S)` flattened.
pub enum Pixels {
    F32(Vec<f32>),
    U8(Vec<u8>),
}

impl Pixels {
    /// Keep the samples (rows of `stride` pixels) whose flag is set, in place.
    pub fn retain_samples(self, stride: usize, keep: &[bool]) -> Self {
        match self {
            Pixels::F32(v) => Pixels::F32(compact(v, stride, keep)),
            Pixels::U8(v) => Pixels::U8(compact(v, stride, keep)),
        }
    }
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
