//! Checkpoints in the Hugging Face `LlamaForCausalLM` layout.
//!
//! A checkpoint directory holds
//! - `model.safetensors`: float32 tensors under Hugging Face names
//!   (`model.layers.0.self_attn.q_proj.weight`, ...), metadata `format = pt` and
//!   `autodidact_format_version`. Checkpoints from elsewhere may instead be sharded
//!   (`model.safetensors.index.json` naming the file of each tensor) and hold float16 or
//!   bfloat16 tensors, which load as float32;
//! - `config.json`: a `LlamaForCausalLM` config (plus `autodidact_format_version`);
//! - the tokenizer, when one is saved with the model: `tokenizer.json` alone for
//!   autodidact's character vocabulary; a pretrained model's `tokenizer.json`,
//!   `tokenizer_config.json` (special tokens, chat template) and `generation_config.json`
//!   (stop tokens), copied as they were read;
//! - `optimizer.safetensors`, when optimizer state is saved: AdamW's moments
//!   under `<tensor name>.exp_avg` / `.exp_avg_sq` and the step count in the metadata.
//!
//! A reward model (`reward.rs`) is the same directory with a score head: `score.weight`
//! (1, hidden_size) beside the model's tensors, its moments in `optimizer.safetensors`, and a
//! `config.json` naming `LlamaForSequenceClassification` (or Qwen2's) with one label, which
//! `AutoModelForSequenceClassification` loads (it leaves the unused `lm_head.weight` out).
//!
//! A model with LoRA adapters (`lora.rs`) saves the adapters alone, in PEFT's layout:
//! - `adapter_model.safetensors`: A and B of every adapter under PEFT's names
//!   (`base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight`), with the digest of the
//!   base checkpoint's `config.json` and weights in the metadata (`base_model_digest`);
//! - `adapter_config.json`: PEFT's `LoraConfig` (`r`, `lora_alpha`, `target_modules`, ...) and
//!   `base_model_name_or_path`, the base checkpoint's absolute path (a relative one, in a file
//!   written elsewhere, is read from the adapter directory);
//! - the tokenizer, and `optimizer.safetensors` with moments for the adapters only.
//!
//! Loading such a directory loads the base it names, checks the digest and merges the
//! adapters; `peft.PeftModel.from_pretrained(base, dir)` loads it too.
//!
//! `transformers` loads the first three unchanged. Loading validates every
//! tensor's name, dtype and shape and reports the first mismatch by name.
//! A save writes a sibling temporary directory and renames it into place, so a
//! crash leaves either the old checkpoint or the new one.

use crate::config::TransformerConfig;
use crate::lora::BaseModel;
use crate::model::Transformer;
use crate::optim::{AdamW, AdamWConfig};
use crate::params::TensorInfo;
use crate::{Error, Result};
use autodidact_core::fs::write_atomic;
use autodidact_core::{LoraConfig, LoraModule, ModelTokenizer, Tokenizer};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Version of the files this build writes and reads. Bump on any incompatible change.
pub const FORMAT_VERSION: u32 = 1;
pub const MODEL_FILE: &str = "model.safetensors";
/// The index of a sharded checkpoint: `{"weight_map": {tensor name: shard file}}`.
pub const INDEX_FILE: &str = "model.safetensors.index.json";
pub const CONFIG_FILE: &str = "config.json";
pub use autodidact_core::hf_tokenizer::TOKENIZER_FILE;
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
pub const ADAPTER_FILE: &str = "adapter_model.safetensors";
pub const ADAPTER_CONFIG_FILE: &str = autodidact_core::ADAPTER_CONFIG;
/// The score head of a reward model.
pub const SCORE_TENSOR: &str = "score.weight";
const BASE_DIGEST_KEY: &str = "base_model_digest";
const VERSION_KEY: &str = "autodidact_format_version";

/// A loaded checkpoint.
#[derive(Debug)]
pub struct Checkpoint {
    pub model: Transformer,
    pub tokenizer: Option<ModelTokenizer>,
    /// A reward model's score head (`score.weight`), when the checkpoint has one. (C)
    pub score: Option<Vec<f32>>,
}

