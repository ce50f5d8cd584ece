//! Finite-difference check of the hand-written backward pass, every element of every
//! parameter tensor, on a very small model, for the full objective the trainer supports:
//! `loss = −Σ w_t·log p(y_t) − Σ c_t·H_t` over a padded batch with rows of different lengths.

use autodidact_nn::{
    Activations, ForwardOptions, Gradients, Rng, TokenBatch, Transformer, TransformerConfig,
};

fn tiny_config(tie: bool) -> TransformerConfig {
    TransformerConfig {
        vocab_size: 7,
        hidden_size: 8,
        num_layers: 2,
        num_heads: 2,
        num_kv_heads: 2,
        intermediate_size: 12,
        context_length: 8,
        rope_theta: 10_000.0,
        rope_scaling: None,
        qkv_bias: false,
        rms_norm_eps: 1e-5,
        tie_embeddings: tie,
        // Large weights so every path (attention, gates, norms) carries a sizeable gradient.
        initializer_range: 0.5,
    }
}

fn batch(rng: &mut Rng, v: u64) -> TokenBatch {
    let seqs: Vec<Vec<u32>> = [7usize, 4, 6]
        .iter()
        .map(|&n| (0..n).map(|_| rng.below(v) as u32).collect())
        .collect();
    TokenBatch::from_sequences(&seqs).unwrap()
}

fn loss(model: &Transformer, b: &TokenBatch, w: &[f32], c: &[f32], act: &mut Activations) -> f64 {
    let out = model
        .forward(
            b,
            ForwardOptions {
                entropy: true,
                logits: false,
            },
            act,
        )
        .unwrap();
    let ent = out.entropy.unwrap();
    let mut l = 0.0f64;
    for i in 0..w.len() {
        l -= w[i] as f64 * out.logprobs[i] as f64 + c[i] as f64 * ent[i] as f64;
    }
    l
}

/// Central differences of every element of `tensors` against `grads` (same offsets):
/// `loss_at(i, d)` is the loss with element i moved by d (and put back). Fails on a tensor whose
/// gradient is (near) zero, which would make the check vacuous, or that disagrees by 1% of its
/// largest gradient.
fn check_tensors(
    tensors: &[autodidact_nn::params::TensorInfo],
    grads: &[f32],
    h: f32,
    mut loss_at: impl FnMut(usize, f32) -> f64,
) {
    for t in tensors {
        let (mut max_err, mut max_grad) = (0.0f64, 0.0f64);
        for i in t.range() {
            let fd = (loss_at(i, h) - loss_at(i, -h)) / (2.0 * h as f64);
            max_err = max_err.max((fd - grads[i] as f64).abs());
            max_grad = max_grad.max(grads[i].abs() as f64);
        }
        let rel = max_err / max_grad.max(1e-3);
        println!(
            "{:65} max |grad| {max_grad:.4e}  max |fd − grad| {max_err:.2e}  rel {rel:.2e}",
            t.name
        );
        assert!(
            max_grad > 1e-3,
            "{}: gradient is (near) zero, the check would be vacuous",
            t.name
        );
        assert!(
            rel < 1e-2,
            "{}: finite differences disagree with backward (rel {rel:.2e})",
            t.name
        );
    }
}

fn check(tie: bool) {
    check_config(tiny_config(tie));
}

fn check_config(cfg: TransformerConfig) {
    let mut model = cfg.build(3).unwrap();
    // Biases start at zero; give them values so their effect on every path is tested too.
    let mut brng = Rng::new(5);
    for t in model.layout().tensors.clone() {
        if t.kind == autodidact_nn::TensorKind::Bias {
            for x in &mut model.params_mut()[t.range()] {
                *x = brng.normal() * 0.5;
            }
        }
    }
    let mut rng = Rng::new(11);
    let b = batch(&mut rng, cfg.vocab_size as u64);
    let n = b.batch_size() * b.seq_len();
    let w: Vec<f32> = (0..n).map(|_| rng.uniform() * 2.0 - 1.0).collect();
    let c: Vec<f32> = (0..n).map(|_| rng.uniform() - 0.5).collect();

    let mut act = Activations::new();
    let mut grads = Gradients::new(&model);
    loss(&model, &b, &w, &c, &mut act);
    model.backward(&mut act, &w, Some(&c), &mut grads).unwrap();

    let tensors = model.layout().tensors.clone();
    check_tensors(&tensors, &grads.data, 1e-2, |i, d| {
        let orig = model.params()[i];
        model.params_mut()[i] = orig + d;
        let l = loss(&model, &b, &w, &c, &mut act);
        model.params_mut()[i] = orig;
        l
    });
}

