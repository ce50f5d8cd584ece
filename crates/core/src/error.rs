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

/// `text` cut to about `max` characters for an error message: a value a user typed can be
/// megabytes long, and a message that echoes it whole buries the point. The start and end are
/// kept, with how much was left out between them. The binary clips each error it prints.
pub fn clip(text: &str, max: usize) -> String {
    let n = text.chars().count();
    if n <= max {
        return text.to_string();
    }
    let head: String = text.chars().take(max * 2 / 3).collect();
    let tail: String = text.chars().skip(n - max / 3).collect();
    format!(
        "{head}…[{} characters left out]…{tail}",
        n - head.chars().count() - tail.chars().count()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_values_are_clipped_in_messages() {
        assert_eq!(clip("short", 10), "short");
        let long = "x".repeat(10_000_000);
        let c = clip(&format!("a{long}z"), 30);
        assert!(c.starts_with("ax") && c.ends_with("xz"), "{c}");
        assert!(c.contains("[9999972 characters left out]"), "{c}");
        assert!(c.len() < 100);
    }
}
