//! The native transformer behind the engine's backend seam ([`autodidact_core::Backend`]).
//!
//! `[model] backend = "native"` plans a [`TransformerConfig`] either from a named preset and
//! its overrides, with a character vocabulary built from the run's alphabet, or from a
//! pretrained checkpoint (`[model] checkpoint`) with the checkpoint's own tokenizer, and
//! builds or loads [`NativePolicy`]s.

use crate::policy::to_core;
use crate::{checkpoint, Error, NativePolicy, TransformerConfig, SAMPLE_WORKSPACE_BYTES};
use autodidact_core::{
    Backend, BackendKind, CharTokenizer, LoraConfig, LoraModule, ModelConfig, ModelSpec,
    ModelTokenizer, Result, RewardModel, Tokenizer, TrainablePolicy,
};
use std::path::{Path, PathBuf};

/// The native backend: the built-in CPU transformer.
#[derive(Clone, Copy, Debug, Default)]
pub struct NativeBackend;

/// A native model planned for a run: its shape and its tokenizer.
#[derive(Clone, Debug)]
pub struct NativeSpec {
    pub model: TransformerConfig,
    pub tokenizer: ModelTokenizer,
    /// The pretrained checkpoint the run starts from, if any.
    pub checkpoint: Option<PathBuf>,
    /// The longest sequence the run feeds the model (at most `model.context_length`).
    pub context_length: usize,
    /// LoRA adapters trained on the checkpoint instead of every weight.
    pub lora: Option<LoraConfig>,
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
    /// The model `config` describes: the pretrained checkpoint it names, or a model trained
    /// from scratch with a character vocabulary of `alphabet`.
    pub fn spec(config: &ModelConfig, alphabet: &str) -> Result<NativeSpec> {
        if config.openai.is_some() {
            return Err(autodidact_core::Error::invalid(
                "model.openai",
                "configures backend = \"openai\"; set that backend, or remove [model.openai]",
            ));
        }
        match &config.checkpoint {
            Some(dir) => Self::pretrained(config, dir),
            None => Self::from_scratch(config, alphabet),
        }
    }

    fn pretrained(config: &ModelConfig, dir: &Path) -> Result<NativeSpec> {
        for (key, set) in [
            ("hidden_size", config.hidden_size.is_some()),
            ("num_layers", config.num_layers.is_some()),
            ("num_heads", config.num_heads.is_some()),
            ("intermediate_size", config.intermediate_size.is_some()),
        ] {
            if set {
                return Err(autodidact_core::Error::invalid(
                    format!("model.{key}"),
                    format!(
                        "cannot change the shape of the pretrained checkpoint {}; remove it (or remove model.checkpoint to train from scratch)",
                        dir.display()
                    ),
                ));
            }
        }
        let in_checkpoint =
            |e: Error| autodidact_core::Error::invalid("model.checkpoint", e.to_string());
        let model = checkpoint::load_config(dir).map_err(in_checkpoint)?;
        let tokenizer = ModelTokenizer::load(dir)?.ok_or_else(|| {
            autodidact_core::Error::invalid(
                "model.checkpoint",
                format!(
                    "{} has no {}: a pretrained checkpoint brings its tokenizer",
                    dir.display(),
                    checkpoint::TOKENIZER_FILE
                ),
            )
        })?;
        let context_length = match config.context_length {
            None => model.context_length,
            Some(c) if (1..=model.context_length).contains(&c) => c,
            Some(c) => {
                return Err(autodidact_core::Error::invalid(
                    "model.context_length",
                    format!(
                        "{c} must be in 1..={}, the context length of the checkpoint {}",
                        model.context_length,
                        dir.display()
                    ),
                ))
            }
        };
        if let Some(lora) = &config.lora {
            lora.validate()?;
        }
        Ok(NativeSpec {
            model,
            tokenizer,
            checkpoint: Some(dir.to_path_buf()),
            context_length,
            lora: config.lora.clone(),
        })
    }

