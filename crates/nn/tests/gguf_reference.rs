//! Issue 14: `autodidact import` of a GGUF against transformers and gguf-py.
//!
//! The fixture `fixtures/tiny_llama.gguf` (a 3-layer llama with a trained byte-level BPE, the
//! `smollm` pre-tokenizer and SmolLM2's chat template; its tensors use every ggml type the
//! importer dequantizes) and its reference values come from `reference/make_gguf_reference.py`;
//! the SmolLM2 values from `reference/make_smollm2_reference.py`. Both are run by hand; CI uses
//! the checked-in values and never runs Python. To regenerate:
//!
//! ```sh
//! python crates/nn/tests/reference/make_gguf_reference.py
//! python crates/nn/tests/reference/make_smollm2_reference.py path/to/SmolLM2-135M-Instruct.Q4_1.gguf
//! cargo test --release -p autodidact-nn --test gguf_reference
//! # the SmolLM2 comparison runs only with an imported SmolLM2:
//! ./target/release/autodidact import path/to/SmolLM2-135M-Instruct.Q4_1.gguf --out /tmp/smollm2
//! AUTODIDACT_SMOLLM2_DIR=/tmp/smollm2 cargo test --release -p autodidact-nn --test gguf_reference smollm2 -- --nocapture
//! ```
//!
//! Checked: the dequantized tensors equal gguf-py's bit for bit (random blocks of every type,
//! and every tensor of the fixture); the imported weights equal those transformers loads (after
//! both undo llama.cpp's q/k permutation) bit for bit; logits equal transformers' to 1e-4
//! relative (max |ours − theirs| / max |theirs|); tokenization of a few hundred edge cases (with
//! and without special tokens), decoding, and the rendered chat template (text and ids) equal
//! transformers'. Where transformers' stock GGUF tokenizer ignores the `smollm` pre-tokenizer
//! (it does not split digits one by one), the reference is the tokenizer the vocabulary was
//! trained with; see the scripts.

use autodidact_core::types::ChatMessage;
use autodidact_core::HfTokenizer;
use autodidact_nn::gguf::{self, GgmlType, Gguf};
use autodidact_nn::import::{import_gguf, WeightDtype};
use autodidact_nn::{checkpoint, Activations, ForwardOptions, TokenBatch, Transformer};
use safetensors::tensor::{Dtype, SafeTensors};
use serde_json::Value;
use std::path::{Path, PathBuf};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn read_json(name: &str) -> Value {
    let text = std::fs::read_to_string(fixture(name)).unwrap();
    serde_json::from_str(&text).unwrap()
}

struct Reference {
    bytes: Vec<u8>,
}

impl Reference {
    fn open(name: &str) -> Self {
        Self {
            bytes: std::fs::read(fixture(name)).unwrap(),
        }
    }
    fn has(&self, name: &str) -> bool {
        SafeTensors::deserialize(&self.bytes)
            .unwrap()
            .tensor(name)
            .is_ok()
    }
    fn raw(&self, name: &str, dtype: Dtype) -> Vec<u8> {
        let st = SafeTensors::deserialize(&self.bytes).unwrap();
        let t = st
            .tensor(name)
            .unwrap_or_else(|_| panic!("reference has no {name}"));
        assert_eq!(t.dtype(), dtype, "{name}");
        t.data().to_vec()
    }
    fn f32(&self, name: &str) -> Vec<f32> {
        self.raw(name, Dtype::F32)
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect()
    }
    fn i64(&self, name: &str) -> Vec<i64> {
        self.raw(name, Dtype::I64)
            .chunks_exact(8)
            .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
            .collect()
    }
    fn ids(&self, name: &str) -> Vec<u32> {
        self.i64(name).into_iter().map(|x| x as u32).collect()
    }
}

/// max |ours − theirs| / max |theirs|.
fn rel_err(ours: &[f32], theirs: &[f32]) -> f32 {
    assert_eq!(ours.len(), theirs.len(), "length");
    let scale = theirs.iter().fold(0.0f32, |m, x| m.max(x.abs()));
    let err = ours
        .iter()
        .zip(theirs)
        .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(scale > 0.0, "reference is all zeros");
    err / scale
}

