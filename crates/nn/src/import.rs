//! `autodidact import`: a GGUF file to a Hugging Face checkpoint directory.
//!
//! The directory holds what `transformers` and the native backend both read:
//! - `model.safetensors`: every tensor dequantized, in float32 (or rounded to bfloat16),
//!   under Hugging Face names;
//! - `config.json`: a `LlamaForCausalLM` or `Qwen2ForCausalLM` config;
//! - `tokenizer.json`: the byte-level BPE vocabulary and merges, with the GGUF's special
//!   tokens as added tokens;
//! - `tokenizer_config.json`: the special token strings and the chat template;
//! - `generation_config.json`: the bos, eos and pad ids (the eos id is the stop token).
//!
//! How it differs from the model in llama.cpp: nothing is computed in quantized form. The
//! weights are dequantized once, exactly as ggml dequantizes them, and the checkpoint then
//! trains and samples in f32. llama.cpp's converter permutes the rows of the q and k
//! projections of `llama` models for its interleaved rotary layout; they are permuted back
//! here, as transformers does when it reads a GGUF.
//!
//! Supported: architectures `llama` and `qwen2`; tokenizer model `gpt2` (byte-level BPE)
//! with pre-tokenizers `default`, `gpt2` and `smollm`. Anything else is refused by name.

use crate::checkpoint::{CONFIG_FILE, MODEL_FILE, TOKENIZER_FILE};
use crate::config::{RopeScaling, TransformerConfig};
use crate::gguf::{Gguf, Value};
use crate::params::Layout;
use crate::{Error, Result};
use autodidact_core::fs::write_atomic;
use safetensors::tensor::{Dtype, TensorView};
use serde_json::json;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

pub const TOKENIZER_CONFIG_FILE: &str = "tokenizer_config.json";
pub const GENERATION_CONFIG_FILE: &str = "generation_config.json";

/// The float type the imported weights are stored in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum WeightDtype {
    /// Exactly the dequantized values.
    #[default]
    F32,
    /// Rounded to bfloat16 (half the size on disk; loads back as f32).
    Bf16,
}

/// What an import wrote.
#[derive(Clone, Debug)]
pub struct Imported {
    pub dir: PathBuf,
    pub config: TransformerConfig,
    pub architecture: String,
    /// How many tensors of each ggml type the file held.
    pub tensor_types: Vec<(String, usize)>,
    pub vocab_size: usize,
}

/// Imports the GGUF file `src` into the directory `out` (created; it must not exist or be
/// empty). The directory appears whole or not at all.
pub fn import_gguf(src: &Path, out: &Path, dtype: WeightDtype) -> Result<Imported> {
    if out.exists()
        && std::fs::read_dir(out)
            .map(|mut d| d.next().is_some())
            .unwrap_or(true)
    {
        return Err(Error::invalid(
            "--out",
            format!(
                "{} already exists and is not empty; choose a new directory",
                out.display()
            ),
        ));
    }
    let g = Gguf::open(src)?;
    let arch = g
        .get("general.architecture")
        .and_then(Value::as_str)
        .ok_or_else(|| Error::checkpoint(src, "has no general.architecture"))?
        .to_string();
    let config = config_of(&g, &arch)?;
    let tokenizer = Tokenizer::of(&g, config.vocab_size)?;
    let params = weights_of(&g, &arch, &config)?;

    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent)
        .map_err(|e| autodidact_core::Error::io("creating directory", &parent, e))?;
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "import".into());
    let tmp = parent.join(format!(".{name}.import-{}", std::process::id()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp)
            .map_err(|e| autodidact_core::Error::io("removing stale", &tmp, e))?;
    }
    std::fs::create_dir(&tmp)
        .map_err(|e| autodidact_core::Error::io("creating directory", &tmp, e))?;
    let written = write_dir(&tmp, &config, &params, dtype, &tokenizer).and_then(|()| {
        if out.exists() {
            std::fs::remove_dir(out)
                .map_err(|e| autodidact_core::Error::io("replacing", out, e))?;
        }
        std::fs::rename(&tmp, out)
            .map_err(|e| autodidact_core::Error::io("renaming into place", out, e).into())
    });
    if written.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    written?;
    let mut counts: HashMap<String, usize> = HashMap::new();
    for t in &g.tensors {
        *counts.entry(format!("{:?}", t.kind)).or_default() += 1;
    }
    let mut tensor_types: Vec<(String, usize)> = counts.into_iter().collect();
    tensor_types.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    Ok(Imported {
        dir: out.into(),
        config,
        architecture: arch,
        tensor_types,
        vocab_size: tokenizer.tokens.len(),
    })
}

