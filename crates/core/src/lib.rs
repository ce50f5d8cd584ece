//! Domain types, traits and errors shared by every autodidact crate.
//!
//! This is the bottom of the workspace: it depends on no other autodidact crate.
//! It holds the nouns of docs/design.md ([`Problem`], [`Verdict`], [`Completion`],
//! [`Group`]), the interfaces stages are written against ([`Task`], [`Policy`],
//! [`TrainablePolicy`]), the error type, crash-safe file writes and the
//! character-level tokenizer used by the built-in tasks and the native model.

pub mod backend;
pub mod error;
pub mod fs;
pub mod hf_tokenizer;
pub mod memory;
pub mod rng;
pub mod tokenizer;
pub mod traits;
pub mod types;

pub use backend::{
    holds_weights, Backend, BackendKind, Backends, LoraConfig, LoraModule, ModelConfig, ModelSpec,
    OpenAiApi, OpenAiConfig, Reload, ADAPTER_CONFIG,
};
pub use error::{Error, Result};
pub use hf_tokenizer::HfTokenizer;
pub use rng::Rng;
pub use tokenizer::{CharTokenizer, ModelTokenizer, UNKNOWN_CHAR};
pub use traits::{
    check_each, FeedRow, OptimizerSettings, Policy, RewardModel, RowFeed, SampleWatch, Split,
    StreamModel, Task, TokenScores, Tokenizer, TrainablePolicy, Wait, REVIEW_INSTRUCTION,
};
pub use types::{
    check_stop_strings, find_stop, plain_chat_prompt, ChatMessage, Completion, Example,
    FinishReason, Grade, Group, Problem, SamplingParams, Verdict,
};
