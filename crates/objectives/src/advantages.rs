//! Advantage estimators for policy-gradient objectives, on one reward per completion.
//!
//! Completions come in groups of `group_size` consecutive entries (the G samples of one
//! prompt). The estimators and their TRL / OpenRLHF counterparts:
//!
//! | estimator | advantage of completion i of group g |
//! | --- | --- |
//! | `reinforce` | `r_i − mean(r over the whole batch)` (REINFORCE with a batch-mean baseline) |
//! | `raw` | `r_i` (REINFORCE without a baseline; with 0/1 rewards, expert iteration as a policy gradient) |
//! | `rloo` | `r_i − mean(r_j, j ≠ i in g)` = `G/(G−1) · (r_i − mean_g)` (Ahmadian et al. 2024) |
//! | `grpo` | `(r_i − mean_g) / (std + 1e-4)`, std Bessel-corrected: of the group (`scale_rewards = group`, TRL's default), of the whole batch (`batch`), or no division (`none`) |
//! | `dr_grpo` | `r_i − mean_g` (Dr. GRPO: no std division; same as `grpo` with `none`) |

use serde::{Deserialize, Serialize};

/// Which baseline and scaling turn rewards into advantages.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AdvantageEstimator {
    Reinforce,
    Raw,
    Rloo,
    Grpo,
    DrGrpo,
}

/// What GRPO divides centred rewards by (TRL's `scale_rewards`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RewardScaling {
    /// The group's standard deviation.
    #[default]
    Group,
    /// The standard deviation of every reward in the batch.
    Batch,
    /// Nothing.
    None,
}

/// Advantages and the groups whose rewards were all equal.
#[derive(Clone, Debug, PartialEq)]
pub struct Advantages {
    pub values: Vec<f32>,
    /// Per group: whether its rewards have zero spread (no learning signal for group methods).
    pub zero_std: Vec<bool>,
}

fn mean(x: &[f64]) -> f64 {
    x.iter().sum::<f64>() / x.len().max(1) as f64
}

/// Bessel-corrected standard deviation (0 for fewer than two values), as `torch.std`.
fn std(x: &[f64]) -> f64 {
    if x.len() < 2 {
        return 0.0;
    }
    let m = mean(x);
    (x.iter().map(|v| (v - m) * (v - m)).sum::<f64>() / (x.len() - 1) as f64).sqrt()
}

/// Advantages of `rewards` (groups of `group_size` consecutive completions). `group_size`
/// must divide the batch; callers validate it (≥ 2 for the group estimators).
pub fn advantages(
    rewards: &[f32],
    group_size: usize,
    estimator: AdvantageEstimator,
    scaling: RewardScaling,
) -> Advantages {
    let r: Vec<f64> = rewards.iter().map(|&v| v as f64).collect();
    let g = group_size.max(1);
    let batch_mean = mean(&r);
    let batch_std = std(&r);
    let mut values = Vec::with_capacity(r.len());
    let mut zero_std = Vec::new();
    for group in r.chunks(g) {
        let m = mean(group);
        let s = std(group);
        zero_std.push(s.abs() < 1e-8);
        for &ri in group {
            let a = match estimator {
                AdvantageEstimator::Reinforce => ri - batch_mean,
                AdvantageEstimator::Raw => ri,
                AdvantageEstimator::Rloo if group.len() > 1 => {
                    (ri - m) * group.len() as f64 / (group.len() - 1) as f64
                }
                AdvantageEstimator::Rloo => 0.0,
                AdvantageEstimator::DrGrpo => ri - m,
                AdvantageEstimator::Grpo => match scaling {
                    RewardScaling::Group => (ri - m) / (s + 1e-4),
                    RewardScaling::Batch => (ri - m) / (batch_std + 1e-4),
                    RewardScaling::None => ri - m,
                },
            };
            values.push(a as f32);
        }
    }
    Advantages { values, zero_std }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_is_the_reward_and_reinforce_subtracts_the_batch_mean() {
        let r = [1.0, 0.0, 0.0, 0.0, 1.0, 1.0];
        let raw = advantages(&r, 3, AdvantageEstimator::Raw, RewardScaling::Group);
        assert_eq!(raw.values, r.to_vec());
        // Neither group has zero spread: (1, 0, 0) and (0, 1, 1).
        assert_eq!(raw.zero_std, vec![false, false]);
        let re = advantages(&r, 3, AdvantageEstimator::Reinforce, RewardScaling::Group);
        assert_eq!(re.values, vec![0.5, -0.5, -0.5, -0.5, 0.5, 0.5]);
        let same = advantages(
            &[1.0, 1.0],
            2,
            AdvantageEstimator::Raw,
            RewardScaling::Group,
        );
        assert_eq!(same.values, vec![1.0, 1.0]);
        assert_eq!(same.zero_std, vec![true]);
    }
}
