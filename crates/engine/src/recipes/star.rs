//! Expert iteration (STaR, ReST-EM): curation of verified-correct samples.
//!
//! How this differs from the papers:
//! - STaR (Zelikman et al., 2022) fine-tunes a pretrained model with few-shot prompting; here
//!   a model trained from scratch is warm-started on a small labeled set (the seed stage),
//!   and every later round sees only unlabeled problems and the verifier.
//! - Completions are deduplicated per problem (ReST-EM keeps duplicates; on tiny tasks
//!   duplicates would over-weight the easiest problems), and optionally capped per problem.
//! - Rationalization gives the answer as a `[answer]` prefix of the prompt (STaR writes it as
//!   a hint inside the few-shot prompt); the seed stage trains on hinted copies of the
//!   labeled set so the model learns the hint format, and a rationalized trace is trained
//!   without the hint, as in the paper.
//! - `restart_from = "seed"` fine-tunes M0 on each round's data (ReST-EM, the original
//!   STaR); `"previous"` continues from the last round's model (STaR's later variant).

use super::{resolve, section, Column, Family, Format, Recipe, Sections};
use crate::config::{
    check_temperature, check_train, Budget, Checkpoint, OptimizerConfig, RunConfig, SamplingConfig,
    TrainConfig,
};
use crate::controller::Decision;
use crate::monitor::{balance_score, round_monitors};
use crate::progress::{Observer, Silent};
use crate::run::{records, Manifest, Run, SampleRecord};
use crate::sampling::{sample_groups, sample_prompts};
use crate::store::RunDir;
use crate::{Error, Result};
use autodidact_core::{Example, Group, Problem, Task, TrainablePolicy};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use std::sync::Arc;

/// Expert iteration (`[star]`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StarConfig {
    /// Self-training rounds after the seed stage (0: seed stage only).
    pub rounds: u32,
    /// Unlabeled training problems sampled every round.
    pub problems: usize,
    /// How each round samples: `samples` completions per problem (k).
    pub sampling: SamplingConfig,
    /// Keep at most this many distinct correct completions per problem; 0 keeps all.
    pub max_per_problem: usize,
    /// For problems with no correct sample, sample again with the answer as a hint and keep
    /// one correct trace (trained without the hint).
    pub rationalize: bool,
    pub restart_from: Checkpoint,
    pub train: TrainConfig,
    pub optimizer: OptimizerConfig,
}

impl Default for StarConfig {
    fn default() -> Self {
        Self {
            rounds: 3,
            problems: 1000,
            sampling: SamplingConfig {
                samples: 4,
                ..SamplingConfig::default()
            },
            max_per_problem: 0,
            rationalize: false,
            restart_from: Checkpoint::Previous,
            train: TrainConfig::default(),
            optimizer: OptimizerConfig::default(),
        }
    }
}

/// The expert-iteration family: recipe `star`, section `[star]`.
pub struct ExpertIteration;

impl Family for ExpertIteration {
    fn recipes(&self) -> &'static [&'static str] {
        &["star"]
    }
    fn sections(&self) -> &'static [&'static str] {
        &["star"]
    }
    fn resolve(&self, name: &str, value: toml::Value) -> Result<toml::Value> {
        resolve::<StarConfig>(name, value)
    }
    fn build(&self, _recipe: &str, sections: &Sections) -> Result<Arc<dyn Recipe>> {
        let cfg: StarConfig = section(sections, "star")?;
        if cfg.problems == 0 {
            return Err(Error::config("star.problems", "must be at least 1"));
        }
        if cfg.sampling.samples == 0 {
            return Err(Error::config(
                "star.sampling.samples",
                "k must be at least 1",
            ));
        }
        cfg.sampling.check("star")?;
        check_train("star.train", &cfg.train)?;
        cfg.optimizer.check("star")?;
        Ok(Arc::new(Star { cfg }))
    }
}

/// Expert iteration with its settings.
pub struct Star {
    cfg: StarConfig,
}

const COLUMNS: &[Column] = &[
    Column {
        header: "kept",
        key: "star/kept",
        format: Format::Count,
    },
    Column {
        header: "distinct correct",
        key: "star/distinct",
        format: Format::Count,
    },
];

