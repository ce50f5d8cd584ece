//! Model configuration, named presets, and the Hugging Face `config.json` mapping.

use crate::{Error, Result};
use serde::{Deserialize, Serialize};

/// Shape and hyper-parameters of the Llama-style decoder.
///
/// The architecture is Llama's: token embedding, `num_layers` blocks of
/// (RMSNorm → causal multi-head attention with rotary positions → residual,
/// RMSNorm → SwiGLU MLP → residual), a final RMSNorm and an output projection
/// (optionally tied to the embedding). It covers the small open models built on that
/// architecture: grouped-query attention (`num_kv_heads` < `num_heads`), Llama-3-style rope
/// scaling, and the q/k/v biases of Qwen2. The head dimension is `hidden_size / num_heads`;
/// no other linear layer has a bias.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransformerConfig {
    /// Number of token ids; the tokenizer's vocabulary size.
    pub vocab_size: usize,
    /// Width of the residual stream (d_model).
    pub hidden_size: usize,
    /// Number of decoder blocks.
    pub num_layers: usize,
    /// Attention heads per block; `hidden_size / num_heads` is the head dimension, which must be even (rotary pairs).
    pub num_heads: usize,
    /// Key/value heads per block: each group of `num_heads / num_kv_heads` query heads shares one
    /// (grouped-query attention); equal to `num_heads` for plain multi-head attention.
    pub num_kv_heads: usize,
    /// Inner width of the SwiGLU MLP (the gate and up projections each map hidden_size → intermediate_size).
    pub intermediate_size: usize,
    /// Longest sequence (prompt plus completion) the model is trained or sampled on; the KV cache holds this many positions.
    pub context_length: usize,
    /// Base of the rotary position frequencies (Llama: 10000).
    pub rope_theta: f32,
    /// How the rotary frequencies are rescaled for long contexts; `None` leaves them as `rope_theta` gives them.
    pub rope_scaling: Option<RopeScaling>,
    /// q, k and v projections carry biases (Qwen2); the output projection and the MLP never do.
    pub qkv_bias: bool,
    /// Epsilon added to the mean square in RMSNorm.
    pub rms_norm_eps: f32,
    /// Use the token embedding matrix as the output projection (no separate `lm_head`).
    pub tie_embeddings: bool,
    /// Standard deviation of the normal initialization of every matrix (Hugging Face's `initializer_range`); norms start at 1.
    pub initializer_range: f32,
}

impl TransformerConfig {
    fn preset(
        vocab_size: usize,
        hidden: usize,
        layers: usize,
        heads: usize,
        ffn: usize,
        ctx: usize,
    ) -> Self {
        Self {
            vocab_size,
            hidden_size: hidden,
            num_layers: layers,
            num_heads: heads,
            num_kv_heads: heads,
            intermediate_size: ffn,
            context_length: ctx,
            rope_theta: 10_000.0,
            rope_scaling: None,
            qkv_bias: false,
            rms_norm_eps: 1e-5,
            tie_embeddings: true,
            initializer_range: 0.02,
        }
    }

    /// ~0.2M parameters: 4 layers, d_model 64, 4 heads, context 64. For unit tests and the quickest experiments.
    pub fn tiny(vocab_size: usize) -> Self {
        Self::preset(vocab_size, 64, 4, 4, 176, 64)
    }

    /// ~0.8M parameters: 4 layers, d_model 128, 4 heads, context 64. The benchmark shape and the laptop default.
    pub fn small(vocab_size: usize) -> Self {
        Self::preset(vocab_size, 128, 4, 4, 352, 64)
    }

    /// ~4.8M parameters: 6 layers, d_model 256, 8 heads, context 128.
    pub fn base(vocab_size: usize) -> Self {
        Self::preset(vocab_size, 256, 6, 8, 688, 128)
    }

