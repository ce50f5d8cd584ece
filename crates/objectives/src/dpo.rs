//! The DPO family of pairwise preference losses, as per-token weights.
//!
//! For pair p with chosen completion c and rejected completion r, let `s_c = Σ_t log π(c_t) −
//! log π_ref(c)` and `s_r` likewise (sequence log-probs summed over the completion's tokens,
//! the reference's precomputed), `Δ = s_c − s_r`, `σ` the logistic function and β the
//! temperature (TRL's default 0.1). Per pair:
//!
//! | loss | `ℓ_p` |
//! | --- | --- |
//! | `sigmoid` | `−(1−ε)·log σ(βΔ) − ε·log σ(−βΔ)` (DPO; ε > 0 is conservative DPO, cDPO) |
//! | `robust` | `(−(1−ε)·log σ(βΔ) + ε·log σ(−βΔ)) / (1 − 2ε)` (rDPO) |
//! | `hinge` | `max(0, 1 − βΔ)` (SLiC) |
//! | `ipo` | `(s_c/T_c − s_r/T_r − 1/(2β))²`, scores averaged over each completion's T tokens |
//! | `sppo_hard` | `(s_c − 1/(2β))² + (s_r + 1/(2β))²` |
//! | `nca_pair` | `−log σ(βs_c) − ½·log σ(−βs_c) − ½·log σ(−βs_r)` |
//! | `bco_pair` | `−log σ(βs_c) − log σ(−βs_r)` |
//! | `apo_zero` | `1 − σ(βs_c) + σ(βs_r)` |
//!
//! The batch loss is `Σ_p w_p·ℓ_p / P` over the P pairs of the optimizer batch, with per-pair
//! weights `w_p` (1 by default, which is TRL's mean; ScPO's vote margin otherwise). This
//! matches TRL 1.16's `DPOTrainer._compute_loss` with `f_divergence_type = "reverse_kl"`,
//! `ld_alpha = None`, `use_weighting = False` and precomputed reference log-probs, with one
//! exception: TRL 1.16's `sigmoid` has no label smoothing (ε = 0 here matches it exactly; ε > 0
//! is the cDPO form of TRL before 1.0). The metrics keep TRL's names and definitions
//! (`rewards/*` from the summed log-ratios, also for `ipo`).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Which pairwise loss.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DpoLoss {
    #[default]
    Sigmoid,
    Robust,
    Hinge,
    Ipo,
    SppoHard,
    NcaPair,
    BcoPair,
    ApoZero,
}

impl DpoLoss {
    pub const ALL: [DpoLoss; 8] = [
        DpoLoss::Sigmoid,
        DpoLoss::Robust,
        DpoLoss::Hinge,
        DpoLoss::Ipo,
        DpoLoss::SppoHard,
        DpoLoss::NcaPair,
        DpoLoss::BcoPair,
        DpoLoss::ApoZero,
    ];

    /// TRL's `loss_type` string.
    pub fn name(self) -> &'static str {
        match self {
            DpoLoss::Sigmoid => "sigmoid",
            DpoLoss::Robust => "robust",
            DpoLoss::Hinge => "hinge",
            DpoLoss::Ipo => "ipo",
            DpoLoss::SppoHard => "sppo_hard",
            DpoLoss::NcaPair => "nca_pair",
            DpoLoss::BcoPair => "bco_pair",
            DpoLoss::ApoZero => "apo_zero",
        }
    }
}

/// Settings of the loss.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DpoSettings {
    pub loss: DpoLoss,
    /// β (> 0).
    pub beta: f32,
    /// ε of `sigmoid` (cDPO) and `robust`, in [0, 0.5); ignored by the other losses.
    pub label_smoothing: f32,
}

impl Default for DpoSettings {
    fn default() -> Self {
        Self {
            loss: DpoLoss::Sigmoid,
            beta: 0.1,
            label_smoothing: 0.0,
        }
    }
}