#[test]
fn backward_matches_finite_differences_tied() {
    check(true);
}

#[test]
fn backward_matches_finite_differences_untied() {
    check(false);
}

/// Issue 14: grouped-query attention (4 query heads, 2 key/value heads), q/k/v biases and
/// Llama-3 rope scaling.
#[test]
fn issue14_backward_matches_finite_differences_gqa_bias_rope_scaling() {
    check_config(TransformerConfig {
        hidden_size: 16,
        num_heads: 4,
        num_kv_heads: 2,
        qkv_bias: true,
        rope_scaling: Some(autodidact_nn::RopeScaling::Llama3 {
            factor: 4.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 4,
        }),
        ..tiny_config(false)
    });
}

/// Gradients of two micro-batches accumulated equal the gradient of their union.
#[test]
fn gradient_accumulation_equals_full_batch() {
    let cfg = tiny_config(true);
    let model = cfg.build(5).unwrap();
    let mut rng = Rng::new(2);
    let seqs: Vec<Vec<u32>> = [6usize, 3, 8, 5]
        .iter()
        .map(|&n| (0..n).map(|_| rng.below(7) as u32).collect())
        .collect();
    let mut act = Activations::new();
    let full = TokenBatch::from_sequences(&seqs).unwrap();
    let mut g_full = Gradients::new(&model);
    model
        .forward(&full, ForwardOptions::default(), &mut act)
        .unwrap();
    model
        .backward(
            &mut act,
            &vec![1.0; full.batch_size() * full.seq_len()],
            None,
            &mut g_full,
        )
        .unwrap();

    let mut g_acc = Gradients::new(&model);
    for part in seqs.chunks(2) {
        let b = TokenBatch::from_sequences(part).unwrap();
        model
            .forward(&b, ForwardOptions::default(), &mut act)
            .unwrap();
        model
            .backward(
                &mut act,
                &vec![1.0; b.batch_size() * b.seq_len()],
                None,
                &mut g_acc,
            )
            .unwrap();
    }
    let scale = g_full.global_norm();
    for (a, b) in g_full.data.iter().zip(&g_acc.data) {
        assert!((a - b).abs() <= 1e-5 * scale, "{a} vs {b}");
    }
}

/// A row's outputs do not depend on the other rows of its batch or on padding (to float rounding).
#[test]
fn rows_are_independent_of_their_batch() {
    let cfg = tiny_config(false);
    let model = cfg.build(8).unwrap();
    let seqs = vec![
        vec![1u32, 2, 3, 4, 5, 6],
        vec![6, 5, 4],
        vec![0, 1, 2, 3, 4, 5, 6, 0],
    ];
    let mut act = Activations::new();
    let all = model
        .forward(
            &TokenBatch::from_sequences(&seqs).unwrap(),
            ForwardOptions::default(),
            &mut act,
        )
        .unwrap();
    let t = 7;
    for (b, s) in seqs.iter().enumerate() {
        let one = model
            .forward(
                &TokenBatch::from_sequences(std::slice::from_ref(s)).unwrap(),
                ForwardOptions::default(),
                &mut act,
            )
            .unwrap();
        for i in 0..s.len() - 1 {
            let (x, y) = (one.logprobs[i], all.logprobs[b * t + i]);
            // Not bit-exact: the GEMM kernels sum in an order that can depend on the row count.
            assert!(
                (x - y).abs() <= 1e-5 * x.abs().max(1.0),
                "row {b} position {i}: {x} alone vs {y} in the batch"
            );
        }
        for i in s.len() - 1..t {
            assert_eq!(all.logprobs[b * t + i], 0.0, "padding output must be zero");
        }
    }
}