fn bad(g: &Gguf, key: &str, found: impl std::fmt::Display, expected: &str) -> Error {
    Error::checkpoint(
        &g.path,
        format!("metadata {key} is {found}; the native model needs {expected}"),
    )
}

/// The model shape the GGUF metadata describes.
fn config_of(g: &Gguf, arch: &str) -> Result<TransformerConfig> {
    if !matches!(arch, "llama" | "qwen2") {
        return Err(bad(
            g,
            "general.architecture",
            format!("{arch:?}"),
            "\"llama\" or \"qwen2\"",
        ));
    }
    let int = |key: &str, default: Option<u64>| -> Result<usize> {
        let full = format!("{arch}.{key}");
        match g.get(&full) {
            Some(v) => v
                .as_u64()
                .map(|n| n as usize)
                .ok_or_else(|| bad(g, &full, format!("{v:?}"), "a non-negative integer")),
            None => default
                .map(|d| d as usize)
                .ok_or_else(|| Error::checkpoint(&g.path, format!("has no metadata {full}"))),
        }
    };
    let float = |key: &str, default: f64| -> Result<f32> {
        let full = format!("{arch}.{key}");
        match g.get(&full) {
            Some(v) => v
                .as_f64()
                .map(|n| n as f32)
                .ok_or_else(|| bad(g, &full, format!("{v:?}"), "a number")),
            None => Ok(default as f32),
        }
    };
    let hidden = int("embedding_length", None)?;
    let heads = int("attention.head_count", None)?;
    let head_dim = hidden.checked_div(heads).unwrap_or(0);
    for key in [
        "rope.dimension_count",
        "attention.key_length",
        "attention.value_length",
    ] {
        let d = int(key, Some(head_dim as u64))?;
        if d != head_dim {
            return Err(bad(
                g,
                &format!("{arch}.{key}"),
                d,
                &format!("embedding_length / head_count = {head_dim} (partial rotary and other head sizes are not implemented)"),
            ));
        }
    }
    if g.tensor("rope_freqs.weight").is_some() {
        return Err(Error::checkpoint(
            &g.path,
            "holds per-frequency rope factors (rope_freqs.weight, as Llama 3.1 GGUFs do), which the importer does not map yet; import the Hugging Face checkpoint instead",
        ));
    }
    let rope_scaling = match g
        .get(&format!("{arch}.rope.scaling.type"))
        .and_then(Value::as_str)
    {
        None | Some("none") => None,
        Some("linear") => Some(RopeScaling::Linear {
            factor: float("rope.scaling.factor", 1.0)?,
        }),
        Some(other) => {
            return Err(bad(
                g,
                &format!("{arch}.rope.scaling.type"),
                format!("{other:?}"),
                "\"none\" or \"linear\"",
            ))
        }
    };
    let tokens = g
        .get("tokenizer.ggml.tokens")
        .and_then(Value::as_array)
        .map_or(0, |t| t.len());
    let cfg = TransformerConfig {
        vocab_size: int("vocab_size", Some(tokens as u64))?,
        hidden_size: hidden,
        num_layers: int("block_count", None)?,
        num_heads: heads,
        num_kv_heads: int("attention.head_count_kv", Some(heads as u64))?,
        intermediate_size: int("feed_forward_length", None)?,
        context_length: int("context_length", None)?,
        rope_theta: float("rope.freq_base", 10_000.0)?,
        rope_scaling,
        qkv_bias: arch == "qwen2",
        rms_norm_eps: float("attention.layer_norm_rms_epsilon", 1e-5)?,
        tie_embeddings: g.tensor("output.weight").is_none(),
        initializer_range: 0.02,
    };
    cfg.validate()
        .map_err(|e| Error::checkpoint(&g.path, e.to_string()))?;
    Ok(cfg)
}