    fn from_scratch(config: &ModelConfig, alphabet: &str) -> Result<NativeSpec> {
        if config.lora.is_some() {
            return Err(autodidact_core::Error::invalid(
                "model.lora",
                "adapts a pretrained model: set model.checkpoint, or remove [model.lora] to train a model from scratch",
            ));
        }
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
        Ok(NativeSpec {
            context_length: model.context_length,
            model,
            tokenizer: ModelTokenizer::Char(Box::new(tokenizer)),
            checkpoint: None,
            lora: None,
        })
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

    fn reward_model(&self, dir: &Path, fresh_head: Option<u64>) -> Result<Box<dyn RewardModel>> {
        Ok(Box::new(
            crate::NativeRewardModel::load(dir, fresh_head).map_err(to_core)?,
        ))
    }
}

impl NativeSpec {
    /// Trainable adapter values with `lora` (0 without).
    fn lora_params(&self) -> u64 {
        let Some(lora) = &self.lora else { return 0 };
        let m = &self.model;
        let (c, f, kv) = (
            m.hidden_size as u64,
            m.intermediate_size as u64,
            m.kv_dim() as u64,
        );
        let per_layer: u64 = lora
            .target_modules
            .iter()
            .map(|t| {
                let (out, inp) = match t {
                    LoraModule::QProj | LoraModule::OProj => (c, c),
                    LoraModule::KProj | LoraModule::VProj => (kv, c),
                    LoraModule::GateProj | LoraModule::UpProj => (f, c),
                    LoraModule::DownProj => (c, f),
                };
                lora.rank as u64 * (out + inp)
            })
            .sum();
        per_layer * m.num_layers as u64
    }
}

impl ModelSpec for NativeSpec {
    fn context_length(&self) -> usize {
        self.context_length
    }

    fn tokenizer(&self) -> &dyn Tokenizer {
        &self.tokenizer
    }

    fn describe(&self) -> serde_json::Value {
        let mut v =
            serde_json::to_value(&self.model).expect("a TransformerConfig always serializes");
        if let Some(dir) = &self.checkpoint {
            v["checkpoint"] = dir.display().to_string().into();
            v["run_context_length"] = self.context_length.into();
        }
        if let Some(lora) = &self.lora {
            v["lora"] = serde_json::to_value(lora).expect("a LoraConfig always serializes");
            v["lora_params"] = self.lora_params().into();
        }
        v
    }

    fn num_params(&self) -> u64 {
        self.model.num_params() as u64
    }

    fn state_bytes(&self, threads: usize) -> u64 {
        match &self.lora {
            None => self.model.state_bytes(threads),
            // The merged weights, the frozen copy of the adapted ones (at most all of them),
            // and the adapters with their gradients (one buffer per thread) and moments.
            Some(_) => {
                4 * (2 * self.model.num_params() as u64
                    + self.lora_params() * (4 + threads.saturating_sub(1) as u64))
            }
        }
    }

    fn train_activation_bytes(&self, rows: usize, len: usize) -> u64 {
        self.model.train_activation_bytes(rows, len)
    }

    fn sample_workspace_bytes(&self) -> u64 {
        SAMPLE_WORKSPACE_BYTES
    }

    fn init(&self, seed: u64) -> Result<Box<dyn TrainablePolicy>> {
        if let Some(dir) = &self.checkpoint {
            let ck = match &self.lora {
                None => checkpoint::load(dir).map_err(to_core)?,
                Some(lora) => {
                    let (mut ck, base) = checkpoint::load_base(dir).map_err(to_core)?;
                    ck.model = ck.model.with_lora(lora, seed).map_err(to_core)?;
                    ck.model.set_lora_base(base);
                    ck
                }
            };
            let policy = NativePolicy::from_checkpoint(ck, dir).map_err(to_core)?;
            // The files may have changed since the run was planned.
            if policy.model().config() != &self.model {
                return Err(autodidact_core::Error::invalid(
                    "model.checkpoint",
                    format!(
                        "{}: config.json changed since the run was planned",
                        dir.display()
                    ),
                ));
            }
            return Ok(Box::new(policy));
        }
        let model = self.model.build(seed).map_err(to_core)?;
        Ok(Box::new(
            NativePolicy::new(model, self.tokenizer.clone()).map_err(to_core)?,
        ))
    }

    fn load(&self, dir: &Path) -> Result<Box<dyn TrainablePolicy>> {
        Ok(Box::new(NativePolicy::load(dir).map_err(to_core)?))
    }
}
