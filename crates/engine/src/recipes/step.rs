//! Step-level credit (`step-pg`): a policy gradient whose advantage changes along the trace,
//! step by step, using positive and negative samples alike.
//!
//! Each round samples `samples` completions of every unlabeled problem, as expert iteration
//! does. Then, for every completion, it estimates the value of each of its step prefixes:
//! the fraction of `rollouts` continuations from that prefix that the verifier accepts
//! (Math-Shepherd). The value before the first step is the group's mean outcome, and the
//! value of the whole completion is its verdict. A step's advantage is the change in value it
//! made, `A_i = V_i − V_{i−1}`. Every token of the step carries that advantage, and a
//! clipped surrogate trains on the round's rollouts in `epochs` passes of
//! `batch_size`-completion steps, with the sampling log-probs as the old policy. Steps that
//! keep the value where it was carry no weight. A wrong step in a trace that was right until
//! then is pushed down, and the steps before it are pushed up.
//!
//! How this differs from the papers:
//! - Setlur et al. (2024), "RL on incorrect synthetic data", weigh per-step advantages
//!   estimated the same way, but train them with a per-step DPO objective on a pretrained
//!   model. Here the advantage weights a clipped policy gradient (the engine's `pg`
//!   objective), on a model trained from scratch in the seed stage.
//! - Math-Shepherd continues prefixes with a separate completer. Here the continuations
//!   come from the policy that wrote the samples, at the round's temperature. A prefix
//!   repeated across samples of a problem is continued once (`steps::PrefixCache`), which is
//!   where most of the cost goes.
//! - `credit = "outcome"` gives every token the whole completion's advantage
//!   (`V_last − V_0`, REINFORCE with the group mean as baseline) with everything else
//!   unchanged: the ablation that isolates step credit.
//! - `baseline = "none"` measures from `V_0 = 0` instead of the group's mean. Then a right
//!   trace's steps share a credit of 1 and a wrong trace's add up to 0: credit for the steps
//!   before its first pit, blame at the pit. With `credit = "outcome"` this is training on
//!   the positives alone (every token of a right completion weighted 1, a wrong one 0), the
//!   positive-only comparison of Setlur et al. in the same harness.
//! - Completions whose every token has advantage 0 (a group all right whose prefixes all
//!   kept value 1) are left out of the update; `step/trained` counts the rest.
//!
//! `first-pit` (Self-Explore, Hwang et al. 2024) spends the same step values on preference
//! pairs instead. A wrong completion's first pit is its first step whose value is 0: no
//! continuation from the prefix that ends with it reached a right answer. The prefix before
//! the pit still had value, so one of its continuations was right. That continuation is
//! chosen over the completion's own remainder, with the prompt extended by the prefix, and
//! the pairs train with the DPO family (`[step.dpo]`). Where the paper samples fresh
//! continuations from the prefix before the pit, the chosen side here is one of the rollouts
//! that estimated its value (kept by the `PrefixCache`). A pit at the first step has no
//! prefix: the chosen side is then a right sample of the same problem, a `dpo-verified`
//! pair.

use super::pg::{offline_pg_stage, OfflineUpdate};
use super::pref::{dpo_stage, DpoRound};
use super::{resolve, section, Column, Family, Format, Recipe, Sections};
use crate::config::{Budget, Checkpoint, OptimizerConfig, RunConfig, SamplingConfig, TrainConfig};
use crate::monitor::round_monitors;
use crate::pairs::Pair;
use crate::progress::Observer;
use crate::run::{records, Run, SampleRecord};
use crate::sampling::sampled_tokens;
use crate::steps::{shared_step_values, step_advantages, token_steps, PrefixCache, StepPattern};
use crate::store::RunDir;
use crate::trainer::RolloutLine;
use crate::{Error, Result};
use autodidact_core::{Group, Task, Tokenizer};
use autodidact_objectives::{DpoLoss, LossAggregation};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::Arc;