/// The GGUF name of Hugging Face tensor `name`.
fn gguf_name(name: &str) -> String {
    let rest = |p: &str| name.strip_prefix(p);
    if name == "model.embed_tokens.weight" {
        return "token_embd.weight".into();
    }
    if name == "model.norm.weight" {
        return "output_norm.weight".into();
    }
    if name == "lm_head.weight" {
        return "output.weight".into();
    }
    let Some(tail) = rest("model.layers.") else {
        return name.into();
    };
    let (layer, tail) = tail.split_once('.').unwrap_or((tail, ""));
    let part = match tail {
        "input_layernorm.weight" => "attn_norm.weight",
        "post_attention_layernorm.weight" => "ffn_norm.weight",
        "self_attn.q_proj.weight" => "attn_q.weight",
        "self_attn.k_proj.weight" => "attn_k.weight",
        "self_attn.v_proj.weight" => "attn_v.weight",
        "self_attn.q_proj.bias" => "attn_q.bias",
        "self_attn.k_proj.bias" => "attn_k.bias",
        "self_attn.v_proj.bias" => "attn_v.bias",
        "self_attn.o_proj.weight" => "attn_output.weight",
        "mlp.gate_proj.weight" => "ffn_gate.weight",
        "mlp.up_proj.weight" => "ffn_up.weight",
        "mlp.down_proj.weight" => "ffn_down.weight",
        other => other,
    };
    format!("blk.{layer}.{part}")
}

/// Every tensor of the model, dequantized into the flat layout.
fn weights_of(g: &Gguf, arch: &str, cfg: &TransformerConfig) -> Result<Vec<f32>> {
    let layout = Layout::new(cfg);
    // The layout is allocated before any tensor is looked up: a header that describes a model
    // larger than the tensors the file lists is refused first.
    let listed: u64 = g.tensors.iter().map(|t| t.num_values()).sum();
    if layout.total as u64 > listed {
        return Err(Error::checkpoint(
            &g.path,
            format!(
                "its metadata describes a model of {} parameters, but its tensors hold {listed} values",
                layout.total
            ),
        ));
    }
    let mut params = vec![0.0f32; layout.total];
    let mut used = vec![false; g.tensors.len()];
    for t in &layout.tensors {
        let name = gguf_name(&t.name);
        let i = g
            .tensors
            .iter()
            .position(|x| x.name == name)
            .ok_or_else(|| Error::TensorMissing {
                path: g.path.clone(),
                name: name.clone(),
                expected: t.shape.clone(),
                hint: format!(" (for {})", t.name),
            })?;
        let info = &g.tensors[i];
        if info.torch_shape() != t.shape {
            return Err(Error::TensorShape {
                path: g.path.clone(),
                name,
                found: info.torch_shape(),
                expected: t.shape.clone(),
            });
        }
        let values = g.dequantize(info)?;
        if let Some(first) = values.iter().position(|v| !v.is_finite()) {
            return Err(Error::checkpoint(
                &g.path,
                format!("tensor `{name}` dequantizes to a non-finite value at index {first}"),
            ));
        }
        let dst = &mut params[t.range()];
        // llama.cpp interleaves the rotary halves of each q and k head of `llama` models.
        let permuted_heads = match (arch, t.name.rsplit('.').nth(1)) {
            ("llama", Some("q_proj")) => Some(cfg.num_heads),
            ("llama", Some("k_proj")) => Some(cfg.num_kv_heads),
            _ => None,
        };
        match permuted_heads {
            Some(heads) => unpermute_rows(dst, &values, heads, cfg.hidden_size),
            None => dst.copy_from_slice(&values),
        }
        used[i] = true;
    }
    let unused: Vec<&str> = g
        .tensors
        .iter()
        .zip(&used)
        .filter(|(_, &u)| !u)
        .map(|(t, _)| t.name.as_str())
        .collect();
    if !unused.is_empty() {
        return Err(Error::checkpoint(
            &g.path,
            format!(
                "holds tensors the {arch} model does not use: {unused:?}; the file may describe another architecture"
            ),
        ));
    }
    Ok(params)
}

