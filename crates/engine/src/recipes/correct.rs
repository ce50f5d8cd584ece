//! Self-correction: `score` (SCoRe, Kumar et al. 2024) and `correction-sft`, the supervised
//! baseline SCoRe compares against, on two-attempt episodes ([`crate::episode`]); and `s2r`,
//! whose episodes verify the first attempt before they correct it ([`super::s2r`]).
//!
//! Every round samples `samples` first attempts of each unlabeled problem from the round's
//! parent and, where the recipe needs them, one second attempt after each (the problem, the
//! first attempt, the review). Every round's evaluation also runs the episodes on the
//! held-out problems, greedy and sampled, and logs accuracy@t1, accuracy@t2, Δ(t1, t2),
//! Δ(i→c), Δ(c→i) and the share of second attempts that change the answer (`eval/*`,
//! `eval_sampled/*`).
//!
//! - `correction-sft` fine-tunes the second attempt on correction traces collected from the
//!   parent's samples, then trains on them with the SFT objective (first attempts are not
//!   trained). `source = "pairs"` (Pair-SFT, Welleck et al. 2023, as SCoRe runs it): each
//!   distinct wrong first attempt of a problem, paired with a distinct correct sample of the
//!   same problem as the second attempt. `source = "own"` (SCoRe's STaR baseline): the
//!   parent's own episodes whose first attempt is wrong and whose second is right. With
//!   `rounds = 1` the data is offline: it all comes from M0.
//! - `score` trains both attempts with a policy gradient on the round's episodes, each
//!   attempt a sequence of its own whose advantage is its shaped reward less the mean of
//!   that attempt's rewards over the problem's episodes. Stage I (the first
//!   `stage_one_rounds` rounds) rewards the second attempt's correctness and keeps the first
//!   attempt near the reference with a large KL penalty (`stage_one_beta`); stage II rewards
//!   both attempts, the second with the bonus `α·(r₂ − r₁)`, with the small penalty `beta` on
//!   both.
//!
//! How this differs from the paper:
//! - SCoRe trains Gemini models with on-policy REINFORCE. Here each round samples a batch of
//!   episodes from the round's parent and takes `epochs` passes of clipped policy-gradient
//!   steps over them (the engine's `pg` objective, as `step-pg` does): on-policy per round.
//! - The KL penalty is a term of the loss on each attempt's tokens, with a coefficient per
//!   attempt (the rollout line's `kl_coef`) and the estimator `kl_estimator` (k2 by default),
//!   not a term of the reward: a penalty in the reward is measured against the round's parent
//!   at sampling time, and is zero in the first round, where the parent is the reference.
//! - The bonus credits the second attempt only. With the return of the whole episode on the
//!   first attempt's tokens, `α > 1` would reward a wrong first attempt (its return is
//!   `(1 − α)·r₁ + (1 + α)·r₂`); the paper's objective assigns the bonus to the second
//!   attempt's reward, and so does this.
//! - The model trained from scratch has no instruction-following to review with: the seed
//!   stage teaches the native review format from the labeled set ([`seed_episode_examples`]:
//!   the solution after itself and after copies with one digit changed, `seed_negatives` of
//!   them), so M0's corrections are learned on synthetic slips, not on its own errors.

use super::pg::{offline_pg_stage, OfflineUpdate};
use super::s2r::{init_examples, s2r_lines, S2rSettings};
use super::star::capped;
use super::{resolve, section, Column, Family, Format, Recipe, Sections};
use crate::config::{
    check_train, non_negative, Budget, Checkpoint, OptimizerConfig, RunConfig, SamplingConfig,
    TrainConfig,
};
use crate::episode::{
    episode_records, second_attempts, seed_episode_examples, seed_verified_examples,
    verified_episodes, Deltas, EpisodeFormat, SecondAttempts, Verified, EVAL_EPISODES_FILE,
    REVIEW_CHARS, VERIFY_CHARS,
};
use crate::eval::EvalSamples;
use crate::monitor::round_monitors;
use crate::progress::{Observer, Offset};
use crate::run::{records, Manifest, Run, SampleRecord};
use crate::sampling::sampled_tokens;
use crate::store::RunDir;
use crate::trainer::RolloutLine;
use crate::{Error, Result};
use autodidact_core::{Completion, Example, Group, Policy, SamplingParams, Task, TrainablePolicy};
use autodidact_objectives::{KlEstimator, LossAggregation};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::Arc;

/// Where `correction-sft`'s correction traces come from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Corrections {
    /// A wrong first attempt paired with a correct sample of the same problem (Pair-SFT).
    #[default]
    Pairs,
    /// The model's own episodes that went from wrong to right (SCoRe's STaR baseline).
    Own,
}

/// `correction-sft`'s settings (`[correct.sft]`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SftSettings {
    pub source: Corrections,
    /// Correction traces per problem at most (0: all): one per distinct wrong first attempt.
    pub max_per_problem: usize,
    /// Also train traces that keep a right first attempt (SCoRe's D⁺ variant): each distinct
    /// correct first attempt followed by itself (`pairs`), or the own episodes that stay
    /// right (`own`); at most `max_per_problem` of them per problem too. Without them, every
    /// trace's first attempt is wrong.
    pub keep_right: bool,
    /// Also train the round's distinct correct first attempts under the problem's own prompt
    /// (`star`'s examples from the same samples, at most `max_per_problem` per problem), so
    /// that the first attempt is trained alongside the second.
    pub first_attempts: bool,
    pub train: TrainConfig,
}

