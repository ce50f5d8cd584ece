//! The error type of `autodidact-nn`, in the style of candle-core's `error.rs`:
//! one enum, each variant carrying what was wrong and what would be valid.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A model configuration value is out of range or inconsistent.
    #[error("invalid model config: `{field}` = {value}: {expected}")]
    Config {
        field: &'static str,
        value: String,
        expected: String,
    },

    /// An argument passed to a model function is invalid (bad shape, id out of range, ...).
    #[error("invalid {what}: {message}")]
    Invalid { what: &'static str, message: String },

    /// A checkpoint file is malformed or does not match the model it is loaded into.
    #[error("{path}: {message}")]
    Checkpoint { path: PathBuf, message: String },

    /// A tensor in a checkpoint has the wrong shape.
    #[error("{path}: tensor `{name}` has shape {found:?}, expected {expected:?}")]
    TensorShape {
        path: PathBuf,
        name: String,
        found: Vec<usize>,
        expected: Vec<usize>,
    },

    /// A tensor in a checkpoint has the wrong dtype.
    #[error("{path}: tensor `{name}` has dtype {found}, expected F32, BF16 or F16 (convert the checkpoint to one of those first)")]
    TensorDtype {
        path: PathBuf,
        name: String,
        found: String,
    },

    /// A tensor the model needs is missing from a checkpoint.
    #[error("{path}: tensor `{name}` is missing (expected shape {expected:?}){hint}")]
    TensorMissing {
        path: PathBuf,
        name: String,
        expected: Vec<usize>,
        hint: String,
    },

    /// A file was written by an incompatible version of autodidact.
    #[error("{path}: format version {found}, but this build of autodidact reads version {supported}; {hint}")]
    FormatVersion {
        path: PathBuf,
        found: String,
        supported: u32,
        hint: &'static str,
    },

    /// `backward` was called without a matching `forward`.
    #[error("backward called without a cached forward pass: call `forward` with the batch first")]
    NoForwardCache,

    #[error(transparent)]
    Core(#[from] autodidact_core::Error),
}

impl Error {
    pub(crate) fn invalid(what: &'static str, message: impl Into<String>) -> Self {
        Error::Invalid {
            what,
            message: message.into(),
        }
    }
    /// An [`Error::Config`]: `field` has `value`, which is not `expected`.
    pub(crate) fn config(
        field: &'static str,
        value: impl ToString,
        expected: impl Into<String>,
    ) -> Self {
        Error::Config {
            field,
            value: value.to_string(),
            expected: expected.into(),
        }
    }
    pub(crate) fn checkpoint(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Error::Checkpoint {
            path: path.into(),
            message: message.into(),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
