//! The policy-backend seam: what the engine knows of a model, and how a backend plugs in.
//!
//! The engine never names a model implementation. It reads `[model]` into a [`ModelConfig`],
//! hands it to the [`Backends`] factory (the binary registers the [`Backend`]s it links), and
//! gets back a
//! [`ModelSpec`]: the model's context length and memory footprint, for the checks a run makes
//! before it starts, and the way to build a fresh [`TrainablePolicy`] or load a saved one.
//! Everything after that goes through the [`crate::Policy`] and [`TrainablePolicy`] traits.

use crate::traits::{RewardModel, Tokenizer, TrainablePolicy};
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Which implementation serves the policy (`[model] backend`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackendKind {
    /// The built-in CPU transformer (`autodidact-nn`): trained from scratch with a character
    /// vocabulary built from the task's alphabet, or loaded from a pretrained checkpoint.
    #[default]
    Native,
    /// A model served behind the OpenAI API (`autodidact-remote`): vLLM, SGLang, llama.cpp's
    /// server or `autodidact serve`, over a pool of endpoints (`[model.openai]`). It samples
    /// and does not train.
    Openai,
}

impl BackendKind {
    pub fn name(self) -> &'static str {
        match self {
            BackendKind::Native => "native",
            BackendKind::Openai => "openai",
        }
    }
}

/// `[model]`: which backend serves the policy, and its settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    pub backend: BackendKind,
    /// A pretrained checkpoint directory in the Hugging Face layout (`config.json`,
    /// safetensors, `tokenizer.json`, `tokenizer_config.json`; `autodidact import` writes one
    /// from a GGUF file) that the run starts from, with the checkpoint's own tokenizer and chat
    /// template. Absent: a model trained from scratch, shaped by `preset` and the overrides.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<PathBuf>,
    /// The most tokens a completion may have. Absent: the task's longest reference solution
    /// plus the stop token, which is exact for a model trained from scratch (one token per
    /// character); a pretrained model writes its own longer solutions and needs it set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_new_tokens: Option<usize>,
    /// Strings that end a completion where they first appear, cut from its text (OpenAI's
    /// `stop`): `["\n\nQuestion:"]` keeps a base model from writing the next few-shot
    /// example. The model's own stop tokens end completions as well.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub stop: Vec<String>,
    /// A named size of the native model: tiny, small or base (unused with `checkpoint`).
    pub preset: String,
    /// Overrides of the preset (absent: the preset's value).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hidden_size: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub num_layers: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub num_heads: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub intermediate_size: Option<usize>,
    /// The longest sequence (prompt and completion, in tokens) the run feeds the model. With
    /// `checkpoint`, at most the checkpoint's own context length (its default); set it to what
    /// the task needs, since memory checks size training batches by it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub context_length: Option<usize>,
    /// `[model.lora]`: train low-rank adapters on the pretrained `checkpoint` instead of every
    /// weight. Absent: full fine-tuning.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lora: Option<LoraConfig>,
    /// `[model.openai]`: the servers of `backend = "openai"`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub openai: Option<OpenAiConfig>,
}

impl ModelConfig {
    /// Whether the model comes with its own tokenizer and weights (a pretrained checkpoint,
    /// a served model) rather than being trained from scratch on the task's alphabet.
    pub fn pretrained(&self) -> bool {
        self.checkpoint.is_some() || self.backend == BackendKind::Openai
    }
}

/// Which OpenAI API route samples (`[model.openai] api`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OpenAiApi {
    /// `/v1/completions`: prompts as text, conversations rendered here by the tokenizer's
    /// chat template; log-probs of the sampled tokens.
    #[default]
    Completions,
    /// `/v1/chat/completions`: conversations sent as messages, rendered by the server.
    Chat,
}

