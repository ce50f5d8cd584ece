//! Best-of-n distillation (RAFT: Reward rAnked FineTuning, Dong et al., 2023): sample k
//! completions per problem, keep the highest-reward one if its reward clears a threshold, and
//! fine-tune on the kept ones.
//!
//! How this differs from the paper:
//! - the reward is the task verifier's score (RAFT ranks with a learned reward model); with
//!   0/1 scores and `threshold = 1`, a problem keeps its first correct sample, so RAFT is
//!   expert iteration capped at one completion per problem — the comparison it makes
//!   against `star` is one trace per problem against every distinct correct one;
//! - the best sample of each problem is kept if its reward reaches `threshold` (the paper
//!   keeps the best of each prompt, then optionally a top fraction of the batch);
//! - ties go to the first sample drawn; M0 comes from the seed stage, as for every recipe
//!   here.

use super::{resolve, section, Column, Family, Format, Recipe, Sections};
use crate::config::{
    check_train, Budget, Checkpoint, OptimizerConfig, RunConfig, SamplingConfig, TrainConfig,
};
use crate::monitor::round_monitors;
use crate::progress::Observer;
use crate::run::{records, Run};
use crate::sampling::sampled_tokens;
use crate::store::RunDir;
use crate::{Error, Result};
use autodidact_core::{Example, Group, Task};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::sync::Arc;

/// Best-of-n distillation (`[raft]`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RaftConfig {
    /// Rounds after the seed stage.
    pub rounds: u32,
    /// Unlabeled training problems sampled every round.
    pub problems: usize,
    /// How each round samples: `samples` completions per problem (n of best-of-n).
    pub sampling: SamplingConfig,
    /// A problem's best completion is kept only if its reward is at least this.
    pub threshold: f32,
    pub restart_from: Checkpoint,
    pub train: TrainConfig,
    pub optimizer: OptimizerConfig,
}

impl Default for RaftConfig {
    fn default() -> Self {
        Self {
            rounds: 3,
            problems: 1000,
            sampling: SamplingConfig {
                samples: 4,
                ..SamplingConfig::default()
            },
            threshold: 1.0,
            restart_from: Checkpoint::Previous,
            train: TrainConfig::default(),
            optimizer: OptimizerConfig::default(),
        }
    }
}

/// The best-of-n family: recipe `raft`, section `[raft]`.
pub struct BestOfN;

impl Family for BestOfN {
    fn recipes(&self) -> &'static [&'static str] {
        &["raft"]
    }
    fn sections(&self) -> &'static [&'static str] {
        &["raft"]
    }
    fn resolve(&self, name: &str, value: toml::Value) -> Result<toml::Value> {
        resolve::<RaftConfig>(name, value)
    }
    fn build(&self, _recipe: &str, sections: &Sections) -> Result<Arc<dyn Recipe>> {
        let cfg: RaftConfig = section(sections, "raft")?;
        if cfg.problems == 0 {
            return Err(Error::config("raft.problems", "must be at least 1"));
        }
        if cfg.sampling.samples == 0 {
            return Err(Error::config(
                "raft.sampling.samples",
                "n must be at least 1",
            ));
        }
        if !cfg.threshold.is_finite() {
            return Err(Error::config(
                "raft.threshold",
                format!("{} must be a finite number", cfg.threshold),
            ));
        }
        cfg.sampling.check("raft")?;
        check_train("raft.train", &cfg.train)?;
        cfg.optimizer.check("raft")?;
        Ok(Arc::new(Raft { cfg }))
    }
}

/// Best-of-n distillation with its settings.
pub struct Raft {
    cfg: RaftConfig,
}

const COLUMNS: &[Column] = &[
    Column {
        header: "kept",
        key: "raft/kept",
        format: Format::Count,
    },
    Column {
        header: "best reward",
        key: "raft/mean_best_reward",
        format: Format::Decimal,
    },
];

/// The index of the highest-reward completion of `g` (the first of equals), if it reaches
/// `threshold`.
pub fn best(g: &Group, threshold: f32) -> Option<usize> {
    let (i, &r) = g
        .rewards
        .iter()
        .enumerate()
        .reduce(|a, b| if b.1 > a.1 { b } else { a })?;
    (r >= threshold).then_some(i)
}

