//! The policy backends this binary links: the one place a backend is wired in.

use autodidact_core::Backends;

/// Every backend the engine can plan a `[model]` with (one line per backend).
pub fn linked() -> Backends {
    Backends::new()
        .with(autodidact_nn::NativeBackend)
        .with(autodidact_remote::OpenAiBackend)
}
