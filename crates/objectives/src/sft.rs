//! Supervised fine-tuning: negative log-likelihood of the given completions.

use crate::{BatchShape, ObjectiveOutput};
use serde::{Deserialize, Serialize};

/// How the summed negative log-likelihood is normalized.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SftNormalization {
    /// Mean over every trained token of the batch (TRL's `SFTTrainer`, nanoGPT): long
    /// completions weigh more.
    #[default]
    Token,
    /// Mean over sequences of each sequence's mean token loss: every completion weighs the same.
    Sequence,
}

/// SFT loss `−Σ_t log p_t / N` over the micro-batch `logprobs` (one row per sequence: the
/// log-probs of its completion tokens), where N is the batch's token count (`Token`), or
/// `−Σ_s (Σ_t log p_{s,t} / T_s) / S` (`Sequence`).
pub fn sft(logprobs: &[Vec<f32>], batch: BatchShape, norm: SftNormalization) -> ObjectiveOutput {
    let mut loss = 0.0f64;
    let weights = logprobs
        .iter()
        .map(|row| {
            let w = match norm {
                SftNormalization::Token => 1.0 / batch.tokens.max(1) as f64,
                SftNormalization::Sequence => {
                    1.0 / (batch.sequences.max(1) as f64 * row.len().max(1) as f64)
                }
            };
            loss -= w * row.iter().map(|&x| x as f64).sum::<f64>();
            vec![w as f32; row.len()]
        })
        .collect();
    ObjectiveOutput { loss, weights }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch() -> Vec<Vec<f32>> {
        vec![vec![-0.5, -1.0, -2.0], vec![-0.25], vec![-3.0, -0.1]]
    }

    #[test]
    fn token_mean_matches_its_formula() {
        let lp = batch();
        let out = sft(&lp, BatchShape::of(&lp), SftNormalization::Token);
        // (0.5 + 1 + 2 + 0.25 + 3 + 0.1) / 6
        assert!((out.loss - 6.85 / 6.0).abs() < 1e-9, "{}", out.loss);
        assert!(out
            .weights
            .iter()
            .flatten()
            .all(|&w| (w - 1.0 / 6.0).abs() < 1e-7));
    }

    #[test]
    fn sequence_mean_matches_its_formula() {
        let lp = batch();
        let out = sft(&lp, BatchShape::of(&lp), SftNormalization::Sequence);
        let want = (3.5 / 3.0 + 0.25 / 1.0 + 3.1 / 2.0) / 3.0;
        assert!((out.loss - want).abs() < 1e-7, "{} vs {want}", out.loss);
        assert!((out.weights[1][0] - 1.0 / 3.0).abs() < 1e-7);
        assert!((out.weights[0][2] - 1.0 / 9.0).abs() < 1e-7);
    }

    #[test]
    fn weights_are_minus_the_gradient_by_finite_differences() {
        for norm in [SftNormalization::Token, SftNormalization::Sequence] {
            let lp = batch();
            let shape = BatchShape::of(&lp);
            let out = sft(&lp, shape, norm);
            for s in 0..lp.len() {
                for t in 0..lp[s].len() {
                    let h = 1e-3f32;
                    let mut up = lp.clone();
                    up[s][t] += h;
                    let mut down = lp.clone();
                    down[s][t] -= h;
                    let g = (sft(&up, shape, norm).loss - sft(&down, shape, norm).loss)
                        / (2.0 * h as f64);
                    assert!(
                        (-g - out.weights[s][t] as f64).abs() < 1e-4,
                        "{norm:?} {s} {t}"
                    );
                }
            }
        }
    }

    #[test]
    fn micro_batches_add_up_to_the_batch() {
        let lp = batch();
        let shape = BatchShape::of(&lp);
        for norm in [SftNormalization::Token, SftNormalization::Sequence] {
            let whole = sft(&lp, shape, norm);
            let parts = sft(&lp[..1], shape, norm).loss + sft(&lp[1..], shape, norm).loss;
            assert!((whole.loss - parts).abs() < 1e-9);
        }
    }
}