/// The scripts' `gguf_cases.checksum`: Σ bits(x_i)·(i+1) mod 2⁶⁴.
fn checksum(values: &[f32]) -> u64 {
    values.iter().enumerate().fold(0u64, |acc, (i, v)| {
        acc.wrapping_add((v.to_bits() as u64).wrapping_mul(i as u64 + 1))
    })
}

/// Checks `values` against an entry with `checksum`, `sample_index` and `sample`; the error
/// names the first differing samples.
fn check_values(what: &str, values: &[f32], entry: &Value) -> std::result::Result<(), String> {
    let idx: Vec<usize> = entry["sample_index"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as usize)
        .collect();
    let sample: Vec<f32> = entry["sample"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect();
    let mut bad = Vec::new();
    for (&i, &want) in idx.iter().zip(&sample) {
        if i >= values.len() || values[i] != want {
            bad.push(format!("[{i}] ours {:?} theirs {want:?}", values.get(i)));
        }
    }
    let want: u64 = entry["checksum"].as_str().unwrap().parse().unwrap();
    let got = checksum(values);
    if bad.is_empty() && got == want {
        return Ok(());
    }
    Err(format!(
        "{what}: {} values, checksum {got} (reference {want}), {} of {} samples differ: {}",
        values.len(),
        bad.len(),
        idx.len(),
        bad.iter().take(6).cloned().collect::<Vec<_>>().join(", ")
    ))
}

fn ggml_type(name: &str) -> GgmlType {
    use GgmlType::*;
    match name {
        "F32" => F32,
        "F16" => F16,
        "BF16" => BF16,
        "Q4_0" => Q4_0,
        "Q4_1" => Q4_1,
        "Q5_0" => Q5_0,
        "Q5_1" => Q5_1,
        "Q8_0" => Q8_0,
        "Q4_K" => Q4K,
        "Q5_K" => Q5K,
        "Q6_K" => Q6K,
        other => panic!("unexpected ggml type {other}"),
    }
}

const TYPES: [&str; 11] = [
    "F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q4_K", "Q5_K", "Q6_K",
];

/// The fixture imported (f32) into a fresh temporary directory.
fn imported() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("tiny");
    let imp = import_gguf(&fixture("tiny_llama.gguf"), &out, WeightDtype::F32).unwrap();
    assert_eq!(imp.architecture, "llama");
    assert_eq!(imp.vocab_size, 352);
    (tmp, out)
}

/// Full logits `(T, V)` of one sequence.
fn logits(model: &Transformer, ids: &[u32]) -> Vec<f32> {
    let t = ids.len();
    let batch = TokenBatch::new(ids.to_vec(), ids.to_vec(), vec![t], t).unwrap();
    let mut act = Activations::new();
    let out = model
        .forward(
            &batch,
            ForwardOptions {
                entropy: false,
                logits: true,
            },
            &mut act,
        )
        .unwrap();
    out.logits.unwrap()
}

#[test]
fn issue14_dequantizes_random_blocks_like_gguf_py() {
    let r = Reference::open("tiny_llama_reference.safetensors");
    for name in TYPES {
        let bytes = r.raw(&format!("blocks.{name}"), Dtype::U8);
        let want = r.f32(&format!("values.{name}"));
        let mut got = vec![f32::NAN; want.len()];
        gguf::dequantize(ggml_type(name), &bytes, &mut got).unwrap();
        let diffs: Vec<String> = got
            .iter()
            .zip(&want)
            .enumerate()
            .filter(|(_, (a, b))| a.to_bits() != b.to_bits())
            .map(|(i, (a, b))| format!("[{i}] ours {a:?} gguf-py {b:?}"))
            .collect();
        println!(
            "{name:5} {} bytes, {} values: {} differ",
            bytes.len(),
            want.len(),
            diffs.len()
        );
        assert!(
            diffs.is_empty(),
            "{name}: {}",
            diffs[..diffs.len().min(8)].join(", ")
        );
    }
}