/// One micro-batch of pairs: row p of each field belongs to pair p.
pub struct DpoInputs<'a> {
    /// Per-token log-probs of each chosen completion under the policy.
    pub chosen: &'a [Vec<f32>],
    /// Per-token log-probs of each rejected completion under the policy.
    pub rejected: &'a [Vec<f32>],
    /// Summed log-probs of each chosen completion under the reference.
    pub ref_chosen: &'a [f32],
    /// Summed log-probs of each rejected completion under the reference.
    pub ref_rejected: &'a [f32],
    /// Per-pair weights (`None`: all 1).
    pub weights: Option<&'a [f32]>,
}

/// Sums over the micro-batch's pairs (they add across micro-batches; divide by `pairs`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DpoStats {
    pub pairs: usize,
    /// Σ β·s_c.
    pub rewards_chosen: f64,
    /// Σ β·s_r.
    pub rewards_rejected: f64,
    /// Pairs with β·s_c > β·s_r.
    pub correct_order: usize,
    /// Σ log π(c), Σ log π(r).
    pub logps_chosen: f64,
    pub logps_rejected: f64,
}

impl DpoStats {
    pub fn add(&mut self, o: &DpoStats) {
        self.pairs += o.pairs;
        self.rewards_chosen += o.rewards_chosen;
        self.rewards_rejected += o.rewards_rejected;
        self.correct_order += o.correct_order;
        self.logps_chosen += o.logps_chosen;
        self.logps_rejected += o.logps_rejected;
    }

