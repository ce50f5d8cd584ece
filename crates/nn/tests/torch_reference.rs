//! Logits, loss and every parameter gradient of a fixed checkpoint against PyTorch
//! (transformers' `LlamaForCausalLM`, tied and untied, a Qwen2 with biases and grouped-query
//! attention in bfloat16, a sharded float16 Llama with Llama-3 rope scaling). The fixtures and reference values
//! come from `reference/make_reference.py` (run by hand; torch 2.15.0, transformers 5.24.0):
//! the checkpoints are as `save_pretrained` wrote them, so this also tests reading a
//! transformers-written `config.json` (rope under `rope_parameters`) and safetensors file.
//!
//! Tolerance: per tensor, max |ours − torch| ≤ 1e-4 · max |torch|.

use autodidact_nn::checkpoint;
use autodidact_nn::{Activations, ForwardOptions, Gradients, TokenBatch};
use std::path::PathBuf;

mod common;
use common::{assert_close, Reference};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn check(name: &str) {
    let dir = fixture(name);
    let ck = checkpoint::load(&dir).unwrap();
    let model = ck.model;
    let r = Reference {
        bytes: std::fs::read(dir.join("reference.safetensors")).unwrap(),
    };
    let lengths: Vec<usize> = r.i64("lengths").iter().map(|&l| l as usize).collect();
    let t = *lengths.iter().max().unwrap();
    let to_u32 = |v: Vec<i64>| v.into_iter().map(|x| x as u32).collect::<Vec<_>>();
    let batch = TokenBatch::new(
        to_u32(r.i64("inputs")),
        to_u32(r.i64("targets")),
        lengths,
        t,
    )
    .unwrap();
    let mut act = Activations::new();
    let out = model
        .forward(
            &batch,
            ForwardOptions {
                entropy: true,
                logits: true,
            },
            &mut act,
        )
        .unwrap();
    assert_close("logits", out.logits.as_ref().unwrap(), &r.f32("logits"));
    assert_close("logprobs", &out.logprobs, &r.f32("logprobs"));
    assert_close("entropy", out.entropy.as_ref().unwrap(), &r.f32("entropy"));

    let (w, c) = (r.f32("weights"), r.f32("entropy_coefs"));
    let ent = out.entropy.unwrap();
    let mut loss = 0.0f64;
    for (b, &len) in batch.lengths().iter().enumerate() {
        for i in 0..len {
            let k = b * t + i;
            loss -= w[k] as f64 * out.logprobs[k] as f64 + c[k] as f64 * ent[k] as f64;
        }
    }
    assert_close("loss", &[loss as f32], &r.f32("loss"));

    let mut grads = Gradients::new(&model);
    model.backward(&mut act, &w, Some(&c), &mut grads).unwrap();
    for tensor in model.trainable_tensors() {
        assert_close(
            &format!("grad {}", tensor.name),
            &grads.data[tensor.range()],
            &r.f32(&format!("grad.{}", tensor.name)),
        );
    }
}

#[test]
fn matches_pytorch_tied() {
    check("torch_ref_tied");
}

#[test]
fn matches_pytorch_untied() {
    check("torch_ref_untied");
}

/// Issue 14: a Qwen2 checkpoint (q/k/v biases, grouped-query attention, untied) in bfloat16.
#[test]
fn issue14_matches_pytorch_qwen2_bf16() {
    check("torch_ref_qwen2");
}

/// Issue 14: a Llama checkpoint with Llama-3 rope scaling and one key/value head, sharded
/// (`model.safetensors.index.json`) in float16.
#[test]
fn issue14_matches_pytorch_llama3_sharded_f16() {
    check("torch_ref_llama3");
}

/// Issue 14: LoRA adapters written by PEFT (r = 2, alpha 3, every projection) on the Qwen2
/// checkpoint load merged, and give PEFT's logits and the gradients of every adapter tensor
/// with the base frozen (`reference/make_lora_reference.py`).
#[test]
fn issue14_lora_matches_peft() {
    check("torch_ref_lora");
}