    /// Names accepted by [`TransformerConfig::from_preset`].
    pub const PRESETS: [&'static str; 3] = ["tiny", "small", "base"];

    pub fn from_preset(name: &str, vocab_size: usize) -> Result<Self> {
        match name {
            "tiny" => Ok(Self::tiny(vocab_size)),
            "small" => Ok(Self::small(vocab_size)),
            "base" => Ok(Self::base(vocab_size)),
            other => Err(Error::config(
                "preset",
                format!("{other:?}"),
                format!("one of {}", Self::PRESETS.join(", ")),
            )),
        }
    }

    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_heads
    }

    /// Width of the keys (and of the values) of one token: `num_kv_heads · head_dim`.
    pub fn kv_dim(&self) -> usize {
        self.num_kv_heads * self.head_dim()
    }

    /// Width of the stacked `q | k | v` projection: `hidden_size + 2 · kv_dim`.
    pub fn qkv_dim(&self) -> usize {
        self.hidden_size + 2 * self.kv_dim()
    }

    /// Checks every field; called by everything that builds a model from a config.
    pub fn validate(&self) -> Result<()> {
        let positive = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("num_layers", self.num_layers),
            ("num_heads", self.num_heads),
            ("num_kv_heads", self.num_kv_heads),
            ("intermediate_size", self.intermediate_size),
            ("context_length", self.context_length),
        ];
        for (field, v) in positive {
            if v == 0 {
                return Err(Error::config(field, 0, "must be at least 1"));
            }
        }
        // Upper bounds far above any published model (Llama-3.1-405B: 16384 wide, 53248 in
        // its MLP, 126 layers, 128256 tokens, 131072 positions), so that sizes derived from a
        // config (parameters, buffers, the rotary table) cannot overflow or ask for exabytes.
        let most = [
            ("vocab_size", self.vocab_size, 1 << 24),
            ("hidden_size", self.hidden_size, 1 << 17),
            ("num_layers", self.num_layers, 1 << 12),
            ("num_heads", self.num_heads, 1 << 12),
            ("num_kv_heads", self.num_kv_heads, 1 << 12),
            ("intermediate_size", self.intermediate_size, 1 << 19),
            ("context_length", self.context_length, 1 << 24),
        ];
        for (field, v, max) in most {
            if v > max {
                return Err(Error::config(field, v, format!("must be at most {max}")));
            }
        }
        if !self.hidden_size.is_multiple_of(self.num_heads) {
            return Err(Error::config(
                "num_heads",
                self.num_heads,
                format!("must divide hidden_size ({})", self.hidden_size),
            ));
        }
        if !self.head_dim().is_multiple_of(2) {
            return Err(Error::config(
                "num_heads",
                self.num_heads,
                format!(
                    "must leave an even head dimension for rotary positions (hidden_size / num_heads = {})",
                    self.head_dim()
                ),
            ));
        }
        if !self.num_heads.is_multiple_of(self.num_kv_heads) {
            return Err(Error::config(
                "num_kv_heads",
                self.num_kv_heads,
                format!(
                    "must divide num_heads ({}): each key/value head serves a whole group of query heads",
                    self.num_heads
                ),
            ));
        }
        // The rotary table holds context_length × head_dim / 2 angles (cos and sin).
        let angles = self.context_length as u64 * self.head_dim() as u64 / 2;
        if angles > 1 << 28 {
            return Err(Error::config(
                "context_length",
                self.context_length,
                format!(
                    "with head dimension {} needs a rotary table of {angles} angles, more than 2^28 (8 GiB is not a config anyone means)",
                    self.head_dim()
                ),
            ));
        }
        if let Some(s) = &self.rope_scaling {
            s.validate()?;
        }
        if !(self.rope_theta.is_finite() && self.rope_theta > 1.0) {
            return Err(Error::config(
                "rope_theta",
                self.rope_theta,
                "must be a finite number above 1",
            ));
        }
        if !(self.rms_norm_eps.is_finite() && self.rms_norm_eps > 0.0) {
            return Err(Error::config(
                "rms_norm_eps",
                self.rms_norm_eps,
                "must be a finite number above 0",
            ));
        }
        if !(self.initializer_range.is_finite() && self.initializer_range > 0.0) {
            return Err(Error::config(
                "initializer_range",
                self.initializer_range,
                "must be a finite number above 0",
            ));
        }
        Ok(())
    }

    /// Number of trainable parameters.
    pub fn num_params(&self) -> usize {
        let (v, c, f, q) = (
            self.vocab_size,
            self.hidden_size,
            self.intermediate_size,
            self.qkv_dim(),
        );
        let bias = if self.qkv_bias { q } else { 0 };
        let per_layer = 2 * c + q * c + bias + c * c + 3 * c * f;
        v * c + self.num_layers * per_layer + c + if self.tie_embeddings { 0 } else { v * c }
    }

    /// Bytes of the buffers a training forward and backward pass over `rows` sequences of up
    /// to `seq_len` tokens allocates (activations kept for the backward pass, attention
    /// probabilities, backward scratch, per-row outputs), as [`crate::Activations`] sizes them
    /// with its default [`crate::Recompute::Auto`]. An upper bound: rows are assumed full.
    /// Weights, gradients and optimizer state are [`TransformerConfig::state_bytes`].
    pub fn train_activation_bytes(&self, rows: usize, seq_len: usize) -> u64 {
        let recompute = self.recomputes(rows, seq_len);
        self.activation_bytes(rows, seq_len, recompute)
    }

    /// Whether a training pass over `rows` sequences of `seq_len` tokens recomputes its layers
    /// under [`crate::Recompute::Auto`]: when keeping every layer's activations would take
    /// more than [`crate::model::TRAIN_ACTIVATION_BUDGET`] bytes.
    pub fn recomputes(&self, rows: usize, seq_len: usize) -> bool {
        self.activation_bytes(rows, seq_len, false) > crate::model::TRAIN_ACTIVATION_BUDGET
    }

    /// [`TransformerConfig::train_activation_bytes`] with or without recompute.
    pub fn activation_bytes(&self, rows: usize, seq_len: usize, recompute: bool) -> u64 {
        let (l, c, f, v, h) = (
            self.num_layers as u64,
            self.hidden_size as u64,
            self.intermediate_size as u64,
            self.vocab_size as u64,
            self.num_heads as u64,
        );
        let q = self.qkv_dim() as u64;
        let n = rows as u64 * seq_len as u64;
        let slots = 2 * l + 1;
        // Layers whose internals are kept, and norm slots whose outputs are.
        let (kept, normed) = if recompute { (1, 3) } else { (l, slots) };
        // resid, rstd, normed; qkv, att, gate/up, act, sig; log-probs, entropy; backward
        // scratch dx, dh, dqkv, datt, dgu, dact, dlogits; token ids; per-row outputs.
        let per_token = slots * (c + 1)
            + normed * c
            + kept * (q + 2 * c + 4 * f)
            + v
            + 1
            + 4 * c
            + q
            + 3 * f
            + v
            + 3
            + 2;
        // Attention probabilities of the kept layers and the backward's scratch for one layer.
        let probs = (kept + 1) * h * rows as u64 * (seq_len as u64).pow(2);
        4 * (n * per_token + probs)
    }

    /// Bytes of weights, gradients (one buffer per worker thread beyond the first, as sharded
    /// passes use) and AdamW's two moments.
    pub fn state_bytes(&self, threads: usize) -> u64 {
        4 * self.num_params() as u64 * (4 + threads.saturating_sub(1) as u64)
    }

    /// Bytes of the KV cache and scratch one sampled row takes in
    /// [`crate::Transformer::sample_with`], for a prompt of `prompt_len` tokens and a cache of
    /// `positions` positions (prompt plus new tokens, at most `context_length`).
    pub fn sample_row_bytes(&self, prompt_len: usize, positions: usize) -> u64 {
        let (l, c, f, v, q) = (
            self.num_layers as u64,
            self.hidden_size as u64,
            self.intermediate_size as u64,
            self.vocab_size as u64,
            self.qkv_dim() as u64,
        );
        let ctx = positions.min(self.context_length).div_ceil(8) as u64 * 8;
        // Keys and values; the prefill's per-token scratch (x, normed, rstd, qkv, att,
        // gate/up, act); one row of scores, the last hidden state and the logits; the output.
        let kv = 2 * l * ctx * self.kv_dim() as u64;
        let prefill = prompt_len as u64 * (4 * c + q + 1 + 3 * f);
        4 * (kv + prefill + ctx + c + v + 2 * ctx)
    }

    /// The `config.json` of a Hugging Face model with this shape: `LlamaForCausalLM`, or
    /// `Qwen2ForCausalLM` when the q/k/v projections carry biases (a Llama `attention_bias`
    /// would add one to the output projection too). `special` gives (bos, eos, pad) token ids
    /// when a tokenizer is saved alongside.
    pub fn to_hf_json(&self, special: Option<(u32, u32, u32)>) -> serde_json::Value {
        let (arch, model_type) = if self.qkv_bias {
            ("Qwen2ForCausalLM", "qwen2")
        } else {
            ("LlamaForCausalLM", "llama")
        };
        let mut v = serde_json::json!({
            "architectures": [arch],
            "model_type": model_type,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim(),
            "max_position_embeddings": self.context_length,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "rope_scaling": self.rope_scaling.as_ref().map(RopeScaling::to_hf_json),
            "hidden_act": "silu",
            "attention_dropout": 0.0,
            "tie_word_embeddings": self.tie_embeddings,
            "initializer_range": self.initializer_range,
            "torch_dtype": "float32",
            "autodidact_format_version": crate::checkpoint::FORMAT_VERSION,
        });
        if self.qkv_bias {
            v["use_sliding_window"] = false.into();
        } else {
            v["attention_bias"] = false.into();
            v["mlp_bias"] = false.into();
        }
        if let Some((bos, eos, pad)) = special {
            v["bos_token_id"] = bos.into();
            v["eos_token_id"] = eos.into();
            v["pad_token_id"] = pad.into();
        }
        v
    }

    /// Reads a Hugging Face `config.json` of a Llama or Qwen2 model, rejecting features this
    /// model does not implement by name. `source` names the file in errors.
    pub fn from_hf_json(v: &serde_json::Value, source: &str) -> Result<Self> {
        let hf = HfJson { v, source };
        if let Some(found) = v.get("autodidact_format_version") {
            if found.as_u64() != Some(crate::checkpoint::FORMAT_VERSION as u64) {
                return Err(Error::FormatVersion {
                    path: source.into(),
                    found: found.to_string(),
                    supported: crate::checkpoint::FORMAT_VERSION,
                    hint: "it was written by a different autodidact release; use that release or re-export the checkpoint",
                });
            }
        }
        let qkv_bias = match v.get("model_type").and_then(|m| m.as_str()) {
            Some("llama") | None => {
                if hf.flag("attention_bias") {
                    return Err(hf.bad(
                        "attention_bias",
                        "true",
                        "false: a Llama attention_bias also biases o_proj, which the native model does not implement (q/k/v biases alone are read from Qwen2 configs)",
                    ));
                }
                false
            }
            Some("qwen2") => {
                let sliding = v
                    .get("layer_types")
                    .and_then(|t| t.as_array())
                    .is_some_and(|t| t.iter().any(|x| x.as_str() != Some("full_attention")));
                if hf.flag("use_sliding_window") || sliding {
                    return Err(hf.bad(
                        "use_sliding_window",
                        "true",
                        "false: sliding-window attention is not implemented in the native model",
                    ));
                }
                true
            }
            Some(other) => {
                return Err(hf.bad(
                    "model_type",
                    &format!("{other:?}"),
                    "\"llama\" or \"qwen2\" (the architectures the native model implements)",
                ))
            }
        };
        if hf.flag("mlp_bias") {
            return Err(hf.bad("mlp_bias", "true", "false: the native MLP has no biases"));
        }
        if let Some(act) = v.get("hidden_act") {
            if act.as_str() != Some("silu") {
                return Err(hf.bad("hidden_act", &act.to_string(), "\"silu\""));
            }
        }
        let heads = hf.usize("num_attention_heads", None)?;
        let hidden = hf.usize("hidden_size", None)?;
        if let Some(hd) = v.get("head_dim").filter(|x| !x.is_null()) {
            if heads == 0 || hd.as_u64() != Some((hidden / heads) as u64) {
                return Err(hf.bad(
                    "head_dim",
                    &hd.to_string(),
                    "hidden_size / num_attention_heads (other head sizes are not implemented)",
                ));
            }
        }
        // transformers 5.x moves rope_theta and the scaling under rope_parameters.
        let rope = v.get("rope_parameters").filter(|x| !x.is_null());
        let scaling = v.get("rope_scaling").filter(|x| !x.is_null()).or(rope);
        let rope_scaling = match scaling {
            Some(s) => RopeScaling::from_hf_json(s, source)?,
            None => None,
        };
        let rope_theta = match rope
            .and_then(|r| r.get("rope_theta"))
            .and_then(|t| t.as_f64())
        {
            Some(t) => t as f32,
            None => hf.f32("rope_theta", Some(10_000.0))?,
        };
        let cfg = Self {
            vocab_size: hf.usize("vocab_size", None)?,
            hidden_size: hidden,
            num_layers: hf.usize("num_hidden_layers", None)?,
            num_heads: heads,
            num_kv_heads: hf.usize("num_key_value_heads", Some(heads))?,
            intermediate_size: hf.usize("intermediate_size", None)?,
            context_length: hf.usize("max_position_embeddings", None)?,
            rope_theta,
            rope_scaling,
            qkv_bias,
            rms_norm_eps: hf.f32("rms_norm_eps", Some(1e-6))?,
            // transformers' default for both Llama and Qwen2.
            tie_embeddings: v
                .get("tie_word_embeddings")
                .and_then(|b| b.as_bool())
                .unwrap_or(false),
            initializer_range: hf.f32("initializer_range", Some(0.02))?,
        };
        cfg.validate()?;
        Ok(cfg)
    }
}