    /// Means under TRL's metric names.
    pub fn metrics(&self) -> BTreeMap<String, f64> {
        let n = self.pairs.max(1) as f64;
        [
            ("rewards/chosen", self.rewards_chosen / n),
            ("rewards/rejected", self.rewards_rejected / n),
            ("rewards/accuracies", self.correct_order as f64 / n),
            (
                "rewards/margins",
                (self.rewards_chosen - self.rewards_rejected) / n,
            ),
            ("logps/chosen", self.logps_chosen / n),
            ("logps/rejected", self.logps_rejected / n),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }
}

/// The loss of a micro-batch and its weights.
#[derive(Clone, Debug, PartialEq)]
pub struct DpoOutput {
    /// This micro-batch's share of the batch loss.
    pub loss: f64,
    /// `−∂loss/∂log π(c_t)`, shaped like `chosen`.
    pub chosen_weights: Vec<Vec<f32>>,
    /// `−∂loss/∂log π(r_t)`, shaped like `rejected`.
    pub rejected_weights: Vec<Vec<f32>>,
    pub stats: DpoStats,
}

/// `log σ(x)`, stable for large |x|.
fn log_sigmoid(x: f64) -> f64 {
    if x >= 0.0 {
        -(-x).exp().ln_1p()
    } else {
        x - x.exp().ln_1p()
    }
}

fn sigmoid(x: f64) -> f64 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

/// Per pair: the loss and its derivatives with respect to `s_c` and `s_r` (for `ipo`, with
/// respect to the length-averaged scores; the caller divides by the lengths).
fn pair_loss(s: &DpoSettings, sc: f64, sr: f64) -> (f64, f64, f64) {
    let b = s.beta as f64;
    let eps = s.label_smoothing as f64;
    let d = sc - sr;
    match s.loss {
        DpoLoss::Sigmoid => {
            let l = -(1.0 - eps) * log_sigmoid(b * d) - eps * log_sigmoid(-b * d);
            let g = -(1.0 - eps) * b * sigmoid(-b * d) + eps * b * sigmoid(b * d);
            (l, g, -g)
        }
        DpoLoss::Robust => {
            let k = 1.0 - 2.0 * eps;
            let l = (-(1.0 - eps) * log_sigmoid(b * d) + eps * log_sigmoid(-b * d)) / k;
            let g = (-(1.0 - eps) * b * sigmoid(-b * d) - eps * b * sigmoid(b * d)) / k;
            (l, g, -g)
        }
        DpoLoss::Hinge => {
            let m = 1.0 - b * d;
            if m > 0.0 {
                (m, -b, b)
            } else {
                (0.0, 0.0, 0.0)
            }
        }
        DpoLoss::Ipo => {
            let e = d - 1.0 / (2.0 * b);
            (e * e, 2.0 * e, -2.0 * e)
        }
        DpoLoss::SppoHard => {
            let (ec, er) = (sc - 0.5 / b, sr + 0.5 / b);
            (ec * ec + er * er, 2.0 * ec, 2.0 * er)
        }
        DpoLoss::NcaPair => {
            let (a, r) = (b * sc, b * sr);
            let l = -log_sigmoid(a) - 0.5 * log_sigmoid(-a) - 0.5 * log_sigmoid(-r);
            (
                l,
                b * (-sigmoid(-a) + 0.5 * sigmoid(a)),
                b * 0.5 * sigmoid(r),
            )
        }
        DpoLoss::BcoPair => {
            let (a, r) = (b * sc, b * sr);
            let l = -log_sigmoid(a) - log_sigmoid(-r);
            (l, -b * sigmoid(-a), b * sigmoid(r))
        }
        DpoLoss::ApoZero => {
            let (a, r) = (b * sc, b * sr);
            let l = 1.0 - sigmoid(a) + sigmoid(r);
            (
                l,
                -b * sigmoid(a) * sigmoid(-a),
                b * sigmoid(r) * sigmoid(-r),
            )
        }
    }
}

/// The loss of one micro-batch of pairs whose optimizer batch holds `batch_pairs` pairs.
pub fn dpo(s: &DpoSettings, x: &DpoInputs, batch_pairs: usize) -> DpoOutput {
    let n = x.chosen.len();
    let scale = 1.0 / batch_pairs.max(1) as f64;
    let b = s.beta as f64;
    let mut out = DpoOutput {
        loss: 0.0,
        chosen_weights: Vec::with_capacity(n),
        rejected_weights: Vec::with_capacity(n),
        stats: DpoStats {
            pairs: n,
            ..DpoStats::default()
        },
    };
    for p in 0..n {
        let sum = |v: &[f32]| v.iter().map(|&l| l as f64).sum::<f64>();
        let (lc, lr) = (sum(&x.chosen[p]), sum(&x.rejected[p]));
        let sc = lc - x.ref_chosen[p] as f64;
        let sr = lr - x.ref_rejected[p] as f64;
        let (tc, tr) = (x.chosen[p].len().max(1), x.rejected[p].len().max(1));
        let (l, gc, gr) = match s.loss {
            DpoLoss::Ipo => {
                let (l, gc, gr) = pair_loss(s, sc / tc as f64, sr / tr as f64);
                (l, gc / tc as f64, gr / tr as f64)
            }
            _ => pair_loss(s, sc, sr),
        };
        let w = x.weights.map_or(1.0, |w| w[p] as f64) * scale;
        out.loss += w * l;
        out.chosen_weights
            .push(vec![(-w * gc) as f32; x.chosen[p].len()]);
        out.rejected_weights
            .push(vec![(-w * gr) as f32; x.rejected[p].len()]);
        let st = &mut out.stats;
        st.rewards_chosen += b * sc;
        st.rewards_rejected += b * sr;
        st.correct_order += (b * sc > b * sr) as usize;
        st.logps_chosen += lc;
        st.logps_rejected += lr;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(seed: u64, n: usize) -> Vec<Vec<f32>> {
        let mut r = seed;
        let mut next = move || {
            r = r
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((r >> 33) as f64 / (1u64 << 31) as f64) as f32
        };
        (0..n)
            .map(|i| (0..3 + i % 4).map(|_| -3.0 * next()).collect())
            .collect()
    }

    fn batch_loss(
        s: &DpoSettings,
        c: &[Vec<f32>],
        r: &[Vec<f32>],
        rc: &[f32],
        rr: &[f32],
        w: &[f32],
    ) -> f64 {
        let x = DpoInputs {
            chosen: c,
            rejected: r,
            ref_chosen: rc,
            ref_rejected: rr,
            weights: Some(w),
        };
        dpo(s, &x, c.len()).loss
    }

    /// Every loss's weights are −∂loss/∂log p by central differences in f64-ish precision.
    #[test]
    fn weights_match_finite_differences() {
        let (c, r) = (rows(1, 5), rows(2, 5));
        let rc: Vec<f32> = c.iter().map(|v| v.iter().sum::<f32>() + 0.3).collect();
        let rr: Vec<f32> = r.iter().map(|v| v.iter().sum::<f32>() - 0.2).collect();
        let w = [1.0, 0.5, 2.0, 1.0, 0.25];
        for loss in DpoLoss::ALL {
            for beta in [0.1f32, 0.5] {
                let s = DpoSettings {
                    loss,
                    beta,
                    label_smoothing: 0.1,
                };
                let x = DpoInputs {
                    chosen: &c,
                    rejected: &r,
                    ref_chosen: &rc,
                    ref_rejected: &rr,
                    weights: Some(&w),
                };
                let out = dpo(&s, &x, c.len());
                let h = 1e-2f32;
                for (which, rows_, weights) in
                    [(0, &c, &out.chosen_weights), (1, &r, &out.rejected_weights)]
                {
                    for p in 0..rows_.len() {
                        for t in 0..rows_[p].len() {
                            let mut plus = rows_.clone();
                            plus[p][t] += h;
                            let mut minus = rows_.clone();
                            minus[p][t] -= h;
                            let (lp, lm) = if which == 0 {
                                (
                                    batch_loss(&s, &plus, &r, &rc, &rr, &w),
                                    batch_loss(&s, &minus, &r, &rc, &rr, &w),
                                )
                            } else {
                                (
                                    batch_loss(&s, &c, &plus, &rc, &rr, &w),
                                    batch_loss(&s, &c, &minus, &rc, &rr, &w),
                                )
                            };
                            let fd = -(lp - lm) / (2.0 * h as f64);
                            let got = weights[p][t] as f64;
                            assert!(
                                (fd - got).abs() < 2e-3 * (1.0 + got.abs()),
                                "{} β={beta} pair {p} token {t} side {which}: fd {fd} vs {got}",
                                loss.name()
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn micro_batches_add_up() {
        let (c, r) = (rows(3, 6), rows(4, 6));
        let rc = vec![-5.0f32; 6];
        let rr = vec![-4.0f32; 6];
        let s = DpoSettings::default();
        let whole = dpo(
            &s,
            &DpoInputs {
                chosen: &c,
                rejected: &r,
                ref_chosen: &rc,
                ref_rejected: &rr,
                weights: None,
            },
            6,
        );
        let mut loss = 0.0;
        let mut stats = DpoStats::default();
        for k in [0..2, 2..6] {
            let part = dpo(
                &s,
                &DpoInputs {
                    chosen: &c[k.clone()],
                    rejected: &r[k.clone()],
                    ref_chosen: &rc[k.clone()],
                    ref_rejected: &rr[k.clone()],
                    weights: None,
                },
                6,
            );
            loss += part.loss;
            stats.add(&part.stats);
            assert_eq!(part.chosen_weights[..], whole.chosen_weights[k.clone()]);
        }
        assert!((loss - whole.loss).abs() < 1e-12);
        assert_eq!(stats, whole.stats);
    }

    /// At the reference (Δ = 0) DPO's loss is log 2 and the chosen side's weight is β/2 per
    /// token: the closed form of the first step.
    #[test]
    fn sigmoid_at_the_reference_is_log_two() {
        let c = vec![vec![-1.0f32, -2.0]];
        let r = vec![vec![-0.5f32]];
        let out = dpo(
            &DpoSettings::default(),
            &DpoInputs {
                chosen: &c,
                rejected: &r,
                ref_chosen: &[-3.0],
                ref_rejected: &[-0.5],
                weights: None,
            },
            1,
        );
        assert!((out.loss - std::f64::consts::LN_2).abs() < 1e-9);
        assert_eq!(out.chosen_weights, vec![vec![0.05f32, 0.05]]);
        assert_eq!(out.rejected_weights, vec![vec![-0.05f32]]);
        assert_eq!(out.stats.correct_order, 0);
    }
}
