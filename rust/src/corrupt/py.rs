//! Python entry points of the corruptions (`mimir_fast.data.corrupt` wraps them): a batch
//! in, a corrupted copy out, the work done in parallel with the GIL released.

use numpy::{PyArray1, PyArray4, PyArrayMethods, PyReadonlyArray4, PyUntypedArrayMethods};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use super::{corrupt_batch, CorruptSpec, Pixel, NAMES};

/// Corrupt a copy of a C-contiguous batch; `channels_last` says how it is laid out.
fn run<'py, T: Pixel + numpy::Element>(
    py: Python<'py>,
    images: PyReadonlyArray4<'py, T>,
    corruption: &str,
    severity: i64,
    seed: u64,
    channels_last: bool,
) -> PyResult<Bound<'py, PyArray4<T>>> {
    let spec = CorruptSpec::new(corruption, severity).map_err(PyValueError::new_err)?;
    let shape: [usize; 4] = [
        images.shape()[0],
        images.shape()[1],
        images.shape()[2],
        images.shape()[3],
    ];
    let mut data = images
        .to_vec()
        .map_err(|_| PyValueError::new_err("images must be a C-contiguous array"))?;
    let (h, w, c) = if channels_last {
        (shape[1], shape[2], shape[3])
    } else {
        (shape[2], shape[3], shape[1])
    };
    py.detach(|| corrupt_batch(spec, &mut data, (h, w, c), channels_last, seed));
    PyArray1::from_vec(py, data).reshape(shape)
}

/// Corrupt a uint8 (N, H, W, C) batch; image `i` draws from a generator keyed on
/// `(seed, i)`. Returns a new array.
#[pyfunction]
#[pyo3(signature = (images, corruption, severity, seed=0))]
pub fn corrupt_u8<'py>(
    py: Python<'py>,
    images: PyReadonlyArray4<'py, u8>,
    corruption: &str,
    severity: i64,
    seed: u64,
) -> PyResult<Bound<'py, PyArray4<u8>>> {
    run(py, images, corruption, severity, seed, true)
}

/// Corrupt a float32 (N, C, H, W) batch with values in [0, 1]; as `corrupt_u8` otherwise
/// (the same image and seed give the same draws).
#[pyfunction]
#[pyo3(signature = (images, corruption, severity, seed=0))]
pub fn corrupt_f32<'py>(
    py: Python<'py>,
    images: PyReadonlyArray4<'py, f32>,
    corruption: &str,
    severity: i64,
    seed: u64,
) -> PyResult<Bound<'py, PyArray4<f32>>> {
    run(py, images, corruption, severity, seed, false)
}

/// The corruption names, in the paper's order (frost left out).
#[pyfunction]
pub fn corruption_names() -> Vec<&'static str> {
    NAMES.to_vec()
}
