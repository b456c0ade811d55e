//! The loader's configuration as Python hands it over: the attributes of
//! `mimir_fast.data.LoaderConfig`, read by `#[derive(FromPyObject)]`.
//!
//! Python checks every option that can be judged alone (types, ranges, choices, the noise
//! spec) and words the errors; [`crate::loader::Core::new`] checks only what needs the images.
//! The conversions here read values, they do not judge them: counts that are divisors are
//! `NonZeroUsize`, so a zero cannot reach the loader at all.

use std::num::NonZeroUsize;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyTuple;

use crate::augment::{AugmentKind, AugmentSpec};
use crate::corrupt::CorruptSpec;
use crate::noise::SigmaSpec;

/// Everything the user configures, one field per `LoaderConfig` attribute (`output` is read
/// into `output_u8`). `pin_memory` stays on the Python side.
#[derive(Clone, Debug, FromPyObject)]
pub struct Config {
    pub batch_size: NonZeroUsize,
    pub shuffle: bool,
    pub seed: u64,
    pub drop_last: bool,
    pub rank: usize,
    pub world_size: NonZeroUsize,
    #[pyo3(from_py_with = augment_kind)]
    pub augment: AugmentKind,
    pub padding: usize,
    pub rrc_scale: (f64, f64),
    pub rrc_ratio: (f64, f64),
    /// Output height and width; `None`: the source's size (arrays) or 224 (files).
    pub image_size: Option<NonZeroUsize>,
    pub num_masks: usize,
    pub mask_ratio: f64,
    pub patch_size: Option<NonZeroUsize>,
    #[pyo3(from_py_with = sigma_spec)]
    pub sigma: Option<SigmaSpec>,
    pub noisy: bool,
    #[pyo3(attribute("output"), from_py_with = output_is_u8)]
    pub output_u8: bool,
    /// Worker threads; `None`: the number of available cores.
    pub num_threads: Option<NonZeroUsize>,
    pub prefetch: usize,
    pub skip_corrupt: bool,
    /// Decode a sequential JPEG only down to the rows its random-resized-crop box reads
    /// (the output is identical either way; off only to test that).
    pub partial_decode: bool,
    /// A common corruption applied to every sample after the other transforms; read from
    /// `LoaderConfig.corruption`, `None` or `(name, severity)` (an object without the
    /// attribute means none).
    #[pyo3(default, from_py_with = corruption_spec)]
    pub corruption: Option<CorruptSpec>,
}

impl Config {
    /// The augmentation settings every sample shares.
    pub fn augment_spec(&self) -> AugmentSpec {
        AugmentSpec {
            kind: self.augment,
            padding: self.padding,
            scale: self.rrc_scale,
            ratio: self.rrc_ratio,
        }
    }
}

/// `"crop_flip"`, `"rrc"`, ... as an [`AugmentKind`].
fn augment_kind(obj: &Bound<'_, PyAny>) -> PyResult<AugmentKind> {
    AugmentKind::parse(&obj.extract::<String>()?).map_err(PyValueError::new_err)
}

/// `"uint8"` -> true, `"float"` -> false.
fn output_is_u8(obj: &Bound<'_, PyAny>) -> PyResult<bool> {
    match obj.extract::<String>()?.as_str() {
        "float" => Ok(false),
        "uint8" => Ok(true),
        other => Err(PyValueError::new_err(format!(
            "output must be 'float' or 'uint8', got {other:?}"
        ))),
    }
}

/// `None` or `mimir_fast.noise.parse_sigma_spec`'s tuple: `("gamma", k, theta)`,
/// `("uniform", a, b)` or `("constant", v)`.
fn sigma_spec(obj: &Bound<'_, PyAny>) -> PyResult<Option<SigmaSpec>> {
    if obj.is_none() {
        return Ok(None);
    }
    let spec = obj.cast::<PyTuple>()?;
    let kind: String = spec.get_item(0)?.extract()?;
    let params: Vec<f64> = spec.get_slice(1, spec.len()).extract()?;
    let sigma = match (kind.as_str(), params.as_slice()) {
        ("gamma", &[k, theta]) => SigmaSpec::Gamma { k, theta },
        ("uniform", &[a, b]) => SigmaSpec::Uniform { a, b },
        ("constant", &[v]) => SigmaSpec::Constant(v),
        _ => {
            return Err(PyValueError::new_err(format!(
                "sigma must be ('gamma', k, theta), ('uniform', a, b) or ('constant', v), got {obj}"
            )))
        }
    };
    Ok(Some(sigma))
}

/// `None` or `(name, severity)` as a checked [`CorruptSpec`].
fn corruption_spec(obj: &Bound<'_, PyAny>) -> PyResult<Option<CorruptSpec>> {
    if obj.is_none() {
        return Ok(None);
    }
    let (name, severity): (String, i64) = obj.extract().map_err(|_| {
        PyValueError::new_err(format!(
            "corruption must be None or (name, severity), got {obj}"
        ))
    })?;
    CorruptSpec::new(&name, severity)
        .map(Some)
        .map_err(PyValueError::new_err)
}