impl Recipe for Star {
    fn name(&self) -> &'static str {
        "star"
    }
    fn rounds(&self) -> u32 {
        self.cfg.rounds
    }
    fn pool(&self) -> (usize, String) {
        (self.cfg.problems, "star.problems".into())
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
            _ => self.train_stage(run, round, obs),
        }
    }
    fn check(&self, config: &RunConfig, _task: &dyn Task, budget: &Budget) -> Result<()> {
        let ctl = &config.controller;
        if config.reward.model.is_some() && (self.cfg.rationalize || ctl.balance) {
            return Err(Error::config(
                "reward.model",
                "star with a learned reward cannot rationalize (star.rationalize) or balance (controller.balance): both judge samples by the verifier's answers; turn them off",
            ));
        }
        if ctl.balance {
            if ctl.temperatures.is_empty() || ctl.probe_problems == 0 {
                return Err(Error::config(
                    "controller.balance",
                    "needs at least one temperature and one probe problem",
                ));
            }
            for (i, &t) in ctl.temperatures.iter().enumerate() {
                check_temperature(&format!("controller.temperatures[{i}]"), t)?;
            }
        }
        let st = &self.cfg;
        // Rationalization samples unsolved problems a second time.
        let copies = if st.rationalize { 2 } else { 1 };
        let kept = st
            .problems
            .saturating_mul(st.sampling.samples)
            .saturating_mul(copies as usize);
        budget.batch("star.train.batch_size", st.train.batch_size.min(kept))?;
        budget.held(
            "star.problems",
            st.problems,
            "star.sampling.samples",
            copies * st.sampling.samples as u64,
        )
    }
    fn balances(&self) -> bool {
        true
    }
    /// Hinted copies of the labeled set teach the hint format that rationalization prompts
    /// with.
    fn seed_examples(&self, run: &Run) -> Result<Vec<Example>> {
        if !self.cfg.rationalize {
            return Ok(Vec::new());
        }
        Ok(run
            .problems
            .labeled
            .iter()
            .filter_map(|p| {
                Some(Example::new(
                    run.plan.task.hinted_prompt(p)?,
                    p.solution.clone()?,
                ))
            })
            .collect())
    }
    fn seed_examples_per_labeled(&self) -> usize {
        if self.cfg.rationalize {
            2
        } else {
            1
        }
    }
    fn eval_line(&self, m: &Manifest, line: &mut Map<String, Value>) {
        let Some(c) = m.counts.as_ref().and_then(|c| Counts::deserialize(c).ok()) else {
            return;
        };
        for (k, v) in [
            ("sampled", c.sampled),
            ("correct", c.correct),
            ("solved", c.solved),
            ("distinct", c.distinct),
            ("kept", c.kept),
            ("rationalized", c.rationalized),
        ] {
            line.insert(format!("star/{k}"), json!(v));
        }
        line.insert("rollout/sampled_tokens".into(), json!(c.sampled_tokens));
    }
    fn takes_proxy_reward(&self) -> bool {
        true
    }
    fn columns(&self) -> &'static [Column] {
        COLUMNS
    }
}

/// What a round's curation found.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Counts {
    /// Completions sampled.
    pub sampled: usize,
    /// Of those, verified correct.
    pub correct: usize,
    /// Problems with at least one correct completion.
    pub solved: usize,
    /// Distinct correct completions (by text, per problem).
    pub distinct: usize,
    /// Examples kept for training (distinct, capped, plus rationalized).
    pub kept: usize,
    /// Problems without a correct sample that rationalization solved.
    pub rationalized: usize,
    /// Tokens generated (every completion, rationalization included).
    #[serde(default)]
    pub sampled_tokens: usize,
}

/// The completions of `g` curation keeps: the verified-correct ones, or with a learned
/// reward's `threshold` those whose reward reaches it; first occurrence of each text, at most
/// `max_per_problem` (0: all), in sampling order.
fn kept(g: &Group, max_per_problem: usize, threshold: Option<f32>) -> Vec<usize> {
    let idx = match threshold {
        None => g.distinct_correct(),
        Some(t) => g.distinct(|i| g.rewards[i] >= t),
    };
    capped(idx, max_per_problem)
}

/// `v` cut to its first `max` (0: all of it): a per-problem cap.
pub(crate) fn capped(mut v: Vec<usize>, max: usize) -> Vec<usize> {
    if max > 0 {
        v.truncate(max);
    }
    v
}

/// [`kept`] as one flag per completion of `g`.
pub fn kept_mask(g: &Group, max_per_problem: usize, threshold: Option<f32>) -> Vec<bool> {
    let mut mask = vec![false; g.completions.len()];
    for i in kept(g, max_per_problem, threshold) {
        mask[i] = true;
    }
    mask
}

