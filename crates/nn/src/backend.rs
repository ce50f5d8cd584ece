//! The native transformer behind the engine's backend seam ([`autodidact_core::Backend`]).
//!
//! `[model] backend = "native"` plans a [`TransformerConfig`] from a named preset and its
//! overrides, with a character vocabulary built from the run's alphabet, and builds or loads
//! [`NativePolicy`]s.

use crate::policy::to_core;
use crate::{Error, NativePolicy, TransformerConfig, SAMPLE_WORKSPACE_BYTES};
use autodidact_core::{
    Backend, BackendKind, CharTokenizer, ModelConfig, ModelSpec, Result, TrainablePolicy,
};
use std::path::Path;

/// The native backend: the built-in CPU transformer.
#[derive(Clone, Copy, Debug, Default)]
pub struct NativeBackend;

/// A native model planned for a run: its shape and its character tokenizer.
#[derive(Clone, Debug)]
pub struct NativeSpec {
    pub model: TransformerConfig,
    pub tokenizer: CharTokenizer,
}

/// The config key (`model.<field>`) an nn validation error names.
fn invalid(e: Error) -> autodidact_core::Error {
    match e {
        Error::Config { field, .. } => {
            autodidact_core::Error::invalid(format!("model.{field}"), e.to_string())
        }
        Error::Core(c) => c,
        other => autodidact_core::Error::invalid("model", other.to_string()),
    }
}

impl NativeBackend {
    /// The model `config` describes, with a character vocabulary of `alphabet`.
    pub fn spec(config: &ModelConfig, alphabet: &str) -> Result<NativeSpec> {
        let tokenizer = CharTokenizer::new(alphabet)?;
        let mut model = TransformerConfig::from_preset(&config.preset, tokenizer.vocab_size())
            .map_err(|e| autodidact_core::Error::invalid("model.preset", e.to_string()))?;
        for (field, value) in [
            (&mut model.hidden_size, config.hidden_size),
            (&mut model.num_layers, config.num_layers),
            (&mut model.num_heads, config.num_heads),
            (&mut model.intermediate_size, config.intermediate_size),
            (&mut model.context_length, config.context_length),
        ] {
            if let Some(v) = value {
                *field = v;
            }
        }
        model.validate().map_err(invalid)?;
        Ok(NativeSpec { model, tokenizer })
    }
}

impl Backend for NativeBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Native
    }

    fn plan(&self, config: &ModelConfig, alphabet: &str) -> Result<Box<dyn ModelSpec>> {
        Ok(Box::new(Self::spec(config, alphabet)?))
    }

    fn load(&self, dir: &Path) -> Result<Box<dyn TrainablePolicy>> {
        Ok(Box::new(NativePolicy::load(dir).map_err(to_core)?))
    }
}

impl ModelSpec for NativeSpec {
    fn context_length(&self) -> usize {
        self.model.context_length
    }

    fn describe(&self) -> serde_json::Value {
        serde_json::to_value(&self.model).expect("a TransformerConfig always serializes")
    }

    fn num_params(&self) -> u64 {
        self.model.num_params() as u64
    }

    fn state_bytes(&self, threads: usize) -> u64 {
        self.model.state_bytes(threads)
    }

    fn train_activation_bytes(&self, rows: usize, len: usize) -> u64 {
        self.model.train_activation_bytes(rows, len)
    }

    fn sample_workspace_bytes(&self) -> u64 {
        SAMPLE_WORKSPACE_BYTES
    }

    fn init(&self, seed: u64) -> Result<Box<dyn TrainablePolicy>> {
        let model = self.model.build(seed).map_err(to_core)?;
        Ok(Box::new(
            NativePolicy::new(model, self.tokenizer.clone()).map_err(to_core)?,
        ))
    }

    fn load(&self, dir: &Path) -> Result<Box<dyn TrainablePolicy>> {
        Ok(Box::new(NativePolicy::load(dir).map_err(to_core)?))
    }
}
