//! The clipped policy-gradient surrogate (PPO-clip / GRPO / DAPO) with KL control and an
//! entropy bonus, as per-token weights.
//!
//! Per completion token t of sequence i, with ρ = exp(log p − log p_old):
//!
//! `L_t = −min(ρ·A_i, clip(ρ, 1 − ε_low, 1 + ε_high)·A_i) + β·k_t`
//!
//! (with step-level credit, `A_i` becomes `A_{i,t}`, the advantage of the step token t
//! belongs to; [`Advantage::PerToken`])
//!
//! where `k_t` is a per-token estimate of KL(π‖π_ref) from d = log p − log p_ref:
//! `k1 = d`, `k2 = d²/2`, `k3 = exp(−d) + d − 1` (Schulman's estimators; TRL uses k3).
//! The per-token losses are aggregated ([`LossAggregation`]) over the whole optimizer batch,
//! and the entropy bonus subtracts `c · mean_t H_t` over every completion token of the batch
//! (as TRL, independent of the aggregation). This matches TRL 1.16's `GRPOTrainer._compute_loss`
//! (`loss_type` grpo / dapo / dr_grpo, `importance_sampling_level = "token"`, no vLLM
//! importance correction, no two-sided `delta` clip), with the KL estimator selectable.

use crate::BatchShape;
use serde::{Deserialize, Serialize};

/// How per-token losses become the batch loss.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LossAggregation {
    /// Σ over every completion token of the batch / number of tokens (TRL's `dapo`).
    #[default]
    Token,
    /// Mean over sequences of each sequence's token mean (TRL's `grpo`).
    Sequence,
    /// Σ / (sequences × max completion length) (Dr. GRPO, TRL's `dr_grpo`).
    Constant,
}

/// Which per-token KL estimate.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KlEstimator {
    K1,
    K2,
    #[default]
    K3,
}

impl KlEstimator {
    /// The estimate and its derivative with respect to log p, for d = log p − log p_ref.
    pub fn value_and_slope(self, d: f64) -> (f64, f64) {
        match self {
            KlEstimator::K1 => (d, 1.0),
            KlEstimator::K2 => (0.5 * d * d, d),
            KlEstimator::K3 => ((-d).exp() + d - 1.0, 1.0 - (-d).exp()),
        }
    }
}

/// Settings of the surrogate.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PgSettings {
    pub epsilon_low: f32,
    pub epsilon_high: f32,
    pub aggregation: LossAggregation,
    /// Coefficient of the KL term in the loss (0: no term, no reference needed).
    pub beta: f32,
    pub kl_estimator: KlEstimator,
    /// Coefficient of the entropy bonus (0: none).
    pub entropy_coef: f32,
}

/// The advantage of each completion token.
#[derive(Clone, Copy, Debug)]
pub enum Advantage<'a> {
    /// One per sequence, shared by all of its tokens (GRPO, RLOO, REINFORCE).
    PerSequence(&'a [f32]),
    /// One per token: step-level credit, where each step's tokens carry that step's
    /// advantage.
    PerToken(&'a [Vec<f32>]),
}

impl Advantage<'_> {
    /// The advantage of token `t` of sequence `i`.
    pub fn at(&self, i: usize, t: usize) -> f32 {
        match self {
            Advantage::PerSequence(a) => a[i],
            Advantage::PerToken(a) => a[i][t],
        }
    }
}

/// One micro-batch: rows are sequences, entries completion tokens.
pub struct PgInputs<'a> {
    pub logprobs: &'a [Vec<f32>],
    /// Log-probs under the policy that sampled the tokens.
    pub old_logprobs: &'a [Vec<f32>],
    /// Log-probs under the reference policy (needed when `beta > 0`).
    pub ref_logprobs: Option<&'a [Vec<f32>]>,
    /// Entropies of the policy's next-token distributions (needed when `entropy_coef > 0`).
    pub entropies: Option<&'a [Vec<f32>]>,
    /// The advantages, per sequence or per token (rows and lengths as `logprobs`).
    pub advantages: Advantage<'a>,
    /// Per sequence, the KL term's coefficient in place of `beta` (attempts held to the
    /// reference by different amounts, as SCoRe's stage I does); reference log-probs are
    /// needed when any is above 0.
    pub kl_coefs: Option<&'a [f32]>,
}