/// Field readers over a `config.json`, with errors that name the file.
struct HfJson<'a> {
    v: &'a serde_json::Value,
    source: &'a str,
}

impl HfJson<'_> {
    fn bad(&self, field: &'static str, value: &str, expected: &str) -> Error {
        Error::config(field, format!("{value} (in {})", self.source), expected)
    }

    fn flag(&self, key: &str) -> bool {
        self.v.get(key).and_then(|b| b.as_bool()) == Some(true)
    }

    fn usize(&self, key: &'static str, default: Option<usize>) -> Result<usize> {
        match self.v.get(key).filter(|x| !x.is_null()) {
            Some(x) => x
                .as_u64()
                .map(|n| n as usize)
                .ok_or_else(|| self.bad(key, &x.to_string(), "a non-negative integer")),
            None => default.ok_or_else(|| self.bad(key, "missing", "a config.json must set it")),
        }
    }

    fn f32(&self, key: &'static str, default: Option<f32>) -> Result<f32> {
        match self.v.get(key).filter(|x| !x.is_null()) {
            Some(x) => x
                .as_f64()
                .map(|n| n as f32)
                .ok_or_else(|| self.bad(key, &x.to_string(), "a number")),
            None => default.ok_or_else(|| self.bad(key, "missing", "a config.json must set it")),
        }
    }
}