/// Where a token's advantage comes from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Credit {
    /// The change in value its step made.
    #[default]
    Step,
    /// The whole completion's: its outcome less the group's mean (the ablation).
    Outcome,
}

/// The value before the first step, from which the first step's advantage is measured.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Baseline {
    /// The group's mean outcome (an estimate of the problem's value): advantages are
    /// centred, and a group that is all right or all wrong adds up to zero.
    #[default]
    GroupMean,
    /// 0: a right completion's steps share a credit of 1, a wrong one's add up to 0 (credit
    /// for the steps before its first pit, blame at the pit).
    None,
}

/// Step-level credit (`[step]`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StepConfig {
    /// Rounds after the seed stage.
    pub rounds: u32,
    /// Unlabeled training problems sampled every round.
    pub problems: usize,
    /// How each round samples: `samples` completions per problem. The step continuations
    /// use the same temperature.
    pub sampling: SamplingConfig,
    /// Continuations per step prefix (k of the value estimate; its variance is v(1 − v)/k).
    pub rollouts: usize,
    /// A regular expression after each match of which a step ends (default: the task's
    /// trace separators, `[;#]` for the built-in tasks).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step_pattern: Option<String>,
    pub credit: Credit,
    pub baseline: Baseline,
    pub restart_from: Checkpoint,
    /// Passes over a round's rollouts.
    pub epochs: u32,
    /// Completions per optimizer step.
    pub batch_size: usize,
    /// Completions per forward/backward pass (memory only).
    pub micro_batch_size: usize,
    /// Clip range of the ratio to the sampling policy.
    pub epsilon_low: f32,
    pub epsilon_high: f32,
    pub loss_aggregation: LossAggregation,
    pub optimizer: OptimizerConfig,
    /// `first-pit`'s pairs and their training.
    pub dpo: FirstPitConfig,
}

/// `first-pit`'s pairs and their DPO-family training (`[step.dpo]`); the optimizer is
/// `[step.optimizer]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FirstPitConfig {
    /// Pairs from one problem at most, one per distinct wrong completion (0: all).
    pub pairs_per_problem: usize,
    pub loss: DpoLoss,
    /// β of the DPO-family loss.
    pub beta: f32,
    /// ε of `sigmoid` (cDPO) and `robust`.
    pub label_smoothing: f32,
    /// Weight of an NLL term on the chosen continuations (0: the pairwise loss alone).
    pub sft_coef: f32,
    /// The reference model: M0 or the previous round's.
    pub reference: Checkpoint,
    /// Steps and batches; `batch_size` counts pairs.
    pub train: TrainConfig,
}

impl Default for FirstPitConfig {
    fn default() -> Self {
        Self {
            pairs_per_problem: 0,
            loss: DpoLoss::Sigmoid,
            beta: 0.1,
            label_smoothing: 0.0,
            sft_coef: 0.0,
            reference: Checkpoint::Previous,
            train: TrainConfig {
                epochs: Some(2.0),
                ..TrainConfig::default()
            },
        }
    }
}

impl FirstPitConfig {
    fn loss(&self) -> DpoRound {
        DpoRound {
            loss: self.loss,
            beta: self.beta,
            label_smoothing: self.label_smoothing,
            sft_coef: self.sft_coef,
            reference: self.reference,
        }
    }
}

impl Default for StepConfig {
    fn default() -> Self {
        Self {
            rounds: 3,
            problems: 1000,
            sampling: SamplingConfig {
                samples: 4,
                ..SamplingConfig::default()
            },
            rollouts: 4,
            step_pattern: None,
            credit: Credit::Step,
            baseline: Baseline::GroupMean,
            restart_from: Checkpoint::Previous,
            epochs: 4,
            batch_size: 32,
            micro_batch_size: 32,
            epsilon_low: 0.2,
            epsilon_high: 0.2,
            loss_aggregation: LossAggregation::Token,
            optimizer: OptimizerConfig::default(),
            dpo: FirstPitConfig::default(),
        }
    }
}

