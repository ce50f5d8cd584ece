//! Issue 18: a scalar score head (a reward model's) on the backbone against PyTorch:
//! transformers' `LlamaForSequenceClassification` with one label on the `torch_ref_untied`
//! checkpoint, its score read at each row's last token. The scores, and the gradients of
//! `Σ_b d_b · score_b` in the head and in every backbone parameter, come from
//! `reference/make_score_reference.py` (run by hand; torch 2.15.0, transformers 5.24.0).
//!
//! Tolerance: per tensor, max |ours − torch| ≤ 1e-4 · max |torch|.

use autodidact_nn::checkpoint;
use autodidact_nn::{Activations, ForwardOptions, Gradients, Recompute, TokenBatch};
use safetensors::tensor::{Dtype, SafeTensors};
use std::path::PathBuf;

fn tensor(bytes: &[u8], name: &str) -> (Dtype, Vec<u8>) {
    let st = SafeTensors::deserialize(bytes).unwrap();
    let t = st
        .tensor(name)
        .unwrap_or_else(|_| panic!("reference has no {name}"));
    (t.dtype(), t.data().to_vec())
}

fn f32s(bytes: &[u8], name: &str) -> Vec<f32> {
    let (dtype, data) = tensor(bytes, name);
    assert_eq!(dtype, Dtype::F32, "{name}");
    data.chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

fn i64s(bytes: &[u8], name: &str) -> Vec<i64> {
    let (dtype, data) = tensor(bytes, name);
    assert_eq!(dtype, Dtype::I64, "{name}");
    data.chunks_exact(8)
        .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
        .collect()
}

fn assert_close(what: &str, ours: &[f32], theirs: &[f32]) {
    assert_eq!(ours.len(), theirs.len(), "{what}: length");
    let scale = theirs.iter().fold(0.0f32, |m, x| m.max(x.abs()));
    let err = ours
        .iter()
        .zip(theirs)
        .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
    let rel = err / scale.max(1e-12);
    println!("{what:48} max |ref| {scale:.3e}  max |diff| {err:.2e}  rel {rel:.2e}");
    assert!(scale > 0.0, "{what}: reference is all zeros");
    assert!(rel <= 1e-4, "{what}: relative error {rel:.2e} > 1e-4");
}

#[test]
fn issue18_score_head_matches_pytorch_sequence_classification() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/torch_ref_untied");
    let model = checkpoint::load(&dir).unwrap().model;
    let r = std::fs::read(dir.join("score_reference.safetensors")).unwrap();
    let lengths: Vec<usize> = i64s(&r, "lengths").iter().map(|&l| l as usize).collect();
    let t = *lengths.iter().max().unwrap();
    let inputs: Vec<u32> = i64s(&r, "inputs").iter().map(|&x| x as u32).collect();
    // The score reads the last token itself, so every token is an input; targets are unused.
    let targets = vec![0u32; inputs.len()];
    let (head, d) = (f32s(&r, "head"), f32s(&r, "d"));
    // Both ways of keeping activations give the same numbers.
    for recompute in [Recompute::Never, Recompute::Always] {
        let batch = TokenBatch::new(inputs.clone(), targets.clone(), lengths.clone(), t).unwrap();
        let mut act = Activations::new();
        act.recompute = recompute;
        model
            .forward(&batch, ForwardOptions::default(), &mut act)
            .unwrap();
        let scores = model.scores(&act, &head).unwrap();
        assert_close("scores", &scores, &f32s(&r, "scores"));
        let mut grads = Gradients::new(&model);
        let dhead = model
            .backward_scores(&mut act, &head, &d, &mut grads)
            .unwrap();
        assert_close("grad score.weight", &dhead, &f32s(&r, "grad.score.weight"));
        for tensor in model.trainable_tensors() {
            let ours = &grads.data[tensor.range()];
            if tensor.name == "lm_head.weight" {
                assert!(
                    ours.iter().all(|&g| g == 0.0),
                    "the LM head takes no gradient"
                );
                continue;
            }
            assert_close(
                &format!("grad {}", tensor.name),
                ours,
                &f32s(&r, &format!("grad.{}", tensor.name)),
            );
        }
        // Bad inputs are refused by name.
        let e = model.scores(&act, &head[1..]).unwrap_err().to_string();
        assert!(e.contains("score head"), "{e}");
        let e = model
            .backward_scores(&mut act, &head, &d[1..], &mut grads)
            .unwrap_err()
            .to_string();
        assert!(e.contains("score gradients"), "{e}");
    }
}