/// How rotary frequencies are rescaled to stretch a model's context (transformers'
/// `rope_scaling`). Scaling changes only the frequencies; cos and sin are not rescaled (the
/// attention factor of both kinds is 1).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "rope_type", rename_all = "snake_case", deny_unknown_fields)]
pub enum RopeScaling {
    /// Every frequency divided by `factor` (position interpolation).
    Linear {
        /// How many times longer the context is than in pretraining.
        factor: f32,
    },
    /// Llama 3.1's: wavelengths longer than `original_max_position_embeddings / low_freq_factor`
    /// are stretched by `factor`, those shorter than `… / high_freq_factor` kept, and the band
    /// between interpolated smoothly.
    Llama3 {
        /// Stretch of the low frequencies.
        factor: f32,
        /// Wavelengths above `original_max_position_embeddings / low_freq_factor` are stretched fully.
        low_freq_factor: f32,
        /// Wavelengths below `original_max_position_embeddings / high_freq_factor` are kept.
        high_freq_factor: f32,
        /// Context length of pretraining.
        original_max_position_embeddings: usize,
    },
}

impl RopeScaling {
    /// Rescales the unscaled inverse frequency `inv_freq` (radians per position).
    pub fn apply(&self, inv_freq: f32) -> f32 {
        match *self {
            RopeScaling::Linear { factor } => inv_freq / factor,
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            } => {
                // As transformers' `_compute_llama3_parameters` computes it, in f32.
                let old = original_max_position_embeddings as f32;
                let low_wavelen = old / low_freq_factor;
                let high_wavelen = old / high_freq_factor;
                let wavelen = 2.0 * std::f32::consts::PI / inv_freq;
                if wavelen > low_wavelen {
                    inv_freq / factor
                } else if wavelen < high_wavelen {
                    inv_freq
                } else {
                    let smooth =
                        (old / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor);
                    (1.0 - smooth) * inv_freq / factor + smooth * inv_freq
                }
            }
        }
    }

    fn validate(&self) -> Result<()> {
        let factor = match *self {
            RopeScaling::Linear { factor } => factor,
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            } => {
                if !(low_freq_factor.is_finite()
                    && high_freq_factor.is_finite()
                    && low_freq_factor > 0.0
                    && high_freq_factor > low_freq_factor)
                {
                    return Err(Error::config(
                        "rope_scaling",
                        format!("low_freq_factor {low_freq_factor}, high_freq_factor {high_freq_factor}"),
                        "0 < low_freq_factor < high_freq_factor",
                    ));
                }
                if original_max_position_embeddings == 0 {
                    return Err(Error::config(
                        "rope_scaling",
                        "original_max_position_embeddings 0",
                        "at least 1",
                    ));
                }
                factor
            }
        };
        if !(factor.is_finite() && factor >= 1.0) {
            return Err(Error::config(
                "rope_scaling",
                format!("factor {factor}"),
                "a finite number ≥ 1",
            ));
        }
        Ok(())
    }

    fn to_hf_json(&self) -> serde_json::Value {
        serde_json::to_value(self).expect("a RopeScaling always serializes")
    }

    /// Reads transformers' `rope_scaling` (or 5.x's `rope_parameters`); `None` for the default.
    fn from_hf_json(s: &serde_json::Value, source: &str) -> Result<Option<Self>> {
        let bad = |value: String, expected: &str| {
            Error::config("rope_scaling", format!("{value} (in {source})"), expected)
        };
        let kind = s
            .get("rope_type")
            .or_else(|| s.get("type"))
            .and_then(|t| t.as_str())
            .unwrap_or("default");
        let num = |key: &str| -> Result<f32> {
            s.get(key)
                .and_then(|x| x.as_f64())
                .map(|x| x as f32)
                .ok_or_else(|| {
                    bad(
                        s.to_string(),
                        &format!("a {kind} rope_scaling must set `{key}` to a number"),
                    )
                })
        };
        let scaling = match kind {
            "default" => return Ok(None),
            "linear" => RopeScaling::Linear {
                factor: num("factor")?,
            },
            "llama3" => RopeScaling::Llama3 {
                factor: num("factor")?,
                low_freq_factor: num("low_freq_factor")?,
                high_freq_factor: num("high_freq_factor")?,
                original_max_position_embeddings: num("original_max_position_embeddings")? as usize,
            },
            other => return Err(bad(
                format!("rope_type {other:?}"),
                "\"default\", \"linear\" or \"llama3\" (the scalings the native model implements)",
            )),
        };
        if let Some(f) = s.get("attention_factor").and_then(|x| x.as_f64()) {
            if f != 1.0 {
                return Err(bad(
                    format!("attention_factor {f}"),
                    "1 (rescaled cos/sin are not implemented)",
                ));
            }
        }
        scaling.validate()?;
        Ok(Some(scaling))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preset_sizes() {
        assert_eq!(TransformerConfig::small(32).num_params(), 808_064);
        let tiny = TransformerConfig::tiny(32).num_params();
        assert!((150_000..250_000).contains(&tiny), "{tiny}");
        let base = TransformerConfig::base(32).num_params();
        assert!((4_000_000..6_000_000).contains(&base), "{base}");
        for p in TransformerConfig::PRESETS {
            TransformerConfig::from_preset(p, 32)
                .unwrap()
                .validate()
                .unwrap();
        }
    }

    #[test]
    fn unknown_preset_lists_valid_ones() {
        let e = TransformerConfig::from_preset("huge", 32)
            .unwrap_err()
            .to_string();
        assert!(e.contains("tiny, small, base"), "{e}");
    }

    #[test]
    fn odd_head_dim_rejected() {
        let mut c = TransformerConfig::tiny(10);
        c.hidden_size = 12;
        c.num_heads = 4;
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("even head dimension"), "{e}");
    }

    #[test]
    fn hf_json_round_trip_and_rejections() {
        let c = TransformerConfig::small(40);
        let j = c.to_hf_json(Some((1, 2, 0)));
        assert_eq!(
            TransformerConfig::from_hf_json(&j, "config.json").unwrap(),
            c
        );

        let mut gqa = j.clone();
        gqa["num_key_value_heads"] = 3.into();
        let e = TransformerConfig::from_hf_json(&gqa, "config.json")
            .unwrap_err()
            .to_string();
        assert!(e.contains("must divide num_heads"), "{e}");
        gqa["num_key_value_heads"] = 2.into();
        assert_eq!(
            TransformerConfig::from_hf_json(&gqa, "c")
                .unwrap()
                .num_kv_heads,
            2
        );

        let mut qwen = TransformerConfig {
            qkv_bias: true,
            num_kv_heads: 1,
            tie_embeddings: false,
            rope_scaling: Some(RopeScaling::Llama3 {
                factor: 8.0,
                low_freq_factor: 1.0,
                high_freq_factor: 4.0,
                original_max_position_embeddings: 16,
            }),
            ..c.clone()
        };
        let jq = qwen.to_hf_json(None);
        assert_eq!(jq["model_type"], "qwen2");
        assert_eq!(TransformerConfig::from_hf_json(&jq, "c").unwrap(), qwen);
        qwen.rope_scaling = Some(RopeScaling::Linear { factor: 2.0 });
        assert_eq!(
            TransformerConfig::from_hf_json(&qwen.to_hf_json(None), "c").unwrap(),
            qwen
        );
        let mut yarn = jq.clone();
        yarn["rope_scaling"] = serde_json::json!({"rope_type": "yarn", "factor": 4.0});
        let e = TransformerConfig::from_hf_json(&yarn, "c")
            .unwrap_err()
            .to_string();
        assert!(e.contains("\"yarn\"") && e.contains("llama3"), "{e}");
        let mut biased = j.clone();
        biased["attention_bias"] = true.into();
        let e = TransformerConfig::from_hf_json(&biased, "c")
            .unwrap_err()
            .to_string();
        assert!(e.contains("o_proj"), "{e}");

        let mut v5 = j.clone();
        v5.as_object_mut().unwrap().remove("rope_theta");
        v5["rope_parameters"] = serde_json::json!({"rope_type": "default", "rope_theta": 500.0});
        assert_eq!(
            TransformerConfig::from_hf_json(&v5, "c")
                .unwrap()
                .rope_theta,
            500.0
        );

        let mut newer = j.clone();
        newer["autodidact_format_version"] = 99.into();
        let e = TransformerConfig::from_hf_json(&newer, "c")
            .unwrap_err()
            .to_string();
        assert!(e.contains("format version 99"), "{e}");
    }
}