/// Keeps the distinct verified-correct completions of each group (or, with a learned
/// reward's `threshold`, those it scores at least that; at most `max_per_problem` per
/// problem, 0 for all), in sampling order. Returns the examples and the counts.
pub fn curate(
    groups: &[Group],
    max_per_problem: usize,
    threshold: Option<f32>,
) -> (Vec<Example>, Counts) {
    let mut counts = Counts::default();
    let mut examples = Vec::new();
    for g in groups {
        counts.sampled += g.completions.len();
        counts.sampled_tokens += g.completions.iter().map(|c| c.tokens.len()).sum::<usize>();
        counts.correct += g.verdicts.iter().filter(|v| v.is_correct()).count();
        let distinct = g.distinct_correct().len();
        counts.distinct += distinct;
        counts.solved += (distinct > 0) as usize;
        for i in kept(g, max_per_problem, threshold) {
            examples.push(Example::new(
                g.problem.prompt.clone(),
                g.completions[i].text.clone(),
            ));
        }
    }
    counts.kept = examples.len();
    (examples, counts)
}

/// The first correct completion of each hinted group, trained under the problem's plain
/// prompt (the hint is dropped).
pub fn rationalized(groups: &[Group]) -> Vec<Example> {
    groups
        .iter()
        .filter_map(|g| {
            let i = g.verdicts.iter().position(|v| v.is_correct())?;
            Some(Example::new(
                g.problem.prompt.clone(),
                g.completions[i].text.clone(),
            ))
        })
        .collect()
}

