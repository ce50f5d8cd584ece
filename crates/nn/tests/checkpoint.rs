//! Checkpoint round trips (weights, tokenizer, optimizer state) and the errors for bad files.

use autodidact_core::CharTokenizer;
use autodidact_nn::checkpoint::{self, MODEL_FILE};
use autodidact_nn::{
    Activations, AdamWConfig, ForwardOptions, Gradients, TokenBatch, Transformer, TransformerConfig,
};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use std::collections::HashMap;
use std::path::Path;

fn setup() -> (Transformer, CharTokenizer) {
    let tok = CharTokenizer::new("0123456789+=").unwrap();
    let mut cfg = TransformerConfig::tiny(tok.vocab_size());
    cfg.num_layers = 2;
    (cfg.build(9).unwrap(), tok)
}

fn train_step(m: &mut Transformer, opt: &mut autodidact_nn::AdamW, tok: &CharTokenizer) {
    let seqs = vec![
        tok.encode_with_bos("12+34=46").unwrap(),
        tok.encode_with_bos("9+9=18").unwrap(),
    ];
    let b = TokenBatch::from_sequences(&seqs).unwrap();
    let mut act = Activations::new();
    let mut g = Gradients::new(m);
    m.forward(&b, ForwardOptions::default(), &mut act).unwrap();
    let w = vec![0.1; b.batch_size() * b.seq_len()];
    m.backward(&mut act, &w, None, &mut g).unwrap();
    opt.step(m.params_mut(), &g.data, 1e-2).unwrap();
}

#[test]
fn round_trip_resumes_training_exactly() {
    let (mut m, tok) = setup();
    let cfg = AdamWConfig::default();
    let mut opt = cfg.build(&m).unwrap();
    train_step(&mut m, &mut opt, &tok);
    let dir = tempfile::tempdir().unwrap();
    let ck = dir.path().join("r0001");
    checkpoint::save(&ck, &m, Some(&tok.clone().into()), Some(&opt)).unwrap();

    let loaded = checkpoint::load(&ck).unwrap();
    assert_eq!(loaded.model.params(), m.params());
    assert_eq!(loaded.model.config(), m.config());
    assert_eq!(
        loaded
            .tokenizer
            .as_ref()
            .unwrap()
            .as_char()
            .unwrap()
            .alphabet(),
        tok.alphabet()
    );
    let mut m2 = loaded.model;
    let mut opt2 = checkpoint::load_optimizer(&ck, &m2, &cfg)
        .unwrap()
        .expect("optimizer state saved");
    assert_eq!(opt2.steps_taken(), 1);

    // One more step on each: identical, so the moments and step count came back.
    train_step(&mut m, &mut opt, &tok);
    train_step(&mut m2, &mut opt2, &tok);
    assert_eq!(m.params(), m2.params());

    // Saving again over the same directory replaces it and leaves no temporary directory.
    checkpoint::save(&ck, &m, Some(&tok.clone().into()), None).unwrap();
    assert!(checkpoint::load_optimizer(&ck, &m, &cfg).unwrap().is_none());
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("r0001")]);
}