#[test]
fn backward_on_another_model_shape_is_an_error() {
    let a = tiny_config(true).build(0).unwrap();
    let mut cfg = tiny_config(true);
    cfg.hidden_size = 16;
    let b = cfg.build(0).unwrap();
    let batch = TokenBatch::from_sequences(&[vec![1u32, 2, 3]]).unwrap();
    let mut act = Activations::new();
    a.forward(&batch, ForwardOptions::default(), &mut act)
        .unwrap();
    let mut g = Gradients::new(&b);
    let e = b
        .backward(&mut act, &[1.0, 1.0], None, &mut g)
        .unwrap_err()
        .to_string();
    assert!(e.contains("different config"), "{e}");
}

#[test]
fn backward_without_forward_is_an_error() {
    let model = tiny_config(true).build(0).unwrap();
    let mut act = Activations::new();
    let mut g = Gradients::new(&model);
    let e = model
        .backward(&mut act, &[], None, &mut g)
        .unwrap_err()
        .to_string();
    assert!(e.contains("without a cached forward"), "{e}");
}

/// Regression for the sharded path: with enough rows, a batch is split across worker threads
/// (single-threaded kernels per shard, per-shard gradient buffers summed). Outputs and gradients
/// must equal those of one shard with multi-threaded kernels (to float rounding).
#[test]
fn sharded_batch_matches_single_shard() {
    let cfg = tiny_config(false);
    let model = cfg.build(4).unwrap();
    let mut rng = Rng::new(21);
    let seqs: Vec<Vec<u32>> = (0..9)
        .map(|_| {
            (0..2 + rng.below(7) as usize)
                .map(|_| rng.below(7) as u32)
                .collect()
        })
        .collect();
    let b = TokenBatch::from_sequences(&seqs).unwrap();
    let n = b.batch_size() * b.seq_len();
    let w: Vec<f32> = (0..n).map(|_| rng.uniform() - 0.5).collect();
    let c: Vec<f32> = (0..n).map(|_| rng.uniform() - 0.5).collect();
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            let mut act = Activations::new();
            let mut g = Gradients::new(&model);
            let opts = ForwardOptions {
                entropy: true,
                logits: true,
            };
            let out = model.forward(&b, opts, &mut act).unwrap();
            model.backward(&mut act, &w, Some(&c), &mut g).unwrap();
            // Accumulation into a non-zero buffer must add, not overwrite.
            model.backward(&mut act, &w, Some(&c), &mut g).unwrap();
            (out, g)
        })
    };
    let (one, g_one) = run(1); // one thread: one shard
    let (four, g_four) = run(4); // 9 rows ≥ 2 × 4 threads: four shards
    let close = |a: &[f32], b: &[f32], what: &str| {
        let scale = b.iter().fold(0.0f32, |m, x| m.max(x.abs()));
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() <= 1e-5 * scale, "{what}: {x} vs {y}");
        }
    };
    close(&four.logprobs, &one.logprobs, "logprobs");
    close(
        four.logits.as_ref().unwrap(),
        one.logits.as_ref().unwrap(),
        "logits",
    );
    close(
        four.entropy.as_ref().unwrap(),
        one.entropy.as_ref().unwrap(),
        "entropy",
    );
    close(&g_four.data, &g_one.data, "gradients");
}

