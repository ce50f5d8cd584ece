//! The error type of `autodidact-core`.

use std::path::PathBuf;

/// Errors raised by the core crate and through its traits. Each variant names the input that
/// was wrong and, where it helps, what would have been valid.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An I/O operation on a file failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done ("reading", "writing", "renaming", ...).
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A tokenizer could not be built, read, or written.
    #[error("tokenizer {context}: {message}")]
    Tokenizer { context: String, message: String },

    /// Text contains a character the vocabulary does not have.
    #[error("character {ch:?} at position {position} of {text:?} is not in the tokenizer's vocabulary ({vocab} characters: {alphabet:?})")]
    UnknownChar {
        ch: char,
        position: usize,
        text: String,
        vocab: usize,
        alphabet: String,
    },

    /// A token id is outside the vocabulary.
    #[error("token id {id} is outside the vocabulary (size {vocab_size})")]
    UnknownId { id: u32, vocab_size: usize },

    /// A setting or request is impossible; `what` names it.
    #[error("{what}: {message}")]
    Invalid { what: String, message: String },

    /// A policy backend failed (the source says how).
    #[error("{backend} policy")]
    Policy {
        backend: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl Error {
    pub fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            op,
            path: path.into(),
            source,
        }
    }

    pub fn invalid(what: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Invalid {
            what: what.into(),
            message: message.into(),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