/// `[model.openai]`: a model served behind the OpenAI API, sampled over a pool of endpoints
/// that serve the same model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OpenAiConfig {
    /// The endpoints, each up to and including `/v1`: `["http://10.0.0.5:8000/v1"]`.
    pub base_urls: Vec<String>,
    /// The model's name on the servers (`model` in requests).
    pub model: String,
    /// The environment variable holding the API key, sent as a bearer token (absent: none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_key_env: Option<String>,
    pub api: OpenAiApi,
    /// A directory with the served model's tokenizer files (`tokenizer.json`, and
    /// `tokenizer_config.json` for a pretrained one; a checkpoint directory will do): token
    /// counts, the chat template and stop tokens come from it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tokenizer: Option<PathBuf>,
    /// Requests in flight to one endpoint at a time.
    pub max_concurrency: usize,
    /// Completions asked for in one request (`n`): rows of one prompt share a request.
    pub max_n: usize,
    /// Seconds one request may take before it is abandoned and retried.
    pub timeout_secs: f64,
    /// Tries of one request (the first and its retries) before the run stops.
    pub max_attempts: u32,
    /// Consecutive failures that take an endpoint out of rotation.
    pub eject_after: u32,
    /// Seconds an endpoint stays out of rotation before one request probes it.
    pub probe_after_secs: f64,
    /// The longest wait before the first retry of a request (each wait is drawn uniformly
    /// below its cap); the cap doubles each try, up to `max_backoff_secs`.
    pub backoff_secs: f64,
    pub max_backoff_secs: f64,
    /// The served model's weights, here, in the Hugging Face layout (the directory the
    /// servers were started with), or with `reload = "load_lora_adapter"` the adapters they
    /// serve as `model` (PEFT's layout): what an external trainer (`[train] backend =
    /// "external"`) starts from. With it and `reload`, a run trains the served model.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weights: Option<PathBuf>,
    /// How the servers are pointed at a round's new checkpoint.
    #[serde(skip_serializing_if = "Reload::is_none")]
    pub reload: Reload,
}

/// How a run points its servers at a new checkpoint (`[model.openai] reload`); each server
/// is then asked which checkpoint it serves (`GET /get_model_info`'s `model_path`, or
/// `root` in `GET /v1/models`), and the run stops unless it is the new one.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reload {
    /// Never: the servers keep what they serve (a run that only samples).
    #[default]
    None,
    /// `POST /update_weights_from_disk {"model_path": DIR}` to every server (`autodidact
    /// serve`, SGLang).
    UpdateWeightsFromDisk,
    /// vLLM's runtime LoRA loading (`VLLM_ALLOW_RUNTIME_LORA_UPDATING=True`): the servers
    /// hold the base model and the run trains adapters served under `model`; each new
    /// adapter directory replaces the last (`POST /v1/unload_lora_adapter`, then
    /// `POST /v1/load_lora_adapter {"lora_name": model, "lora_path": DIR}`).
    LoadLoraAdapter,
    /// A command, run once; `{checkpoint}` in its arguments becomes the new checkpoint's
    /// directory (a script that restarts the fleet, for one).
    Command(Vec<String>),
}

impl Reload {
    pub fn is_none(&self) -> bool {
        *self == Reload::None
    }
}

/// PEFT's file of a directory of LoRA adapters.
pub const ADAPTER_CONFIG: &str = "adapter_config.json";

/// Whether `dir` holds weights (a Hugging Face checkpoint, or LoRA adapters), not only a
/// served model's record of its servers (its round-0 checkpoint).
pub fn holds_weights(dir: &Path) -> bool {
    dir.join("config.json").exists() || dir.join(ADAPTER_CONFIG).exists()
}

impl Default for OpenAiConfig {
    fn default() -> Self {
        Self {
            base_urls: Vec::new(),
            model: String::new(),
            api_key_env: None,
            api: OpenAiApi::Completions,
            tokenizer: None,
            max_concurrency: 8,
            max_n: 16,
            timeout_secs: 600.0,
            max_attempts: 8,
            eject_after: 3,
            probe_after_secs: 10.0,
            backoff_secs: 0.5,
            max_backoff_secs: 30.0,
            weights: None,
            reload: Reload::None,
        }
    }
}

/// `[model.lora]`: LoRA (Hu et al., 2021) as PEFT defines it. Each adapted projection
/// `W (out, in)` gains `(alpha / rank) · B·A` with `A (rank, in)` drawn like PEFT's default
/// (uniform in ±1/√in) and `B (out, rank)` starting at zero, so training starts from the
/// pretrained model exactly. Only A and B train (and have optimizer state); every other
/// weight stays frozen.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoraConfig {
    /// The rank r of each adapter.
    pub rank: usize,
    /// The adapters' output is scaled by `alpha / rank` (PEFT's `lora_alpha`).
    pub alpha: f32,
    /// The projections that get an adapter, in every layer.
    pub target_modules: Vec<LoraModule>,
}