/// Issue 14: LoRA adapters on every projection of a GQA model with biases. The adapters'
/// gradients (and only theirs: every other weight is frozen) match finite differences taken
/// through the merged weights.
#[test]
fn issue14_lora_backward_matches_finite_differences() {
    let cfg = TransformerConfig {
        hidden_size: 16,
        num_heads: 4,
        num_kv_heads: 2,
        qkv_bias: true,
        ..tiny_config(false)
    };
    let lora = autodidact_core::LoraConfig {
        rank: 2,
        alpha: 3.0,
        ..Default::default()
    };
    let mut model = cfg.build(3).unwrap().with_lora(&lora, 9).unwrap();
    // B starts at zero, where A's gradient vanishes: give B values so both are tested.
    let mut vals = model.lora().unwrap().params().to_vec();
    let mut brng = Rng::new(4);
    for t in model.lora().unwrap().tensors().to_vec() {
        if t.name.ends_with("lora_B.weight") {
            vals[t.range()]
                .iter_mut()
                .for_each(|x| *x = brng.normal() * 0.5);
        }
    }
    model.set_lora_params(&vals).unwrap();
    let mut rng = Rng::new(11);
    let b = batch(&mut rng, cfg.vocab_size as u64);
    let n = b.batch_size() * b.seq_len();
    let w: Vec<f32> = (0..n).map(|_| rng.uniform() * 2.0 - 1.0).collect();
    let c: Vec<f32> = (0..n).map(|_| rng.uniform() - 0.5).collect();

    let mut act = Activations::new();
    let mut grads = Gradients::new(&model);
    assert_eq!(grads.data.len(), vals.len());
    loss(&model, &b, &w, &c, &mut act);
    model.backward(&mut act, &w, Some(&c), &mut grads).unwrap();

    // Smaller than the base check's step: the loss is quadratic in (A, B) through B·A, and at
    // 1e-2 the central difference's truncation error reaches 1e-2 (it falls as h², checked).
    let tensors = model.lora().unwrap().tensors().to_vec();
    assert_eq!(tensors.len(), 2 * 7 * cfg.num_layers);
    check_tensors(&tensors, &grads.data, 3e-3, |i, d| {
        let orig = vals[i];
        vals[i] = orig + d;
        model.set_lora_params(&vals).unwrap();
        let l = loss(&model, &b, &w, &c, &mut act);
        vals[i] = orig;
        l
    });
}

/// Issue 14: recomputing each layer in the backward pass (activation checkpointing) gives
/// exactly the outputs and gradients of keeping every layer's activations, for full models
/// and LoRA, one shard or several, while keeping fewer bytes.
#[test]
fn issue14_recompute_gives_identical_gradients_with_less_memory() {
    use autodidact_nn::Recompute;
    let cfg = TransformerConfig {
        hidden_size: 16,
        num_heads: 4,
        num_kv_heads: 2,
        qkv_bias: true,
        num_layers: 3,
        ..tiny_config(false)
    };
    for lora in [false, true] {
        let mut model = cfg.build(3).unwrap();
        if lora {
            let lc = autodidact_core::LoraConfig {
                rank: 2,
                alpha: 3.0,
                ..Default::default()
            };
            model = model.with_lora(&lc, 1).unwrap();
        }
        for rows in [3usize, 12] {
            let mut rng = Rng::new(rows as u64);
            let seqs: Vec<Vec<u32>> = (0..rows)
                .map(|i| (0..3 + i % 6).map(|_| rng.below(7) as u32).collect())
                .collect();
            let b = TokenBatch::from_sequences(&seqs).unwrap();
            let n = b.batch_size() * b.seq_len();
            let w: Vec<f32> = (0..n).map(|_| rng.uniform() - 0.3).collect();
            let c: Vec<f32> = (0..n).map(|_| rng.uniform() - 0.5).collect();
            let run = |recompute| {
                let mut act = Activations::new();
                act.recompute = recompute;
                let opts = ForwardOptions {
                    entropy: true,
                    logits: false,
                };
                let out = model.forward(&b, opts, &mut act).unwrap();
                let mut g = Gradients::new(&model);
                model.backward(&mut act, &w, Some(&c), &mut g).unwrap();
                (out.logprobs, out.entropy, g.data, act.allocated_bytes())
            };
            let (kept, recomputed) = (run(Recompute::Never), run(Recompute::Always));
            assert_eq!(kept.0, recomputed.0, "log-probs, lora {lora}, {rows} rows");
            assert_eq!(kept.1, recomputed.1, "entropies");
            assert_eq!(kept.2, recomputed.2, "gradients, lora {lora}, {rows} rows");
            assert!(kept.2.iter().any(|&x| x != 0.0));
            assert!(
                recomputed.3 < kept.3,
                "{} bytes recomputing, {} keeping",
                recomputed.3,
                kept.3
            );
        }
    }
}
