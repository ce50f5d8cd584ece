//! `[model] backend = "openai"`: a model served behind the OpenAI API (vLLM, SGLang,
//! llama.cpp's server, `autodidact serve`), sampled over a pool of endpoints.
//!
//! ```toml
//! [model]
//! backend = "openai"
//! max_new_tokens = 256
//! [model.openai]
//! base_urls = ["http://10.0.0.5:8000/v1", "http://10.0.0.6:8000/v1"]
//! model = "HuggingFaceTB/SmolLM2-135M-Instruct"
//! tokenizer = "models/smollm2"      # the served model's tokenizer files
//! api_key_env = "OPENAI_API_KEY"    # optional
//! ```
//!
//! How it differs from sampling in process:
//! - Rows of one prompt with consecutive seeds go out as one request with `n` and the first
//!   seed (`autodidact serve` gives choice i the seed + i, so its samples equal the native
//!   policy's; other servers seed `n` choices their own way).
//! - A completion's `tokens` are the text re-encoded by the local tokenizer (the API returns
//!   text, not ids), followed by the first stop token when the server reports `stop`; its
//!   `logprobs` are the server's, one per token the server sampled. Both are for records and
//!   monitors: a served model does not train here.
//! - A judge's verdict (`Policy::next_token_logprobs`) is read from one greedy token's 20
//!   most likely alternatives; a candidate not among them gets the smallest listed log-prob
//!   (an upper bound). Scoring given text (`Policy::logprobs`) is not supported: it needs
//!   prompt log-probs, which the OpenAI API does not define.

mod client;
mod policy;
pub mod pool;
pub mod sync;

pub use client::{FailureKind, Stats};
pub use policy::{fuzz_reply, RemotePolicy, RemoteSpec, REMOTE_FILE};

use autodidact_core::{Backend, BackendKind, ModelConfig, ModelSpec, Result, TrainablePolicy};
use std::path::Path;

/// What went wrong talking to the servers.
#[derive(Debug)]
pub enum RemoteError {
    /// Every try of a request failed (connection, timeout, 5xx, 429, a broken reply).
    Unreachable {
        tries: u32,
        all_down: bool,
        last: String,
    },
    /// A server refused the request as wrong (4xx other than 408, 409, 429).
    Refused {
        url: String,
        status: u16,
        message: String,
    },
    /// What the backend cannot do.
    Unsupported(String),
}

impl std::fmt::Display for RemoteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RemoteError::Unreachable {
                tries,
                all_down,
                last,
            } => write!(
                f,
                "a request failed {tries} tries{} (last: {last}); once the servers are back, `autodidact resume` continues the run",
                if *all_down {
                    ", and every endpoint is out of rotation"
                } else {
                    ""
                }
            ),
            RemoteError::Refused {
                url,
                status,
                message,
            } => write!(f, "{url} refused the request (HTTP {status}): {message}"),
            RemoteError::Unsupported(what) => write!(f, "{what}"),
        }
    }
}

impl std::error::Error for RemoteError {}

impl From<RemoteError> for autodidact_core::Error {
    fn from(e: RemoteError) -> Self {
        autodidact_core::Error::Policy {
            backend: "openai",
            source: Box::new(e),
        }
    }
}

/// The openai backend.
#[derive(Clone, Copy, Debug, Default)]
pub struct OpenAiBackend;

impl Backend for OpenAiBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Openai
    }

    fn plan(&self, config: &ModelConfig, _alphabet: &str) -> Result<Box<dyn ModelSpec>> {
        Ok(Box::new(RemoteSpec::plan(config)?))
    }

    fn load(&self, dir: &Path) -> Result<Box<dyn TrainablePolicy>> {
        Ok(Box::new(RemotePolicy::load(dir)?))
    }
}
