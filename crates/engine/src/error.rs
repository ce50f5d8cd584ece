//! The error type of `autodidact-engine`.

use std::path::PathBuf;

/// Errors of the engine. Each names the input that was wrong and what would be valid.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A configuration key is unknown, mistyped or impossible.
    #[error("config key `{key}`: {message}")]
    Config { key: String, message: String },

    /// A run directory cannot be created, resumed, or read.
    #[error("run directory {path}: {message}")]
    Run { path: PathBuf, message: String },

    /// A file of a run is not what its stage wrote.
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },

    /// A file of a run differs from what the run recorded of it (hash, length, presence).
    #[error("{path}: {problem}; restore the run directory from a copy, or pass `--force` to `autodidact resume` to continue with the file as it is (the round's manifest records that)")]
    Integrity { path: PathBuf, problem: String },

    /// An external trainer failed; `tail` holds the last lines of its log.
    #[error("round {round}: the external trainer {message}; the last lines of its log ({log}):\n{tail}\n(`autodidact resume` runs the stage again)")]
    Trainer {
        round: u32,
        message: String,
        log: PathBuf,
        tail: String,
    },

    #[error(transparent)]
    Core(#[from] autodidact_core::Error),
}

impl Error {
    pub fn config(key: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Config {
            key: key.into(),
            message: message.into(),
        }
    }
    pub fn run(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Error::Run {
            path: path.into(),
            message: message.into(),
        }
    }
    pub fn integrity(path: impl Into<PathBuf>, problem: impl Into<String>) -> Self {
        Error::Integrity {
            path: path.into(),
            problem: problem.into(),
        }
    }
    pub fn file(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Error::File {
            path: path.into(),
            message: message.into(),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