/// The step-credit family: recipes `step-pg` and `first-pit`, section `[step]`.
pub struct StepCredit;

/// What a round does with its step values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// `step-pg`: per-token advantages for a policy gradient.
    Pg,
    /// `first-pit`: preference pairs at each wrong completion's first pit.
    FirstPit,
}

impl Family for StepCredit {
    fn recipes(&self) -> &'static [&'static str] {
        &["step-pg", "first-pit"]
    }
    fn sections(&self) -> &'static [&'static str] {
        &["step"]
    }
    fn resolve(&self, name: &str, value: toml::Value) -> Result<toml::Value> {
        resolve::<StepConfig>(name, value)
    }
    fn build(&self, recipe: &str, sections: &Sections) -> Result<Arc<dyn Recipe>> {
        let cfg: StepConfig = section(sections, "step")?;
        let kind = if recipe == "first-pit" {
            Kind::FirstPit
        } else {
            Kind::Pg
        };
        let at_least_one = |key: &str, v: usize| {
            if v == 0 {
                Err(Error::config(key, "must be at least 1"))
            } else {
                Ok(())
            }
        };
        at_least_one("step.problems", cfg.problems)?;
        at_least_one("step.sampling.samples", cfg.sampling.samples)?;
        at_least_one("step.rollouts", cfg.rollouts)?;
        at_least_one("step.epochs", cfg.epochs as usize)?;
        at_least_one("step.batch_size", cfg.batch_size)?;
        at_least_one("step.micro_batch_size", cfg.micro_batch_size)?;
        for (key, e) in [
            ("step.epsilon_low", cfg.epsilon_low),
            ("step.epsilon_high", cfg.epsilon_high),
        ] {
            if !(0.0..1.0).contains(&e) {
                return Err(Error::config(
                    key,
                    format!("{e} is not a clip range; use a number in [0, 1), e.g. 0.2"),
                ));
            }
        }
        if let Some(p) = &cfg.step_pattern {
            StepPattern::new("step.step_pattern", p)?;
        }
        cfg.sampling.check("step")?;
        cfg.optimizer.check("step")?;
        if kind == Kind::FirstPit {
            cfg.dpo.loss().check("step.dpo", &cfg.dpo.train)?;
        }
        Ok(Arc::new(StepPg { kind, cfg }))
    }
}

/// Step-level credit with its settings.
pub struct StepPg {
    kind: Kind,
    cfg: StepConfig,
}

const COLUMNS: &[Column] = &[
    Column {
        header: "trained",
        key: "step/trained",
        format: Format::Count,
    },
    Column {
        header: "prefixes continued",
        key: "step/prefixes",
        format: Format::Count,
    },
];

const PIT_COLUMNS: &[Column] = &[
    Column {
        header: "pairs",
        key: "step/pairs",
        format: Format::Count,
    },
    Column {
        header: "prefixes continued",
        key: "step/prefixes",
        format: Format::Count,
    },
];

impl Recipe for StepPg {
    fn name(&self) -> &'static str {
        match self.kind {
            Kind::Pg => "step-pg",
            Kind::FirstPit => "first-pit",
        }
    }
    fn rounds(&self) -> u32 {
        self.cfg.rounds
    }
    fn pool(&self) -> (usize, String) {
        (self.cfg.problems, "step.problems".into())
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
    fn check(&self, _config: &RunConfig, task: &dyn Task, budget: &Budget) -> Result<()> {
        self.pattern(task)?;
        let c = &self.cfg;
        match self.kind {
            Kind::Pg => budget.batch("step.micro_batch_size", c.micro_batch_size)?,
            Kind::FirstPit => {
                budget.batch("step.dpo.train.batch_size", 2 * c.dpo.train.batch_size)?
            }
        }
        budget.held(
            "step.problems",
            c.problems,
            "step.sampling.samples",
            c.sampling.samples as u64,
        )
    }
    fn columns(&self) -> &'static [Column] {
        match self.kind {
            Kind::Pg => COLUMNS,
            Kind::FirstPit => PIT_COLUMNS,
        }
    }
}

