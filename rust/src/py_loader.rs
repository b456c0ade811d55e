//! Python bindings of the loader (`NativeLoader`, `NativeIter`): argument conversion, GIL
//! release and zero-copy hand-off of batch buffers to numpy. The logic is in `loader.rs`.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use numpy::ndarray::ArrayView1;
use numpy::{PyArray1, PyArrayDyn, PyArrayMethods, PyReadonlyArray1, PyUntypedArrayMethods};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyTuple};

use crate::augment::{AugmentKind, AugmentSpec};
use crate::loader::{Batch, BufferPool, Config, Core, EpochIter, Pixels};
use crate::noise::SigmaSpec;
use crate::source::{Bytes, Source};

fn value_err(msg: String) -> PyErr {
    PyValueError::new_err(msg)
}

fn req<'py, T: FromPyObjectOwned<'py>>(cfg: &Bound<'py, PyDict>, key: &str) -> PyResult<T> {
    match cfg.get_item(key)? {
        Some(v) => v.extract::<T>().map_err(|e| {
            PyTypeError::new_err(format!("loader option {key}: {}", Into::<PyErr>::into(e)))
        }),
        None => Err(PyTypeError::new_err(format!("missing loader option {key}"))),
    }
}

fn opt<'py, T: FromPyObjectOwned<'py>>(cfg: &Bound<'py, PyDict>, key: &str) -> PyResult<Option<T>> {
    match cfg.get_item(key)? {
        Some(v) if !v.is_none() => v.extract::<T>().map(Some).map_err(|e| {
            PyTypeError::new_err(format!("loader option {key}: {}", Into::<PyErr>::into(e)))
        }),
        _ => Ok(None),
    }
}

/// Build a [`Config`] from the dict prepared by `mimir_fast.data.loader`.
fn parse_config(cfg: &Bound<'_, PyDict>) -> PyResult<Config> {
    let augment = AugmentSpec {
        kind: AugmentKind::parse(&req::<String>(cfg, "augment")?).map_err(value_err)?,
        padding: req(cfg, "padding")?,
        scale: req(cfg, "rrc_scale")?,
        ratio: req(cfg, "rrc_ratio")?,
    };
    let sigma = match opt::<(String, f64, f64)>(cfg, "sigma")? {
        None => None,
        Some((kind, a, b)) => Some(match kind.as_str() {
            "gamma" => SigmaSpec::Gamma { k: a, theta: b },
            "uniform" => SigmaSpec::Uniform { a, b },
            "constant" => SigmaSpec::Constant(a),
            other => {
                return Err(value_err(format!(
                    "sigma kind must be 'gamma', 'uniform' or 'constant', got {other:?}"
                )))
            }
        }),
    };
    let output: String = req(cfg, "output")?;
    let output_u8 = match output.as_str() {
        "float" => false,
        "uint8" => true,
        other => {
            return Err(value_err(format!(
                "output must be 'float' or 'uint8', got {other:?}"
            )))
        }
    };
    Ok(Config {
        batch_size: req(cfg, "batch_size")?,
        shuffle: req(cfg, "shuffle")?,
        seed: req(cfg, "seed")?,
        drop_last: req(cfg, "drop_last")?,
        rank: req(cfg, "rank")?,
        world_size: req(cfg, "world_size")?,
        augment,
        image_size: opt(cfg, "image_size")?,
        num_masks: req(cfg, "num_masks")?,
        mask_ratio: req(cfg, "mask_ratio")?,
        patch_size: opt(cfg, "patch_size")?,
        sigma,
        noisy: req(cfg, "noisy")?,
        output_u8,
        num_threads: opt(cfg, "num_threads")?,
        prefetch: req(cfg, "prefetch")?,
        skip_corrupt: req(cfg, "skip_corrupt")?,
        partial_decode: opt(cfg, "partial_decode")?.unwrap_or(true),
    })
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
        config: &Bound<'_, PyDict>,
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
        build(py, source, labels_vec(labels)?, parse_config(config)?)
    }

    /// Memory-map a uint8 `.npy` file.
    #[staticmethod]
    #[pyo3(signature = (path, labels, config))]
    fn from_npy(
        py: Python<'_>,
        path: PathBuf,
        labels: Option<PyReadonlyArray1<'_, i64>>,
        config: &Bound<'_, PyDict>,
    ) -> PyResult<Self> {
        let source = Source::npy(&path).map_err(value_err)?;
        build(py, source, labels_vec(labels)?, parse_config(config)?)
    }

    /// JPEG/PNG files decoded (as RGB) on the worker threads.
    #[staticmethod]
    #[pyo3(signature = (paths, labels, config))]
    fn from_files(
        py: Python<'_>,
        paths: Vec<PathBuf>,
        labels: Option<PyReadonlyArray1<'_, i64>>,
        config: &Bound<'_, PyDict>,
    ) -> PyResult<Self> {
        build(
            py,
            Source::Files { paths },
            labels_vec(labels)?,
            parse_config(config)?,
        )
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

    /// Start producing `epoch` from batch `start_batch`.
    fn iter_epoch(&self, epoch: u64, start_batch: usize) -> PyResult<NativeIter> {
        let n = self.core.num_batches();
        if start_batch > n {
            return Err(value_err(format!(
                "start_batch={start_batch} is past the end of the epoch ({n} batches)"
            )));
        }
        Ok(NativeIter {
            inner: Mutex::new(Some(self.core.start(epoch, start_batch))),
            _core: Arc::clone(&self.core),
        })
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

/// The memory behind a batch's image array (its numpy base object): when numpy frees it,
/// the buffer goes back to the loader's [`BufferPool`].
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

fn batch_to_py<'py>(
    py: Python<'py>,
    b: Batch,
    pool: &Arc<BufferPool>,
) -> PyResult<Bound<'py, PyTuple>> {
    let images = pooled_array(py, b.images, pool)?;
    let masks = PyList::empty(py);
    for m in b.masks {
        masks.append((
            PyArray1::from_vec(py, m.ids_keep),
            PyArray1::from_vec(py, m.mask),
            PyArray1::from_vec(py, m.ids_restore),
        ))?;
    }
    let sigma = b.sigma.map(|v| PyArray1::from_vec(py, v));
    let seeds = b.noise_seed.map(|v| PyArray1::from_vec(py, v));
    let noisy = b.noisy.map(|v| PyArray1::from_vec(py, v));
    (
        b.n,
        images,
        PyArray1::from_vec(py, b.labels),
        PyArray1::from_vec(py, b.indices),
        masks,
        sigma,
        seeds,
        noisy,
        b.skipped,
    )
        .into_pyobject(py)
}

#[pymethods]
impl NativeIter {
    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    /// `(n, images, labels, indices, masks, sigma, noise_seed, noisy, skipped)`.
    fn __next__<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyTuple>>> {
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
            Some(Ok(b)) => batch_to_py(py, b, self._core.buffers()).map(Some),
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
