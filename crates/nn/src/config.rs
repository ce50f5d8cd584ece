//! Model configuration, named presets, and the Hugging Face `config.json` mapping.

use crate::{Error, Result};
use serde::{Deserialize, Serialize};

/// Shape and hyper-parameters of the Llama-style decoder.
///
/// The architecture is Llama's: token embedding, `num_layers` blocks of
/// (RMSNorm → causal multi-head attention with rotary positions → residual,
/// RMSNorm → SwiGLU MLP → residual), a final RMSNorm and an output projection
/// (optionally tied to the embedding). Key/value heads equal query heads (no
/// grouped-query attention) and no linear layer has a bias.
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
    /// Inner width of the SwiGLU MLP (the gate and up projections each map hidden_size → intermediate_size).
    pub intermediate_size: usize,
    /// Longest sequence (prompt plus completion) the model is trained or sampled on; the KV cache holds this many positions.
    pub context_length: usize,
    /// Base of the rotary position frequencies (Llama: 10000).
    pub rope_theta: f32,
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
            intermediate_size: ffn,
            context_length: ctx,
            rope_theta: 10_000.0,
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

    /// Checks every field; called by everything that builds a model from a config.
    pub fn validate(&self) -> Result<()> {
        let positive = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("num_layers", self.num_layers),
            ("num_heads", self.num_heads),
            ("intermediate_size", self.intermediate_size),
            ("context_length", self.context_length),
        ];
        for (field, v) in positive {
            if v == 0 {
                return Err(Error::config(field, 0, "must be at least 1"));
            }
        }
        if self.vocab_size > u32::MAX as usize {
            return Err(Error::config(
                "vocab_size",
                self.vocab_size,
                "must fit in u32",
            ));
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
        let (v, c, f) = (self.vocab_size, self.hidden_size, self.intermediate_size);
        let per_layer = 2 * c + 4 * c * c + 3 * c * f;
        v * c + self.num_layers * per_layer + c + if self.tie_embeddings { 0 } else { v * c }
    }

    /// Bytes of the buffers a training forward and backward pass over `rows` sequences of up
    /// to `seq_len` tokens allocates (activations kept for the backward pass, attention
    /// probabilities, backward scratch, per-row outputs), as [`crate::Activations`] sizes them.
    /// An upper bound: rows are assumed full. Weights, gradients and optimizer state are
    /// [`TransformerConfig::state_bytes`].
    pub fn train_activation_bytes(&self, rows: usize, seq_len: usize) -> u64 {
        let (l, c, f, v, h) = (
            self.num_layers as u64,
            self.hidden_size as u64,
            self.intermediate_size as u64,
            self.vocab_size as u64,
            self.num_heads as u64,
        );
        let n = rows as u64 * seq_len as u64;
        let slots = 2 * l + 1;
        // resid, normed, rstd; qkv, att, gate/up, act, sig; log-probs, entropy; backward
        // scratch dx, dh, dqkv, datt, dgu, dact, dlogits; token ids; per-row outputs.
        let per_token =
            slots * (2 * c + 1) + l * (5 * c + 4 * f) + v + 1 + 7 * c + 3 * f + v + 3 + 2;
        // Attention probabilities of every layer and the backward's scratch for one layer.
        let probs = (l + 1) * h * rows as u64 * (seq_len as u64).pow(2);
        4 * (n * per_token + probs)
    }

    /// Bytes of weights, gradients (one buffer per worker thread beyond the first, as sharded
    /// passes use) and AdamW's two moments.
    pub fn state_bytes(&self, threads: usize) -> u64 {
        4 * self.num_params() as u64 * (4 + threads.saturating_sub(1) as u64)
    }

    /// Bytes of the KV cache and scratch one sampled row takes in
    /// [`crate::Transformer::sample_with`], for a prompt of `prompt_len` tokens.
    pub fn sample_row_bytes(&self, prompt_len: usize) -> u64 {
        let (l, c, f, v) = (
            self.num_layers as u64,
            self.hidden_size as u64,
            self.intermediate_size as u64,
            self.vocab_size as u64,
        );
        let ctx = self.context_length.div_ceil(8) as u64 * 8;
        // Keys and values; the prefill's per-token scratch (x, normed, rstd, qkv, att,
        // gate/up, act); one row of scores, the last hidden state and the logits; the output.
        let kv = 2 * l * ctx * c;
        let prefill = prompt_len as u64 * (6 * c + 1 + 3 * f);
        4 * (kv + prefill + ctx + c + v + 2 * ctx)
    }

    /// The `config.json` of a Hugging Face `LlamaForCausalLM` with this shape.
    /// `special` gives (bos, eos, pad) token ids when a tokenizer is saved alongside.
    pub fn to_hf_json(&self, special: Option<(u32, u32, u32)>) -> serde_json::Value {
        let mut v = serde_json::json!({
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_heads,
            "head_dim": self.head_dim(),
            "max_position_embeddings": self.context_length,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "rope_scaling": null,
            "hidden_act": "silu",
            "attention_bias": false,
            "attention_dropout": 0.0,
            "mlp_bias": false,
            "tie_word_embeddings": self.tie_embeddings,
            "initializer_range": self.initializer_range,
            "torch_dtype": "float32",
            "autodidact_format_version": crate::checkpoint::FORMAT_VERSION,
        });
        if let Some((bos, eos, pad)) = special {
            v["bos_token_id"] = bos.into();
            v["eos_token_id"] = eos.into();
            v["pad_token_id"] = pad.into();
        }
        v
    }

    /// Reads a Hugging Face Llama `config.json`, rejecting features this model does not implement.
    /// `source` names the file in errors.
    pub fn from_hf_json(v: &serde_json::Value, source: &str) -> Result<Self> {
        let bad = |field: &'static str, value: String, expected: &str| {
            Error::config(field, format!("{value} (in {source})"), expected)
        };
        let usize_field = |key: &'static str| -> Result<usize> {
            match v.get(key) {
                Some(x) => x
                    .as_u64()
                    .map(|n| n as usize)
                    .ok_or_else(|| bad(key, x.to_string(), "must be a non-negative integer")),
                None => Err(bad(
                    key,
                    "missing".into(),
                    "a Llama config.json must set it",
                )),
            }
        };
        let f32_field = |key: &'static str, default: Option<f32>| -> Result<f32> {
            match v.get(key) {
                Some(x) => x
                    .as_f64()
                    .map(|n| n as f32)
                    .ok_or_else(|| bad(key, x.to_string(), "must be a number")),
                None => default
                    .ok_or_else(|| bad(key, "missing".into(), "a Llama config.json must set it")),
            }
        };
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
        match v.get("model_type").and_then(|m| m.as_str()) {
            Some("llama") | None => {}
            Some(other) => {
                return Err(bad(
                    "model_type",
                    format!("{other:?}"),
                    "the native model reads \"llama\" configs",
                ))
            }
        }
        let heads = usize_field("num_attention_heads")?;
        if let Some(kv) = v.get("num_key_value_heads").filter(|x| !x.is_null()) {
            if kv.as_u64() != Some(heads as u64) {
                return Err(bad(
                    "num_key_value_heads",
                    kv.to_string(),
                    &format!("must equal num_attention_heads ({heads}): grouped-query attention is not implemented in the native model"),
                ));
            }
        }
        if let Some(act) = v.get("hidden_act") {
            if act.as_str() != Some("silu") {
                return Err(bad("hidden_act", act.to_string(), "must be \"silu\""));
            }
        }
        for key in ["attention_bias", "mlp_bias"] {
            if v.get(key).and_then(|b| b.as_bool()) == Some(true) {
                let field = if key == "mlp_bias" {
                    "mlp_bias"
                } else {
                    "attention_bias"
                };
                return Err(bad(
                    field,
                    "true".into(),
                    "must be false: the native model has no biases",
                ));
            }
        }
        // transformers 5.x moves rope_theta under rope_parameters.
        let rope = v.get("rope_parameters").filter(|x| !x.is_null());
        let scaling = v.get("rope_scaling").filter(|x| !x.is_null()).or(rope);
        if let Some(s) = scaling {
            let kind = s
                .get("rope_type")
                .or_else(|| s.get("type"))
                .and_then(|t| t.as_str())
                .unwrap_or("default");
            if kind != "default" {
                return Err(bad(
                    "rope_scaling",
                    s.to_string(),
                    "only unscaled (\"default\") rotary positions are implemented",
                ));
            }
        }
        let rope_theta = match rope
            .and_then(|r| r.get("rope_theta"))
            .and_then(|t| t.as_f64())
        {
            Some(t) => t as f32,
            None => f32_field("rope_theta", Some(10_000.0))?,
        };
        let hidden = usize_field("hidden_size")?;
        if let Some(hd) = v.get("head_dim").filter(|x| !x.is_null()) {
            if heads == 0 || hd.as_u64() != Some((hidden / heads) as u64) {
                return Err(bad(
                    "head_dim",
                    hd.to_string(),
                    "must equal hidden_size / num_attention_heads",
                ));
            }
        }
        let cfg = Self {
            vocab_size: usize_field("vocab_size")?,
            hidden_size: hidden,
            num_layers: usize_field("num_hidden_layers")?,
            num_heads: heads,
            intermediate_size: usize_field("intermediate_size")?,
            context_length: usize_field("max_position_embeddings")?,
            rope_theta,
            rms_norm_eps: f32_field("rms_norm_eps", Some(1e-6))?,
            tie_embeddings: v
                .get("tie_word_embeddings")
                .and_then(|b| b.as_bool())
                .unwrap_or(true),
            initializer_range: f32_field("initializer_range", Some(0.02))?,
        };
        cfg.validate()?;
        Ok(cfg)
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
        gqa["num_key_value_heads"] = 2.into();
        let e = TransformerConfig::from_hf_json(&gqa, "config.json")
            .unwrap_err()
            .to_string();
        assert!(e.contains("grouped-query"), "{e}");

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