/// A score head saved with a model: its weights (C) and, optionally, their AdamW state.
#[derive(Clone, Copy)]
pub struct ScoreHead<'a> {
    pub weight: &'a [f32],
    pub optimizer: Option<&'a AdamW>,
}

fn to_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn serialize(
    tensors: Vec<(String, Vec<usize>, &[u8])>,
    metadata: HashMap<String, String>,
    path: &Path,
) -> Result<Vec<u8>> {
    let views: Vec<(String, TensorView)> = tensors
        .into_iter()
        .map(|(name, shape, bytes)| {
            TensorView::new(Dtype::F32, shape, bytes)
                .map(|v| (name, v))
                .map_err(|e| Error::checkpoint(path, format!("building tensor view: {e}")))
        })
        .collect::<Result<_>>()?;
    let bytes = safetensors::serialize(views, Some(metadata))
        .map_err(|e| Error::checkpoint(path, format!("serializing: {e}")))?;
    Ok(canonical_header(bytes))
}

/// Rewrites the JSON header with its keys sorted. `safetensors` writes the `__metadata__`
/// map in `HashMap` order, which changes from process to process; sorted, the same weights
/// always give the same bytes (and the same hash in a run's manifest). The canonical JSON
/// has the same length, so the header keeps its size and alignment padding.
fn canonical_header(mut bytes: Vec<u8>) -> Vec<u8> {
    let Some(len) = bytes
        .get(..8)
        .map(|b| u64::from_le_bytes(b.try_into().unwrap()) as usize)
    else {
        return bytes;
    };
    let Some(header) = bytes.get(8..8 + len) else {
        return bytes;
    };
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(header) else {
        return bytes;
    };
    let canonical = serde_json::to_vec(&value).expect("a parsed header serializes");
    if canonical.len() <= len {
        let dst = &mut bytes[8..8 + len];
        dst[..canonical.len()].copy_from_slice(&canonical);
        dst[canonical.len()..].fill(b' ');
    }
    bytes
}

fn format_metadata() -> HashMap<String, String> {
    HashMap::from([
        ("format".to_string(), "pt".to_string()),
        (VERSION_KEY.to_string(), FORMAT_VERSION.to_string()),
    ])
}

/// Why `tokenizer` does not fit a model of `vocab_size` tokens, if it does not. A character
/// vocabulary must match exactly; a pretrained tokenizer may have fewer tokens than the
/// embedding has rows (models pad their embedding to a multiple of 64 or 128).
fn vocab_mismatch(tokenizer: &ModelTokenizer, vocab_size: usize) -> Option<String> {
    let n = tokenizer.vocab_size();
    let fits = match tokenizer {
        ModelTokenizer::Char(_) => n == vocab_size,
        ModelTokenizer::Hf(_) => n <= vocab_size,
    };
    (!fits)
        .then(|| format!("the tokenizer has {n} tokens but the model's vocab_size is {vocab_size}"))
}

/// Fails unless `tokenizer` fits the model's vocabulary; `what` names the caller.
pub(crate) fn check_vocab(
    what: &'static str,
    model: &Transformer,
    tokenizer: &ModelTokenizer,
) -> Result<()> {
    match vocab_mismatch(tokenizer, model.config().vocab_size) {
        Some(why) => Err(Error::invalid(what, why)),
        None => Ok(()),
    }
}

/// Writes `model` (and optionally its tokenizer and optimizer state) to `dir`, replacing any
/// checkpoint already there.
pub fn save(
    dir: &Path,
    model: &Transformer,
    tokenizer: Option<&ModelTokenizer>,
    optimizer: Option<&AdamW>,
) -> Result<()> {
    save_with(dir, model, tokenizer, optimizer, None)
}

/// [`save`] with a reward model's score head (see the module's notes on the layout).
pub fn save_with(
    dir: &Path,
    model: &Transformer,
    tokenizer: Option<&ModelTokenizer>,
    optimizer: Option<&AdamW>,
    head: Option<ScoreHead>,
) -> Result<()> {
    if let Some(tok) = tokenizer {
        check_vocab("checkpoint", model, tok)?;
    }
    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent)
        .map_err(|e| autodidact_core::Error::io("creating directory", &parent, e))?;
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "checkpoint".into());
    let tmp = parent.join(format!(".{name}.tmp-{}", std::process::id()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp)
            .map_err(|e| autodidact_core::Error::io("removing stale", &tmp, e))?;
    }
    std::fs::create_dir(&tmp)
        .map_err(|e| autodidact_core::Error::io("creating directory", &tmp, e))?;
    let result = write_files(&tmp, model, tokenizer, optimizer, head)
        .and_then(|()| Ok(autodidact_core::fs::replace_dir(&tmp, dir)?));
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    result
}