impl Default for SftSettings {
    fn default() -> Self {
        Self {
            source: Corrections::Pairs,
            max_per_problem: 0,
            keep_right: false,
            first_attempts: false,
            train: TrainConfig {
                epochs: Some(4.0),
                ..TrainConfig::default()
            },
        }
    }
}

/// `score`'s settings (`[correct.score]`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScoreSettings {
    /// Rounds of stage I; the rest are stage II.
    pub stage_one_rounds: u32,
    /// The bonus `α·(r₂ − r₁)` on the second attempt's reward in stage II.
    pub alpha: f32,
    /// KL coefficient on both attempts in stage II, on the second in stage I.
    pub beta: f32,
    /// KL coefficient on the first attempt in stage I (SCoRe's β₂, larger than β).
    pub stage_one_beta: f32,
    /// The per-token KL estimate in the loss. k2 (`d²/2`, whose gradient is `d`) by
    /// default: M0's second attempts copy the first with probabilities near 1, and once
    /// training moves them, k3's `exp(−d)` reaches tens of nats per token (measured in
    /// docs/self-correction.md).
    pub kl_estimator: KlEstimator,
    /// The model the KL is measured against.
    pub reference: Checkpoint,
    /// Passes over a round's attempts.
    pub epochs: u32,
    /// Attempts per optimizer step.
    pub batch_size: usize,
    /// Attempts per forward/backward pass (memory only).
    pub micro_batch_size: usize,
    /// Clip range of the ratio to the sampling policy.
    pub epsilon_low: f32,
    pub epsilon_high: f32,
    pub loss_aggregation: LossAggregation,
}

impl Default for ScoreSettings {
    fn default() -> Self {
        Self {
            stage_one_rounds: 1,
            alpha: 10.0,
            beta: 0.01,
            stage_one_beta: 0.1,
            kl_estimator: KlEstimator::K2,
            reference: Checkpoint::Seed,
            epochs: 2,
            batch_size: 64,
            micro_batch_size: 64,
            epsilon_low: 0.2,
            epsilon_high: 0.2,
            loss_aggregation: LossAggregation::Token,
        }
    }
}

/// Self-correction (`[correct]`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CorrectConfig {
    /// Rounds after the seed stage.
    pub rounds: u32,
    /// Unlabeled training problems sampled every round.
    pub problems: usize,
    /// How each round samples: `samples` first attempts per problem; second attempts use
    /// the same settings.
    pub sampling: SamplingConfig,
    /// Seed stage: corrupted first attempts per labeled problem, each followed by the
    /// solution (`s2r`: each verified as the verifier grades it, and the solution after
    /// those it rejects); a model trained from scratch learns the format from them.
    pub seed_negatives: usize,
    pub restart_from: Checkpoint,
    pub optimizer: OptimizerConfig,
    /// `correction-sft`'s traces and training; also `s2r`'s initialization rounds.
    pub sft: SftSettings,
    /// `score`'s rewards and policy-gradient update; `s2r` trains with the update.
    pub score: ScoreSettings,
    pub s2r: S2rSettings,
}

impl Default for CorrectConfig {
    fn default() -> Self {
        Self {
            rounds: 3,
            problems: 1000,
            sampling: SamplingConfig {
                samples: 4,
                ..SamplingConfig::default()
            },
            seed_negatives: 1,
            restart_from: Checkpoint::Previous,
            optimizer: OptimizerConfig::default(),
            sft: SftSettings::default(),
            score: ScoreSettings::default(),
            s2r: S2rSettings::default(),
        }
    }
}

/// The self-correction family: recipes `score`, `correction-sft` and `s2r`, section
/// `[correct]`.
pub struct SelfCorrection;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Score,
    Sft,
    S2r,
}

