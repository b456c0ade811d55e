//! A batch as Python receives it: numpy arrays over the loader's buffers, the images without
//! a copy (their memory goes back to the loader's [`BufferPool`] once numpy frees them).

use std::sync::Arc;

use numpy::ndarray::ArrayView1;
use numpy::PyArray1;
use pyo3::prelude::*;
use pyo3::types::PyList;

use crate::batch::{Batch, Pixels};
use crate::buffer_pool::BufferPool;

/// One batch of the native loader; `mimir_fast.data.loader` reshapes it into a `LoaderBatch`.
/// Every array is 1-D: images `(n * C * S * S,)`, each mask part `(n * len_keep,)` or
/// `(n * L,)`, the rest `(n,)`.
#[pyclass(module = "mimir_fast._native", frozen)]
pub struct NativeBatch {
    /// Samples in the batch.
    #[pyo3(get)]
    n: usize,
    /// float32 in [0, 1], or uint8 with `output="uint8"`.
    #[pyo3(get)]
    images: Py<PyAny>,
    #[pyo3(get)]
    labels: Py<PyArray1<i64>>,
    /// Dataset indices of the samples.
    #[pyo3(get)]
    indices: Py<PyArray1<i64>>,
    /// `(ids_keep, mask, ids_restore)` per mask.
    #[pyo3(get)]
    masks: Py<PyList>,
    #[pyo3(get)]
    sigma: Option<Py<PyArray1<f32>>>,
    #[pyo3(get)]
    noise_seed: Option<Py<PyArray1<i64>>>,
    #[pyo3(get)]
    noisy: Option<Py<PyArray1<f32>>>,
    /// Samples of this batch dropped as unreadable.
    #[pyo3(get)]
    skipped: usize,
}

impl NativeBatch {
    /// Hand `b` to Python; its image buffer returns to `pool` once numpy frees it.
    pub fn new(py: Python<'_>, b: Batch, pool: &Arc<BufferPool>) -> PyResult<Self> {
        let masks = PyList::empty(py);
        for m in b.masks {
            masks.append((
                PyArray1::from_vec(py, m.ids_keep),
                PyArray1::from_vec(py, m.mask),
                PyArray1::from_vec(py, m.ids_restore),
            ))?;
        }
        let array = |v| PyArray1::from_vec(py, v).unbind();
        Ok(NativeBatch {
            n: b.n,
            images: pooled_array(py, b.images, pool)?.unbind(),
            labels: array(b.labels),
            indices: array(b.indices),
            masks: masks.unbind(),
            sigma: b.sigma.map(|v| PyArray1::from_vec(py, v).unbind()),
            noise_seed: b.noise_seed.map(array),
            noisy: b.noisy.map(|v| PyArray1::from_vec(py, v).unbind()),
            skipped: b.skipped,
        })
    }
}

/// The memory behind a batch's image array (its numpy base object): when numpy frees it,
/// the buffer goes back to the loader's [`BufferPool`]. Not exported: Python meets it only
/// as `images.base`.
#[pyclass(module = "mimir_fast._native", frozen)]
pub struct PixelBuffer {
    pixels: Option<Pixels>,
    pool: Arc<BufferPool>,
}

impl Drop for PixelBuffer {
    fn drop(&mut self) {
        if let Some(p) = self.pixels.take() {
            self.pool.give(p);
        }
    }
}

/// A 1-D numpy array over `pixels` without copying, returning them to `pool` once freed.
fn pooled_array<'py>(
    py: Python<'py>,
    pixels: Pixels,
    pool: &Arc<BufferPool>,
) -> PyResult<Bound<'py, PyAny>> {
    let owner = Bound::new(
        py,
        PixelBuffer {
            pixels: Some(pixels),
            pool: Arc::clone(pool),
        },
    )?;
    let base = owner.clone().into_any();
    // SAFETY: `owner` becomes the array's base object, so it outlives the array, and its
    // buffer is never touched (let alone reallocated) until `owner` is dropped.
    Ok(unsafe {
        match owner.get().pixels.as_ref() {
            Some(Pixels::F32(v)) => {
                PyArray1::borrow_from_array(&ArrayView1::from(&v[..]), base).into_any()
            }
            Some(Pixels::U8(v)) => {
                PyArray1::borrow_from_array(&ArrayView1::from(&v[..]), base).into_any()
            }
            None => unreachable!("a new PixelBuffer holds its pixels"),
        }
    })
}