/// Each tensor's name, shape and bytes, out of the little-endian bytes of its buffer.
fn slices<'a>(tensors: &[TensorInfo], bytes: &'a [u8]) -> Vec<(String, Vec<usize>, &'a [u8])> {
    tensors
        .iter()
        .map(|t| {
            (
                t.name.clone(),
                t.shape.clone(),
                &bytes[t.offset * 4..(t.offset + t.len()) * 4],
            )
        })
        .collect()
}

fn write_files(
    dir: &Path,
    model: &Transformer,
    tokenizer: Option<&ModelTokenizer>,
    optimizer: Option<&AdamW>,
    head: Option<ScoreHead>,
) -> Result<()> {
    let c = model.config().hidden_size;
    if let Some(h) = &head {
        if h.weight.len() != c {
            return Err(Error::invalid(
                "score head",
                format!("{} values for a model of hidden_size {c}", h.weight.len()),
            ));
        }
        if model.lora().is_some() {
            return Err(Error::invalid(
                "reward model",
                "a score head on LoRA adapters cannot be saved; train the reward model without `lora`",
            ));
        }
    }
    let head_bytes = head.map(|h| to_bytes(h.weight));
    match model.lora() {
        None => {
            let bytes = to_bytes(model.params());
            let path = dir.join(MODEL_FILE);
            let mut tensors = slices(&model.layout().tensors, &bytes);
            if let Some(b) = &head_bytes {
                tensors.push((SCORE_TENSOR.into(), vec![1, c], b));
            }
            write_atomic(&path, &serialize(tensors, format_metadata(), &path)?)?;
            let special = tokenizer.and_then(ModelTokenizer::special_ids);
            let mut json = model.config().to_hf_json(special);
            if head.is_some() {
                let arch = if model.config().qkv_bias {
                    "Qwen2ForSequenceClassification"
                } else {
                    "LlamaForSequenceClassification"
                };
                json["architectures"] = serde_json::json!([arch]);
                json["num_labels"] = 1.into();
                json["id2label"] = serde_json::json!({"0": "LABEL_0"});
                json["label2id"] = serde_json::json!({"LABEL_0": 0});
            }
            let config = serde_json::to_string_pretty(&json)
                .map_err(|e| Error::checkpoint(dir.join(CONFIG_FILE), e.to_string()))?;
            write_atomic(&dir.join(CONFIG_FILE), config.as_bytes())?;
        }
        Some(lora) => {
            let path = dir.join(ADAPTER_FILE);
            let base = lora.base_model().ok_or_else(|| {
                Error::checkpoint(
                    &path,
                    "the adapters were not attached to a loaded checkpoint, so there is no base model to name; save the base first and load it",
                )
            })?;
            let bytes = to_bytes(lora.params());
            let mut meta = format_metadata();
            meta.insert(BASE_DIGEST_KEY.into(), base.digest.clone());
            write_atomic(
                &path,
                &serialize(slices(lora.tensors(), &bytes), meta, &path)?,
            )?;
            let cfg = lora.config();
            let mut targets: Vec<&str> = cfg.target_modules.iter().map(|m| m.name()).collect();
            targets.sort_unstable();
            let json = serde_json::json!({
                "peft_type": "LORA",
                "task_type": "CAUSAL_LM",
                "base_model_name_or_path": base.dir.display().to_string(),
                "r": cfg.rank,
                "lora_alpha": cfg.alpha,
                "target_modules": targets,
                "lora_dropout": 0.0,
                "bias": "none",
                "fan_in_fan_out": false,
                "use_rslora": false,
                "use_dora": false,
                "init_lora_weights": true,
                "inference_mode": true,
                "modules_to_save": null,
                "layers_to_transform": null,
                "rank_pattern": {},
                "alpha_pattern": {},
                VERSION_KEY: FORMAT_VERSION,
            });
            let text = serde_json::to_string_pretty(&json)
                .map_err(|e| Error::checkpoint(dir.join(ADAPTER_CONFIG_FILE), e.to_string()))?;
            write_atomic(&dir.join(ADAPTER_CONFIG_FILE), text.as_bytes())?;
        }
    }

    if let Some(tok) = tokenizer {
        tok.save(dir)?;
    }
    if let Some(opt) = optimizer {
        let path = dir.join(OPTIMIZER_FILE);
        let (m, v) = (to_bytes(&opt.m), to_bytes(&opt.v));
        let mut tensors = Vec::new();
        for t in model.trainable_tensors() {
            let r = t.offset * 4..(t.offset + t.len()) * 4;
            tensors.push((
                format!("{}.exp_avg", t.name),
                t.shape.clone(),
                &m[r.clone()],
            ));
            tensors.push((format!("{}.exp_avg_sq", t.name), t.shape.clone(), &v[r]));
        }
        let head_moments = head
            .and_then(|h| h.optimizer)
            .map(|o| (to_bytes(&o.m), to_bytes(&o.v)));
        if let Some((hm, hv)) = &head_moments {
            tensors.push((format!("{SCORE_TENSOR}.exp_avg"), vec![1, c], hm));
            tensors.push((format!("{SCORE_TENSOR}.exp_avg_sq"), vec![1, c], hv));
        }
        let mut meta = format_metadata();
        meta.insert("step".into(), opt.step.to_string());
        meta.insert(
            "adamw".into(),
            serde_json::to_string(opt.config())
                .map_err(|e| Error::checkpoint(&path, e.to_string()))?,
        );
        write_atomic(&path, &serialize(tensors, meta, &path)?)?;
    }
    Ok(())
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| autodidact_core::Error::io("reading", path, e).into())
}