impl Family for SelfCorrection {
    fn recipes(&self) -> &'static [&'static str] {
        &["score", "correction-sft", "s2r"]
    }
    fn sections(&self) -> &'static [&'static str] {
        &["correct"]
    }
    fn resolve(&self, name: &str, value: toml::Value) -> Result<toml::Value> {
        resolve::<CorrectConfig>(name, value)
    }
    fn build(&self, recipe: &str, sections: &Sections) -> Result<Arc<dyn Recipe>> {
        let cfg: CorrectConfig = section(sections, "correct")?;
        let kind = match recipe {
            "score" => Kind::Score,
            "s2r" => Kind::S2r,
            _ => Kind::Sft,
        };
        let at_least = |key: &str, v: usize, min: usize, why: &str| {
            if v < min {
                Err(Error::config(
                    key,
                    format!("is {v}; it must be at least {min}{why}"),
                ))
            } else {
                Ok(())
            }
        };
        at_least("correct.problems", cfg.problems, 1, "")?;
        at_least("correct.sampling.samples", cfg.sampling.samples, 1, "")?;
        cfg.sampling.check("correct")?;
        cfg.optimizer.check("correct")?;
        let grouped = |recipe: &str| {
            at_least(
                "correct.sampling.samples",
                cfg.sampling.samples,
                2,
                &format!(" for {recipe}: an action's advantage is measured from the mean over its problem's episodes"),
            )
        };
        match kind {
            Kind::Sft => check_train("correct.sft.train", &cfg.sft.train)?,
            Kind::Score => {
                grouped("score")?;
                check_update(&cfg.score)?;
                let s = &cfg.score;
                non_negative("correct.score.alpha", s.alpha, "")?;
                non_negative("correct.score.stage_one_beta", s.stage_one_beta, "")?;
                if s.stage_one_rounds > cfg.rounds {
                    return Err(Error::config(
                        "correct.score.stage_one_rounds",
                        format!(
                            "{} is more than correct.rounds = {}; give at most {} (equal: stage I only)",
                            s.stage_one_rounds, cfg.rounds, cfg.rounds
                        ),
                    ));
                }
            }
            Kind::S2r => {
                grouped("s2r")?;
                check_update(&cfg.score)?;
                if cfg.s2r.init_rounds > 0 {
                    check_train("correct.sft.train", &cfg.sft.train)?;
                }
                if cfg.s2r.init_rounds > cfg.rounds {
                    return Err(Error::config(
                        "correct.s2r.init_rounds",
                        format!(
                            "{} is more than correct.rounds = {}; give at most {} (equal: initialization only)",
                            cfg.s2r.init_rounds, cfg.rounds, cfg.rounds
                        ),
                    ));
                }
            }
        }
        Ok(Arc::new(Correction { kind, cfg }))
    }
}

/// The checks of `[correct.score]`'s policy-gradient update (score's and s2r's).
fn check_update(s: &ScoreSettings) -> Result<()> {
    for (key, v) in [
        ("correct.score.epochs", s.epochs as usize),
        ("correct.score.batch_size", s.batch_size),
        ("correct.score.micro_batch_size", s.micro_batch_size),
    ] {
        if v == 0 {
            return Err(Error::config(key, "is 0; it must be at least 1"));
        }
    }
    non_negative("correct.score.beta", s.beta, "")?;
    for (key, e) in [
        ("correct.score.epsilon_low", s.epsilon_low),
        ("correct.score.epsilon_high", s.epsilon_high),
    ] {
        if !(0.0..1.0).contains(&e) {
            return Err(Error::config(
                key,
                format!("{e} is not a clip range; use a number in [0, 1), e.g. 0.2"),
            ));
        }
    }
    Ok(())
}

impl ScoreSettings {
    /// The offline policy-gradient update these settings describe.
    fn update(&self) -> OfflineUpdate {
        OfflineUpdate {
            epochs: self.epochs,
            batch_size: self.batch_size,
            micro_batch_size: self.micro_batch_size,
            epsilon_low: self.epsilon_low,
            epsilon_high: self.epsilon_high,
            loss_aggregation: self.loss_aggregation,
            kl_estimator: self.kl_estimator,
        }
    }
}

/// A self-correction recipe with its settings.
pub struct Correction {
    kind: Kind,
    cfg: CorrectConfig,
}

const COLUMNS: &[Column] = &[
    Column {
        header: "acc@t2",
        key: "eval/accuracy@t2",
        format: Format::Percent,
    },
    Column {
        header: "Δ(t1,t2)",
        key: "eval/delta",
        format: Format::Percent,
    },
    Column {
        header: "i→c",
        key: "eval/delta_i_to_c",
        format: Format::Percent,
    },
    Column {
        header: "c→i",
        key: "eval/delta_c_to_i",
        format: Format::Percent,
    },
    Column {
        header: "changed",
        key: "eval/changed",
        format: Format::Percent,
    },
];

/// `s2r`'s table: the final answer's accuracy and how well the verification judged.
const S2R_COLUMNS: &[Column] = &[
    COLUMNS[0],
    COLUMNS[1],
    Column {
        header: "verify acc",
        key: "eval/verify_accuracy",
        format: Format::Percent,
    },
    Column {
        header: "flagged",
        key: "eval/verify_flagged",
        format: Format::Percent,
    },
    COLUMNS[4],
];

