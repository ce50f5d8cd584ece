//! Reward-model objectives and what is computed from reward models' scores: the
//! Bradley–Terry loss on preference pairs and the binary cross-entropy of outcome labels
//! (each with its gradient with respect to the scalar scores), calibration, and ensembles
//! aggregated conservatively.
//!
//! Unlike the policy objectives, these act on one scalar score per sequence (a reward
//! head's output), so each returns `∂loss/∂score` instead of per-token weights.
//! - Bradley–Terry is TRL 1.16's `RewardTrainer.compute_loss`: `−mean log σ(r_c − r_r − m)`
//!   with an optional per-pair margin m, plus `center · mean((r_c + r_r)²)` when
//!   `center_rewards_coefficient` is set.
//! - The outcome loss is PyTorch's `binary_cross_entropy_with_logits` (mean), on labels in
//!   [0, 1]: a verifier's 0/1 grade, or a soft label such as a Monte-Carlo estimate of a
//!   step's value (Math-Shepherd's soft labels).
//! - Ensembles (Coste et al., "Reward Model Ensembles Help Mitigate Overoptimization"): the
//!   mean, the worst case (WCO: the minimum over members) and uncertainty-weighted
//!   optimization (UWO: the mean minus λ times the members' variance). The variance is the
//!   population variance over members, as the paper's UWO writes it.

use serde::{Deserialize, Serialize};

/// Bradley–Terry on a batch of pairs.
#[derive(Clone, Debug, PartialEq)]
pub struct PairLoss {
    /// The batch loss (mean over pairs).
    pub loss: f64,
    /// `∂loss/∂r_chosen` and `∂loss/∂r_rejected`, per pair.
    pub grad_chosen: Vec<f32>,
    pub grad_rejected: Vec<f32>,
    /// Fraction of pairs with `r_chosen > r_rejected` (TRL's `accuracy`).
    pub accuracy: f64,
    /// Mean of `r_chosen − r_rejected` (TRL's `margin`).
    pub margin: f64,
}

/// The Bradley–Terry loss of scores `chosen` and `rejected` (one pair each), with optional
/// per-pair `margins` and a reward-centering coefficient `center` (0: none).
pub fn bradley_terry(
    chosen: &[f32],
    rejected: &[f32],
    margins: Option<&[f32]>,
    center: f32,
) -> PairLoss {
    let n = chosen.len();
    assert_eq!(n, rejected.len(), "one rejected score per chosen score");
    let inv = 1.0 / n.max(1) as f64;
    let mut out = PairLoss {
        loss: 0.0,
        grad_chosen: Vec::with_capacity(n),
        grad_rejected: Vec::with_capacity(n),
        accuracy: 0.0,
        margin: 0.0,
    };
    for i in 0..n {
        let (c, r) = (chosen[i] as f64, rejected[i] as f64);
        let m = margins.map_or(0.0, |m| m[i] as f64);
        let z = c - r - m;
        // −log σ(z) = softplus(−z), and its slope in z is −σ(−z).
        out.loss += inv * softplus(-z);
        let slope = -sigmoid(-z) * inv;
        let centering = 2.0 * center as f64 * (c + r) * inv;
        out.loss += center as f64 * (c + r).powi(2) * inv;
        out.grad_chosen.push((slope + centering) as f32);
        out.grad_rejected.push((-slope + centering) as f32);
        out.accuracy += (c > r) as u8 as f64 * inv;
        out.margin += (c - r) * inv;
    }
    out
}

/// Binary cross-entropy of outcome labels.
#[derive(Clone, Debug, PartialEq)]
pub struct OutcomeLoss {
    /// The batch loss (mean over sequences).
    pub loss: f64,
    /// `∂loss/∂score`, per sequence.
    pub grad: Vec<f32>,
    /// Fraction of sequences whose prediction (`σ(score) > 0.5`) agrees with its label
    /// rounded to 0 or 1.
    pub accuracy: f64,
}

/// The mean binary cross-entropy of `scores` (logits) against `labels` in [0, 1].
pub fn outcome_bce(scores: &[f32], labels: &[f32]) -> OutcomeLoss {
    let n = scores.len();
    assert_eq!(n, labels.len(), "one label per score");
    let inv = 1.0 / n.max(1) as f64;
    let mut out = OutcomeLoss {
        loss: 0.0,
        grad: Vec::with_capacity(n),
        accuracy: 0.0,
    };
    for (&s, &y) in scores.iter().zip(labels) {
        let (s, y) = (s as f64, y as f64);
        // −y log σ(s) − (1 − y) log(1 − σ(s)) = softplus(s) − y·s.
        out.loss += inv * (softplus(s) - y * s);
        out.grad.push(((sigmoid(s) - y) * inv) as f32);
        out.accuracy += ((s > 0.0) == (y > 0.5)) as u8 as f64 * inv;
    }
    out
}