/// Checks the safetensors metadata's format version, when there is one. Files written by
/// other tools (e.g. `transformers`) carry none and are accepted.
fn check_version(st_bytes: &[u8], path: &Path, required: bool) -> Result<HashMap<String, String>> {
    let (_, meta) = SafeTensors::read_metadata(st_bytes)
        .map_err(|e| Error::checkpoint(path, format!("not a safetensors file: {e}")))?;
    let meta = meta.metadata().clone().unwrap_or_default();
    match meta.get(VERSION_KEY) {
        Some(v) if v == &FORMAT_VERSION.to_string() => {}
        Some(v) => {
            return Err(Error::FormatVersion {
                path: path.into(),
                found: v.clone(),
                supported: FORMAT_VERSION,
                hint: "it was written by a different autodidact release; use that release or re-export the checkpoint",
            })
        }
        None if required => {
            return Err(Error::FormatVersion {
                path: path.into(),
                found: "none".into(),
                supported: FORMAT_VERSION,
                hint: "this file was not written by autodidact",
            })
        }
        None => {}
    }
    Ok(meta)
}

/// Reads tensor `name` into `dst`, checking dtype and shape.
fn read_tensor(
    st: &SafeTensors,
    path: &Path,
    name: &str,
    shape: &[usize],
    dst: &mut [f32],
    hint: &str,
) -> Result<()> {
    let view = st.tensor(name).map_err(|_| Error::TensorMissing {
        path: path.into(),
        name: name.into(),
        expected: shape.to_vec(),
        hint: hint.into(),
    })?;
    if view.shape() != shape {
        return Err(Error::TensorShape {
            path: path.into(),
            name: name.into(),
            found: view.shape().to_vec(),
            expected: shape.to_vec(),
        });
    }
    let data = view.data();
    match view.dtype() {
        Dtype::F32 => {
            for (d, b) in dst.iter_mut().zip(data.chunks_exact(4)) {
                *d = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
        }
        Dtype::BF16 => {
            for (d, b) in dst.iter_mut().zip(data.chunks_exact(2)) {
                *d = half::bf16::from_le_bytes([b[0], b[1]]).to_f32();
            }
        }
        Dtype::F16 => {
            for (d, b) in dst.iter_mut().zip(data.chunks_exact(2)) {
                *d = half::f16::from_le_bytes([b[0], b[1]]).to_f32();
            }
        }
        other => {
            return Err(Error::TensorDtype {
                path: path.into(),
                name: name.into(),
                found: format!("{other:?}"),
            })
        }
    }
    // Weights that are not finite would silently turn every later score into NaN.
    if let Some(first) = dst.iter().position(|v| !v.is_finite()) {
        let count = dst.iter().filter(|v| !v.is_finite()).count();
        return Err(Error::checkpoint(
            path,
            format!(
                "tensor `{name}` holds {count} values that are NaN or infinite (the first at index {first}, {}): the file is corrupt or the training that wrote it diverged",
                dst[first]
            ),
        ));
    }
    Ok(())
}

/// Reads the model config of the checkpoint in `dir`.
pub fn load_config(dir: &Path) -> Result<TransformerConfig> {
    let path = dir.join(CONFIG_FILE);
    let text = std::fs::read_to_string(&path)
        .map_err(|e| autodidact_core::Error::io("reading", &path, e))?;
    let json: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| Error::checkpoint(&path, format!("invalid JSON: {e}")))?;
    TransformerConfig::from_hf_json(&json, &path.display().to_string())
}