impl Recipe for Correction {
    fn name(&self) -> &'static str {
        match self.kind {
            Kind::Score => "score",
            Kind::Sft => "correction-sft",
            Kind::S2r => "s2r",
        }
    }
    fn rounds(&self) -> u32 {
        self.cfg.rounds
    }
    fn pool(&self) -> (usize, String) {
        (self.cfg.problems, "correct.problems".into())
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
    fn check(&self, _config: &RunConfig, _task: &dyn Task, budget: &Budget) -> Result<()> {
        let c = &self.cfg;
        match self.kind {
            Kind::Score => {
                budget.batch("correct.score.micro_batch_size", c.score.micro_batch_size)?
            }
            Kind::Sft => budget.batch("correct.sft.train.batch_size", c.sft.train.batch_size)?,
            Kind::S2r => {
                budget.batch("correct.score.micro_batch_size", c.score.micro_batch_size)?;
                if c.s2r.init_rounds > 0 {
                    budget.batch("correct.sft.train.batch_size", c.sft.train.batch_size)?;
                }
            }
        }
        // An episode's attempts (and verification) are held together.
        let actions = if self.kind == Kind::S2r { 3 } else { 2 };
        budget.held(
            "correct.problems",
            c.problems,
            "correct.sampling.samples",
            actions * c.sampling.samples as u64,
        )
    }
    fn extra_alphabet(&self) -> &'static str {
        match self.kind {
            Kind::S2r => VERIFY_CHARS,
            _ => REVIEW_CHARS,
        }
    }
    /// A second attempt's prompt holds the first attempt and the review (and, in `s2r`, the
    /// verification before it): [`EpisodeFormat::added_tokens`].
    fn extra_tokens(
        &self,
        max_new_tokens: usize,
        tok: &dyn autodidact_core::Tokenizer,
        task: &dyn Task,
    ) -> Result<usize> {
        EpisodeFormat::of(tok).added_tokens(tok, task, max_new_tokens, self.kind == Kind::S2r)
    }
    fn seed_examples(&self, run: &Run) -> Result<Vec<Example>> {
        let seed_examples = match self.kind {
            Kind::S2r => seed_verified_examples,
            _ => seed_episode_examples,
        };
        seed_examples(
            &*run.plan.task,
            run.plan.model.tokenizer(),
            &run.problems.labeled,
            self.cfg.seed_negatives,
            run.seed(0, "episodes"),
        )
    }
    fn seed_examples_per_labeled(&self) -> usize {
        match self.kind {
            // The demonstration, the solution's verification, each slip's and its correction.
            Kind::S2r => 2 + 2 * self.cfg.seed_negatives,
            _ => 2 + self.cfg.seed_negatives,
        }
    }
    /// The held-out episodes: a second attempt after each greedy first attempt (greedy) and
    /// after each sampled one (at the evaluation's sampling settings).
    fn evaluate(
        &self,
        run: &Run,
        round: u32,
        policy: &mut dyn TrainablePolicy,
        held_out: &EvalSamples,
        m: &mut Manifest,
        obs: &mut dyn Observer,
    ) -> Result<()> {
        let task = &*run.plan.task;
        let n = self.units(&held_out.greedy) + self.units(&held_out.sampled);
        obs.stage_started(&format!("r{round} review"), n);
        // The same seed every round: rounds are compared on the same draws.
        let seed = run.seed(0, "eval-review");
        let greedy = self.episodes(
            policy,
            task,
            &held_out.greedy,
            &run.plan.greedy(),
            seed,
            obs,
        )?;
        let eval_sampling = run.plan.sampling(&run.plan.config.eval.sampling);
        // The sampled pass continues the stage's progress where the greedy pass ended.
        let mut rest = Offset {
            inner: &mut *obs,
            done: self.units(&held_out.greedy),
            tokens: greedy.tokens() as u64,
        };
        let sampled = self.episodes(
            policy,
            task,
            &held_out.sampled,
            &eval_sampling,
            seed,
            &mut rest,
        )?;
        obs.stage_finished(&format!(
            "r{round} review (greedy): {}",
            greedy.line(&held_out.greedy)
        ));
        let metrics = m.metrics.get_or_insert_with(BTreeMap::new);
        metrics.extend(greedy.metrics(&held_out.greedy, "eval/"));
        metrics.extend(sampled.metrics(&held_out.sampled, "eval_sampled/"));
        let rel = format!("{}/{EVAL_EPISODES_FILE}", RunDir::round_dir(round));
        greedy.write(run, &rel, &held_out.greedy)?;
        run.hash_into(m, &rel)
    }
    fn columns(&self) -> &'static [Column] {
        match self.kind {
            Kind::S2r => S2R_COLUMNS,
            _ => COLUMNS,
        }
    }
}

/// A round's episodes after its first attempts: reviewed (`score`, `correction-sft`) or
/// verified first (`s2r`).
enum Episodes {
    Reviewed(SecondAttempts),
    Verified(Verified),
}

impl Episodes {
    /// SCoRe's measures, with the episode's final answer as the second attempt.
    fn deltas(&self, firsts: &[Group]) -> Deltas {
        match self {
            Self::Reviewed(s) => Deltas::of_groups(firsts, &s.groups),
            Self::Verified(v) => v.deltas(firsts),
        }
    }

    /// The measures under `prefix`, with the verifications' for verified episodes.
    fn metrics(&self, firsts: &[Group], prefix: &str) -> BTreeMap<String, f64> {
        let mut m = self.deltas(firsts).metrics(prefix);
        if let Self::Verified(v) = self {
            m.extend(v.stats(firsts).metrics(prefix));
        }
        m
    }

    fn line(&self, firsts: &[Group]) -> String {
        match self {
            Self::Reviewed(_) => self.deltas(firsts).line(),
            Self::Verified(v) => {
                format!("{}; {}", self.deltas(firsts).line(), v.stats(firsts).line())
            }
        }
    }

    /// Tokens sampled after the first attempts.
    fn tokens(&self) -> usize {
        match self {
            Self::Reviewed(s) => sampled_tokens(&s.groups),
            Self::Verified(v) => v.tokens() as usize,
        }
    }

    /// Writes the episodes to the run file `rel`.
    fn write(&self, run: &Run, rel: &str, firsts: &[Group]) -> Result<()> {
        match self {
            Self::Reviewed(s) => {
                let records: Vec<_> = episode_records(firsts, &s.groups).collect();
                run.dir.write_jsonl(rel, &records)
            }
            Self::Verified(v) => {
                let records: Vec<_> = v.records(firsts).collect();
                run.dir.write_jsonl(rel, &records)
            }
        }
    }
}