/// Sums over the micro-batch's tokens (they add across micro-batches; divide by `tokens`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PgStats {
    pub tokens: usize,
    pub clipped_low: usize,
    pub clipped_high: usize,
    pub kl: f64,
    pub entropy: f64,
}

impl PgStats {
    pub fn add(&mut self, o: &PgStats) {
        self.tokens += o.tokens;
        self.clipped_low += o.clipped_low;
        self.clipped_high += o.clipped_high;
        self.kl += o.kl;
        self.entropy += o.entropy;
    }
}

/// What [`policy_gradient`] returns.
#[derive(Clone, Debug, PartialEq)]
pub struct PgOutput {
    /// This micro-batch's share of the batch loss.
    pub loss: f64,
    /// `−∂loss/∂log p_t`.
    pub weights: Vec<Vec<f32>>,
    /// `−∂loss/∂H_t` for the entropy bonus (`None` when `entropy_coef` is 0).
    pub entropy_coefs: Option<Vec<Vec<f32>>>,
    pub stats: PgStats,
}

/// The surrogate loss of a micro-batch of the optimizer batch `batch`.
pub fn policy_gradient(s: &PgSettings, x: &PgInputs, batch: BatchShape) -> PgOutput {
    let (lo, hi) = (1.0 - s.epsilon_low as f64, 1.0 + s.epsilon_high as f64);
    let beta = s.beta as f64;
    let mut loss = 0.0f64;
    let mut stats = PgStats::default();
    let mut weights = Vec::with_capacity(x.logprobs.len());
    for (i, lp) in x.logprobs.iter().enumerate() {
        let agg = match s.aggregation {
            LossAggregation::Token => 1.0 / batch.tokens.max(1) as f64,
            LossAggregation::Sequence => {
                1.0 / (batch.sequences.max(1) as f64 * lp.len().max(1) as f64)
            }
            LossAggregation::Constant => {
                1.0 / (batch.sequences.max(1) as f64 * batch.max_len.max(1) as f64)
            }
        };
        let beta = x.kl_coefs.map_or(beta, |c| c[i] as f64);
        let mut w = Vec::with_capacity(lp.len());
        for (t, &l) in lp.iter().enumerate() {
            let a = x.advantages.at(i, t) as f64;
            let ratio = (l as f64 - x.old_logprobs[i][t] as f64).exp();
            let unclipped = ratio * a;
            let clipped = ratio.clamp(lo, hi) * a;
            // The min picks the clipped term only when clipping binds; its gradient is then 0.
            let (surrogate, slope) = if clipped < unclipped {
                (clipped, 0.0)
            } else {
                (unclipped, ratio * a)
            };
            stats.clipped_low += (ratio < lo && a < 0.0) as usize;
            stats.clipped_high += (ratio > hi && a > 0.0) as usize;
            let mut token_loss = -surrogate;
            let mut grad = -slope;
            if beta != 0.0 {
                let r = x.ref_logprobs.expect("a KL term needs reference log-probs")[i][t] as f64;
                let (k, dk) = s.kl_estimator.value_and_slope(l as f64 - r);
                stats.kl += k;
                token_loss += beta * k;
                grad += beta * dk;
            }
            loss += agg * token_loss;
            w.push((-agg * grad) as f32);
        }
        stats.tokens += lp.len();
        weights.push(w);
    }
    let entropy_coefs = (s.entropy_coef != 0.0).then(|| {
        let c = s.entropy_coef as f64 / batch.tokens.max(1) as f64;
        let h = x.entropies.expect("an entropy bonus needs entropies");
        h.iter()
            .map(|row| {
                let sum: f64 = row.iter().map(|&v| v as f64).sum();
                stats.entropy += sum;
                loss -= c * sum;
                vec![c as f32; row.len()]
            })
            .collect()
    });
    if entropy_coefs.is_none() {
        if let Some(h) = x.entropies {
            stats.entropy += h.iter().flatten().map(|&v| v as f64).sum::<f64>();
        }
    }
    PgOutput {
        loss,
        weights,
        entropy_coefs,
        stats,
    }
}