/// Undoes llama.cpp's q/k permutation: in GGUF, row `h·D + 2i + j` of a (heads·D, cols)
/// matrix holds Hugging Face row `h·D + j·D/2 + i`.
fn unpermute_rows(dst: &mut [f32], src: &[f32], heads: usize, cols: usize) {
    let d = src.len() / cols / heads;
    for h in 0..heads {
        for i in 0..d / 2 {
            for j in 0..2 {
                let from = (h * d + 2 * i + j) * cols;
                let to = (h * d + j * (d / 2) + i) * cols;
                dst[to..to + cols].copy_from_slice(&src[from..from + cols]);
            }
        }
    }
}

/// The tokenizer a GGUF describes.
struct Tokenizer {
    tokens: Vec<String>,
    types: Vec<i64>,
    merges: Vec<(String, String)>,
    pre: String,
    bos: Option<u32>,
    eos: Option<u32>,
    pad: Option<u32>,
    unk: Option<u32>,
    add_bos: bool,
    chat_template: Option<String>,
}

/// GGUF token types (llama.cpp's `llama_token_type`).
const CONTROL: i64 = 3;
const USER_DEFINED: i64 = 4;

impl Tokenizer {
    fn of(g: &Gguf, vocab_size: usize) -> Result<Self> {
        let model = g.get("tokenizer.ggml.model").and_then(Value::as_str);
        if model != Some("gpt2") {
            return Err(bad(
                g,
                "tokenizer.ggml.model",
                format!("{model:?}"),
                "\"gpt2\" (byte-level BPE; SentencePiece vocabularies are not imported yet: use the Hugging Face checkpoint)",
            ));
        }
        let pre = g
            .get("tokenizer.ggml.pre")
            .and_then(Value::as_str)
            .unwrap_or("default")
            .to_string();
        if !matches!(pre.as_str(), "default" | "gpt2" | "smollm") {
            return Err(bad(
                g,
                "tokenizer.ggml.pre",
                format!("{pre:?}"),
                "\"default\", \"gpt2\" or \"smollm\" (other pre-tokenizers are not imported yet)",
            ));
        }
        let strings = |key: &str| -> Result<Vec<String>> {
            let arr = g
                .get(key)
                .and_then(Value::as_array)
                .ok_or_else(|| Error::checkpoint(&g.path, format!("has no array {key}")))?;
            arr.iter()
                .map(|v| {
                    v.as_str()
                        .map(String::from)
                        .ok_or_else(|| bad(g, key, "an array with a non-string", "strings"))
                })
                .collect()
        };
        let tokens = strings("tokenizer.ggml.tokens")?;
        if tokens.len() != vocab_size {
            return Err(bad(
                g,
                "tokenizer.ggml.tokens",
                format!("{} tokens", tokens.len()),
                &format!("the model's vocab_size ({vocab_size})"),
            ));
        }
        let types = match g.get("tokenizer.ggml.token_type").and_then(Value::as_array) {
            Some(t) => t
                .iter()
                .map(|v| match v {
                    Value::I32(x) => Ok(*x as i64),
                    other => other.as_u64().map(|x| x as i64).ok_or_else(|| {
                        bad(g, "tokenizer.ggml.token_type", "not integers", "integers")
                    }),
                })
                .collect::<Result<Vec<_>>>()?,
            None => vec![1; tokens.len()],
        };
        if types.len() != tokens.len() {
            return Err(bad(
                g,
                "tokenizer.ggml.token_type",
                format!("{} entries", types.len()),
                &format!("one per token ({})", tokens.len()),
            ));
        }
        let merges = strings("tokenizer.ggml.merges")?
            .into_iter()
            .map(|m| {
                m.split_once(' ')
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .ok_or_else(|| {
                        bad(
                            g,
                            "tokenizer.ggml.merges",
                            format!("entry {m:?}"),
                            "\"left right\" pairs",
                        )
                    })
            })
            .collect::<Result<Vec<_>>>()?;
        let id = |key: &str| -> Result<Option<u32>> {
            match g.get(key) {
                None => Ok(None),
                Some(v) => match v.as_u64() {
                    Some(i) if (i as usize) < tokens.len() => Ok(Some(i as u32)),
                    _ => Err(bad(
                        g,
                        key,
                        format!("{v:?}"),
                        &format!("a token id below {}", tokens.len()),
                    )),
                },
            }
        };
        Ok(Self {
            bos: id("tokenizer.ggml.bos_token_id")?,
            eos: id("tokenizer.ggml.eos_token_id")?,
            pad: id("tokenizer.ggml.padding_token_id")?,
            unk: id("tokenizer.ggml.unknown_token_id")?,
            add_bos: g
                .get("tokenizer.ggml.add_bos_token")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            chat_template: g
                .get("tokenizer.chat_template")
                .and_then(Value::as_str)
                .map(String::from),
            tokens,
            types,
            merges,
            pre,
        })
    }

