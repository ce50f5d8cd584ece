//! The native CPU transformer of autodidact.
//!
//! A Llama-architecture decoder (RMSNorm, rotary positions, SwiGLU MLP, causal
//! multi-head attention, optionally tied embeddings) written by hand for small
//! shapes on a few CPU cores:
//!
//! - [`Transformer::forward`] runs a padded batch (packed internally, so padding costs
//!   nothing) and returns per-token log-probs of the targets, optionally entropies
//!   and logits, caching activations in [`Activations`];
//! - [`Transformer::backward`] accumulates the gradient of `−Σ w_t log p(y_t) − Σ c_t H_t`
//!   from per-token weights (docs/design.md, "Objectives are token weights");
//! - [`AdamW`] updates the parameters (the learning rate comes from the trainer);
//! - [`Transformer::sample`] generates with a KV cache, per-row seeded, and
//!   [`Transformer::sample_stream`] does so for rows that come and go (continuous batching);
//! - [`NativeBackend`] plugs it into the engine's backend seam;
//! - [`checkpoint`] reads and writes the Hugging Face `LlamaForCausalLM` layout.
//!
//! Parameters, gradients and optimizer moments are flat `f32` buffers with one
//! layout ([`Layout`]), and all scratch memory is reused across calls.

pub mod backend;
pub mod batch;
pub mod checkpoint;
pub mod config;
pub mod decode;
pub mod error;
pub mod gguf;
pub mod import;
pub(crate) mod kernels;
pub mod lora;
pub mod model;
pub mod optim;
pub mod params;
pub mod policy;
pub mod reward;
pub use autodidact_core::rng;
pub mod sample;

pub use backend::{NativeBackend, NativeSpec};
pub use batch::TokenBatch;
pub use config::{RopeScaling, TransformerConfig};
pub use decode::{RowFeed, SampleWorkspace, StreamRow, SAMPLE_WORKSPACE_BYTES};
pub use error::{Error, Result};
pub use lora::{BaseModel, Lora};
pub use model::{
    Activations, ForwardOptions, ForwardOutput, Gradients, Recompute, Transformer,
    TRAIN_ACTIVATION_BUDGET,
};
pub use optim::{AdamW, AdamWConfig};
pub use params::{Layout, TensorKind};
pub use policy::NativePolicy;
pub use reward::NativeRewardModel;
pub use rng::Rng;
pub use sample::{FinishReason, NoStop, Sample, SamplingConfig, StopCheck};

/// Measurements used by `autodidact bench`.
pub mod bench {
    /// Best of five f32 GEMMs of 2048³ on the current thread pool, in FLOP/s: the
    /// machine's practical matrix-multiply peak, against which model throughput is read.
    pub fn gemm_peak_flops() -> f64 {
        let n = 2048;
        let a = vec![1.0f32; n * n];
        let b = vec![0.5f32; n * n];
        let mut c = vec![0.0f32; n * n];
        let mut best = f64::MAX;
        for _ in 0..5 {
            let start = std::time::Instant::now();
            crate::kernels::linear(&mut c, &a, &b, n, n, n, false, true);
            best = best.min(start.elapsed().as_secs_f64());
        }
        2.0 * (n * n * n) as f64 / best
    }
}