/// The safetensors files holding a checkpoint's weights: `model.safetensors`, or the shards
/// that `model.safetensors.index.json` names, in order.
fn weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let index = dir.join(INDEX_FILE);
    if !index.exists() {
        return Ok(vec![dir.join(MODEL_FILE)]);
    }
    let text = std::fs::read_to_string(&index)
        .map_err(|e| autodidact_core::Error::io("reading", &index, e))?;
    let json: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| Error::checkpoint(&index, format!("invalid JSON: {e}")))?;
    let map = json
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| {
            Error::checkpoint(
                &index,
                "has no \"weight_map\" object (tensor name → shard file)",
            )
        })?;
    let mut files: Vec<&str> = Vec::new();
    for (name, file) in map {
        let file = file
            .as_str()
            .filter(|f| !f.is_empty() && !f.contains('/') && !f.contains('\\') && *f != "..");
        let Some(file) = file else {
            return Err(Error::checkpoint(
                &index,
                format!("weight_map[{name:?}] must be the name of a file in the checkpoint directory, not {}", map[name]),
            ));
        };
        if !files.contains(&file) {
            files.push(file);
        }
    }
    files.sort_unstable();
    Ok(files.into_iter().map(|f| dir.join(f)).collect())
}

/// Loads the model (and tokenizer, if present) of the checkpoint in `dir`: a full model, or
/// LoRA adapters merged into the base checkpoint they name.
pub fn load(dir: &Path) -> Result<Checkpoint> {
    if dir.join(ADAPTER_CONFIG_FILE).exists() {
        return load_adapters(dir);
    }
    load_full(dir)
}

fn load_full(dir: &Path) -> Result<Checkpoint> {
    load_full_hashed(dir, None)
}