impl Default for LoraConfig {
    /// Rank 16, alpha 32, every linear projection of the decoder (the QLoRA finding: adapting
    /// all of them is what matches full fine-tuning).
    fn default() -> Self {
        Self {
            rank: 16,
            alpha: 32.0,
            target_modules: LoraModule::ALL.to_vec(),
        }
    }
}

impl LoraConfig {
    /// The factor on every adapter's output.
    pub fn scale(&self) -> f32 {
        self.alpha / self.rank as f32
    }

    /// Checks the settings; errors name the `model.lora.*` key.
    pub fn validate(&self) -> Result<()> {
        if !(1..=4096).contains(&self.rank) {
            return Err(Error::invalid(
                "model.lora.rank",
                format!("{} must be in 1..=4096", self.rank),
            ));
        }
        if !(self.alpha.is_finite() && self.alpha > 0.0) {
            return Err(Error::invalid(
                "model.lora.alpha",
                format!("{} must be a finite number above 0", self.alpha),
            ));
        }
        if self.target_modules.is_empty() {
            return Err(Error::invalid(
                "model.lora.target_modules",
                "is empty: name at least one of q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj",
            ));
        }
        for (i, m) in self.target_modules.iter().enumerate() {
            if self.target_modules[..i].contains(m) {
                return Err(Error::invalid(
                    "model.lora.target_modules",
                    format!("names {} twice", m.name()),
                ));
            }
        }
        Ok(())
    }
}

/// A projection of a Llama decoder layer that LoRA can adapt (PEFT's module names).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LoraModule {
    QProj,
    KProj,
    VProj,
    OProj,
    GateProj,
    UpProj,
    DownProj,
}

impl LoraModule {
    /// Every module, in the order of a layer's weights.
    pub const ALL: [LoraModule; 7] = [
        LoraModule::QProj,
        LoraModule::KProj,
        LoraModule::VProj,
        LoraModule::OProj,
        LoraModule::GateProj,
        LoraModule::UpProj,
        LoraModule::DownProj,
    ];

    /// The module's name in Hugging Face checkpoints and PEFT's `target_modules`.
    pub fn name(self) -> &'static str {
        match self {
            LoraModule::QProj => "q_proj",
            LoraModule::KProj => "k_proj",
            LoraModule::VProj => "v_proj",
            LoraModule::OProj => "o_proj",
            LoraModule::GateProj => "gate_proj",
            LoraModule::UpProj => "up_proj",
            LoraModule::DownProj => "down_proj",
        }
    }

    /// The module named `name`.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.name() == name)
    }

    /// `self_attn` or `mlp`: the submodule holding it.
    pub fn block(self) -> &'static str {
        match self {
            LoraModule::QProj | LoraModule::KProj | LoraModule::VProj | LoraModule::OProj => {
                "self_attn"
            }
            _ => "mlp",
        }
    }
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            backend: BackendKind::Native,
            checkpoint: None,
            max_new_tokens: None,
            stop: Vec::new(),
            preset: "tiny".into(),
            hidden_size: None,
            num_layers: None,
            num_heads: None,
            intermediate_size: None,
            context_length: None,
            lora: None,
            openai: None,
        }
    }
}

/// A model planned for a run: what its checks need to know before anything is built, and how
/// to build or load it.
pub trait ModelSpec: Send + Sync {
    /// Largest prompt + completion length in tokens the model reads.
    fn context_length(&self) -> usize;

    /// The tokenizer the model reads and writes text with.
    fn tokenizer(&self) -> &dyn Tokenizer;

    /// The resolved settings of the model (recorded in the seed round's manifest).
    fn describe(&self) -> serde_json::Value;

    /// Parameters of the model.
    fn num_params(&self) -> u64;

    /// Bytes of the weights, gradients and optimizer state of one copy of the model when its
    /// kernels run on `threads` threads.
    fn state_bytes(&self, threads: usize) -> u64;

    /// Bytes of the activations a training pass over `rows` sequences of `len` tokens keeps.
    fn train_activation_bytes(&self, rows: usize, len: usize) -> u64;

    /// Bytes the sampler's workspace may grow to (it samples in chunks this bounds).
    fn sample_workspace_bytes(&self) -> u64;

    /// Whether the model trains here. One that does not (a served model) can only be
    /// evaluated: a run with it must have no training steps.
    fn trains(&self) -> bool {
        true
    }

