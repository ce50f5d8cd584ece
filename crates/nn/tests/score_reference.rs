//! Issue 18: a scalar score head (a reward model's) on the backbone against PyTorch:
//! transformers' `LlamaForSequenceClassification` with one label on the `torch_ref_untied`
//! checkpoint, its score read at each row's last token. The scores, and the gradients of
//! `Σ_b d_b · score_b` in the head and in every backbone parameter, come from
//! `reference/make_score_reference.py` (run by hand; torch 2.15.0, transformers 5.24.0).
//!
//! Tolerance: per tensor, max |ours − torch| ≤ 1e-4 · max |torch|.

use autodidact_nn::checkpoint;
use autodidact_nn::{Activations, ForwardOptions, Gradients, Recompute, TokenBatch};
use std::path::PathBuf;

mod common;
use common::{assert_close, Reference};

#[test]
fn issue18_score_head_matches_pytorch_sequence_classification() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/torch_ref_untied");
    let model = checkpoint::load(&dir).unwrap().model;
    let r = Reference {
        bytes: std::fs::read(dir.join("score_reference.safetensors")).unwrap(),
    };
    let lengths: Vec<usize> = r.i64("lengths").iter().map(|&l| l as usize).collect();
    let t = *lengths.iter().max().unwrap();
    let inputs: Vec<u32> = r.i64("inputs").iter().map(|&x| x as u32).collect();
    // The score reads the last token itself, so every token is an input; targets are unused.
    let targets = vec![0u32; inputs.len()];
    let (head, d) = (r.f32("head"), r.f32("d"));
    // Both ways of keeping activations give the same numbers.
    for recompute in [Recompute::Never, Recompute::Always] {
        let batch = TokenBatch::new(inputs.clone(), targets.clone(), lengths.clone(), t).unwrap();
        let mut act = Activations::new();
        act.recompute = recompute;
        model
            .forward(&batch, ForwardOptions::default(), &mut act)
            .unwrap();
        let scores = model.scores(&act, &head).unwrap();
        assert_close("scores", &scores, &r.f32("scores"));
        let mut grads = Gradients::new(&model);
        let dhead = model
            .backward_scores(&mut act, &head, &d, &mut grads)
            .unwrap();
        assert_close("grad score.weight", &dhead, &r.f32("grad.score.weight"));
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
                &r.f32(&format!("grad.{}", tensor.name)),
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