impl Star {
    /// B-STaR balancing: samples the first `controller.probe_problems` pool problems at each
    /// of `controller.temperatures` (the same seeds for each, so temperatures are compared on
    /// common random numbers) and returns the temperature with the highest balance score
    /// (the first of equals), with every probed score.
    fn balance_temperature(
        &self,
        run: &Run,
        policy: &mut dyn TrainablePolicy,
        round: u32,
        obs: &mut dyn Observer,
    ) -> Result<Decision> {
        let (ctl, st) = (&run.plan.config.controller, &self.cfg);
        let pool = &run.problems.unlabeled;
        let probe = &pool[..ctl.probe_problems.min(pool.len())];
        obs.stage_started(
            &format!("r{round} balance"),
            (probe.len() * ctl.temperatures.len()) as u64,
        );
        let mut scores = Vec::new();
        for (i, &t) in ctl.temperatures.iter().enumerate() {
            let groups = sample_groups(
                policy,
                &*run.plan.task,
                probe,
                st.sampling.samples,
                &run.plan.sampling(&SamplingConfig {
                    temperature: t,
                    ..st.sampling.clone()
                }),
                run.seed(round, "probe"),
                &mut Silent,
            )?;
            let selected: Vec<Vec<bool>> = groups
                .iter()
                .map(|g| kept_mask(g, st.max_per_problem, None))
                .collect();
            let score = balance_score(&groups, &selected, run.plan.config.monitor.n_star);
            scores.push((t, score.unwrap_or(0.0)));
            obs.stage_progress(((i + 1) * probe.len()) as u64, 0);
        }
        let best = scores
            .iter()
            .copied()
            .reduce(|a, b| if b.1 > a.1 { b } else { a })
            .map(|(t, _)| t);
        obs.stage_finished(&format!(
            "r{round} balance: temperature {} ({})",
            best.map_or("–".into(), |t| t.to_string()),
            scores
                .iter()
                .map(|(t, b)| format!("{t}: {b:.3}"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
        Ok(Decision {
            temperature: best,
            probe: scores,
            ..Decision::default()
        })
    }

    /// Sample k completions per unlabeled problem, verify, keep the correct ones.
    fn sample_stage(&self, run: &mut Run, round: u32, obs: &mut dyn Observer) -> Result<()> {
        let parent = run.parent(round)?;
        let cfg = &self.cfg;
        let mut policy = run.load_policy(parent)?;
        let task = &*run.plan.task;
        let balance = run
            .plan
            .config
            .controller
            .balance
            .then(|| self.balance_temperature(run, &mut *policy, round, obs))
            .transpose()?;
        let temperature = balance
            .as_ref()
            .and_then(|d| d.temperature)
            .unwrap_or(cfg.sampling.temperature);
        let params = run.plan.sampling(&SamplingConfig {
            temperature,
            ..cfg.sampling.clone()
        });
        let (groups, proxy) =
            run.sample_pool(&mut *policy, round, cfg.sampling.samples, &params, obs)?;
        let threshold = run.plan.reward.as_ref().map(|r| r.threshold);
        let (mut examples, mut counts) = curate(&groups, cfg.max_per_problem, threshold);
        let selected: Vec<Vec<bool>> = groups
            .iter()
            .map(|g| kept_mask(g, cfg.max_per_problem, threshold))
            .collect();
        let mut monitors = round_monitors(&groups, &selected, run.plan.config.monitor.n_star);
        monitors.extend(proxy);
        let mut hinted_groups = Vec::new();
        if cfg.rationalize {
            let unsolved: Vec<Problem> = groups
                .iter()
                .filter(|g| !g.verdicts.iter().any(|v| v.is_correct()))
                .map(|g| g.problem.clone())
                .collect();
            let prompts: Vec<String> = unsolved
                .iter()
                .map(|p| task.hinted_prompt(p).unwrap_or_else(|| p.prompt.clone()))
                .collect();
            obs.stage_started(&format!("r{round} rationalize"), unsolved.len() as u64);
            hinted_groups = sample_prompts(
                &mut *policy,
                task,
                &unsolved,
                &prompts,
                cfg.sampling.samples,
                &params,
                run.seed(round, "rationalize"),
                obs,
            )?;
            counts.sampled_tokens += hinted_groups
                .iter()
                .flat_map(|g| &g.completions)
                .map(|c| c.tokens.len())
                .sum::<usize>();
            let extra = rationalized(&hinted_groups);
            counts.rationalized = extra.len();
            counts.kept += extra.len();
            examples.extend(extra);
        }
        let rd = RunDir::round_dir(round);
        let records: Vec<SampleRecord> = records(&groups, false)
            .chain(records(&hinted_groups, true))
            .collect();
        run.dir
            .write_jsonl(&format!("{rd}/samples.jsonl"), &records)?;
        run.dir
            .write_jsonl(&format!("{rd}/train.jsonl"), &examples)?;
        obs.stage_finished(&format!(
            "r{round} sample: {} sampled, {} correct, {} problems solved, {} kept ({} distinct, {} rationalized)",
            counts.sampled, counts.correct, counts.solved, counts.kept, counts.distinct, counts.rationalized
        ));
        let mut m = run.manifest(round)?;
        m.parent_checkpoint = Some(RunDir::checkpoint_dir(parent));
        m.settings = Some(json!({"star": cfg}));
        m.counts = Some(json!(counts));
        m.metrics = Some(monitors);
        m.controller = balance;
        run.hash_into(&mut m, &format!("{rd}/samples.jsonl"))?;
        run.hash_into(&mut m, &format!("{rd}/train.jsonl"))?;
        run.write_manifest(&m)
    }

    /// Fine-tune on the round's curated set, from M0 or the previous round's model.
    fn train_stage(&self, run: &mut Run, round: u32, obs: &mut dyn Observer) -> Result<()> {
        let init = self.cfg.restart_from.round(run.parent(round)?);
        run.sft_stage(round, init, &self.cfg.train, &self.cfg.optimizer, obs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use autodidact_core::{Completion, FinishReason, Problem, Verdict};

    fn group(id: &str, outs: &[(&str, bool)]) -> Group {
        Group {
            problem: Problem {
                id: id.into(),
                prompt: format!("{id}="),
                answer: None,
                solution: None,
                meta: None,
                messages: None,
            },
            completions: outs
                .iter()
                .map(|(t, _)| Completion {
                    text: t.to_string(),
                    tokens: vec![],
                    logprobs: vec![],
                    finish: FinishReason::Stop,
                    top_logprobs: Vec::new(),
                })
                .collect(),
            verdicts: outs
                .iter()
                .map(|&(t, ok)| {
                    if ok {
                        Verdict::correct(t.into())
                    } else {
                        Verdict::incorrect(t.into())
                    }
                })
                .collect(),
            rewards: outs.iter().map(|&(_, ok)| ok as u8 as f32).collect(),
        }
    }

    #[test]
    fn keeps_distinct_correct_completions() {
        let groups = [
            group("a", &[("x", true), ("x", true), ("y", true), ("z", false)]),
            group("b", &[("u", false), ("v", false)]),
            group("c", &[("w", true)]),
        ];
        let (kept, c) = curate(&groups, 0, None);
        assert_eq!(
            c,
            Counts {
                sampled: 7,
                correct: 4,
                solved: 2,
                distinct: 3,
                kept: 3,
                rationalized: 0,
                sampled_tokens: 0,
            }
        );
        assert_eq!(kept[0], Example::new("a=", "x"));
        let (kept, c) = curate(&groups, 1, None);
        assert_eq!((kept.len(), c.distinct, c.kept), (2, 3, 2));
        let r = rationalized(&groups);
        assert_eq!(r.len(), 2);
    }
}