    /// For a model that does not train here but is served: the weights its servers serve
    /// (round 0's, for an external trainer to start from), when the run can train it and
    /// point the servers at each new checkpoint ([`ModelSpec::sync`]).
    fn served_weights(&self) -> Option<&Path> {
        None
    }

    /// Makes the model the run samples from be the checkpoint in `dir` (a served model's
    /// servers load it, or the weights of [`ModelSpec::served_weights`] when `dir` holds
    /// none); nothing for a model in process.
    fn sync(&self, _dir: &Path) -> Result<()> {
        Ok(())
    }

    /// The policy a run starts from: the pretrained checkpoint's weights, or freshly
    /// initialized ones, deterministic for `seed`.
    fn init(&self, seed: u64) -> Result<Box<dyn TrainablePolicy>>;

    /// The policy saved in `dir` by [`TrainablePolicy::save`].
    fn load(&self, dir: &Path) -> Result<Box<dyn TrainablePolicy>>;
}

/// One policy backend: plans models from `[model]` and loads saved policies.
pub trait Backend: Send + Sync {
    /// The `[model] backend` value this backend serves.
    fn kind(&self) -> BackendKind;

    /// Plans the model `config` describes for text over `alphabet` (the characters the run's
    /// prompts and completions can contain; a model trained from scratch takes its vocabulary
    /// from it). An invalid setting is an [`crate::Error::Invalid`] naming its key
    /// (`model.hidden_size`).
    fn plan(&self, config: &ModelConfig, alphabet: &str) -> Result<Box<dyn ModelSpec>>;

    /// Loads a policy saved in `dir`, without a run's config (`autodidact eval` and `sample`).
    fn load(&self, dir: &Path) -> Result<Box<dyn TrainablePolicy>>;

    /// The reward model saved in `dir` (its score head included). With `fresh_head`, a policy
    /// checkpoint loads too, its backbone under a head drawn from that seed (to train one); a
    /// checkpoint without a head is otherwise an error.
    fn reward_model(&self, dir: &Path, _fresh_head: Option<u64>) -> Result<Box<dyn RewardModel>> {
        Err(Error::invalid(
            "reward model",
            format!(
                "{}: the `{}` backend cannot run reward models; use the native backend",
                dir.display(),
                self.kind().name()
            ),
        ))
    }
}

/// The backend factory: the backends a binary links, found by the kind `[model]` names. The
/// binary registers them (one line each); the engine plans and loads models only through it.
#[derive(Default)]
pub struct Backends {
    linked: Vec<Box<dyn Backend>>,
}

impl Backends {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `backend` (a later one of the same kind replaces it).
    pub fn with(mut self, backend: impl Backend + 'static) -> Self {
        self.linked.retain(|b| b.kind() != backend.kind());
        self.linked.push(Box::new(backend));
        self
    }

    /// The backend of `kind`, or an error naming the ones this binary links.
    pub fn get(&self, kind: BackendKind) -> Result<&dyn Backend> {
        self.linked
            .iter()
            .find(|b| b.kind() == kind)
            .map(|b| &**b)
            .ok_or_else(|| {
                let linked: Vec<&str> = self.linked.iter().map(|b| b.kind().name()).collect();
                Error::invalid(
                    "model.backend",
                    format!(
                        "`{}` is not linked into this program (linked: {})",
                        kind.name(),
                        if linked.is_empty() {
                            "none".to_string()
                        } else {
                            linked.join(", ")
                        }
                    ),
                )
            })
    }

    /// [`Backend::plan`] of the backend `config` names.
    pub fn plan(&self, config: &ModelConfig, alphabet: &str) -> Result<Box<dyn ModelSpec>> {
        self.get(config.backend)?.plan(config, alphabet)
    }

    /// [`Backend::load`] of the backend of `kind`.
    pub fn load(&self, kind: BackendKind, dir: &Path) -> Result<Box<dyn TrainablePolicy>> {
        self.get(kind)?.load(dir)
    }

    /// [`Backend::reward_model`] of the backend of `kind`.
    pub fn reward_model(
        &self,
        kind: BackendKind,
        dir: &Path,
        fresh_head: Option<u64>,
    ) -> Result<Box<dyn RewardModel>> {
        self.get(kind)?.reward_model(dir, fresh_head)
    }
}