impl Correction {
    /// Samples the episodes after `firsts`: a second attempt after each, or (`s2r`) a
    /// verification of each and a second attempt after those it calls wrong.
    fn episodes(
        &self,
        policy: &mut dyn Policy,
        task: &dyn Task,
        firsts: &[Group],
        params: &SamplingParams,
        seed: u64,
        obs: &mut dyn Observer,
    ) -> Result<Episodes> {
        Ok(match self.kind {
            Kind::S2r => {
                Episodes::Verified(verified_episodes(policy, task, firsts, params, seed, obs)?)
            }
            _ => Episodes::Reviewed(second_attempts(policy, task, firsts, params, seed, obs)?),
        })
    }

    /// Progress units of [`Self::episodes`] after `firsts`: problems, or (`s2r`) first
    /// attempts twice, each checked and perhaps corrected.
    fn units(&self, firsts: &[Group]) -> u64 {
        match self.kind {
            Kind::S2r => {
                2 * firsts
                    .iter()
                    .map(|g| g.completions.len() as u64)
                    .sum::<u64>()
            }
            _ => firsts.len() as u64,
        }
    }
}

/// Which stage of SCoRe a round is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    /// Train the second attempt; keep the first near the reference.
    One,
    /// Train both, with the improvement bonus on the second.
    Two,
}

impl Correction {
    /// Samples the pool's first attempts (and second attempts where needed), and writes the
    /// round's training set: correction examples (`correction-sft`) or both attempts as
    /// rollouts with their advantages (`score`).
    fn sample_stage(&self, run: &mut Run, round: u32, obs: &mut dyn Observer) -> Result<()> {
        let cfg = &self.cfg;
        let parent = run.parent(round)?;
        let mut policy = run.load_policy(parent)?;
        let params = run.plan.sampling(&cfg.sampling);
        let (firsts, proxy) =
            run.sample_pool(&mut *policy, round, cfg.sampling.samples, &params, obs)?;
        let task = &*run.plan.task;
        let needs_episodes = !(self.kind == Kind::Sft && cfg.sft.source == Corrections::Pairs);
        let episodes = if needs_episodes {
            obs.stage_started(&format!("r{round} second attempts"), self.units(&firsts));
            let e = self.episodes(
                &mut *policy,
                task,
                &firsts,
                &params,
                run.seed(round, "review"),
                obs,
            )?;
            obs.stage_finished(&format!("r{round} second attempts: {}", e.line(&firsts)));
            Some(e)
        } else {
            None
        };
        let selected: Vec<Vec<bool>> = firsts
            .iter()
            .map(|g| g.verdicts.iter().map(|v| v.is_correct()).collect())
            .collect();
        let mut metrics = round_monitors(&firsts, &selected, run.plan.config.monitor.n_star);
        metrics.extend(proxy);
        let mut tokens = sampled_tokens(&firsts);
        if let Some(e) = &episodes {
            tokens += e.tokens();
            metrics.extend(e.metrics(&firsts, "correct/"));
        }
        metrics.insert("rollout/sampled_tokens".into(), tokens as f64);
        let rd = RunDir::round_dir(round);
        let train = format!("{rd}/train.jsonl");
        let format = EpisodeFormat::of(policy.tokenizer());
        let tok = policy.tokenizer();
        let counts = match (self.kind, &episodes) {
            (Kind::Score, Some(Episodes::Reviewed(s))) => {
                let stage = if round <= cfg.score.stage_one_rounds {
                    Stage::One
                } else {
                    Stage::Two
                };
                let (lines, m) = score_lines(&firsts, s, stage, &cfg.score);
                metrics.extend(m);
                run.dir.write_jsonl(&train, &lines)?;
                json!({"trained": lines.len(), "stage": stage as u8 + 1})
            }
            (Kind::S2r, Some(Episodes::Verified(v))) if round > cfg.s2r.init_rounds => {
                let (lines, m) = s2r_lines(&firsts, v, cfg.s2r.reward, cfg.score.beta);
                metrics.extend(m);
                run.dir.write_jsonl(&train, &lines)?;
                json!({"trained": lines.len(), "stage": "rl"})
            }
            (Kind::S2r, _) => {
                let examples = init_examples(&firsts, &cfg.sft, format, tok, task)?;
                metrics.insert("correct/examples".into(), examples.len() as f64);
                run.dir.write_jsonl(&train, &examples)?;
                json!({"examples": examples.len(), "stage": "init"})
            }
            _ => {
                let mut examples = match &episodes {
                    Some(Episodes::Reviewed(s)) => own_corrections(&firsts, s, &cfg.sft),
                    _ => pair_corrections(&firsts, &cfg.sft, |p, first| {
                        format.second_prompt(tok, task, p, first)
                    })?,
                };
                if cfg.sft.first_attempts {
                    examples.extend(super::star::curate(&firsts, cfg.sft.max_per_problem, None).0);
                }
                metrics.insert("correct/examples".into(), examples.len() as f64);
                run.dir.write_jsonl(&train, &examples)?;
                json!({"examples": examples.len()})
            }
        };
        let samples: Vec<SampleRecord> = records(&firsts, false).collect();
        run.dir
            .write_jsonl(&format!("{rd}/samples.jsonl"), &samples)?;
        let mut m = run.manifest(round)?;
        if let Some(e) = &episodes {
            let rel = format!("{rd}/episodes.jsonl");
            e.write(run, &rel, &firsts)?;
            run.hash_into(&mut m, &rel)?;
        }
        m.parent_checkpoint = Some(RunDir::checkpoint_dir(parent));
        m.settings = Some(json!({"correct": cfg}));
        m.counts = Some(counts);
        m.metrics = Some(metrics);
        run.hash_into(&mut m, &format!("{rd}/samples.jsonl"))?;
        run.hash_into(&mut m, &train)?;
        run.write_manifest(&m)
    }