/// [`load_full`], feeding `hasher` (when given) `config.json` and then every weight file, in
/// the bytes it reads them in: the digest of a [`BaseModel`] without reading the files twice.
fn load_full_hashed(dir: &Path, mut hasher: Option<&mut sha2::Sha256>) -> Result<Checkpoint> {
    use sha2::Digest;
    if let Some(h) = hasher.as_deref_mut() {
        h.update(read(&dir.join(CONFIG_FILE))?);
    }
    let config = load_config(dir)?;
    let layout = crate::params::Layout::new(&config);
    let files = weight_files(dir)?;
    // The weights are allocated before they are read: a config.json that describes more
    // parameters than its weight files can hold (2 bytes each at least; a reward model may
    // lack the LM head) is refused first, so it cannot ask for the memory.
    let on_disk: u64 = files
        .iter()
        .map(|f| std::fs::metadata(f).map_or(0, |m| m.len()))
        .sum();
    let head = if config.tie_embeddings {
        0
    } else {
        config.vocab_size as u64 * config.hidden_size as u64
    };
    if (layout.total as u64).saturating_sub(head) > on_disk / 2 {
        let (path, what) = match files.as_slice() {
            [one] => (one.clone(), format!("holds {on_disk} bytes")),
            _ => (
                dir.to_path_buf(),
                format!("has {} weight files of {on_disk} bytes in all", files.len()),
            ),
        };
        return Err(Error::checkpoint(
            path,
            format!(
                "{what}, too few for the {} parameters config.json describes (2 bytes each at least): is it cut short, or another model's?",
                layout.total
            ),
        ));
    }
    let mut params = vec![0.0f32; layout.total];
    let mut loaded = vec![false; layout.tensors.len()];
    let mut extra: Vec<String> = Vec::new();
    let mut score: Option<Vec<f32>> = None;
    for path in &files {
        let bytes = read(path)?;
        if let Some(h) = hasher.as_deref_mut() {
            h.update(&bytes);
        }
        check_version(&bytes, path, false)?;
        let st = SafeTensors::deserialize(&bytes)
            .map_err(|e| Error::checkpoint(path, format!("not a safetensors file: {e}")))?;
        for name in st.names() {
            match layout.tensors.iter().position(|t| t.name == name) {
                Some(i) => {
                    let t = &layout.tensors[i];
                    read_tensor(&st, path, &t.name, &t.shape, &mut params[t.range()], "")?;
                    loaded[i] = true;
                }
                None if name.ends_with("rotary_emb.inv_freq") => {}
                None if name == SCORE_TENSOR => {
                    let mut head = vec![0.0; config.hidden_size];
                    read_tensor(&st, path, name, &[1, config.hidden_size], &mut head, "")?;
                    score = Some(head);
                }
                None => extra.push(name.to_string()),
            }
        }
    }
    // A reward model saved by transformers has no LM head; it scores without one, so the
    // head stays zero (such a checkpoint samples nothing useful as a policy).
    if score.is_some() {
        if let Some(i) = layout
            .tensors
            .iter()
            .position(|t| t.name == "lm_head.weight")
        {
            loaded[i] = true;
        }
    }
    if let Some(i) = loaded.iter().position(|&l| !l) {
        let t = &layout.tensors[i];
        let hint = if t.name == "lm_head.weight" {
            "; if the output projection shares the embedding, set \"tie_word_embeddings\": true in config.json"
        } else if t.name.ends_with(".bias") {
            "; config.json's model_type \"qwen2\" implies q/k/v biases"
        } else {
            ""
        };
        let path = if files.len() == 1 {
            files[0].clone()
        } else {
            dir.join(INDEX_FILE)
        };
        return Err(Error::TensorMissing {
            path,
            name: t.name.clone(),
            expected: t.shape.clone(),
            hint: hint.into(),
        });
    }
    if !extra.is_empty() {
        extra.sort();
        let hint = if extra.iter().any(|n| n == "lm_head.weight") {
            " (config.json sets tie_word_embeddings: true, so no lm_head.weight is expected)"
        } else {
            ""
        };
        return Err(Error::checkpoint(
            &files[0],
            format!(
                "unexpected tensors {extra:?} for a {}-layer {} model{hint}",
                config.num_layers,
                if config.qkv_bias { "Qwen2" } else { "Llama" }
            ),
        ));
    }
    let tokenizer = ModelTokenizer::load(dir)?;
    if let Some(why) = tokenizer
        .as_ref()
        .and_then(|t| vocab_mismatch(t, config.vocab_size))
    {
        return Err(Error::checkpoint(
            dir.join(TOKENIZER_FILE),
            format!("{why} (config.json)"),
        ));
    }
    Ok(Checkpoint {
        model: Transformer::from_parts(config, params)?,
        tokenizer,
        score,
    })
}

/// Loads the optimizer state saved beside `model` in `dir` into a fresh AdamW with `config`,
/// or returns `None` when the checkpoint has no optimizer state.
pub fn load_optimizer(
    dir: &Path,
    model: &Transformer,
    config: &AdamWConfig,
) -> Result<Option<AdamW>> {
    Ok(load_optimizers(dir, model, config, None)?.map(|(opt, _)| opt))
}

