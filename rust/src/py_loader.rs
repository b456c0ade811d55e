//! Python bindings of the loader (`NativeLoader`, `NativeIter`): argument conversion, GIL
//! release and the hand-off of batches. The logic is in `loader.rs`; the configuration
//! arrives typed (`config.rs`), the batches leave as `NativeBatch` (`py_batch.rs`).

use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use numpy::{PyArray1, PyArrayDyn, PyArrayMethods, PyReadonlyArray1, PyUntypedArrayMethods};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::config::Config;
use crate::epoch::EpochIter;
use crate::loader::Core;
use crate::py_batch::NativeBatch;
use crate::source::{Bytes, Source};

fn value_err(msg: String) -> PyErr {
    PyValueError::new_err(msg)
}

fn labels_vec(labels: Option<PyReadonlyArray1<'_, i64>>) -> PyResult<Option<Vec<i64>>> {
    labels
        .map(|l| {
            l.to_vec()
                .map_err(|_| value_err("labels must be a contiguous int64 array".into()))
        })
        .transpose()
}

/// The native loader; use `mimir_fast.data.Loader` rather than this class.
#[pyclass(module = "mimir_fast._native", frozen)]
pub struct NativeLoader {
    core: Arc<Core>,
}

fn build(
    py: Python<'_>,
    source: Source,
    labels: Option<Vec<i64>>,
    cfg: Config,
) -> PyResult<NativeLoader> {
    let core = py
        .detach(move || Core::new(source, labels, cfg))
        .map_err(value_err)?;
    Ok(NativeLoader {
        core: Arc::new(core),
    })
}

#[pymethods]
impl NativeLoader {
    /// Borrow a C-contiguous uint8 (N, H, W[, C]) array without copying it.
    #[staticmethod]
    #[pyo3(signature = (images, labels, config))]
    fn from_array(
        py: Python<'_>,
        images: &Bound<'_, PyArrayDyn<u8>>,
        labels: Option<PyReadonlyArray1<'_, i64>>,
        config: Config,
    ) -> PyResult<Self> {
        if !images.is_c_contiguous() {
            return Err(value_err("images must be C-contiguous".into()));
        }
        let shape = images.shape().to_vec();
        let len = images.len();
        let ptr = images.data() as *const u8;
        let owner: Py<PyAny> = images.clone().into_any().unbind();
        // SAFETY: `owner` keeps the array alive; the Python wrapper documents that the array
        // must not be modified while the loader exists.
        let bytes = unsafe { Bytes::external(ptr, len, Box::new(owner)) };
        let source = Source::array(bytes, &shape).map_err(value_err)?;
        build(py, source, labels_vec(labels)?, config)
    }

    /// Memory-map a uint8 `.npy` file.
    #[staticmethod]
    #[pyo3(signature = (path, labels, config))]
    fn from_npy(
        py: Python<'_>,
        path: PathBuf,
        labels: Option<PyReadonlyArray1<'_, i64>>,
        config: Config,
    ) -> PyResult<Self> {
        let source = Source::npy(&path).map_err(value_err)?;
        build(py, source, labels_vec(labels)?, config)
    }

    /// JPEG/PNG files decoded (as RGB) on the worker threads.
    #[staticmethod]
    #[pyo3(signature = (paths, labels, config))]
    fn from_files(
        py: Python<'_>,
        paths: Vec<PathBuf>,
        labels: Option<PyReadonlyArray1<'_, i64>>,
        config: Config,
    ) -> PyResult<Self> {
        build(py, Source::Files { paths }, labels_vec(labels)?, config)
    }

    fn __len__(&self) -> usize {
        self.core.num_batches()
    }
    #[getter]
    fn num_samples(&self) -> usize {
        self.core.num_samples()
    }
    #[getter]
    fn samples_per_rank(&self) -> usize {
        self.core.samples_per_rank()
    }
    #[getter]
    fn image_size(&self) -> usize {
        self.core.image_size()
    }
    #[getter]
    fn channels(&self) -> usize {
        self.core.channels()
    }
    #[getter]
    fn num_patches(&self) -> usize {
        self.core.num_patches()
    }
    #[getter]
    fn len_keep(&self) -> usize {
        self.core.len_keep()
    }
    #[getter]
    fn num_threads(&self) -> usize {
        self.core.num_threads()
    }

    /// This rank's dataset indices for `epoch`, in delivery order.
    fn rank_indices<'py>(&self, py: Python<'py>, epoch: u64) -> Bound<'py, PyArray1<i64>> {
        let v: Vec<i64> = self
            .core
            .rank_indices(epoch)
            .into_iter()
            .map(i64::from)
            .collect();
        PyArray1::from_vec(py, v)
    }

    /// Augmentation parameters of dataset index `index` in `epoch`.
    fn debug_params<'py>(
        &self,
        py: Python<'py>,
        index: usize,
        epoch: u64,
    ) -> PyResult<Bound<'py, PyDict>> {
        let p = self.core.debug_params(index, epoch).map_err(value_err)?;
        let d = PyDict::new(py);
        d.set_item("top", p.top)?;
        d.set_item("left", p.left)?;
        d.set_item("height", p.h)?;
        d.set_item("width", p.w)?;
        d.set_item("flip", p.flip)?;
        Ok(d)
    }

    /// Start producing `epoch` from batch `start_batch` (past the end: no batches).
    fn iter_epoch(&self, epoch: u64, start_batch: usize) -> NativeIter {
        NativeIter {
            inner: Mutex::new(Some(self.core.start(epoch, start_batch))),
            _core: Arc::clone(&self.core),
        }
    }
}

/// A running epoch. `__next__` waits for the next batch with the GIL released.
#[pyclass(module = "mimir_fast._native", frozen)]
pub struct NativeIter {
    // Dropped first: stops and joins the producer before the last `Core` reference goes
    // (so a borrowed numpy array is released on a thread that holds the GIL).
    inner: Mutex<Option<EpochIter>>,
    _core: Arc<Core>,
}

fn lock(m: &Mutex<Option<EpochIter>>) -> MutexGuard<'_, Option<EpochIter>> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[pymethods]
impl NativeIter {
    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    /// The next batch, waited for with the GIL released.
    fn __next__(&self, py: Python<'_>) -> PyResult<Option<NativeBatch>> {
        let next = py.detach(|| {
            let mut g = lock(&self.inner);
            match g.as_mut() {
                Some(it) => {
                    let r = it.next_batch();
                    if !matches!(r, Some(Ok(_))) {
                        if let Some(mut it) = g.take() {
                            it.close();
                        }
                    }
                    r
                }
                None => None,
            }
        });
        match next {
            None => Ok(None),
            Some(Err(msg)) => Err(value_err(msg)),
            Some(Ok(b)) => NativeBatch::new(py, b, self._core.buffers()).map(Some),
        }
    }

    /// Stop the producer thread and wait for it.
    fn close(&self, py: Python<'_>) {
        py.detach(|| {
            if let Some(mut it) = lock(&self.inner).take() {
                it.close();
            }
        });
    }
}