#[test]
fn issue14_dequantizes_fixture_tensors_like_gguf_py() {
    let reference = read_json("tiny_llama_reference.json");
    let g = Gguf::open(&fixture("tiny_llama.gguf")).unwrap();
    let tensors = reference["tensors"].as_object().unwrap();
    assert_eq!(tensors.len(), g.tensors.len());
    let mut failures = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for (name, entry) in tensors {
        let info = g.tensor(name).unwrap_or_else(|| panic!("no tensor {name}"));
        let kind = entry["type"].as_str().unwrap();
        assert_eq!(info.kind, ggml_type(kind), "{name}");
        let shape: Vec<usize> = entry["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as usize)
            .collect();
        assert_eq!(info.torch_shape(), shape, "{name}");
        seen.insert(kind);
        if let Err(e) = check_values(
            &format!("{name} ({kind})"),
            &g.dequantize(info).unwrap(),
            entry,
        ) {
            failures.push(e);
        }
    }
    println!("{} tensors of types {seen:?}", tensors.len());
    assert_eq!(seen.len(), TYPES.len(), "the fixture should use every type");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn issue14_gguf_import_weights_match_transformers() {
    let reference = read_json("tiny_llama_reference.json");
    let (_tmp, dir) = imported();
    let model = checkpoint::load(&dir).unwrap().model;
    let params = reference["params"].as_object().unwrap();
    assert_eq!(params.len(), model.layout().tensors.len());
    let mut failures = Vec::new();
    for (name, entry) in params {
        let t = model
            .layout()
            .tensors
            .iter()
            .find(|t| &t.name == name)
            .unwrap_or_else(|| panic!("the imported model has no {name}"));
        if let Err(e) = check_values(name, &model.params()[t.range()], entry) {
            failures.push(e);
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn issue14_gguf_logits_match_transformers() {
    let r = Reference::open("tiny_llama_reference.safetensors");
    let (_tmp, dir) = imported();
    let model = checkpoint::load(&dir).unwrap().model;
    let mut worst = 0.0f32;
    for i in 0..3 {
        let ids = r.ids(&format!("ids.{i}"));
        let want = r.f32(&format!("logits.{i}"));
        let got = logits(&model, &ids);
        let rel = rel_err(&got, &want);
        println!(
            "prompt {i}: {} tokens × {} vocab, rel err {rel:.2e}",
            ids.len(),
            want.len() / ids.len()
        );
        worst = worst.max(rel);
    }
    println!("max relative error {worst:.2e}");
    assert!(worst <= 1e-4, "relative error {worst:.2e} > 1e-4");
}

/// Every tokenization case and chat of `reference` against `tok`; returns the failures.
fn check_tokenizer(tok: &HfTokenizer, reference: &Value) -> Vec<String> {
    let ids = |v: &Value| -> Vec<u32> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect()
    };
    let mut failures = Vec::new();
    let cases = reference["tokens"].as_array().unwrap();
    let mut stock_differs = 0;
    for case in cases {
        let text = case["text"].as_str().unwrap();
        let (want, want_special) = (ids(&case["ids"]), ids(&case["ids_special"]));
        stock_differs += case.get("stock_transformers_ids").is_some() as usize;
        let got = tok.encode(text).unwrap();
        if got != want {
            failures.push(format!(
                "encode {text:?}: ours {got:?}, transformers {want:?}"
            ));
        }
        let got = tok.encode_prompt(text).unwrap();
        if got != want_special {
            failures.push(format!(
                "encode_prompt {text:?}: ours {got:?}, transformers {want_special:?}"
            ));
        }
        let decoded = tok.decode(&want_special).unwrap();
        let want_decoded = case["decoded"].as_str().unwrap();
        if decoded != want_decoded {
            failures.push(format!(
                "decode {want_special:?}: ours {decoded:?}, transformers {want_decoded:?}"
            ));
        }
    }
    let chats = reference["chats"].as_array().unwrap();
    for chat in chats {
        let messages: Vec<ChatMessage> = chat["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| ChatMessage {
                role: m["role"].as_str().unwrap().into(),
                content: m["content"].as_str().unwrap().into(),
            })
            .collect();
        let want = chat["text"].as_str().unwrap();
        let text = tok.chat_prompt(&messages).unwrap();
        if text != want {
            failures.push(format!(
                "chat {messages:?}: ours {text:?}, transformers {want:?}"
            ));
        }
        let got = tok.encode(&text).unwrap();
        if got != ids(&chat["ids"]) {
            failures.push(format!(
                "chat ids {text:?}: ours {got:?}, transformers {:?}",
                ids(&chat["ids"])
            ));
        }
    }
    println!(
        "{} strings (stock transformers' GGUF tokenizer differs on {stock_differs}), {} chats: {} failures",
        cases.len(),
        chats.len(),
        failures.len()
    );
    failures
}

#[test]
fn issue14_gguf_tokenizer_and_chat_template_match_transformers() {
    let reference = read_json("tiny_llama_reference.json");
    let (_tmp, dir) = imported();
    let tok = HfTokenizer::load(&dir).unwrap();
    let failures = check_tokenizer(&tok, &reference);
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
    // The policy's tokenizer (the wrapper every backend holds) says it has a chat template,
    // so a self-judge asks in it (the wrapper once answered with the trait's default).
    let model_tok = autodidact_core::ModelTokenizer::load(&dir)
        .unwrap()
        .unwrap();
    assert!(autodidact_core::Tokenizer::has_chat_template(&model_tok));
}

/// Runs only when `AUTODIDACT_SMOLLM2_DIR` names an `autodidact import` of
/// SmolLM2-135M-Instruct.Q4_1.gguf (the file `smollm2_reference.json` names by its SHA-256).
#[test]
fn issue14_smollm2_matches_transformers() {
    let Some(dir) = std::env::var_os("AUTODIDACT_SMOLLM2_DIR") else {
        println!("skipped: set AUTODIDACT_SMOLLM2_DIR to an imported SmolLM2-135M-Instruct");
        return;
    };
    let dir = Path::new(&dir);
    let reference = read_json("smollm2_reference.json");
    let tok = HfTokenizer::load(dir).unwrap();
    let failures = check_tokenizer(&tok, &reference);

    let r = Reference::open("smollm2_reference.safetensors");
    let model = checkpoint::load(dir).unwrap().model;
    let vocab = model.config().vocab_size;
    let cols: Vec<usize> = r.i64("vocab_ids").iter().map(|&v| v as usize).collect();
    let mut worst = 0.0f32;
    let mut argmax_failures = Vec::new();
    for i in (0..).take_while(|i| r.has(&format!("ids.{i}"))) {
        let ids = r.ids(&format!("ids.{i}"));
        let full = logits(&model, &ids);
        let picked: Vec<f32> = full
            .chunks_exact(vocab)
            .flat_map(|row| cols.iter().map(move |&c| row[c]))
            .collect();
        let want = r.f32(&format!("logits.{i}"));
        let rel = rel_err(&picked, &want);
        let scale = want.iter().fold(0.0f32, |m, x| m.max(x.abs()));
        let (lse_want, argmax_want, gap) = (
            r.f32(&format!("lse.{i}")),
            r.i64(&format!("argmax.{i}")),
            r.f32(&format!("gap.{i}")),
        );
        let mut lse_err = 0.0f32;
        for (p, row) in full.chunks_exact(vocab).enumerate() {
            let m = row.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
            let lse = m as f64
                + row
                    .iter()
                    .map(|&x| ((x - m) as f64).exp())
                    .sum::<f64>()
                    .ln();
            lse_err = lse_err.max((lse as f32 - lse_want[p]).abs() / scale);
            let argmax = row
                .iter()
                .enumerate()
                .fold(
                    (0, f32::NEG_INFINITY),
                    |b, (j, &x)| if x > b.1 { (j, x) } else { b },
                )
                .0;
            // Only a clear winner has to agree: ties within the tolerance may go either way.
            if argmax as i64 != argmax_want[p] && gap[p] > 2e-4 * scale {
                argmax_failures.push(format!(
                    "prompt {i} position {p}: argmax ours {argmax}, transformers {} (gap {})",
                    argmax_want[p], gap[p]
                ));
            }
        }
        println!(
            "prompt {i}: {} tokens, logits rel err {rel:.2e} (max |logit| {scale:.1}), log-sum-exp rel err {lse_err:.2e}",
            ids.len()
        );
        worst = worst.max(rel).max(lse_err);
    }
    println!("SmolLM2: max relative error {worst:.2e}");
    assert!(
        failures.is_empty(),
        "{} tokenizer mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(argmax_failures.is_empty(), "{}", argmax_failures.join("\n"));
    assert!(worst <= 1e-4, "relative error {worst:.2e} > 1e-4");
}