    fn train_stage(&self, run: &mut Run, round: u32, obs: &mut dyn Observer) -> Result<()> {
        let c = &self.cfg;
        let parent = run.parent(round)?;
        let init = c.restart_from.round(parent);
        let pg = |run: &mut Run, reference: bool, obs: &mut dyn Observer| {
            // The KL terms' coefficients travel on the lines; any above 0 needs the
            // reference's log-probs.
            let reference = reference.then(|| c.score.reference.round(parent));
            offline_pg_stage(
                run,
                round,
                init,
                reference,
                &c.score.update(),
                &c.optimizer,
                "score-minibatches",
                obs,
            )
        };
        match self.kind {
            Kind::Sft => run.sft_stage(round, init, &c.sft.train, &c.optimizer, obs),
            Kind::S2r if round <= c.s2r.init_rounds => {
                run.sft_stage(round, init, &c.sft.train, &c.optimizer, obs)
            }
            Kind::S2r => pg(run, c.score.beta > 0.0, obs),
            Kind::Score => pg(run, c.score.beta > 0.0 || c.score.stage_one_beta > 0.0, obs),
        }
    }
}

/// The shaped rewards of one episode's attempts (first, second): in stage I only the second
/// is rewarded, for being right; in stage II both are, the second with the bonus
/// `α·(r₂ − r₁)`.
fn shaped(stage: Stage, s: &ScoreSettings, (r1, r2): (f32, f32)) -> (f32, f32) {
    match stage {
        Stage::One => (0.0, r2),
        Stage::Two => (r1, r2 + s.alpha * (r2 - r1)),
    }
}

/// The KL coefficients of the attempts (first, second): stage I holds the first to the
/// reference with `stage_one_beta`, the second with `beta`; stage II both with `beta`.
fn kl_coefs(stage: Stage, s: &ScoreSettings) -> (f32, f32) {
    match stage {
        Stage::One => (s.stage_one_beta, s.beta),
        Stage::Two => (s.beta, s.beta),
    }
}

/// A rollout line of `completion` sampled from `prompt`, or none when it would train nothing
/// (no advantage and no KL term) or has no token ids to train (a served model's).
pub(super) fn rollout_line(
    prompt: &str,
    completion: &Completion,
    reward: f32,
    advantage: f32,
    kl_coef: f32,
) -> Option<RolloutLine> {
    let aligned =
        completion.logprobs.len() == completion.tokens.len() && !completion.tokens.is_empty();
    (aligned && (advantage != 0.0 || kl_coef > 0.0)).then(|| RolloutLine {
        prompt: prompt.to_string(),
        completion: completion.text.clone(),
        reward,
        advantage,
        completion_ids: completion.tokens.clone(),
        old_logprobs: completion.logprobs.clone(),
        token_advantages: None,
        kl_coef: Some(kl_coef),
    })
}

/// `xs` less their mean.
pub(super) fn centred(xs: &[f32]) -> Vec<f32> {
    let mean = xs.iter().sum::<f32>() / xs.len().max(1) as f32;
    xs.iter().map(|x| x - mean).collect()
}

/// Both attempts of every episode as rollout lines, each with its advantage (its shaped
/// reward less the mean of that attempt's over the problem's episodes) and its KL
/// coefficient. Lines that would train nothing (no advantage and no KL term) are left out,
/// as are a served model's completions without token ids.
fn score_lines(
    firsts: &[Group],
    seconds: &crate::episode::SecondAttempts,
    stage: Stage,
    s: &ScoreSettings,
) -> (Vec<RolloutLine>, BTreeMap<String, f64>) {
    let mut lines = Vec::new();
    let (mut bonus, mut n) = (0.0f64, 0usize);
    let coefs = kl_coefs(stage, s);
    for (i, (a, b)) in firsts.iter().zip(&seconds.groups).enumerate() {
        let k = a.completions.len();
        let (mut first, mut second) = (Vec::with_capacity(k), Vec::with_capacity(k));
        for j in 0..k {
            let r = (a.verdicts[j].score, b.verdicts[j].score);
            let (x, y) = shaped(stage, s, r);
            bonus += (y - r.1) as f64;
            n += 1;
            first.push(x);
            second.push(y);
        }
        let (adv1, adv2) = (centred(&first), centred(&second));
        for j in 0..k {
            for (prompt, c, v, adv, coef) in [
                (
                    &a.problem.prompt,
                    &a.completions[j],
                    &a.verdicts[j],
                    adv1[j],
                    coefs.0,
                ),
                (
                    &seconds.prompts[i][j],
                    &b.completions[j],
                    &b.verdicts[j],
                    adv2[j],
                    coefs.1,
                ),
            ] {
                lines.extend(rollout_line(prompt, c, v.score, adv, coef));
            }
        }
    }
    let m = BTreeMap::from([
        (
            "score/stage".to_string(),
            if stage == Stage::One { 1.0 } else { 2.0 },
        ),
        ("score/trained".to_string(), lines.len() as f64),
        ("score/bonus".to_string(), bonus / n.max(1) as f64),
    ]);
    (lines, m)
}

