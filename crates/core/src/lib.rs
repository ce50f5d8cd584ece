//! Domain types, traits and errors shared by every autodidact crate.
//!
//! This is the bottom of the workspace: it depends on no other autodidact crate.
//! So far it holds the error type, atomic file writes and the character-level
//! tokenizer used by the built-in tasks and the native model.

pub mod error;
pub mod fs;
pub mod tokenizer;

pub use error::{Error, Result};
pub use tokenizer::CharTokenizer;
