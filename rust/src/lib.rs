//! The `mimir_fast._native` extension module. This file only declares the Python module;
//! the logic lives in plain Rust modules beside it.

use pyo3::prelude::*;

mod augment;
mod batch;
mod buffer_pool;
mod build_info;
mod config;
mod corrupt;
mod decode;
mod deinterleave;
mod epoch;
mod loader;
mod markers;
mod masking;
mod noise;
mod py_batch;
mod py_loader;
mod resize;
mod rng;
mod sample;
mod source;

#[pymodule]
mod _native {
    use super::*;

    #[pymodule_export]
    use crate::py_batch::NativeBatch;
    #[pymodule_export]
    use crate::py_loader::{NativeIter, NativeLoader};

    #[pymodule_export]
    use crate::corrupt::py::{corrupt_f32, corrupt_u8, corruption_names};

    /// Version of the native module (equals the Python package version).
    #[pymodule_export]
    #[allow(non_upper_case_globals)]
    const __version__: &str = crate::build_info::VERSION;

    /// `"release"` or `"debug"`: the Cargo profile the module was compiled with.
    #[pyfunction]
    fn build_profile() -> &'static str {
        crate::build_info::profile()
    }

    /// A dict describing the build: version, profile, target and rustc's optimisation level.
    #[pyfunction]
    fn build_info(py: Python<'_>) -> PyResult<Bound<'_, pyo3::types::PyDict>> {
        let info = pyo3::types::PyDict::new(py);
        info.set_item("version", crate::build_info::VERSION)?;
        info.set_item("profile", crate::build_info::profile())?;
        info.set_item("target_arch", std::env::consts::ARCH)?;
        info.set_item("target_os", std::env::consts::OS)?;
        info.set_item("debug_assertions", cfg!(debug_assertions))?;
        Ok(info)
    }
}
