//! Training objectives as per-token weights (docs/design.md, "Objectives are token weights"),
//! and the reward-model objectives, which act on one scalar score per sequence
//! ([`reward`]).
//!
//! An objective is a pure function of per-token log-probs (and, for later objectives,
//! reference log-probs, rewards and preference pairs) that returns its loss, its metrics and a weight `w_t`
//! per token such that the trainer's backward pass of `−Σ w_t log p_t` gives the loss's
//! gradient: `w_t = −∂loss/∂log p_t`. There are no tensors here, so every objective is
//! tested on plain arrays against its formula and by finite differences.
//!
//! Losses of a batch split into micro-batches add up: each call is told the shape of the
//! whole optimizer batch ([`BatchShape`]) and normalizes by it.

pub mod advantages;
pub mod dpo;
pub mod pg;
pub mod reward;
pub mod sft;

pub use advantages::{advantages, AdvantageEstimator, Advantages, RewardScaling};
pub use dpo::{dpo, DpoInputs, DpoLoss, DpoOutput, DpoSettings, DpoStats};
pub use pg::{
    fold_kl, kl_penalized_rewards, policy_gradient, sequence_kl, Advantage, KlEstimator,
    LossAggregation, PgInputs, PgOutput, PgSettings, PgStats,
};
pub use reward::{
    aggregate, bradley_terry, calibration, disagreement, outcome_bce, Aggregation, Calibration,
    OutcomeLoss, PairLoss,
};
pub use sft::{sft, SftNormalization};

/// Size of the optimizer batch a micro-batch belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchShape {
    /// Sequences in the whole batch.
    pub sequences: usize,
    /// Trained tokens in the whole batch.
    pub tokens: usize,
    /// Longest completion of the batch, in tokens (or the configured maximum: Dr. GRPO's
    /// constant normalizer).
    pub max_len: usize,
}

impl BatchShape {
    /// The shape of a batch given each sequence's trained-token count.
    pub fn of<S: AsRef<[f32]>>(rows: &[S]) -> Self {
        Self {
            sequences: rows.len(),
            tokens: rows.iter().map(|r| r.as_ref().len()).sum(),
            max_len: rows.iter().map(|r| r.as_ref().len()).max().unwrap_or(0),
        }
    }
}

/// What an objective returns for one micro-batch.
#[derive(Clone, Debug, PartialEq)]
pub struct ObjectiveOutput {
    /// This micro-batch's share of the batch loss.
    pub loss: f64,
    /// `−∂loss/∂log p_t`, one row per sequence, shaped like the input log-probs.
    pub weights: Vec<Vec<f32>>,
}