impl StepPg {
    /// The steps' pattern: the setting's, or the task's.
    fn pattern(&self, task: &dyn Task) -> Result<StepPattern> {
        StepPattern::for_task("step.step_pattern", self.cfg.step_pattern.as_deref(), task)
    }

    /// Samples the pool, estimates every step's value, and writes the round's rollouts with
    /// an advantage per token (`train.jsonl`) beside its samples.
    fn sample_stage(&self, run: &mut Run, round: u32, obs: &mut dyn Observer) -> Result<()> {
        let cfg = &self.cfg;
        let parent = run.parent(round)?;
        let mut policy = run.load_policy(parent)?;
        let params = run.plan.sampling(&cfg.sampling);
        let (groups, proxy) =
            run.sample_pool(&mut *policy, round, cfg.sampling.samples, &params, obs)?;
        let task = &*run.plan.task;
        let pattern = self.pattern(task)?;
        let mut cache = PrefixCache::default();
        let values = shared_step_values(
            &mut *policy,
            task,
            &groups,
            &pattern,
            cfg.rollouts,
            &params,
            run.seed(round, "steps"),
            (&mut cache, &format!("r{round} step values")),
            obs,
        )?;
        let mut metrics = BTreeMap::from([
            (
                "rollout/sampled_tokens".to_string(),
                sampled_tokens(&groups) as f64,
            ),
            ("step/prefixes".into(), cache.len() as f64),
            ("step/cache_hit_rate".into(), cache.hit_rate()),
            ("step/value_variance".into(), cache.mean_variance()),
        ]);
        metrics.extend(proxy);
        let rd = RunDir::round_dir(round);
        let train = format!("{rd}/train.jsonl");
        let (selected, counts, summary) = match self.kind {
            Kind::Pg => {
                let credit = credit(
                    &groups,
                    &values,
                    &pattern,
                    (cfg.credit, cfg.baseline),
                    policy.tokenizer(),
                )?;
                let lines: Vec<&RolloutLine> = credit
                    .lines
                    .iter()
                    .filter(|l| l.trained)
                    .map(|l| &l.line)
                    .collect();
                metrics.insert("step/trained".into(), lines.len() as f64);
                metrics.extend(credit.metrics);
                run.dir.write_jsonl(&train, &lines)?;
                (
                    credit.selected,
                    json!({"trained": lines.len(), "prefixes": cache.len(), "sampled": credit.lines.len()}),
                    format!(
                        "{} of {} completions carry credit",
                        lines.len(),
                        credit.lines.len()
                    ),
                )
            }
            Kind::FirstPit => {
                let pits = first_pit_pairs(
                    &groups,
                    &values,
                    &pattern,
                    &cache,
                    cfg.dpo.pairs_per_problem,
                );
                metrics.extend(pits.metrics);
                run.dir.write_jsonl(&train, &pits.pairs)?;
                let selected = groups
                    .iter()
                    .map(|g| g.verdicts.iter().map(|v| v.is_correct()).collect())
                    .collect();
                (
                    selected,
                    json!({"pairs": pits.pairs.len(), "prefixes": cache.len()}),
                    format!("{} first-pit pairs", pits.pairs.len()),
                )
            }
        };
        metrics.extend(round_monitors(
            &groups,
            &selected,
            run.plan.config.monitor.n_star,
        ));
        let samples: Vec<SampleRecord> = records(&groups, false).collect();
        run.dir
            .write_jsonl(&format!("{rd}/samples.jsonl"), &samples)?;
        obs.stage_finished(&format!(
            "r{round} step values: {} prefixes continued ({:.0}% of asks answered from the cache), {summary}",
            cache.len(),
            100.0 * cache.hit_rate(),
        ));
        let mut m = run.manifest(round)?;
        m.parent_checkpoint = Some(RunDir::checkpoint_dir(parent));
        m.settings = Some(json!({"step": cfg}));
        m.counts = Some(counts);
        m.metrics = Some(metrics);
        run.hash_into(&mut m, &format!("{rd}/samples.jsonl"))?;
        run.hash_into(&mut m, &train)?;
        run.write_manifest(&m)
    }