/// Rewrites `model.safetensors` in `dir` through `edit`, which sees (name, dtype, shape, bytes).
fn rewrite(
    dir: &Path,
    meta: Option<HashMap<String, String>>,
    edit: impl Fn(&mut Vec<(String, Dtype, Vec<usize>, Vec<u8>)>),
) {
    let path = dir.join(MODEL_FILE);
    let bytes = std::fs::read(&path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = st
        .tensors()
        .into_iter()
        .map(|(n, v)| (n, v.dtype(), v.shape().to_vec(), v.data().to_vec()))
        .collect();
    edit(&mut tensors);
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .map(|(n, d, s, b)| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    let meta = meta.or_else(|| {
        SafeTensors::read_metadata(&bytes)
            .unwrap()
            .1
            .metadata()
            .clone()
    });
    std::fs::write(&path, safetensors::serialize(views, meta).unwrap()).unwrap();
}

fn saved() -> (tempfile::TempDir, std::path::PathBuf) {
    let (m, tok) = setup();
    let dir = tempfile::tempdir().unwrap();
    let ck = dir.path().join("ck");
    checkpoint::save(&ck, &m, Some(&tok.clone().into()), None).unwrap();
    (dir, ck)
}

fn load_err(ck: &Path) -> String {
    checkpoint::load(ck).unwrap_err().to_string()
}

const Q0: &str = "model.layers.0.self_attn.q_proj.weight";

#[test]
fn wrong_shape_names_the_tensor_and_expected_shape() {
    let (_d, ck) = saved();
    rewrite(&ck, None, |ts| {
        let t = ts.iter_mut().find(|t| t.0 == Q0).unwrap();
        t.2 = vec![32, 128];
    });
    let e = load_err(&ck);
    assert!(
        e.contains(Q0) && e.contains("[32, 128]") && e.contains("expected [64, 64]"),
        "{e}"
    );
}

#[test]
fn issue11_nan_or_inf_weights_are_an_error_naming_the_tensor() {
    for bad in [f32::NAN, f32::INFINITY] {
        let (_d, ck) = saved();
        rewrite(&ck, None, |ts| {
            let t = ts.iter_mut().find(|t| t.0 == Q0).unwrap();
            t.3[12..16].copy_from_slice(&bad.to_le_bytes());
        });
        let e = load_err(&ck);
        assert!(
            e.contains(Q0)
                && e.contains("1 values that are NaN or infinite")
                && e.contains("index 3"),
            "{e}"
        );
    }
}

#[test]
fn wrong_dtype_names_the_tensor() {
    let (_d, ck) = saved();
    rewrite(&ck, None, |ts| {
        let t = ts.iter_mut().find(|t| t.0 == Q0).unwrap();
        t.1 = Dtype::I32;
    });
    let e = load_err(&ck);
    assert!(
        e.contains(Q0) && e.contains("I32") && e.contains("expected F32, BF16 or F16"),
        "{e}"
    );
}

#[test]
fn missing_and_unexpected_tensors_are_named() {
    let (_d, ck) = saved();
    rewrite(&ck, None, |ts| ts.retain(|t| t.0 != Q0));
    let e = load_err(&ck);
    assert!(e.contains(Q0) && e.contains("missing"), "{e}");

    let (_d, ck) = saved();
    rewrite(&ck, None, |ts| {
        let extra = ts[0].clone();
        ts.push(("lm_head.weight".into(), extra.1, extra.2, extra.3));
    });
    let e = load_err(&ck);
    assert!(
        e.contains("lm_head.weight") && e.contains("tie_word_embeddings"),
        "{e}"
    );
}

#[test]
fn newer_format_version_fails_with_a_hint() {
    let (_d, ck) = saved();
    let meta = HashMap::from([
        ("format".to_string(), "pt".to_string()),
        ("autodidact_format_version".to_string(), "2".to_string()),
    ]);
    rewrite(&ck, Some(meta), |_| {});
    let e = load_err(&ck);
    assert!(
        e.contains("format version 2") && e.contains("reads version 1"),
        "{e}"
    );
}

#[test]
fn bad_config_json_names_the_file_and_field() {
    let (_d, ck) = saved();
    let path = ck.join("config.json");
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("\"hidden_act\": \"silu\"", "\"hidden_act\": \"gelu\"");
    std::fs::write(&path, text).unwrap();
    let e = load_err(&ck);
    assert!(e.contains("hidden_act") && e.contains("config.json"), "{e}");

    std::fs::write(&path, "{ not json").unwrap();
    let e = load_err(&ck);
    assert!(
        e.contains("config.json") && e.contains("invalid JSON"),
        "{e}"
    );
}

#[test]
fn truncated_weights_file_is_an_error_not_a_panic() {
    let (_d, ck) = saved();
    let path = ck.join(MODEL_FILE);
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let e = load_err(&ck);
    assert!(e.contains("model.safetensors"), "{e}");
}

/// `transformers` reads a checkpoint written here and computes the same logits.
///
/// The reference logits below were printed by `reference/check_hf_load.py` (transformers 5.24.0,
/// torch 2.15.0) on the checkpoint this test writes; to regenerate:
///   AUTODIDACT_HF_CHECK_DIR=/tmp/hf_check cargo test -p autodidact-nn --test checkpoint transformers
///   python crates/nn/tests/reference/check_hf_load.py /tmp/hf_check
#[test]
fn transformers_reads_our_checkpoint() {
    let tok = CharTokenizer::new("0123456789+=").unwrap();
    let cfg = TransformerConfig {
        vocab_size: tok.vocab_size(),
        hidden_size: 16,
        num_layers: 2,
        num_heads: 2,
        num_kv_heads: 2,
        intermediate_size: 24,
        context_length: 16,
        rope_theta: 10_000.0,
        rope_scaling: None,
        qkv_bias: false,
        rms_norm_eps: 1e-5,
        tie_embeddings: true,
        initializer_range: 0.3,
    };
    let model = cfg.build(2024).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ck = match std::env::var_os("AUTODIDACT_HF_CHECK_DIR") {
        Some(d) => std::path::PathBuf::from(d),
        None => dir.path().join("ck"),
    };
    checkpoint::save(&ck, &model, Some(&tok.clone().into()), None).unwrap();
    let loaded = checkpoint::load(&ck).unwrap();
    let tok = loaded.tokenizer.unwrap();
    let ids = tok.as_char().unwrap().encode_with_bos("12+34=46").unwrap();
    assert_eq!(
        ids, HF_IDS,
        "tokenizer.json encodes as transformers' PreTrainedTokenizerFast does"
    );
    let n = ids.len();
    let batch = TokenBatch::new(ids, vec![0; n], vec![n], n).unwrap();
    let mut act = Activations::new();
    let out = loaded
        .model
        .forward(
            &batch,
            ForwardOptions {
                entropy: false,
                logits: true,
            },
            &mut act,
        )
        .unwrap();
    let logits = out.logits.unwrap();
    if std::env::var_os("AUTODIDACT_HF_CHECK_DIR").is_some() {
        println!("ours: {logits:?}");
    }
    let scale = HF_LOGITS.iter().fold(0.0f32, |m, x| m.max(x.abs()));
    let err = logits
        .iter()
        .zip(HF_LOGITS)
        .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
    assert_eq!(logits.len(), HF_LOGITS.len());
    assert!(
        err <= 1e-5 * scale,
        "max |ours − transformers| = {err:.2e} (scale {scale:.2})"
    );
}

include!("reference/hf_load_values.rs");

/// Issue 14: LoRA adapters save on their own (PEFT layout, optimizer state for the adapters
/// only), load merged into the base they name, resume training exactly, refuse a changed base,
/// and export merged into a full checkpoint.
#[test]
fn issue14_lora_adapters_round_trip_and_export() {
    let (base, tok) = setup();
    let dir = tempfile::tempdir().unwrap();
    let base_dir = dir.path().join("base");
    checkpoint::save(&base_dir, &base, Some(&tok.clone().into()), None).unwrap();
    let lora = autodidact_core::LoraConfig {
        rank: 4,
        alpha: 8.0,
        target_modules: vec![
            autodidact_core::LoraModule::QProj,
            autodidact_core::LoraModule::DownProj,
        ],
    };
    let mut m = checkpoint::load(&base_dir)
        .unwrap()
        .model
        .with_lora(&lora, 3)
        .unwrap();
    m.set_lora_base(checkpoint::base_model(&base_dir).unwrap());
    let cfg = AdamWConfig::default();
    let mut opt = cfg.build(&m).unwrap();
    let adapters = m.lora().unwrap().num_params();
    assert_eq!(Gradients::new(&m).data.len(), adapters);
    let step = |m: &mut Transformer, opt: &mut autodidact_nn::AdamW| {
        let seqs = vec![tok.encode_with_bos("12+34=46").unwrap()];
        let b = TokenBatch::from_sequences(&seqs).unwrap();
        let mut act = Activations::new();
        let mut g = Gradients::new(m);
        m.forward(&b, ForwardOptions::default(), &mut act).unwrap();
        m.backward(&mut act, &vec![0.1; b.seq_len()], None, &mut g)
            .unwrap();
        m.update(opt, &g, 1e-2).unwrap();
    };
    step(&mut m, &mut opt);
    step(&mut m, &mut opt);
    // Only the adapted weights moved.
    let moved: Vec<&str> = m
        .layout()
        .tensors
        .iter()
        .filter(|t| m.params()[t.range()] != base.params()[t.range()])
        .map(|t| t.name.as_str())
        .collect();
    assert_eq!(
        moved,
        [
            "model.layers.0.self_attn.q_proj.weight",
            "model.layers.0.mlp.down_proj.weight",
            "model.layers.1.self_attn.q_proj.weight",
            "model.layers.1.mlp.down_proj.weight"
        ]
    );

    let ck = dir.path().join("r0001");
    checkpoint::save(&ck, &m, Some(&tok.clone().into()), Some(&opt)).unwrap();
    let mut files: Vec<String> = std::fs::read_dir(&ck)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(
        files,
        [
            "adapter_config.json",
            "adapter_model.safetensors",
            "optimizer.safetensors",
            "tokenizer.json"
        ]
    );
    let opt_bytes = std::fs::metadata(ck.join("optimizer.safetensors"))
        .unwrap()
        .len();
    assert!(
        opt_bytes < 2 * 4 * adapters as u64 + 64 * 1024,
        "{opt_bytes}"
    );

    let loaded = checkpoint::load(&ck).unwrap();
    let mut m2 = loaded.model;
    assert_eq!(m2.lora().unwrap().params(), m.lora().unwrap().params());
    for (a, b) in m2.params().iter().zip(m.params()) {
        assert!((a - b).abs() <= 1e-6 * (1.0 + b.abs()), "{a} vs {b}");
    }
    let mut opt2 = checkpoint::load_optimizer(&ck, &m2, &cfg).unwrap().unwrap();
    step(&mut m, &mut opt);
    step(&mut m2, &mut opt2);
    assert_eq!(m2.lora().unwrap().params(), m.lora().unwrap().params());

    // Export: a full checkpoint with the adapters merged in.
    let merged_dir = dir.path().join("merged");
    checkpoint::save(
        &merged_dir,
        &m2.clone().merged(),
        Some(&tok.clone().into()),
        None,
    )
    .unwrap();
    let merged = checkpoint::load(&merged_dir).unwrap().model;
    assert!(merged.lora().is_none());
    assert_eq!(merged.params(), m2.params());

    // A changed base is refused, naming both digests.
    let mut other = base.clone();
    other.params_mut()[0] += 1.0;
    checkpoint::save(&base_dir, &other, Some(&tok.clone().into()), None).unwrap();
    let e = load_err(&ck);
    assert!(
        e.contains("digest") && e.contains("base_model_name_or_path"),
        "{e}"
    );
    // Adapters on adapters are refused.
    let e = checkpoint::base_model(&ck).unwrap_err().to_string();
    assert!(e.contains("export"), "{e}");
    // Unsupported PEFT settings are named.
    let cfg_path = ck.join("adapter_config.json");
    let text = std::fs::read_to_string(&cfg_path).unwrap();
    std::fs::write(
        &cfg_path,
        text.replace("\"use_dora\": false", "\"use_dora\": true"),
    )
    .unwrap();
    let e = load_err(&ck);
    assert!(e.contains("use_dora"), "{e}");
}

/// Issue 18: a reward model saves in the `LlamaForSequenceClassification` layout (the score
/// head as `score.weight`, its moments beside the model's), loads back to the same scores, and
/// transformers' `AutoModelForSequenceClassification` reads it to the scores below, printed by
/// `reference/check_hf_reward_load.py` (transformers 5.24.0, torch 2.15.0) on the checkpoint
/// this test writes; to regenerate:
///   AUTODIDACT_HF_CHECK_DIR=/tmp/hf_rm cargo test -p autodidact-nn --test checkpoint issue18
///   python crates/nn/tests/reference/check_hf_reward_load.py /tmp/hf_rm
#[test]
fn issue18_transformers_reads_our_reward_model() {
    use autodidact_core::{Example, OptimizerSettings};
    use autodidact_nn::{NativePolicy, NativeRewardModel};
    let tok = CharTokenizer::new("0123456789+=").unwrap();
    let mut cfg = TransformerConfig::tiny(tok.vocab_size());
    cfg.num_layers = 2;
    cfg.tie_embeddings = false;
    cfg.initializer_range = 0.3;
    let policy = NativePolicy::new(cfg.build(2025).unwrap(), tok).unwrap();
    let mut rm = NativeRewardModel::new(policy, 7);
    let dir = tempfile::tempdir().unwrap();
    let ck = match std::env::var_os("AUTODIDACT_HF_CHECK_DIR") {
        Some(d) => std::path::PathBuf::from(d),
        None => dir.path().join("rm"),
    };
    let batch = [Example::new("12+34=", "46"), Example::new("9+9=", "18")];
    let settings = OptimizerSettings {
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.01,
    };
    rm.reset_optimizer(&settings).unwrap();
    let step = |rm: &mut NativeRewardModel| {
        rm.scores(&batch).unwrap();
        rm.backward(&[1.0, -1.0]).unwrap();
        rm.step(1e-2, 1.0).unwrap();
    };
    step(&mut rm);
    rm.save(&ck).unwrap();
    let scores = rm.scores(&batch).unwrap();
    if std::env::var_os("AUTODIDACT_HF_CHECK_DIR").is_some() {
        println!("ours: {scores:?}");
    }
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(ck.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["architectures"][0], "LlamaForSequenceClassification");
    let err = scores
        .iter()
        .zip(HF_REWARD_SCORES)
        .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(
        err <= 1e-5,
        "max |ours − transformers| = {err:.2e}: {scores:?}"
    );

    // Loaded back, it scores the same, and its optimizer continues exactly: one more step
    // after the load equals one more step without it.
    let mut back = NativeRewardModel::load(&ck, None).unwrap();
    assert_eq!(back.scores(&batch).unwrap(), scores);
    assert!(back.restore_optimizer(&ck, &settings).unwrap());
    step(&mut back);
    step(&mut rm);
    assert_eq!(back.scores(&batch).unwrap(), rm.scores(&batch).unwrap());
    assert_eq!(back.head(), rm.head());

    // A policy checkpoint has no head: the load draws a fresh one from the seed, and the
    // policy's optimizer state alone does not restore a reward model's.
    let plain = dir.path().join("plain");
    use autodidact_core::TrainablePolicy;
    let mut p = NativePolicy::load(&ck).unwrap();
    p.reset_optimizer(&settings).unwrap();
    p.save(&plain).unwrap();
    let (a, b) = (
        NativeRewardModel::load(&plain, Some(1)).unwrap(),
        NativeRewardModel::load(&plain, Some(2)).unwrap(),
    );
    assert_ne!(a.head(), b.head());
    assert_eq!(
        a.head(),
        NativeRewardModel::load(&plain, Some(1)).unwrap().head()
    );
    let mut a = a;
    let e = a
        .restore_optimizer(&plain, &settings)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("score.weight.exp_avg") && e.contains("without a score head"),
        "{e}"
    );
}

include!("reference/hf_reward_values.rs");
