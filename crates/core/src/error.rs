//! The error type of `autodidact-core`.

use std::path::PathBuf;

/// Errors raised by the core crate. Each variant names the input that was wrong
/// and, where it helps, what would have been valid.
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
}

impl Error {
    pub fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            op,
            path: path.into(),
            source,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