/// How probabilities agree with outcomes.
#[derive(Clone, Debug, PartialEq)]
pub struct Calibration {
    /// Expected calibration error: over equal-width bins of the predicted probability, the
    /// mean |accuracy − confidence| weighted by the bin's share of the predictions.
    pub ece: f64,
    /// Mean squared difference between probability and label.
    pub brier: f64,
}

/// The calibration of predicted probabilities `probs` against `labels` (0/1), over `bins`
/// equal-width bins (`bins ≥ 1`).
pub fn calibration(probs: &[f32], labels: &[f32], bins: usize) -> Calibration {
    assert_eq!(probs.len(), labels.len(), "one label per probability");
    let bins = bins.max(1);
    let n = probs.len().max(1) as f64;
    let mut count = vec![0.0f64; bins];
    let mut confidence = vec![0.0f64; bins];
    let mut hits = vec![0.0f64; bins];
    let mut brier = 0.0;
    for (&p, &y) in probs.iter().zip(labels) {
        let (p, y) = (p as f64, y as f64);
        // Bin k holds (k/B, (k+1)/B]; 0 goes to the first.
        let k = ((p * bins as f64).ceil() as usize).clamp(1, bins) - 1;
        count[k] += 1.0;
        confidence[k] += p;
        hits[k] += y;
        brier += (p - y).powi(2) / n;
    }
    let ece = (0..bins)
        .filter(|&k| count[k] > 0.0)
        .map(|k| (hits[k] - confidence[k]).abs() / n)
        .sum();
    Calibration { ece, brier }
}

/// How an ensemble's members' scores become one.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Aggregation {
    /// The members' mean.
    Mean,
    /// The lowest member's score (worst-case optimization, WCO).
    WorstCase,
    /// The mean minus `lambda` times the members' variance (uncertainty-weighted, UWO).
    Uncertainty { lambda: f32 },
}

/// One score per item from `scores`, one row per member (each as long as the others).
pub fn aggregate(scores: &[Vec<f32>], how: Aggregation) -> Vec<f32> {
    let items = scores.first().map_or(0, |r| r.len());
    assert!(
        scores.iter().all(|r| r.len() == items),
        "every member scores every item"
    );
    (0..items)
        .map(|i| {
            let column = scores.iter().map(|r| r[i] as f64);
            let v = match how {
                Aggregation::Mean => moments(column).0,
                Aggregation::WorstCase => column.fold(f64::INFINITY, f64::min),
                Aggregation::Uncertainty { lambda } => {
                    let (mean, var) = moments(column);
                    mean - lambda as f64 * var
                }
            };
            v as f32
        })
        .collect()
}

/// The ensemble's disagreement: the mean over items of the members' standard deviation.
pub fn disagreement(scores: &[Vec<f32>]) -> f64 {
    let items = scores.first().map_or(0, |r| r.len());
    if items == 0 {
        return 0.0;
    }
    (0..items)
        .map(|i| moments(scores.iter().map(|r| r[i] as f64)).1.sqrt())
        .sum::<f64>()
        / items as f64
}

/// The mean and population variance of `x` (0 and 0 when empty).
fn moments(x: impl Iterator<Item = f64> + Clone) -> (f64, f64) {
    let n = x.clone().count();
    if n == 0 {
        return (0.0, 0.0);
    }
    let mean = x.clone().sum::<f64>() / n as f64;
    let var = x.map(|v| (v - mean).powi(2)).sum::<f64>() / n as f64;
    (mean, var)
}

fn sigmoid(z: f64) -> f64 {
    if z >= 0.0 {
        1.0 / (1.0 + (-z).exp())
    } else {
        let e = z.exp();
        e / (1.0 + e)
    }
}