    fn token(&self, id: Option<u32>) -> serde_json::Value {
        id.map_or(serde_json::Value::Null, |i| json!(self.tokens[i as usize]))
    }

    /// `tokenizer.json`, as `tokenizers` writes a byte-level BPE.
    fn tokenizer_json(&self) -> serde_json::Value {
        let added: Vec<serde_json::Value> = self
            .tokens
            .iter()
            .zip(&self.types)
            .enumerate()
            .filter(|(_, (_, &ty))| ty == CONTROL || ty == USER_DEFINED)
            .map(|(i, (tok, &ty))| {
                json!({
                    "id": i, "content": tok, "single_word": false, "lstrip": false,
                    "rstrip": false, "normalized": ty != CONTROL, "special": ty == CONTROL,
                })
            })
            .collect();
        let byte_level = json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true});
        // SmolLM's pre-tokenizer splits digits one by one before the GPT-2 split (llama.cpp's
        // LLAMA_VOCAB_PRE_TYPE_SMOLLM, and the Digits step of SmolLM2's own tokenizer.json).
        let pre_tokenizer = if self.pre == "smollm" {
            json!({"type": "Sequence", "pretokenizers": [
                {"type": "Digits", "individual_digits": true}, byte_level]})
        } else {
            byte_level
        };
        let post_processor = match (self.add_bos, self.bos) {
            (true, Some(bos)) => {
                let b = &self.tokens[bos as usize];
                json!({"type": "TemplateProcessing",
                    "single": [{"SpecialToken": {"id": b, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
                    "pair": [{"SpecialToken": {"id": b, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                             {"SpecialToken": {"id": b, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
                    "special_tokens": {b.as_str(): {"id": b, "ids": [bos], "tokens": [b]}}})
            }
            _ => {
                json!({"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true})
            }
        };
        let vocab: serde_json::Map<String, serde_json::Value> = self
            .tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), json!(i)))
            .collect();
        let merges: Vec<[&str; 2]> = self
            .merges
            .iter()
            .map(|(a, b)| [a.as_str(), b.as_str()])
            .collect();
        json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": added,
            "normalizer": null,
            "pre_tokenizer": pre_tokenizer,
            "post_processor": post_processor,
            "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
            "model": {
                "type": "BPE", "dropout": null, "unk_token": null,
                "continuing_subword_prefix": null, "end_of_word_suffix": null,
                "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                "vocab": vocab, "merges": merges,
            },
        })
    }

    fn tokenizer_config_json(&self, context_length: usize) -> serde_json::Value {
        let mut v = json!({
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": self.token(self.bos),
            "eos_token": self.token(self.eos),
            "pad_token": self.token(self.pad),
            "unk_token": self.token(self.unk),
            "add_bos_token": self.add_bos,
            "add_eos_token": false,
            "clean_up_tokenization_spaces": false,
            "model_max_length": context_length,
        });
        if let Some(t) = &self.chat_template {
            v["chat_template"] = json!(t);
        }
        v
    }

    fn generation_config_json(&self) -> serde_json::Value {
        json!({
            "bos_token_id": self.bos,
            "eos_token_id": self.eos,
            "pad_token_id": self.pad,
        })
    }
}

fn write_json(path: &Path, v: &serde_json::Value) -> Result<()> {
    let text =
        serde_json::to_string_pretty(v).map_err(|e| Error::checkpoint(path, e.to_string()))?;
    write_atomic(path, text.as_bytes()).map_err(Into::into)
}

fn write_dir(
    dir: &Path,
    config: &TransformerConfig,
    params: &[f32],
    dtype: WeightDtype,
    tok: &Tokenizer,
) -> Result<()> {
    let layout = Layout::new(config);
    let (bytes, st_dtype, width): (Vec<u8>, Dtype, usize) = match dtype {
        WeightDtype::F32 => (
            params.iter().flat_map(|v| v.to_le_bytes()).collect(),
            Dtype::F32,
            4,
        ),
        WeightDtype::Bf16 => (
            params
                .iter()
                .flat_map(|&v| half::bf16::from_f32(v).to_le_bytes())
                .collect(),
            Dtype::BF16,
            2,
        ),
    };
    let path = dir.join(MODEL_FILE);
    let views: Vec<(String, TensorView)> = layout
        .tensors
        .iter()
        .map(|t| {
            TensorView::new(
                st_dtype,
                t.shape.clone(),
                &bytes[t.offset * width..(t.offset + t.len()) * width],
            )
            .map(|v| (t.name.clone(), v))
            .map_err(|e| Error::checkpoint(&path, format!("building tensor view: {e}")))
        })
        .collect::<Result<_>>()?;
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    let st = safetensors::serialize(views, Some(meta))
        .map_err(|e| Error::checkpoint(&path, format!("serializing: {e}")))?;
    write_atomic(&path, &st)?;

    let mut cfg = config.to_hf_json(None);
    // An imported checkpoint is a Hugging Face one: no autodidact format marker.
    cfg.as_object_mut()
        .map(|o| o.remove("autodidact_format_version"));
    cfg["bos_token_id"] = json!(tok.bos);
    cfg["eos_token_id"] = json!(tok.eos);
    cfg["pad_token_id"] = json!(tok.pad);
    cfg["torch_dtype"] = json!(match dtype {
        WeightDtype::F32 => "float32",
        WeightDtype::Bf16 => "bfloat16",
    });
    write_json(&dir.join(CONFIG_FILE), &cfg)?;
    write_json(&dir.join(TOKENIZER_FILE), &tok.tokenizer_json())?;
    write_json(
        &dir.join(TOKENIZER_CONFIG_FILE),
        &tok.tokenizer_config_json(config.context_length),
    )?;
    write_json(
        &dir.join(GENERATION_CONFIG_FILE),
        &tok.generation_config_json(),
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_both_ways_for_every_tensor() {
        let mut cfg = TransformerConfig::tiny(10);
        cfg.tie_embeddings = false;
        cfg.qkv_bias = true;
        let names: Vec<String> = Layout::new(&cfg)
            .tensors
            .iter()
            .map(|t| gguf_name(&t.name))
            .collect();
        assert!(names.contains(&"blk.3.attn_k.bias".to_string()));
        assert!(names.contains(&"output.weight".to_string()));
        assert!(names.iter().all(|n| !n.starts_with("model.")), "{names:?}");
    }
}