    /// The clipped surrogate with per-token advantages on the round's rollouts, from M0 or
    /// the previous round's model, with a fresh optimizer.
    fn train_stage(&self, run: &mut Run, round: u32, obs: &mut dyn Observer) -> Result<()> {
        let c = &self.cfg;
        if self.kind == Kind::FirstPit {
            return dpo_stage(
                run,
                round,
                &c.dpo.loss(),
                0.0,
                &c.dpo.train,
                &c.optimizer,
                obs,
            );
        }
        let update = OfflineUpdate {
            epochs: c.epochs,
            batch_size: c.batch_size,
            micro_batch_size: c.micro_batch_size,
            epsilon_low: c.epsilon_low,
            epsilon_high: c.epsilon_high,
            loss_aggregation: c.loss_aggregation,
            kl_estimator: autodidact_objectives::KlEstimator::K3,
        };
        let init = c.restart_from.round(run.parent(round)?);
        offline_pg_stage(
            run,
            round,
            init,
            None,
            &update,
            &c.optimizer,
            "step-minibatches",
            obs,
        )
    }
}

/// A completion's rollout line, and whether any of its tokens carries an advantage.
struct Credited {
    line: RolloutLine,
    trained: bool,
}

/// What [`credit`] makes of a round.
struct RoundCredit {
    lines: Vec<Credited>,
    /// Per group, per completion: a positive outcome advantage (the round's monitors).
    selected: Vec<Vec<bool>>,
    metrics: BTreeMap<String, f64>,
}

/// The rollout line of every completion of `groups`, with the advantage of each of its
/// tokens from its steps' `values` (`[group][completion][step]`).
fn credit(
    groups: &[Group],
    values: &[Vec<Vec<f32>>],
    pattern: &StepPattern,
    (credit, baseline): (Credit, Baseline),
    tokenizer: &dyn Tokenizer,
) -> Result<RoundCredit> {
    let mut out = RoundCredit {
        lines: Vec::new(),
        selected: Vec::new(),
        metrics: BTreeMap::new(),
    };
    let (mut negative, mut positive, mut tokens) = (0usize, 0usize, 0usize);
    let mut first_pits = Vec::new();
    for (g, vals) in groups.iter().zip(values) {
        let outcomes: Vec<f32> = g
            .verdicts
            .iter()
            .map(|v| v.is_correct() as u8 as f32)
            .collect();
        let v0 = match baseline {
            Baseline::GroupMean => outcomes.iter().sum::<f32>() / outcomes.len().max(1) as f32,
            Baseline::None => 0.0,
        };
        let mut selected = Vec::with_capacity(outcomes.len());
        for ((c, v), &outcome) in g.completions.iter().zip(vals).zip(&outcomes) {
            let outcome_adv = outcome - v0;
            selected.push(outcome_adv > 0.0);
            let ends = pattern.ends(&c.text);
            let per_token: Vec<f32> = match credit {
                Credit::Outcome => vec![outcome_adv; c.tokens.len()],
                Credit::Step if ends.is_empty() => vec![outcome_adv; c.tokens.len()],
                Credit::Step => {
                    let adv = step_advantages(v0, v);
                    // The first pit: the first step whose value falls to 0.
                    if let Some(p) = v.iter().position(|&x| x == 0.0) {
                        first_pits.push(p as f64 / v.len() as f64);
                    }
                    token_steps(c.tokens.len(), &c.text, &ends, |i| {
                        Ok(tokenizer.decode(&c.tokens[..i])?)
                    })?
                    .into_iter()
                    .map(|s| adv[s])
                    .collect()
                }
            };
            // A served model's reply without token ids cannot be trained on.
            let aligned = c.logprobs.len() == c.tokens.len() && !c.tokens.is_empty();
            let trained = aligned && per_token.iter().any(|&a| a != 0.0);
            if trained {
                tokens += per_token.len();
                negative += per_token.iter().filter(|&&a| a < 0.0).count();
                positive += per_token.iter().filter(|&&a| a > 0.0).count();
            }
            out.lines.push(Credited {
                line: RolloutLine {
                    prompt: g.problem.prompt.clone(),
                    completion: c.text.clone(),
                    reward: outcome,
                    advantage: outcome_adv,
                    completion_ids: c.tokens.clone(),
                    old_logprobs: c.logprobs.clone(),
                    token_advantages: Some(per_token),
                    kl_coef: None,
                },
                trained,
            });
        }
        out.selected.push(selected);
    }
    let frac = |n: usize| n as f64 / tokens.max(1) as f64;
    out.metrics
        .insert("step/negative_tokens".into(), frac(negative));
    out.metrics
        .insert("step/positive_tokens".into(), frac(positive));
    if !first_pits.is_empty() {
        out.metrics.insert(
            "step/first_pit_position".into(),
            first_pits.iter().sum::<f64>() / first_pits.len() as f64,
        );
    }
    Ok(out)
}