/// `log(1 + e^z)`, without overflow.
fn softplus(z: f64) -> f64 {
    z.max(0.0) + (-z.abs()).exp().ln_1p()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The gradients are the losses' slopes (central differences in f64).
    #[test]
    fn gradients_match_finite_differences() {
        let (c, r, m) = (
            vec![0.3f32, -1.2, 2.5, 0.0],
            vec![0.1f32, 0.4, -3.0, 0.0],
            vec![0.0f32, 0.5, 1.0, -0.2],
        );
        let base = bradley_terry(&c, &r, Some(&m), 0.05);
        let h = 1e-3f32;
        for i in 0..c.len() {
            let bump = |v: &[f32], d: f32| {
                let mut v = v.to_vec();
                v[i] += d;
                v
            };
            let num = (bradley_terry(&bump(&c, h), &r, Some(&m), 0.05).loss
                - bradley_terry(&bump(&c, -h), &r, Some(&m), 0.05).loss)
                / (2.0 * h as f64);
            assert!(
                (num - base.grad_chosen[i] as f64).abs() < 1e-4,
                "chosen {i}: {num}"
            );
            let num = (bradley_terry(&c, &bump(&r, h), Some(&m), 0.05).loss
                - bradley_terry(&c, &bump(&r, -h), Some(&m), 0.05).loss)
                / (2.0 * h as f64);
            assert!(
                (num - base.grad_rejected[i] as f64).abs() < 1e-4,
                "rejected {i}: {num}"
            );
        }
        let (s, y) = (vec![2.0f32, -0.5, 0.0, -8.0], vec![1.0f32, 0.0, 0.3, 1.0]);
        let base = outcome_bce(&s, &y);
        for i in 0..s.len() {
            let bump = |d: f32| {
                let mut v = s.clone();
                v[i] += d;
                outcome_bce(&v, &y).loss
            };
            let num = (bump(h) - bump(-h)) / (2.0 * h as f64);
            assert!((num - base.grad[i] as f64).abs() < 1e-4, "bce {i}: {num}");
        }
    }

    #[test]
    fn extreme_scores_stay_finite() {
        let pl = bradley_terry(&[80.0], &[-80.0], None, 0.0);
        assert!(pl.loss >= 0.0 && pl.loss < 1e-30 && pl.grad_chosen[0] <= 0.0);
        let pl = bradley_terry(&[-80.0], &[80.0], None, 0.0);
        assert!((pl.loss - 160.0).abs() < 1e-9 && (pl.grad_chosen[0] + 1.0).abs() < 1e-6);
        let o = outcome_bce(&[1000.0, -1000.0], &[0.0, 0.0]);
        assert!((o.loss - 500.0).abs() < 1e-9 && o.grad.iter().all(|g| g.is_finite()));
    }

    #[test]
    fn ensembles_aggregate_by_item() {
        let scores = vec![vec![1.0f32, 0.0, 2.0], vec![3.0, 0.0, -2.0]];
        assert_eq!(aggregate(&scores, Aggregation::Mean), [2.0, 0.0, 0.0]);
        assert_eq!(aggregate(&scores, Aggregation::WorstCase), [1.0, 0.0, -2.0]);
        // Population variances 1, 0, 4.
        assert_eq!(
            aggregate(&scores, Aggregation::Uncertainty { lambda: 0.5 }),
            [1.5, 0.0, -2.0]
        );
        assert!((disagreement(&scores) - (1.0 + 0.0 + 2.0) / 3.0).abs() < 1e-12);
        // One member: every rule is that member.
        let one = vec![vec![0.25f32, -1.0]];
        for how in [
            Aggregation::Mean,
            Aggregation::WorstCase,
            Aggregation::Uncertainty { lambda: 3.0 },
        ] {
            assert_eq!(aggregate(&one, how), one[0]);
        }
        assert_eq!(disagreement(&one), 0.0);
    }

    #[test]
    fn calibration_of_perfect_and_overconfident_predictions() {
        // Predictions of 0.75 right three times in four: calibrated.
        let c = calibration(&[0.75; 4], &[1.0, 1.0, 1.0, 0.0], 10);
        assert!(c.ece.abs() < 1e-12, "{c:?}");
        assert!((c.brier - (3.0 * 0.0625 + 0.5625) / 4.0).abs() < 1e-12);
        // Always 0.9, right half the time: 0.4 off.
        let c = calibration(&[0.9; 4], &[1.0, 0.0, 1.0, 0.0], 10);
        assert!((c.ece - 0.4).abs() < 1e-6, "{c:?}");
        // Bins are (k/B, (k+1)/B]: 0 and 0.1 share the first of ten.
        let c = calibration(&[0.0, 0.1], &[0.0, 1.0], 10);
        assert!((c.ece - (1.0f64 - 0.1).abs() / 2.0).abs() < 1e-6, "{c:?}");
    }
}