/// Rewards with the KL penalty folded in (`kl_mode = "reward"`, OpenRLHF's and the classic
/// RLHF placement): `r_i − β Σ_t k_t`, the KL treated as part of the reward (no gradient
/// through it).
pub fn kl_penalized_rewards(
    rewards: &[f32],
    logprobs: &[Vec<f32>],
    ref_logprobs: &[Vec<f32>],
    beta: f32,
    estimator: KlEstimator,
) -> Vec<f32> {
    fold_kl(
        rewards,
        &sequence_kl(logprobs, ref_logprobs, estimator),
        beta,
    )
}

/// `r_i − β·kl_i` for per-sequence KL estimates `kl` (from [`sequence_kl`]).
pub fn fold_kl(rewards: &[f32], kl: &[f64], beta: f32) -> Vec<f32> {
    rewards
        .iter()
        .zip(kl)
        .map(|(&r, &k)| (r as f64 - beta as f64 * k) as f32)
        .collect()
}

/// `Σ_t k_t` per sequence: the KL estimate of each completion against the reference.
pub fn sequence_kl(
    logprobs: &[Vec<f32>],
    ref_logprobs: &[Vec<f32>],
    estimator: KlEstimator,
) -> Vec<f64> {
    logprobs
        .iter()
        .zip(ref_logprobs)
        .map(|(lp, rp)| {
            lp.iter()
                .zip(rp)
                .map(|(&l, &q)| estimator.value_and_slope(l as f64 - q as f64).0)
                .sum()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    type Rows = Vec<Vec<f32>>;

    fn data() -> (Rows, Rows, Rows, Rows, Vec<f32>) {
        let lp = vec![vec![-0.5, -1.2, -0.1], vec![-2.0], vec![-0.7, -0.3]];
        let old = vec![vec![-0.9, -1.0, -0.1], vec![-1.2], vec![-0.75, -0.9]];
        let rf = vec![vec![-0.4, -1.5, -0.3], vec![-1.8], vec![-0.9, -0.2]];
        let h = vec![vec![1.0, 0.5, 0.2], vec![2.0], vec![0.1, 0.7]];
        (lp, old, rf, h, vec![1.5, -0.8, 0.4])
    }

    fn settings(aggregation: LossAggregation, kl_estimator: KlEstimator) -> PgSettings {
        PgSettings {
            epsilon_low: 0.2,
            epsilon_high: 0.28,
            aggregation,
            beta: 0.05,
            kl_estimator,
            entropy_coef: 0.01,
        }
    }

    /// `−∂loss/∂x` of every entry of `x`, by central differences.
    fn minus_gradient(x: &[Vec<f32>], loss: impl Fn(&[Vec<f32>]) -> f64) -> Vec<Vec<f64>> {
        let eps = 1e-3f32;
        (0..x.len())
            .map(|i| {
                (0..x[i].len())
                    .map(|t| {
                        let (mut up, mut down) = (x.to_vec(), x.to_vec());
                        up[i][t] += eps;
                        down[i][t] -= eps;
                        -(loss(&up) - loss(&down)) / (2.0 * eps as f64)
                    })
                    .collect()
            })
            .collect()
    }

    #[test]
    fn weights_are_minus_the_gradient_by_finite_differences() {
        let (lp, old, rf, h, adv) = data();
        let shape = BatchShape::of(&lp);
        for agg in [
            LossAggregation::Token,
            LossAggregation::Sequence,
            LossAggregation::Constant,
        ] {
            for est in [KlEstimator::K1, KlEstimator::K2, KlEstimator::K3] {
                let s = settings(agg, est);
                let run = |lp: &[Vec<f32>], h: &[Vec<f32>]| {
                    let x = PgInputs {
                        logprobs: lp,
                        old_logprobs: &old,
                        ref_logprobs: Some(&rf),
                        entropies: Some(h),
                        advantages: Advantage::PerSequence(&adv),
                        kl_coefs: None,
                    };
                    policy_gradient(&s, &x, shape)
                };
                let out = run(&lp, &h);
                let by_lp = minus_gradient(&lp, |lp| run(lp, &h).loss);
                let by_h = minus_gradient(&h, |h| run(&lp, h).loss);
                for i in 0..lp.len() {
                    for t in 0..lp[i].len() {
                        let w = out.weights[i][t] as f64;
                        assert!(
                            (by_lp[i][t] - w).abs() < 1e-4,
                            "{agg:?} {est:?} ({i},{t}): {} vs {w}",
                            by_lp[i][t]
                        );
                        let c = out.entropy_coefs.as_ref().unwrap()[i][t] as f64;
                        assert!((by_h[i][t] - c).abs() < 1e-5, "entropy ({i},{t})");
                    }
                }
            }
        }
    }

    #[test]
    fn micro_batches_add_up_and_a_fresh_policy_is_plain_reinforce() {
        let (lp, old, rf, h, adv) = data();
        let shape = BatchShape::of(&lp);
        let s = settings(LossAggregation::Sequence, KlEstimator::K3);
        let x = |r: std::ops::Range<usize>| PgInputs {
            logprobs: &lp[r.clone()],
            old_logprobs: &old[r.clone()],
            ref_logprobs: Some(&rf[r.clone()]),
            entropies: Some(&h[r.clone()]),
            advantages: Advantage::PerSequence(&adv[r]),
            kl_coefs: None,
        };
        let whole = policy_gradient(&s, &x(0..3), shape);
        let a = policy_gradient(&s, &x(0..1), shape);
        let b = policy_gradient(&s, &x(1..3), shape);
        assert!((whole.loss - a.loss - b.loss).abs() < 1e-12);
        // On-policy (ρ = 1) without KL or entropy, the weight is the advantage times the
        // aggregation weight: the REINFORCE gradient.
        let plain = PgSettings {
            beta: 0.0,
            entropy_coef: 0.0,
            ..settings(LossAggregation::Token, KlEstimator::K3)
        };
        let on = PgInputs {
            logprobs: &lp,
            old_logprobs: &lp,
            ref_logprobs: None,
            entropies: None,
            advantages: Advantage::PerSequence(&adv),
            kl_coefs: None,
        };
        let out = policy_gradient(&plain, &on, shape);
        for (i, row) in out.weights.iter().enumerate() {
            for &w in row {
                assert!((w - adv[i] / 6.0).abs() < 1e-7);
            }
        }
        assert_eq!(out.stats.clipped_low + out.stats.clipped_high, 0);
    }

    /// Issue 20: with a KL coefficient per sequence (SCoRe's stage I holds the first attempt
    /// to the reference harder than the second), the weights are still minus the loss's
    /// derivative; a coefficient of 0 leaves a sequence with its surrogate alone, and equal
    /// coefficients give exactly the shared `beta`'s result.
    #[test]
    fn issue20_per_sequence_kl_coefficients_are_minus_the_gradient_by_finite_differences() {
        let (lp, old, rf, h, adv) = data();
        let shape = BatchShape::of(&lp);
        for est in [KlEstimator::K1, KlEstimator::K2, KlEstimator::K3] {
            let s = settings(LossAggregation::Sequence, est);
            let run = |lp: &[Vec<f32>], coefs: Option<&[f32]>| {
                let x = PgInputs {
                    logprobs: lp,
                    old_logprobs: &old,
                    ref_logprobs: Some(&rf),
                    entropies: Some(&h),
                    advantages: Advantage::PerSequence(&adv),
                    kl_coefs: coefs,
                };
                policy_gradient(&s, &x, shape)
            };
            let coefs = [1.5f32, 0.0, 0.05];
            let out = run(&lp, Some(&coefs));
            let g = minus_gradient(&lp, |lp| run(lp, Some(&coefs)).loss);
            for (i, (g, w)) in g.iter().zip(&out.weights).enumerate() {
                for (t, (g, &w)) in g.iter().zip(w).enumerate() {
                    assert!((g - w as f64).abs() < 1e-4, "{est:?} ({i},{t}): {g} vs {w}");
                }
            }
            let without = PgSettings { beta: 0.0, ..s };
            let alone = policy_gradient(
                &without,
                &PgInputs {
                    logprobs: &lp,
                    old_logprobs: &old,
                    ref_logprobs: None,
                    entropies: Some(&h),
                    advantages: Advantage::PerSequence(&adv),
                    kl_coefs: None,
                },
                shape,
            );
            assert_eq!(out.weights[1], alone.weights[1]);
            assert_ne!(out.weights[0], alone.weights[0]);
            let shared = [s.beta; 3];
            assert_eq!(run(&lp, Some(&shared)), run(&lp, None));
        }
    }

    /// Issue 20: with an advantage per token (step-level credit), each token's weight is
    /// still minus the loss's derivative by its log-prob, under every aggregation and with
    /// clipping binding on some tokens; and a per-token advantage that repeats each
    /// sequence's gives exactly the per-sequence result.
    #[test]
    fn issue20_per_token_advantages_are_minus_the_gradient_by_finite_differences() {
        let (lp, old, rf, h, adv) = data();
        // Steps of one sequence with different signs: credit where the trace went right,
        // blame where it went wrong.
        let tok = vec![vec![0.9, -0.6, 0.0], vec![-0.8], vec![0.25, 0.55]];
        let shape = BatchShape::of(&lp);
        for agg in [
            LossAggregation::Token,
            LossAggregation::Sequence,
            LossAggregation::Constant,
        ] {
            let s = settings(agg, KlEstimator::K3);
            let run = |lp: &[Vec<f32>], a: Advantage| {
                let x = PgInputs {
                    logprobs: lp,
                    old_logprobs: &old,
                    ref_logprobs: Some(&rf),
                    entropies: Some(&h),
                    advantages: a,
                    kl_coefs: None,
                };
                policy_gradient(&s, &x, shape)
            };
            let out = run(&lp, Advantage::PerToken(&tok));
            assert!(
                out.stats.clipped_low + out.stats.clipped_high > 0,
                "some ratio clips"
            );
            let g = minus_gradient(&lp, |lp| run(lp, Advantage::PerToken(&tok)).loss);
            for (i, (g, w)) in g.iter().zip(&out.weights).enumerate() {
                for (t, (g, &w)) in g.iter().zip(w).enumerate() {
                    assert!((g - w as f64).abs() < 1e-4, "{agg:?} ({i},{t}): {g} vs {w}");
                }
            }
            let repeated: Vec<Vec<f32>> = lp
                .iter()
                .zip(&adv)
                .map(|(row, &a)| vec![a; row.len()])
                .collect();
            assert_eq!(
                run(&lp, Advantage::PerToken(&repeated)),
                run(&lp, Advantage::PerSequence(&adv))
            );
        }
    }

    #[test]
    fn kl_folded_into_rewards() {
        let (lp, _, rf, _, _) = data();
        let r = kl_penalized_rewards(&[1.0, 0.0, 0.5], &lp, &rf, 0.1, KlEstimator::K1);
        // k1 sums: (−0.1 + 0.3 + 0.2) = 0.4; −0.2; (0.2 − 0.1) = 0.1.
        for (got, want) in r.iter().zip([1.0 - 0.04, 0.0 + 0.02, 0.5 - 0.01]) {
            assert!((got - want).abs() < 1e-6, "{got} vs {want}");
        }
    }
}