/// [`load_optimizer`], and with `head` (its length) the AdamW state of a reward model's
/// score head from the same file (the head decays as a matrix): one read for both.
pub fn load_optimizers(
    dir: &Path,
    model: &Transformer,
    config: &AdamWConfig,
    head: Option<usize>,
) -> Result<Option<(AdamW, Option<AdamW>)>> {
    let path = dir.join(OPTIMIZER_FILE);
    if !path.exists() {
        return Ok(None);
    }
    let bytes = read(&path)?;
    let meta = check_version(&bytes, &path, true)?;
    let st = SafeTensors::deserialize(&bytes)
        .map_err(|e| Error::checkpoint(&path, format!("not a safetensors file: {e}")))?;
    let step = meta
        .get("step")
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| Error::checkpoint(&path, "metadata has no integer `step`"))?;
    let moments =
        |name: &str, shape: &[usize], opt: &mut AdamW, at: std::ops::Range<usize>, hint: &str| {
            opt.step = step;
            for (suffix, dst) in [("exp_avg", &mut opt.m), ("exp_avg_sq", &mut opt.v)] {
                let key = format!("{name}.{suffix}");
                read_tensor(&st, &path, &key, shape, &mut dst[at.clone()], hint)?;
            }
            Ok::<_, Error>(())
        };
    let mut opt = config.build(model)?;
    for t in model.trainable_tensors() {
        moments(&t.name, &t.shape, &mut opt, t.range(), "")?;
    }
    let head = match head {
        None => None,
        Some(len) => {
            let mut h = config.build_for(len, true)?;
            let hint = "; the optimizer state was saved without a score head: train the reward model from a fresh optimizer";
            moments(SCORE_TENSOR, &[1, len], &mut h, 0..len, hint)?;
            Some(h)
        }
    };
    Ok(Some((opt, head)))
}

/// The checkpoint in `dir` as the base of LoRA adapters: the model, and the [`BaseModel`]
/// that names it (its absolute path and the digest of its `config.json` and weight files,
/// computed from the bytes the load reads).
pub fn load_base(dir: &Path) -> Result<(Checkpoint, BaseModel)> {
    use sha2::{Digest, Sha256};
    let abs =
        std::fs::canonicalize(dir).map_err(|e| autodidact_core::Error::io("resolving", dir, e))?;
    if abs.join(ADAPTER_CONFIG_FILE).exists() {
        return Err(Error::checkpoint(
            abs.join(ADAPTER_CONFIG_FILE),
            "adapters cannot be trained on adapters: export this checkpoint merged (`autodidact export`) and train on that",
        ));
    }
    let mut hasher = Sha256::new();
    let ck = load_full_hashed(&abs, Some(&mut hasher))?;
    let digest: String = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let base = BaseModel {
        dir: abs,
        digest: format!("sha256:{digest}"),
    };
    Ok((ck, base))
}

/// The [`BaseModel`] of the checkpoint in `dir` (see [`load_base`]).
pub fn base_model(dir: &Path) -> Result<BaseModel> {
    Ok(load_base(dir)?.1)
}

/// The LoRA settings of a PEFT `adapter_config.json`, refusing what this build does not
/// implement.
fn read_adapter_config(path: &Path) -> Result<(LoraConfig, PathBuf)> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| autodidact_core::Error::io("reading", path, e))?;
    let json: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| Error::checkpoint(path, format!("invalid JSON: {e}")))?;
    let bad = |why: String| Error::checkpoint(path, why);
    let field = |key: &str| json.get(key).filter(|v| !v.is_null());
    match field("peft_type").and_then(|v| v.as_str()) {
        Some("LORA") => {}
        other => {
            return Err(bad(format!(
                "peft_type is {other:?}; only \"LORA\" adapters load"
            )))
        }
    }
    if let Some(v) = field(VERSION_KEY) {
        if v.as_u64() != Some(FORMAT_VERSION as u64) {
            return Err(Error::FormatVersion {
                path: path.into(),
                found: v.to_string(),
                supported: FORMAT_VERSION,
                hint: "it was written by a different autodidact release; use that release",
            });
        }
    }
    for (key, ok) in [
        ("use_rslora", serde_json::json!(false)),
        ("use_dora", serde_json::json!(false)),
        ("fan_in_fan_out", serde_json::json!(false)),
        ("bias", serde_json::json!("none")),
        ("lora_bias", serde_json::json!(false)),
    ] {
        if let Some(v) = field(key) {
            if v != &ok {
                return Err(bad(format!("{key} is {v}; only {ok} is supported")));
            }
        }
    }
    for key in [
        "modules_to_save",
        "layers_to_transform",
        "layer_replication",
        "trainable_token_indices",
        "rank_pattern",
        "alpha_pattern",
    ] {
        let empty = match field(key) {
            None => true,
            Some(v) => {
                v.as_object().is_some_and(|o| o.is_empty())
                    || v.as_array().is_some_and(|a| a.is_empty())
            }
        };
        if !empty {
            return Err(bad(format!(
                "{key} is set; adapters with per-layer settings or extra trained modules are not supported"
            )));
        }
    }
    let rank = field("r")
        .and_then(|v| v.as_u64())
        .ok_or_else(|| bad("has no integer \"r\" (the rank)".into()))? as usize;
    let alpha = field("lora_alpha")
        .and_then(|v| v.as_f64())
        .ok_or_else(|| bad("has no number \"lora_alpha\"".into()))? as f32;
    let names = field("target_modules")
        .and_then(|v| v.as_array())
        .ok_or_else(|| bad("has no list \"target_modules\"".into()))?;
    let mut target_modules = Vec::new();
    for n in names {
        let m = n.as_str().and_then(LoraModule::from_name).ok_or_else(|| {
            bad(format!(
                "target_modules names {n}; expected some of q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj"
            ))
        })?;
        target_modules.push(m);
    }
    let base = field("base_model_name_or_path")
        .and_then(|v| v.as_str())
        .filter(|s| !s.is_empty())
        .ok_or_else(|| bad("has no \"base_model_name_or_path\": the adapters do not say which checkpoint they belong to".into()))?;
    let config = LoraConfig {
        rank,
        alpha,
        target_modules,
    };
    config.validate().map_err(|e| bad(format!("{e}")))?;
    Ok((config, PathBuf::from(base)))
}