/// What [`first_pit_pairs`] makes of a round.
struct FirstPits {
    pairs: Vec<Pair>,
    metrics: BTreeMap<String, f64>,
}

/// A pair at the first pit of each distinct wrong completion of `groups` (at most
/// `per_problem` per problem, 0: all), from its steps' `values` (`[group][completion][step]`,
/// the last the verdict): the prompt extended by the steps before the pit, a right
/// continuation of that prefix from `cache` chosen over the completion's own remainder. A pit
/// at the first step pairs a right sample of the problem against the whole completion.
fn first_pit_pairs(
    groups: &[Group],
    values: &[Vec<Vec<f32>>],
    pattern: &StepPattern,
    cache: &PrefixCache,
    per_problem: usize,
) -> FirstPits {
    let (mut pairs, mut positions) = (Vec::new(), Vec::new());
    let (mut wrong, mut at_start, mut unpaired) = (0usize, 0usize, 0usize);
    for (g, vals) in groups.iter().zip(values) {
        let right = g.distinct_correct();
        let mut made = 0;
        for (n, &i) in g
            .distinct(|i| !g.verdicts[i].is_correct())
            .iter()
            .enumerate()
        {
            if per_problem > 0 && made == per_problem {
                break;
            }
            wrong += 1;
            let text = &g.completions[i].text;
            let ends = pattern.ends(text);
            // A wrong completion's last value is its verdict, 0: it always has a pit.
            let Some(pit) = vals[i].iter().position(|&v| v == 0.0) else {
                unpaired += 1;
                continue;
            };
            positions.push(pit as f64 / vals[i].len() as f64);
            let (prefix, chosen) = if pit == 0 {
                at_start += 1;
                let chosen = right
                    .get(n % right.len().max(1))
                    .map(|&r| g.completions[r].text.as_str());
                ("", chosen)
            } else {
                let prefix = &text[..ends[pit - 1]];
                (prefix, cache.right_continuation(&g.problem.id, prefix))
            };
            let rejected = &text[prefix.len()..];
            match chosen {
                Some(chosen) if chosen != rejected => {
                    pairs.push(Pair {
                        problem_id: g.problem.id.clone(),
                        prompt: format!("{}{prefix}", g.problem.prompt),
                        chosen: chosen.to_string(),
                        rejected: rejected.to_string(),
                        weight: 1.0,
                        chosen_reward: 1.0,
                        rejected_reward: 0.0,
                        chosen_correct: true,
                        rejected_correct: false,
                    });
                    made += 1;
                }
                _ => unpaired += 1,
            }
        }
    }
    let mut metrics = BTreeMap::from([
        ("step/pairs".to_string(), pairs.len() as f64),
        ("step/wrong".to_string(), wrong as f64),
        ("step/pit_at_start".to_string(), at_start as f64),
        ("step/unpaired".to_string(), unpaired as f64),
    ]);
    if !positions.is_empty() {
        metrics.insert(
            "step/first_pit_position".into(),
            positions.iter().sum::<f64>() / positions.len() as f64,
        );
    }
    FirstPits { pairs, metrics }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::group;
    use autodidact_objectives::{
        policy_gradient, Advantage, BatchShape, KlEstimator, PgInputs, PgSettings,
    };

    /// The mapping from step values to token weights, end to end: each token carries its
    /// step's value change, and the surrogate's weights are minus the derivative of its loss
    /// by each token's log-prob (finite differences).
    #[test]
    fn issue20_step_values_become_token_weights_that_are_minus_the_gradient() {
        let tok = autodidact_core::CharTokenizer::new("ab;#okn").unwrap();
        let mut groups = vec![group(
            "p",
            &[
                ("a;b;#ok", Some("ok"), true),
                ("a;a;#no", Some("no"), false),
            ],
        )];
        for c in &mut groups[0].completions {
            c.tokens = tok.encode(&c.text).unwrap();
            c.logprobs = (0..c.tokens.len())
                .map(|i| -0.1 - 0.05 * i as f32)
                .collect();
        }
        let pattern = StepPattern::new("p", autodidact_tasks::TRACE_STEPS).unwrap();
        // V before = 0.5 (one of two right); values of `a;`, `a;b;`, `a;b;#`, whole.
        let values = vec![vec![vec![0.75, 1.0, 1.0, 1.0], vec![0.75, 0.0, 0.0, 0.0]]];
        let c = credit(
            &groups,
            &values,
            &pattern,
            (Credit::Step, Baseline::GroupMean),
            &tok,
        )
        .unwrap();
        let right = c.lines[0].line.token_advantages.clone().unwrap();
        let wrong = c.lines[1].line.token_advantages.clone().unwrap();
        assert_eq!(right, [0.25, 0.25, 0.25, 0.25, 0.0, 0.0, 0.0]);
        // `a;` helped (+0.25); the second step `a;` is the first pit (−0.75).
        assert_eq!(wrong, [0.25, 0.25, -0.75, -0.75, 0.0, 0.0, 0.0]);
        assert_eq!(c.metrics["step/first_pit_position"], 0.25);
        let outcome = credit(
            &groups,
            &values,
            &pattern,
            (Credit::Outcome, Baseline::GroupMean),
            &tok,
        )
        .unwrap();
        assert_eq!(
            outcome.lines[1].line.token_advantages.clone().unwrap(),
            [-0.5; 7]
        );
        // Without a baseline, the right trace's steps share 1 and the wrong one's add to 0:
        // credit for its first step, blame at its pit.
        let none = credit(
            &groups,
            &values,
            &pattern,
            (Credit::Step, Baseline::None),
            &tok,
        )
        .unwrap();
        assert_eq!(
            none.lines[0].line.token_advantages.clone().unwrap(),
            [0.75, 0.75, 0.25, 0.25, 0.0, 0.0, 0.0]
        );
        assert_eq!(
            none.lines[1].line.token_advantages.clone().unwrap(),
            [0.75, 0.75, -0.75, -0.75, 0.0, 0.0, 0.0]
        );
        let positives = credit(
            &groups,
            &values,
            &pattern,
            (Credit::Outcome, Baseline::None),
            &tok,
        )
        .unwrap();
        assert_eq!(
            positives.lines[0].line.token_advantages.clone().unwrap(),
            [1.0; 7]
        );
        assert!(
            !positives.lines[1].trained,
            "a wrong completion carries nothing"
        );
        // The surrogate over these token advantages: weights = −∂loss/∂log p.
        let old: Vec<Vec<f32>> = c
            .lines
            .iter()
            .map(|l| l.line.old_logprobs.clone())
            .collect();
        let lp: Vec<Vec<f32>> = old
            .iter()
            .map(|r| {
                r.iter()
                    .enumerate()
                    .map(|(t, x)| x + 0.3 * (t as f32 - 3.0) / 3.0)
                    .collect()
            })
            .collect();
        let adv = vec![right, wrong];
        let s = PgSettings {
            epsilon_low: 0.2,
            epsilon_high: 0.2,
            aggregation: LossAggregation::Token,
            beta: 0.0,
            kl_estimator: KlEstimator::K3,
            entropy_coef: 0.0,
        };
        let loss = |lp: &[Vec<f32>]| {
            let x = PgInputs {
                logprobs: lp,
                old_logprobs: &old,
                ref_logprobs: None,
                entropies: None,
                advantages: Advantage::PerToken(&adv),
                kl_coefs: None,
            };
            policy_gradient(&s, &x, BatchShape::of(&old))
        };
        let out = loss(&lp);
        let eps = 1e-3f32;
        for i in 0..2 {
            for t in 0..7 {
                let (mut up, mut down) = (lp.clone(), lp.clone());
                up[i][t] += eps;
                down[i][t] -= eps;
                let g = (loss(&up).loss - loss(&down).loss) / (2.0 * eps as f64);
                assert!((-g - out.weights[i][t] as f64).abs() < 1e-5, "({i},{t})");
            }
        }
        // A step that kept its value (`#`, `ok`) weighs nothing.
        assert_eq!(out.weights[0][4..], [0.0, 0.0, 0.0]);
    }

    /// Issue 20: first-pit pairs. The prompt is extended by the steps before the first step
    /// of value 0, a right continuation of that prefix is chosen over the completion's own
    /// remainder; a pit at the first step falls back to a right sample of the problem; a
    /// prefix with no right continuation on record gives no pair.
    #[test]
    fn issue20_first_pit_pairs_choose_a_right_continuation_at_the_pit() {
        let groups = vec![group(
            "p",
            &[
                ("a;b;#ok", Some("ok"), true),
                ("a;c;#no", Some("no"), false),
                ("d;e;#no", Some("no"), false),
                ("a;c;#no", Some("no"), false),
                ("a;f;#xx", Some("xx"), false),
            ],
        )];
        let pattern = StepPattern::new("p", autodidact_tasks::TRACE_STEPS).unwrap();
        // Values of each step prefix, the last the verdict.
        let values = vec![vec![
            vec![0.75, 1.0, 1.0, 1.0],
            vec![0.75, 0.0, 0.0, 0.0],
            vec![0.0, 0.0, 0.0, 0.0],
            vec![0.75, 0.0, 0.0, 0.0],
            vec![0.5, 0.25, 0.0, 0.0],
        ]];
        let cache = PrefixCache::default().with_right("p", "a;", "b;#ok");
        let pits = first_pit_pairs(&groups, &values, &pattern, &cache, 0);
        let got: Vec<(&str, &str, &str)> = pits
            .pairs
            .iter()
            .map(|p| (p.prompt.as_str(), p.chosen.as_str(), p.rejected.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                // The pit is `c;`: from `a;` the recorded right continuation.
                ("p=a;", "b;#ok", "c;#no"),
                // The pit is the first step: a right sample of the problem.
                ("p=", "a;b;#ok", "d;e;#no"),
            ]
        );
        // `a;c;#no` twice is one distinct completion; `a;f;#xx` pits at `#` after `a;f;`,
        // which has no right continuation on record.
        assert_eq!(pits.metrics["step/wrong"], 3.0);
        assert_eq!(pits.metrics["step/unpaired"], 1.0);
        assert_eq!(pits.metrics["step/pit_at_start"], 1.0);
        assert!((pits.metrics["step/first_pit_position"] - (0.25 + 0.0 + 0.5) / 3.0).abs() < 1e-9);
        assert!(pits
            .pairs
            .iter()
            .all(|p| p.chosen_correct && !p.rejected_correct));
        let one = first_pit_pairs(&groups, &values, &pattern, &cache, 1);
        assert_eq!(one.pairs.len(), 1);
    }
}