impl Recipe for Raft {
    fn name(&self) -> &'static str {
        "raft"
    }
    fn rounds(&self) -> u32 {
        self.cfg.rounds
    }
    fn pool(&self) -> (usize, String) {
        (self.cfg.problems, "raft.problems".into())
    }
    fn round_stages(&self) -> &'static [&'static str] {
        &["sample", "train"]
    }
    fn run_stage(
        &self,
        stage: &str,
        round: u32,
        run: &mut Run,
        obs: &mut dyn Observer,
    ) -> Result<()> {
        match stage {
            "sample" => self.sample_stage(run, round, obs),
            _ => {
                let init = self.cfg.restart_from.round(run.parent(round)?);
                run.sft_stage(round, init, &self.cfg.train, &self.cfg.optimizer, obs)
            }
        }
    }
    fn check(&self, _config: &RunConfig, _task: &dyn Task, budget: &Budget) -> Result<()> {
        let c = &self.cfg;
        budget.batch("raft.train.batch_size", c.train.batch_size.min(c.problems))?;
        budget.held(
            "raft.problems",
            c.problems,
            "raft.sampling.samples",
            c.sampling.samples as u64,
        )
    }
    fn takes_proxy_reward(&self) -> bool {
        true
    }
    fn columns(&self) -> &'static [Column] {
        COLUMNS
    }
}

impl Raft {
    /// Sample n completions per unlabeled problem and keep each problem's best.
    fn sample_stage(&self, run: &mut Run, round: u32, obs: &mut dyn Observer) -> Result<()> {
        let parent = run.parent(round)?;
        let cfg = &self.cfg;
        let mut policy = run.load_policy(parent)?;
        let params = run.plan.sampling(&cfg.sampling);
        let (groups, proxy) =
            run.sample_pool(&mut *policy, round, cfg.sampling.samples, &params, obs)?;
        let picks: Vec<Option<usize>> = groups.iter().map(|g| best(g, cfg.threshold)).collect();
        let examples: Vec<Example> = groups
            .iter()
            .zip(&picks)
            .filter_map(|(g, &i)| {
                Some(Example::new(
                    g.problem.prompt.clone(),
                    g.completions[i?].text.clone(),
                ))
            })
            .collect();
        let selected: Vec<Vec<bool>> = groups
            .iter()
            .zip(&picks)
            .map(|(g, &pick)| (0..g.completions.len()).map(|i| pick == Some(i)).collect())
            .collect();
        let mut metrics = round_monitors(&groups, &selected, run.plan.config.monitor.n_star);
        metrics.extend(proxy);
        let best_rewards: Vec<f64> = groups
            .iter()
            .filter_map(|g| g.rewards.iter().copied().reduce(f32::max))
            .map(f64::from)
            .collect();
        metrics.insert("raft/kept".into(), examples.len() as f64);
        metrics.insert(
            "raft/mean_best_reward".into(),
            best_rewards.iter().sum::<f64>() / best_rewards.len().max(1) as f64,
        );
        metrics.insert(
            "rollout/sampled_tokens".into(),
            sampled_tokens(&groups) as f64,
        );
        let rd = RunDir::round_dir(round);
        run.dir.write_jsonl(
            &format!("{rd}/samples.jsonl"),
            &records(&groups, false).collect::<Vec<_>>(),
        )?;
        run.dir
            .write_jsonl(&format!("{rd}/train.jsonl"), &examples)?;
        obs.stage_finished(&format!(
            "r{round} sample: {} problems, {} kept (best reward ≥ {})",
            groups.len(),
            examples.len(),
            cfg.threshold
        ));
        let mut m = run.manifest(round)?;
        m.parent_checkpoint = Some(RunDir::checkpoint_dir(parent));
        m.settings = Some(json!({ "raft": cfg }));
        m.metrics = Some(metrics);
        run.hash_into(&mut m, &format!("{rd}/samples.jsonl"))?;
        run.hash_into(&mut m, &format!("{rd}/train.jsonl"))?;
        run.write_manifest(&m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::group;

    #[test]
    fn keeps_the_first_best_sample_that_clears_the_threshold() {
        let mut g = group(
            "a",
            &[
                ("x", Some("1"), false),
                ("y", Some("2"), true),
                ("z", Some("2"), true),
            ],
        );
        g.rewards = vec![0.2, 0.9, 0.9];
        assert_eq!(best(&g, 0.5), Some(1), "ties go to the first sampled");
        assert_eq!(best(&g, 0.95), None, "below the threshold nothing is kept");
        g.rewards = vec![0.0; 3];
        assert_eq!(best(&g, 0.0), Some(0));
        g.rewards.clear();
        assert_eq!(best(&g, 0.0), None);
    }
}