/// Pair-SFT's correction traces: each distinct wrong first attempt of a problem (at most
/// `max_per_problem`, 0: all), followed by one of the problem's distinct correct samples in
/// turn; with `keep_right`, also each distinct correct sample followed by itself. Problems
/// without a correct sample give none.
pub(super) fn pair_corrections(
    firsts: &[Group],
    s: &SftSettings,
    second_prompt: impl Fn(&autodidact_core::Problem, &str) -> Result<String>,
) -> Result<Vec<Example>> {
    let mut out = Vec::new();
    for g in firsts {
        let right = g.distinct_correct();
        if right.is_empty() {
            continue;
        }
        let wrong = capped(
            g.distinct(|i| !g.verdicts[i].is_correct()),
            s.max_per_problem,
        );
        for (n, &w) in wrong.iter().enumerate() {
            let fix = &g.completions[right[n % right.len()]].text;
            out.push(Example::new(
                second_prompt(&g.problem, &g.completions[w].text)?,
                fix.clone(),
            ));
        }
        if s.keep_right {
            for r in capped(right, s.max_per_problem) {
                let text = &g.completions[r].text;
                out.push(Example::new(second_prompt(&g.problem, text)?, text.clone()));
            }
        }
    }
    Ok(out)
}

/// The model's own corrections: episodes whose first attempt is wrong and second right (and,
/// with `keep_right`, those right at both attempts), distinct by second prompt and answer
/// text, at most `max_per_problem` of each kind per problem.
fn own_corrections(
    firsts: &[Group],
    seconds: &crate::episode::SecondAttempts,
    s: &SftSettings,
) -> Vec<Example> {
    let mut out = Vec::new();
    for (i, (a, b)) in firsts.iter().zip(&seconds.groups).enumerate() {
        let mut seen = [
            std::collections::HashSet::new(),
            std::collections::HashSet::new(),
        ];
        for j in 0..a.completions.len() {
            let (first, second) = (a.verdicts[j].is_correct(), b.verdicts[j].is_correct());
            if !second || (first && !s.keep_right) {
                continue;
            }
            let kind = &mut seen[first as usize];
            if s.max_per_problem > 0 && kind.len() == s.max_per_problem {
                continue;
            }
            let e = Example::new(seconds.prompts[i][j].clone(), b.completions[j].text.clone());
            if kind.insert((e.prompt.clone(), e.completion.clone())) {
                out.push(e);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::episode::SecondAttempts;
    use crate::testutil::group;

    fn with_tokens(mut g: Group) -> Group {
        for c in &mut g.completions {
            c.tokens = vec![3; c.text.len()];
            c.logprobs = vec![-0.5; c.text.len()];
        }
        g
    }

    /// Episodes of one problem: (first, right?) then (second, right?).
    fn episodes(items: &[(&str, bool, &str, bool)]) -> (Vec<Group>, SecondAttempts) {
        let ans = |ok: bool| Some(if ok { "1" } else { "0" });
        let a: Vec<(&str, Option<&str>, bool)> = items
            .iter()
            .map(|&(t, ok, _, _)| (t, ans(ok), ok))
            .collect();
        let b: Vec<(&str, Option<&str>, bool)> = items
            .iter()
            .map(|&(_, _, t, ok)| (t, ans(ok), ok))
            .collect();
        let (mut a, mut b) = (with_tokens(group("p", &a)), with_tokens(group("p", &b)));
        for g in [&mut a, &mut b] {
            g.rewards = g.verdicts.iter().map(|v| v.score).collect();
        }
        let prompts = vec![items.iter().map(|(t, ..)| format!("p={t}↺")).collect()];
        (
            vec![a],
            SecondAttempts {
                prompts,
                groups: vec![b],
            },
        )
    }

    /// SCoRe's shaped rewards, advantages and KL coefficients in closed form: stage I rewards
    /// the second attempt alone and holds the first to the reference, stage II rewards both,
    /// with the bonus α·(r₂ − r₁) on the second.
    #[test]
    fn issue20_score_rewards_and_advantages_in_closed_form() {
        let s = ScoreSettings {
            alpha: 2.0,
            beta: 0.1,
            stage_one_beta: 1.0,
            ..ScoreSettings::default()
        };
        assert_eq!(shaped(Stage::One, &s, (1.0, 0.0)), (0.0, 0.0));
        assert_eq!(shaped(Stage::Two, &s, (0.0, 1.0)), (0.0, 3.0));
        assert_eq!(shaped(Stage::Two, &s, (1.0, 0.0)), (1.0, -2.0));
        assert_eq!(kl_coefs(Stage::One, &s), (1.0, 0.1));
        assert_eq!(kl_coefs(Stage::Two, &s), (0.1, 0.1));
        // Three episodes: wrong → right, right → right, right → wrong.
        let (firsts, seconds) = episodes(&[
            ("a", false, "b", true),
            ("c", true, "c", true),
            ("d", true, "e", false),
        ]);
        let (lines, m) = score_lines(&firsts, &seconds, Stage::Two, &s);
        // First attempts: rewards 0, 1, 1 → advantages −2/3, 1/3, 1/3.
        // Second: 1 + 2·1, 1 + 0, 0 − 2·1 = 3, 1, −2 → mean 2/3: 7/3, 1/3, −8/3.
        let want = [
            ("p=a", -2.0 / 3.0),
            ("p=a↺b", 7.0 / 3.0),
            ("p=c", 1.0 / 3.0),
            ("p=c↺c", 1.0 / 3.0),
            ("p=d", 1.0 / 3.0),
            ("p=d↺e", -8.0 / 3.0),
        ];
        assert_eq!(lines.len(), want.len());
        for (l, (name, b)) in lines.iter().zip(want) {
            assert_eq!(format!("{}{}", l.prompt, l.completion), name);
            assert!(
                (l.advantage - b).abs() < 1e-6,
                "{name}: {} vs {b}",
                l.advantage
            );
            assert_eq!(l.kl_coef, Some(0.1));
        }
        // The bonus: (2 + 0 − 2) / 3.
        assert!(m["score/bonus"].abs() < 1e-9);
        // Stage I: the first attempts carry no advantage but their KL term (coefficient 1).
        let (lines, m) = score_lines(&firsts, &seconds, Stage::One, &s);
        assert_eq!(lines.len(), 6);
        for l in &lines {
            if l.prompt.ends_with('↺') {
                assert_eq!(l.kl_coef, Some(0.1));
            } else {
                assert_eq!((l.advantage, l.kl_coef), (0.0, Some(1.0)));
            }
        }
        assert_eq!(m["score/stage"], 1.0);
        // Without KL terms, stage I's first attempts train nothing and are left out.
        let free = ScoreSettings {
            beta: 0.0,
            stage_one_beta: 0.0,
            ..s
        };
        let (lines, _) = score_lines(&firsts, &seconds, Stage::One, &free);
        assert_eq!(lines.len(), 3);
        assert!(lines.iter().all(|l| l.prompt.ends_with('↺')));
    }

    /// Pair-SFT pairs each distinct wrong first attempt with a correct sample in turn; own
    /// corrections keep only the wrong → right episodes.
    #[test]
    fn issue20_correction_traces() {
        let g = group(
            "p",
            &[
                ("w1", Some("0"), false),
                ("r1", Some("1"), true),
                ("w1", Some("0"), false),
                ("w2", None, false),
                ("r2", Some("1"), true),
                ("w3", Some("2"), false),
            ],
        );
        let settings = |max_per_problem, keep_right| SftSettings {
            max_per_problem,
            keep_right,
            ..SftSettings::default()
        };
        let prompt = |p: &autodidact_core::Problem, f: &str| Ok(format!("{}{f}↺", p.prompt));
        let all = pair_corrections(std::slice::from_ref(&g), &settings(0, false), prompt).unwrap();
        let got: Vec<(&str, &str)> = all
            .iter()
            .map(|e| (e.prompt.as_str(), e.completion.as_str()))
            .collect();
        assert_eq!(got, [("p=w1↺", "r1"), ("p=w2↺", "r2"), ("p=w3↺", "r1")]);
        let two = pair_corrections(std::slice::from_ref(&g), &settings(2, false), prompt).unwrap();
        assert_eq!(two.len(), 2);
        // D⁺: the right first attempts are kept as they are.
        let plus = pair_corrections(std::slice::from_ref(&g), &settings(0, true), prompt).unwrap();
        let got: Vec<(&str, &str)> = plus[3..]
            .iter()
            .map(|e| (e.prompt.as_str(), e.completion.as_str()))
            .collect();
        assert_eq!(got, [("p=r1↺", "r1"), ("p=r2↺", "r2")]);
        let unsolved = group("q", &[("w", Some("0"), false)]);
        assert!(pair_corrections(&[unsolved], &settings(0, true), prompt)
            .unwrap()
            .is_empty());

        let (firsts, seconds) = episodes(&[
            ("a", false, "b", true),
            ("a", false, "b", true),
            ("c", true, "c", true),
            ("d", false, "e", false),
            ("f", false, "g", true),
        ]);
        let own = own_corrections(&firsts, &seconds, &settings(0, false));
        let got: Vec<(&str, &str)> = own
            .iter()
            .map(|e| (e.prompt.as_str(), e.completion.as_str()))
            .collect();
        assert_eq!(got, [("p=a↺", "b"), ("p=f↺", "g")]);
        assert_eq!(
            own_corrections(&firsts, &seconds, &settings(1, false)).len(),
            1
        );
        let plus = own_corrections(&firsts, &seconds, &settings(0, true));
        assert_eq!(plus.len(), 3);
        assert_eq!(
            (plus[1].prompt.as_str(), plus[1].completion.as_str()),
            ("p=c↺", "c")
        );
    }
}