/// Loads LoRA adapters (PEFT layout) and the base checkpoint they name, merged.
fn load_adapters(dir: &Path) -> Result<Checkpoint> {
    let config_path = dir.join(ADAPTER_CONFIG_FILE);
    let (config, base_dir) = read_adapter_config(&config_path)?;
    // A relative base path is read from the adapter directory (autodidact writes absolute ones).
    let base_dir = dir.join(base_dir);
    if !base_dir.join(CONFIG_FILE).exists() {
        return Err(Error::checkpoint(
            &config_path,
            format!(
                "base_model_name_or_path {} is not a checkpoint directory (it has no {CONFIG_FILE}); set it to the directory of the model the adapters were trained on",
                base_dir.display()
            ),
        ));
    }
    let path = dir.join(ADAPTER_FILE);
    let bytes = read(&path)?;
    let meta = check_version(&bytes, &path, false)?;
    let (ck, base) = load_base(&base_dir)?;
    if let Some(recorded) = meta.get(BASE_DIGEST_KEY) {
        if recorded != &base.digest {
            return Err(Error::checkpoint(
                &path,
                format!(
                    "the adapters were trained on a base model with digest {recorded}, but {} now has {}; restore that checkpoint or point base_model_name_or_path in {ADAPTER_CONFIG_FILE} at it",
                    base.dir.display(),
                    base.digest
                ),
            ));
        }
    }
    let mut model = ck.model.with_lora(&config, 0)?;
    let st = SafeTensors::deserialize(&bytes)
        .map_err(|e| Error::checkpoint(&path, format!("not a safetensors file: {e}")))?;
    let lora = model.lora().expect("adapters were just attached");
    let mut values = vec![0.0f32; lora.num_params()];
    for t in lora.tensors() {
        read_tensor(&st, &path, &t.name, &t.shape, &mut values[t.range()], "")?;
    }
    let expected = lora.tensors().len();
    if st.len() != expected {
        let extra: Vec<String> = st
            .names()
            .into_iter()
            .filter(|n| !lora.tensors().iter().any(|t| t.name == *n))
            .map(|n| n.to_string())
            .collect();
        return Err(Error::checkpoint(
            &path,
            format!(
                "unexpected tensors {extra:?} for the adapters {ADAPTER_CONFIG_FILE} describes"
            ),
        ));
    }
    model.set_lora_params(&values)?;
    model.set_lora_base(base);
    let tokenizer = match ModelTokenizer::load(dir)? {
        Some(t) => Some(t),
        None => ck.tokenizer,
    };
    Ok(Checkpoint {
        model,
        tokenizer,
        score: None,
    })
}
