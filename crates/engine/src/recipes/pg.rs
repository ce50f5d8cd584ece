//! Online policy-gradient rounds (`grpo`, `rloo`, `reinforce`) against the task's verifier.
//!
//! Each step samples G completions for each of P prompts of the unlabeled pool, scores them
//! (verifier score, plus an optional format reward and length penalty), turns rewards into
//! advantages ([`autodidact_objectives::advantages()`]), and makes `num_iterations` passes of
//! updates on the clipped surrogate ([`autodidact_objectives::policy_gradient`]) with the
//! sampling log-probs as the old policy. How this differs from TRL's `GRPOTrainer`:
//! - each pass over a rollout batch is split into `minibatches` optimizer steps over a fresh
//!   shuffle (TRL's `steps_per_generation`); micro-batches only bound memory;
//! - log-probs are those of the untempered policy; with `temperature ≠ 1` the samples are
//!   off-policy for them (TRL scores under the tempered distribution);
//! - AdamW's state travels with each round's checkpoint (`keep_optimizer`, default), so a
//!   resumed run continues it; `keep_optimizer = false` restarts it every round;
//! - zero-spread groups can be dropped (`drop_zero_std`) but are not re-sampled (DAPO refills);
//! - the KL estimator is selectable (k1, k2, k3; TRL: k3 only) and can be folded into the
//!   reward instead (`kl_mode = "reward"`, OpenRLHF's placement).

use super::{resolve, section, Column, Family, Format, Recipe, Sections};
use crate::config::{non_negative, Budget, Checkpoint, OptimizerConfig, RunConfig, SamplingConfig};
use crate::monitor::round_monitors;
use crate::progress::Observer;
use crate::run::{ExternalSteps, Manifest, Run};
use crate::sampling::{derive_seed, sample_groups};
use crate::store::RunDir;
use crate::train::{Order, TrainStats, Updater};
use crate::trainer::{TrainReport, TrainerBackend};
use crate::{Error, Result};
use autodidact_core::{
    Completion, Example, FinishReason, Grade, Group, Policy, Problem, SamplingParams, Task, Verdict,
};
use autodidact_objectives::{
    advantages, fold_kl, policy_gradient, sequence_kl, sft, Advantage, AdvantageEstimator,
    Advantages, BatchShape, KlEstimator, LossAggregation, PgInputs, PgSettings, PgStats,
    RewardScaling, SftNormalization,
};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::Arc;

/// What `reinforce` subtracts from each reward.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Baseline {
    /// The mean reward of the step's whole batch.
    #[default]
    BatchMean,
    /// Nothing: the advantage is the reward (with 0/1 rewards, expert iteration written as a
    /// policy gradient: only correct completions get a gradient, all of them).
    None,
}

/// Where the KL penalty goes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KlMode {
    /// A term `β·k_t` of the loss (TRL, verl's `use_kl_loss`).
    #[default]
    Loss,
    /// Subtracted from each completion's reward, `r − β Σ_t k_t` (OpenRLHF, classic RLHF).
    Reward,
}

/// Reward of a completion: `correct · verifier score + format · [an answer was parsed] −
/// length_penalty · tokens / max_new_tokens`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RewardWeights {
    pub correct: f32,
    pub format: f32,
    pub length_penalty: f32,
}

impl Default for RewardWeights {
    fn default() -> Self {
        Self {
            correct: 1.0,
            format: 0.0,
            length_penalty: 0.0,
        }
    }
}

/// Online policy gradient (`[rl]`, for recipes grpo, rloo, reinforce). Defaults are TRL's
/// `GRPOConfig` where it has the setting.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RlConfig {
    /// Rounds after the seed stage; each ends with a checkpoint and an evaluation.
    pub rounds: u32,
    /// Rollout steps per round.
    pub steps_per_round: u32,
    /// Unlabeled training problems the prompts are drawn from.
    pub problems: usize,
    /// Prompts per rollout step.
    pub prompts_per_step: usize,
    /// Rollout sampling: `samples` completions per prompt (the group size G, TRL's
    /// `num_generations`).
    pub sampling: SamplingConfig,
    /// Optimizer steps per rollout batch (μ), with the sampling log-probs as the old policy.
    pub num_iterations: u32,
    /// Optimizer steps per pass over a rollout batch: the batch is shuffled and split into this
    /// many minibatches (TRL's `steps_per_generation`); 1 is one step on the whole batch.
    pub minibatches: u32,
    /// Sequences per forward/backward pass (memory only; it does not change the update).
    pub micro_batch_size: usize,
    /// AdamW; warm-up counts updates from the start of the run, and the cosine decays to
    /// `min_lr_ratio · lr` over the run's updates (1: constant).
    pub optimizer: OptimizerConfig,
    /// GRPO's std division: group, batch or none (`grpo` only).
    pub scale_rewards: RewardScaling,
    /// REINFORCE's baseline: batch_mean or none (`reinforce` only).
    pub baseline: Baseline,
    /// Lower clip range ε_low of the ratio.
    pub epsilon_low: f32,
    /// Upper clip range ε_high (DAPO's clip-higher when above ε_low).
    pub epsilon_high: f32,
    pub loss_aggregation: LossAggregation,
    /// KL coefficient β; 0 loads no reference model.
    pub beta: f32,
    pub kl_estimator: KlEstimator,
    pub kl_mode: KlMode,
    pub reference: Checkpoint,
    /// Entropy bonus coefficient.
    pub entropy_coef: f32,
    /// Weight of an NLL term on every verifier-correct completion of the rollout (token mean
    /// per minibatch), zero-spread groups included: an anchor on already-solved problems,
    /// which group-centred advantages ignore (like PPO-ptx's pretraining term or IRPO's NLL).
    /// 0: pure policy gradient.
    pub sft_coef: f32,
    /// Continue AdamW (moments and step count, saved with each round's checkpoint) from one
    /// RL round to the next, as a single TRL run does; false restarts it every round.
    pub keep_optimizer: bool,
    /// Leave groups whose rewards are all equal out of the update (DAPO's dynamic sampling,
    /// without resampling).
    pub drop_zero_std: bool,
    pub rewards: RewardWeights,
}

impl Default for RlConfig {
    fn default() -> Self {
        Self {
            rounds: 10,
            steps_per_round: 10,
            problems: 2000,
            prompts_per_step: 32,
            sampling: SamplingConfig::default(),
            num_iterations: 1,
            minibatches: 1,
            micro_batch_size: 256,
            optimizer: OptimizerConfig {
                warmup_steps: 0,
                min_lr_ratio: 1.0,
                ..OptimizerConfig::default()
            },
            scale_rewards: RewardScaling::Group,
            baseline: Baseline::BatchMean,
            epsilon_low: 0.2,
            epsilon_high: 0.2,
            loss_aggregation: LossAggregation::Token,
            beta: 0.0,
            kl_estimator: KlEstimator::K3,
            kl_mode: KlMode::Loss,
            reference: Checkpoint::Seed,
            entropy_coef: 0.0,
            sft_coef: 0.0,
            keep_optimizer: true,
            drop_zero_std: false,
            rewards: RewardWeights::default(),
        }
    }
}

/// The policy-gradient family: recipes `grpo`, `rloo` and `reinforce`, section `[rl]`.
pub struct PolicyGradient;

impl Family for PolicyGradient {
    fn recipes(&self) -> &'static [&'static str] {
        &["grpo", "rloo", "reinforce"]
    }
    fn sections(&self) -> &'static [&'static str] {
        &["rl"]
    }
    fn resolve(&self, name: &str, value: toml::Value) -> Result<toml::Value> {
        resolve::<RlConfig>(name, value)
    }
    fn build(&self, recipe: &str, sections: &Sections) -> Result<Arc<dyn Recipe>> {
        let cfg: RlConfig = section(sections, "rl")?;
        let (name, estimator) = match recipe {
            "grpo" => ("grpo", AdvantageEstimator::Grpo),
            "rloo" => ("rloo", AdvantageEstimator::Rloo),
            _ => (
                "reinforce",
                match cfg.baseline {
                    Baseline::BatchMean => AdvantageEstimator::Reinforce,
                    Baseline::None => AdvantageEstimator::Raw,
                },
            ),
        };
        check_rl(name, &cfg)?;
        Ok(Arc::new(Pg {
            name,
            estimator,
            cfg,
        }))
    }
}

/// A policy-gradient recipe with its settings.
pub struct Pg {
    name: &'static str,
    estimator: AdvantageEstimator,
    cfg: RlConfig,
}

const COLUMNS: &[Column] = &[Column {
    header: "train reward",
    key: "reward",
    format: Format::Decimal,
}];

impl Recipe for Pg {
    fn name(&self) -> &'static str {
        self.name
    }
    fn rounds(&self) -> u32 {
        self.cfg.rounds
    }
    fn pool(&self) -> (usize, String) {
        (self.cfg.problems, "rl.problems".into())
    }
    fn round_stages(&self) -> &'static [&'static str] {
        &["rl"]
    }
    fn run_stage(
        &self,
        _stage: &str,
        round: u32,
        run: &mut Run,
        obs: &mut dyn Observer,
    ) -> Result<()> {
        self.rl_stage(run, round, obs)
    }
    fn check(&self, config: &RunConfig, _task: &dyn Task, budget: &Budget) -> Result<()> {
        let r = &self.cfg;
        if config.train.backend == TrainerBackend::External
            && r.kl_mode == KlMode::Reward
            && r.beta > 0.0
        {
            return Err(Error::config(
                "rl.kl_mode",
                "\"reward\" folds the reference's log-probs into the advantages before the update, and with train.backend = \"external\" the reference is scored by the trainer; use kl_mode = \"loss\" (or train natively)",
            ));
        }
        budget.batch("rl.micro_batch_size", r.micro_batch_size)?;
        let step = r.prompts_per_step.saturating_mul(r.sampling.samples);
        budget.batch("rl.prompts_per_step", step)?;
        budget.held(
            "rl.prompts_per_step",
            step,
            "rl.steps_per_round",
            r.steps_per_round as u64,
        )
    }
    fn takes_proxy_reward(&self) -> bool {
        true
    }
    fn columns(&self) -> &'static [Column] {
        COLUMNS
    }
}

impl Pg {
    /// A round of policy-gradient steps on fresh rollouts.
    fn rl_stage(&self, run: &mut Run, round: u32, obs: &mut dyn Observer) -> Result<()> {
        let parent = run.parent(round)?;
        let cfg = &self.cfg;
        let ref_round = cfg.reference.round(parent);
        let previous = run.dir.path(&RunDir::checkpoint_dir(parent));
        // With `keep_optimizer`, AdamW continues from the previous RL round (saved with its
        // checkpoint); otherwise it restarts (as it does in round 1: M0's optimizer belongs
        // to the seed stage).
        let resume = (parent > 0 && cfg.keep_optimizer).then_some(previous.as_path());
        let cx = RlContext {
            task: &*run.plan.task,
            pool: &run.problems.unlabeled,
            estimator: self.estimator,
            sampling: run.plan.sampling(&cfg.sampling),
            seed: run.plan.config.seed,
            round,
            n_star: run.plan.config.monitor.n_star,
            proxy: run.plan.reward.as_ref(),
        };
        obs.stage_started(
            &format!("r{round} {}", self.name),
            cfg.steps_per_round as u64,
        );
        let rd = RunDir::round_dir(round);
        let samples = format!("{rd}/samples.jsonl");
        let mut m = run.manifest(round)?;
        let record = |run: &Run, out: &RlRound, m: &mut Manifest| -> Result<()> {
            run.dir.write_jsonl(&samples, &out.records)?;
            run.hash_into(m, &samples)
        };
        let out = match run.plan.config.train.backend {
            TrainerBackend::Native => {
                let mut policy = run.load_policy(parent)?;
                let mut reference = if cfg.beta > 0.0 {
                    Some(run.load_policy(ref_round)?)
                } else {
                    None
                };
                let (total, first) = schedule(cfg, round);
                let up = Updater::start(&mut *policy, &cfg.optimizer, total, first, resume)?;
                let out = rl_round(
                    &mut InProcess(up),
                    reference.as_mut().map(|r| &mut **r as &mut dyn Policy),
                    cfg,
                    &cx,
                    obs,
                )?;
                record(run, &out, &mut m)?;
                run.save_checkpoint(&*policy, round, &mut m)?;
                out
            }
            TrainerBackend::External => {
                let reference = (cfg.beta > 0.0).then_some(ref_round);
                let mut steps =
                    ExternalSteps::start(run, round, parent, reference, resume, &cfg.optimizer)?;
                let out = rl_round(&mut steps, None, cfg, &cx, obs)?;
                record(run, &out, &mut m)?;
                steps.finish(&mut m)?;
                out
            }
        };
        let get = |k: &str| out.metrics.get(k).copied().unwrap_or(f64::NAN);
        obs.stage_finished(&format!(
            "r{round} {}: {} steps, reward {:.3}, zero-std groups {:.2}, entropy {:.3}, clip {:.3}",
            self.name,
            cfg.steps_per_round,
            get("reward"),
            get("frac_reward_zero_std"),
            get("entropy"),
            get("clip_ratio/region_mean"),
        ));
        m.parent_checkpoint = Some(RunDir::checkpoint_dir(parent));
        m.init_checkpoint = Some(RunDir::checkpoint_dir(parent));
        m.settings = Some(
            json!({"rl": cfg, "reference_checkpoint": (cfg.beta > 0.0).then(|| RunDir::checkpoint_dir(ref_round))}),
        );
        m.metrics = Some(out.metrics);
        run.write_manifest(&m)
    }
}

fn check_rl(recipe: &str, r: &RlConfig) -> Result<()> {
    let positive = |key: &str, v: usize| {
        if v == 0 {
            Err(Error::config(format!("rl.{key}"), "must be at least 1"))
        } else {
            Ok(())
        }
    };
    positive("steps_per_round", r.steps_per_round as usize)?;
    positive("problems", r.problems)?;
    positive("prompts_per_step", r.prompts_per_step)?;
    positive("num_iterations", r.num_iterations as usize)?;
    positive("minibatches", r.minibatches as usize)?;
    positive("micro_batch_size", r.micro_batch_size)?;
    let group_method = matches!(recipe, "grpo" | "rloo");
    if group_method && r.sampling.samples < 2 {
        return Err(Error::config(
            "rl.sampling.samples",
            format!(
                "{} is too small: {} compares completions within a group, so it needs at least 2",
                r.sampling.samples, recipe
            ),
        ));
    }
    positive("sampling.samples", r.sampling.samples)?;
    if recipe != "reinforce" && r.baseline != Baseline::BatchMean {
        return Err(Error::config(
            "rl.baseline",
            format!(
                "applies to the reinforce recipe only; {} uses its own group baseline (remove the key)",
                recipe
            ),
        ));
    }
    r.sampling.check("rl")?;
    for (key, e) in [
        ("epsilon_low", r.epsilon_low),
        ("epsilon_high", r.epsilon_high),
    ] {
        if !(e > 0.0 && e < 1.0) {
            return Err(Error::config(
                format!("rl.{key}"),
                format!("{e} must be in (0, 1)"),
            ));
        }
    }
    non_negative("rl.beta", r.beta, " (0 disables the KL term)")?;
    non_negative("rl.entropy_coef", r.entropy_coef, "")?;
    non_negative("rl.sft_coef", r.sft_coef, " (0: no NLL term)")?;
    r.optimizer.check("rl")?;
    let w = &r.rewards;
    for (key, v) in [
        ("correct", w.correct),
        ("format", w.format),
        ("length_penalty", w.length_penalty),
    ] {
        if !v.is_finite() {
            return Err(Error::config(
                format!("rl.rewards.{key}"),
                format!("{v} must be a finite number"),
            ));
        }
    }
    Ok(())
}

/// A line of an RL round's `samples.jsonl`.
#[derive(Serialize)]
pub struct RolloutRecord {
    pub step: u32,
    pub problem_id: String,
    pub prompt: String,
    pub completion: String,
    pub grade: Grade,
    pub reward: f32,
    pub advantage: f32,
    pub finish: FinishReason,
    /// Excluded from training: its group's rewards were all equal and `drop_zero_std` is on,
    /// or its sampling log-probs do not line up with its tokens (a served model's reply
    /// without token ids).
    pub dropped: bool,
    /// The completion's tokens as sampled, and the sampling policy's log-prob of each (the
    /// "old" policy of the clipped update).
    pub completion_tokens: Vec<u32>,
    pub logprobs: Vec<f32>,
    /// The problem's reference completion, when the task has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
}

/// What an RL round produced.
pub struct RlRound {
    pub records: Vec<RolloutRecord>,
    /// Round means of the per-step metrics (TRL's names where TRL has them).
    pub metrics: BTreeMap<String, f64>,
}

/// Settings an RL round needs beyond [`RlConfig`].
pub struct RlContext<'a> {
    pub task: &'a dyn Task,
    pub pool: &'a [Problem],
    pub estimator: AdvantageEstimator,
    /// Rollout sampling (temperature and top-p from `[rl]`, the task's length limit).
    pub sampling: SamplingParams,
    pub seed: u64,
    pub round: u32,
    /// n* of the balance-score monitor (`monitor.n_star`).
    pub n_star: usize,
    /// A learned reward that replaces the verifier's score (`[reward] model`).
    pub proxy: Option<&'a crate::reward::ProxyReward>,
}

/// The reward of one completion.
fn reward(cfg: &RlConfig, grade: Grade, score: f32, tokens: usize, max_new: usize) -> f32 {
    let w = &cfg.rewards;
    w.correct * score + w.format * (grade != Grade::Ungradable) as u8 as f32
        - w.length_penalty * tokens as f32 / max_new.max(1) as f32
}

fn mean_std(x: &[f32]) -> (f64, f64) {
    let n = x.len().max(1) as f64;
    let m = x.iter().map(|&v| v as f64).sum::<f64>() / n;
    let v = x.iter().map(|&v| (v as f64 - m).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
    (m, v.sqrt())
}

/// The learning-rate schedule of round `round`'s updates: the run's total, and the number of
/// updates before the round.
fn schedule(cfg: &RlConfig, round: u32) -> (u64, u64) {
    let updates = cfg.steps_per_round as u64 * cfg.num_iterations as u64 * cfg.minibatches as u64;
    (
        cfg.rounds.max(round) as u64 * updates,
        (round as u64 - 1) * updates,
    )
}

/// Who takes a round's optimizer steps: the engine's own trainer in process
/// ([`InProcess`]), or the run's external trainer, one job per rollout step
/// ([`crate::run::ExternalSteps`]).
pub(crate) trait StepTrainer {
    /// The policy that samples the next rollout: the weights of the last step.
    fn policy(&mut self) -> &mut dyn Policy;
    /// Takes the optimizer steps of `plan` on `batch`.
    fn update(&mut self, batch: &PgBatch, plan: &PgPlan, obs: &mut dyn Observer)
        -> Result<Updated>;
}

/// The engine's own trainer: one optimizer state and schedule for the round.
pub(crate) struct InProcess<'a>(pub(crate) Updater<'a>);

impl StepTrainer for InProcess<'_> {
    fn policy(&mut self) -> &mut dyn Policy {
        &mut *self.0.policy
    }
    fn update(
        &mut self,
        batch: &PgBatch,
        plan: &PgPlan,
        _obs: &mut dyn Observer,
    ) -> Result<Updated> {
        fit_pg(&mut self.0, batch, plan)
    }
}

/// Runs one round of `cfg.steps_per_round` steps with `trainer`; `reference` scores
/// completions for the KL term when `beta > 0` (an external trainer scores them itself).
/// Each step is four separate steps: [`Rollout::sample`], [`Scored::of`], the trainer's
/// update on a [`PgPlan`] and [`RoundLog::step`].
pub(crate) fn rl_round(
    trainer: &mut dyn StepTrainer,
    mut reference: Option<&mut dyn Policy>,
    cfg: &RlConfig,
    cx: &RlContext,
    obs: &mut dyn Observer,
) -> Result<RlRound> {
    let (total, mut first) = schedule(cfg, cx.round);
    // Prompts: consecutive batches of a per-epoch permutation of the pool, continued across
    // rounds (round r starts where round r − 1 ended).
    let mut order = Order::new(cx.pool.len(), derive_seed(cx.seed, 0, "rl-prompts", 0));
    let batch = cfg.prompts_per_step.min(cx.pool.len());
    for _ in 0..(cx.round - 1) as u64 * cfg.steps_per_round as u64 {
        order.next_batch(batch);
    }
    let mut log = RoundLog::default();
    for step in 0..cfg.steps_per_round {
        let prompts: Vec<Problem> = order
            .next_batch(batch)
            .into_iter()
            .map(|i| cx.pool[i].clone())
            .collect();
        let rollout = Rollout::sample(trainer.policy(), &prompts, cfg, cx, step)?;
        let reference = reference.as_mut().map(|r| &mut **r as &mut dyn Policy);
        let scored = Scored::of(&rollout, reference, cfg, cx)?;
        let correct: Vec<usize> = rollout
            .completions()
            .enumerate()
            .filter(|(_, (_, _, v))| v.is_correct())
            .map(|(i, _)| i)
            .collect();
        let mut plan = PgPlan::of(cfg, cx, step, &scored.keep, &correct);
        (plan.schedule_total, plan.schedule_first) = (total, first);
        first += plan.updates.len() as u64;
        let pg_batch = PgBatch {
            examples: &rollout.examples,
            old: &rollout.old,
            rewards: &scored.rewards,
            advantages: &scored.adv.values,
            token_advantages: None,
            kl_coefs: None,
            refs: scored.refs.as_deref(),
        };
        let updated = trainer.update(&pg_batch, &plan, obs)?;
        log.step(rollout, scored, &updated, cfg, step);
        obs.stage_progress(step as u64 + 1, log.sampled_tokens);
    }
    Ok(log.finish(cfg, cx))
}

/// One step's samples: G completions for each prompt, with their verdicts and sampling
/// log-probs (the old policy of the clipped surrogate).
struct Rollout {
    groups: Vec<Group>,
    /// A learned reward's `proxy/*` and `gold/*` metrics of the step (none without one).
    proxy: BTreeMap<String, f64>,
    /// Per completion, in group order: the training example and its sampling log-probs.
    examples: Vec<Example>,
    old: Vec<Vec<f32>>,
    /// Per completion: its length in tokens.
    lens: Vec<f32>,
}

impl Rollout {
    fn sample(
        policy: &mut dyn Policy,
        prompts: &[Problem],
        cfg: &RlConfig,
        cx: &RlContext,
        step: u32,
    ) -> Result<Self> {
        let seed = derive_seed(cx.seed, cx.round, "rollout", step as u64);
        let mut groups = sample_groups(
            policy,
            cx.task,
            prompts,
            cfg.sampling.samples,
            &cx.sampling,
            seed,
            &mut crate::Silent,
        )?;
        let proxy = match cx.proxy {
            Some(p) => p.rescore(&mut groups)?,
            None => BTreeMap::new(),
        };
        let mut out = Self {
            proxy,
            groups: Vec::new(),
            examples: Vec::new(),
            old: Vec::new(),
            lens: Vec::new(),
        };
        for gr in &groups {
            for c in &gr.completions {
                out.examples.push(Example {
                    prompt: gr.problem.prompt.clone(),
                    completion: c.text.clone(),
                    completion_tokens: Some(c.tokens.clone()),
                });
                out.old.push(c.logprobs.clone());
                out.lens.push(c.tokens.len() as f32);
            }
        }
        out.groups = groups;
        Ok(out)
    }

    /// Whether completion `i`'s sampling log-probs do not line up with its tokens.
    fn misaligned(&self, i: usize) -> bool {
        self.old[i].len() != self.lens[i] as usize
    }

    /// Every completion with its group and verdict, in group order.
    fn completions(&self) -> impl Iterator<Item = (&Group, &Completion, &Verdict)> {
        self.groups.iter().flat_map(|gr| {
            gr.completions
                .iter()
                .zip(&gr.verdicts)
                .map(move |(c, v)| (gr, c, v))
        })
    }
}

/// A rollout's rewards, advantages and the completions kept for the update.
struct Scored {
    rewards: Vec<f32>,
    adv: Advantages,
    /// Per completion: excluded from the update (its group had zero spread and
    /// `drop_zero_std` is on, or its log-probs do not line up with its tokens).
    dropped: Vec<bool>,
    /// Indices of the completions not dropped.
    keep: Vec<usize>,
    /// The reference's log-probs of each completion, when `beta > 0`.
    refs: Option<Vec<Vec<f32>>>,
    /// Each completion's KL to the reference, when folded into the reward.
    reward_kl: Option<Vec<f64>>,
}

impl Scored {
    fn of(
        rollout: &Rollout,
        reference: Option<&mut dyn Policy>,
        cfg: &RlConfig,
        cx: &RlContext,
    ) -> Result<Self> {
        // The group's reward of each completion: the verifier's score, or a learned reward's.
        let scores = rollout
            .groups
            .iter()
            .flat_map(|g| g.rewards.iter().copied());
        let mut rewards: Vec<f32> = rollout
            .completions()
            .zip(scores)
            .map(|((_, c, v), score)| {
                reward(
                    cfg,
                    v.grade,
                    score,
                    c.tokens.len(),
                    cx.sampling.max_new_tokens,
                )
            })
            .collect();
        let refs = match reference {
            Some(r) if cfg.beta > 0.0 => Some(crate::trainer::chunked_logprobs(
                r,
                &rollout.examples,
                cfg.micro_batch_size,
            )?),
            _ => None,
        };
        // KL of each sampled completion to the reference, for the reward (kl_mode = reward) and
        // its metric; with kl_mode = loss the metric comes from the loss instead.
        let reward_kl = match &refs {
            Some(refs) if cfg.kl_mode == KlMode::Reward => {
                Some(sequence_kl(&rollout.old, refs, cfg.kl_estimator))
            }
            _ => None,
        };
        if let Some(kl) = &reward_kl {
            rewards = fold_kl(&rewards, kl, cfg.beta);
        }
        let g = cfg.sampling.samples;
        let adv = advantages(&rewards, g, cx.estimator, cfg.scale_rewards);
        // Left out of the update: zero-spread groups (with `drop_zero_std`), and completions
        // whose sampling log-probs do not line up with their tokens (a server that gave no
        // token ids, whose text encodes to other tokens): their ratios would be wrong.
        let dropped: Vec<bool> = (0..rewards.len())
            .map(|i| (cfg.drop_zero_std && adv.zero_std[i / g]) || rollout.misaligned(i))
            .collect();
        let keep = (0..rewards.len()).filter(|&i| !dropped[i]).collect();
        Ok(Self {
            rewards,
            adv,
            dropped,
            keep,
            refs,
            reward_kl,
        })
    }
}

/// What one step's updates report: the first pass's statistics and losses (later passes'
/// ratios drift from 1 by construction) and the mean gradient norm over all of its updates.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Updated {
    stats: PgStats,
    loss: f64,
    sft_loss: f64,
    grad_norm: f64,
}

/// The keys of [`Updated`] in a trainer's report ([`TrainReport::metrics`]).
const REPORTED: [&str; 8] = [
    "pg/loss",
    "pg/sft_loss",
    "pg/grad_norm",
    "pg/tokens",
    "pg/clipped_low",
    "pg/clipped_high",
    "pg/kl_sum",
    "pg/entropy_sum",
];

impl Updated {
    /// The report of a `pg` training job: its losses and sums as metrics.
    pub(crate) fn report(&self, examples: usize, updates: u64) -> TrainReport {
        let s = &self.stats;
        let values = [
            self.loss,
            self.sft_loss,
            self.grad_norm,
            s.tokens as f64,
            s.clipped_low as f64,
            s.clipped_high as f64,
            s.kl,
            s.entropy,
        ];
        TrainReport {
            stats: TrainStats {
                examples,
                steps: updates,
                tokens: s.tokens as u64,
                first_loss: self.loss,
                last_loss: self.loss,
            },
            metrics: REPORTED.iter().map(|k| k.to_string()).zip(values).collect(),
            losses: vec![self.loss],
        }
    }

    /// What a trainer's report says of a step's updates; what it leaves out is NaN (the
    /// round's metric is then undefined), and the keys it left out are returned.
    pub(crate) fn from_report(r: &TrainReport) -> (Self, Vec<&'static str>) {
        let missing: Vec<&'static str> = REPORTED
            .iter()
            .copied()
            .filter(|k| !r.metrics.contains_key(*k))
            .collect();
        let get = |k: &str| r.metrics.get(k).copied().unwrap_or(f64::NAN);
        let count = |k: &str| get(k).max(0.0) as usize;
        let out = Self {
            stats: PgStats {
                tokens: count("pg/tokens"),
                clipped_low: count("pg/clipped_low"),
                clipped_high: count("pg/clipped_high"),
                kl: get("pg/kl_sum"),
                entropy: get("pg/entropy_sum"),
            },
            loss: get("pg/loss"),
            sft_loss: get("pg/sft_loss"),
            grad_norm: get("pg/grad_norm"),
        };
        (out, missing)
    }
}

/// The optimizer steps of one rollout batch (the `pg` objective of a training job): the
/// batch's completions that each step trains, the surrogate's settings and the schedule.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PgPlan {
    /// The clipped surrogate (its `beta` is the KL term's in the loss; 0 with `kl_mode =
    /// "reward"`, whose KL is in the advantages already).
    pub surrogate: PgSettings,
    /// Weight of the NLL term on each step's `anchors`.
    pub sft_coef: f32,
    /// Sequences per forward/backward pass (memory only).
    pub micro_batch_size: usize,
    /// The completion length `loss_aggregation = "constant"` divides by.
    pub max_new_tokens: usize,
    /// The learning-rate schedule spans `schedule_total` updates, of which this batch's
    /// first is number `schedule_first` (0-based; a run-long schedule).
    pub schedule_total: u64,
    pub schedule_first: u64,
    /// The optimizer steps, in order.
    pub updates: Vec<PgUpdate>,
}

/// One optimizer step: line numbers (0-based) of the batch's completions.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PgUpdate {
    /// The pass over the batch it belongs to (`num_iterations`); reported statistics and
    /// losses are those of pass 0.
    pub pass: u32,
    /// Completions of the clipped surrogate.
    pub rows: Vec<usize>,
    /// Verifier-correct completions of the NLL term (`sft_coef`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub anchors: Vec<usize>,
}

impl PgPlan {
    /// `num_iterations` passes over the kept completions `keep` of step `step`'s batch, each
    /// split into `minibatches` optimizer steps over a fresh shuffle (TRL's
    /// `steps_per_generation`); with `sft_coef`, the verifier-correct completions `correct`
    /// (zero-spread groups included) are shuffled into the same steps.
    fn of(cfg: &RlConfig, cx: &RlContext, step: u32, keep: &[usize], correct: &[usize]) -> Self {
        let seed = |what: &str, it: u32| {
            derive_seed(cx.seed, cx.round, what, ((step as u64) << 16) | it as u64)
        };
        Self::passes(cfg, keep, correct, cx.sampling.max_new_tokens, &seed)
    }

    /// What `autodidact train --objective pg` does with a dataset of `n` completions alone:
    /// one pass in `minibatches` optimizer steps, shuffled by `seed`, with `[rl]`'s default
    /// surrogate.
    pub fn for_dataset(n: usize, max_new_tokens: usize, minibatches: u32, seed: u64) -> Self {
        let cfg = RlConfig {
            minibatches: minibatches.max(1),
            ..RlConfig::default()
        };
        Self::offline(&cfg, n, max_new_tokens, seed)
    }

    /// `cfg.num_iterations` passes over a dataset of `n` completions, each in
    /// `cfg.minibatches` optimizer steps over a fresh shuffle seeded by `seed`, with `cfg`'s
    /// surrogate; its learning-rate schedule spans just these updates.
    pub(crate) fn offline(cfg: &RlConfig, n: usize, max_new_tokens: usize, seed: u64) -> Self {
        let all: Vec<usize> = (0..n).collect();
        let seed = |what: &str, it: u32| derive_seed(seed, 0, what, it as u64);
        let mut plan = Self::passes(cfg, &all, &[], max_new_tokens, &seed);
        plan.schedule_total = plan.updates.len() as u64;
        plan
    }

    fn passes(
        cfg: &RlConfig,
        keep: &[usize],
        correct: &[usize],
        max_new_tokens: usize,
        pass_seed: &dyn Fn(&str, u32) -> u64,
    ) -> Self {
        let mut updates = Vec::new();
        for it in 0..cfg.num_iterations {
            let shuffle = |v: &[usize], what: &str| -> Vec<usize> {
                let mut perm = Order::new(v.len(), pass_seed(what, it));
                perm.next_batch(v.len()).into_iter().map(|j| v[j]).collect()
            };
            let shuffled = shuffle(keep, "minibatch");
            let anchors = if cfg.sft_coef > 0.0 {
                shuffle(correct, "anchor")
            } else {
                Vec::new()
            };
            let parts = (cfg.minibatches as usize).min(shuffled.len().max(anchors.len()).max(1));
            for part in 0..parts {
                let slice = |v: &[usize]| -> Vec<usize> {
                    v[part * v.len() / parts..(part + 1) * v.len() / parts].to_vec()
                };
                let (rows, anchors) = (slice(&shuffled), slice(&anchors));
                if !(rows.is_empty() && anchors.is_empty()) {
                    updates.push(PgUpdate {
                        pass: it,
                        rows,
                        anchors,
                    });
                }
            }
        }
        PgPlan {
            surrogate: PgSettings {
                epsilon_low: cfg.epsilon_low,
                epsilon_high: cfg.epsilon_high,
                aggregation: cfg.loss_aggregation,
                beta: if cfg.kl_mode == KlMode::Loss {
                    cfg.beta
                } else {
                    0.0
                },
                kl_estimator: cfg.kl_estimator,
                entropy_coef: cfg.entropy_coef,
            },
            sft_coef: cfg.sft_coef,
            micro_batch_size: cfg.micro_batch_size,
            max_new_tokens,
            schedule_total: 0,
            schedule_first: 0,
            updates,
        }
    }

    /// Checks the plan against a batch of `n` completions, naming what is wrong.
    pub(crate) fn check(&self, n: usize) -> std::result::Result<(), String> {
        if self.micro_batch_size == 0 {
            return Err("micro_batch_size must be at least 1".into());
        }
        for (k, u) in self.updates.iter().enumerate() {
            if let Some(&i) = u.rows.iter().chain(&u.anchors).find(|&&i| i >= n) {
                return Err(format!(
                    "update {k} names line {i}, but the batch has {n} lines (0-based)"
                ));
            }
        }
        Ok(())
    }
}

/// A rollout batch as the updates read it: per completion, the training example, its
/// sampling log-probs, its reward (for the record of what was trained on) and its
/// advantage; the reference's log-probs when the loss has a KL term.
pub(crate) struct PgBatch<'a> {
    pub examples: &'a [Example],
    pub old: &'a [Vec<f32>],
    pub rewards: &'a [f32],
    pub advantages: &'a [f32],
    /// Per completion token, when the credit is per step: the advantage of the step each
    /// token belongs to (the updates then read these instead of `advantages`).
    pub token_advantages: Option<&'a [Vec<f32>]>,
    /// Per completion, the KL term's coefficient in place of the surrogate's `beta`.
    pub kl_coefs: Option<&'a [f32]>,
    pub refs: Option<&'a [Vec<f32>]>,
}

/// The optimizer steps of `plan` on `batch`, with micro-batches of `micro_batch_size`
/// accumulated per step: the engine's own policy-gradient trainer, for a round in process
/// and for a `pg` training job.
pub(crate) fn fit_pg(up: &mut Updater, batch: &PgBatch, plan: &PgPlan) -> Result<Updated> {
    let s = &plan.surrogate;
    let mut out = Updated::default();
    let first_pass = plan.updates.iter().filter(|u| u.pass == 0).count().max(1) as f64;
    let rows = |idx: &[usize], v: &[Vec<f32>]| -> Vec<Vec<f32>> {
        idx.iter().map(|&i| v[i].clone()).collect()
    };
    for u in &plan.updates {
        let counted = u.pass == 0;
        if !u.anchors.is_empty() {
            let ex: Vec<Example> = u
                .anchors
                .iter()
                .map(|&i| batch.examples[i].clone())
                .collect();
            let nll_loss = up.accumulate(&ex, false, |sc| {
                let nll = sft(
                    &sc.logprobs,
                    BatchShape::of(&sc.logprobs),
                    SftNormalization::Token,
                );
                let w: Vec<Vec<f32>> = nll
                    .weights
                    .iter()
                    .map(|r| r.iter().map(|w| w * plan.sft_coef).collect())
                    .collect();
                (w, None, nll.loss)
            })?;
            if counted {
                out.sft_loss += nll_loss / first_pass;
            }
        }
        let ex: Vec<Example> = u.rows.iter().map(|&i| batch.examples[i].clone()).collect();
        let old_k = rows(&u.rows, batch.old);
        let ref_k = batch.refs.map(|r| rows(&u.rows, r));
        let adv_k: Vec<f32> = u.rows.iter().map(|&i| batch.advantages[i]).collect();
        let tok_k = batch.token_advantages.map(|t| rows(&u.rows, t));
        let kl_k: Option<Vec<f32>> = batch
            .kl_coefs
            .map(|c| u.rows.iter().map(|&i| c[i]).collect());
        let mut shape = BatchShape::of(&old_k);
        shape.max_len = plan.max_new_tokens;
        for start in (0..ex.len()).step_by(plan.micro_batch_size) {
            let r = start..(start + plan.micro_batch_size).min(ex.len());
            let (pass_loss, pass_stats) = up.accumulate(&ex[r.clone()], true, |sc| {
                let o = policy_gradient(
                    s,
                    &PgInputs {
                        logprobs: &sc.logprobs,
                        old_logprobs: &old_k[r.clone()],
                        ref_logprobs: ref_k.as_ref().map(|v| &v[r.clone()]),
                        entropies: sc.entropies.as_deref(),
                        advantages: match &tok_k {
                            Some(t) => Advantage::PerToken(&t[r.clone()]),
                            None => Advantage::PerSequence(&adv_k[r.clone()]),
                        },
                        kl_coefs: kl_k.as_ref().map(|c| &c[r]),
                    },
                    shape,
                );
                (o.weights, o.entropy_coefs, (o.loss, o.stats))
            })?;
            if counted {
                out.stats.add(&pass_stats);
                out.loss += pass_loss / first_pass;
            }
        }
        let norm = up.step()?;
        out.grad_norm += norm as f64 / plan.updates.len() as f64;
    }
    Ok(out)
}

/// A round's record: per-step metrics summed (their means are the round's), the rollout
/// records of `samples.jsonl`, and every group for the round's monitors.
#[derive(Default)]
struct RoundLog {
    sums: BTreeMap<String, f64>,
    records: Vec<RolloutRecord>,
    sampled_tokens: u64,
    groups: Vec<Group>,
    /// Per group and completion: whether the update pushed it up (a positive advantage in a
    /// kept group).
    selected: Vec<Vec<bool>>,
}

impl RoundLog {
    fn add(&mut self, key: &str, v: f64) {
        *self.sums.entry(key.to_string()).or_insert(0.0) += v;
    }

    /// Records one step: its rollout, how it was scored and what its updates reported.
    fn step(
        &mut self,
        rollout: Rollout,
        scored: Scored,
        updated: &Updated,
        cfg: &RlConfig,
        step: u32,
    ) {
        let g = cfg.sampling.samples;
        let (rewards, adv, n) = (&scored.rewards, &scored.adv, scored.rewards.len());
        let frac = |k: usize| k as f64 / n.max(1) as f64;
        // The rollout.
        self.add("reward", mean_std(rewards).0);
        for (k, v) in &rollout.proxy {
            self.add(k, *v);
        }
        let group_std: f64 = rewards.chunks(g).map(|r| mean_std(r).1).sum::<f64>()
            / rollout.groups.len().max(1) as f64;
        self.add("reward_std", group_std);
        self.add(
            "frac_reward_zero_std",
            adv.zero_std.iter().filter(|&&z| z).count() as f64 / adv.zero_std.len().max(1) as f64,
        );
        self.add("completions/mean_length", mean_std(&rollout.lens).0);
        let clipped = rollout
            .completions()
            .filter(|(_, c, _)| c.finish != FinishReason::Stop)
            .count();
        self.add("completions/clipped_ratio", frac(clipped));
        self.add(
            "pg/advantage_mean",
            adv.values.iter().map(|&a| a as f64).sum::<f64>() / adv.values.len().max(1) as f64,
        );
        self.add("pg/kept_fraction", frac(scored.keep.len()));
        let misaligned = (0..n).filter(|&i| rollout.misaligned(i)).count();
        if misaligned > 0 {
            self.add("rollout/misaligned_fraction", frac(misaligned));
        }
        self.sampled_tokens += rollout.lens.iter().map(|&l| l as u64).sum::<u64>();
        // The update.
        let tokens = updated.stats.tokens.max(1) as f64;
        self.add("pg/loss", updated.loss);
        if cfg.sft_coef > 0.0 {
            self.add("pg/sft_loss", updated.sft_loss);
        }
        self.add("pg/grad_norm", updated.grad_norm);
        self.add("entropy", updated.stats.entropy / tokens);
        if cfg.beta > 0.0 {
            let kl = match &scored.reward_kl {
                Some(kl) => {
                    kl.iter().sum::<f64>() / rollout.lens.iter().sum::<f32>().max(1.0) as f64
                }
                None => updated.stats.kl / tokens,
            };
            self.add("kl", kl);
        }
        let (low, high) = (updated.stats.clipped_low, updated.stats.clipped_high);
        self.add("clip_ratio/low_mean", low as f64 / tokens);
        self.add("clip_ratio/high_mean", high as f64 / tokens);
        self.add("clip_ratio/region_mean", (low + high) as f64 / tokens);
        // The round's monitors see every rollout, with its reward and whether it was selected.
        for (i, (gr, c, v)) in rollout.completions().enumerate() {
            self.records.push(RolloutRecord {
                step,
                problem_id: gr.problem.id.clone(),
                prompt: gr.problem.prompt.clone(),
                completion: c.text.clone(),
                grade: v.grade,
                reward: rewards[i],
                advantage: adv.values[i],
                finish: c.finish,
                dropped: scored.dropped[i],
                completion_tokens: c.tokens.clone(),
                logprobs: c.logprobs.clone(),
                reference: gr.problem.solution.clone(),
            });
        }
        for j in 0..rollout.groups.len() {
            self.selected.push(
                (j * g..(j + 1) * g)
                    .map(|i| !scored.dropped[i] && adv.values[i] > 0.0)
                    .collect(),
            );
        }
        self.groups.extend(
            rollout
                .groups
                .into_iter()
                .zip(rewards.chunks(g))
                .map(|(mut gr, r)| {
                    gr.rewards = r.to_vec();
                    gr
                }),
        );
    }

    /// The round's metrics (step means, monitors, sampled tokens) and records.
    fn finish(self, cfg: &RlConfig, cx: &RlContext) -> RlRound {
        let n = cfg.steps_per_round.max(1) as f64;
        let mut metrics: BTreeMap<String, f64> =
            self.sums.into_iter().map(|(k, v)| (k, v / n)).collect();
        metrics.extend(round_monitors(&self.groups, &self.selected, cx.n_star));
        metrics.insert("rollout/sampled_tokens".into(), self.sampled_tokens as f64);
        RlRound {
            records: self.records,
            metrics,
        }
    }
}

/// How a round's rollouts (its `train.jsonl`, each line with its advantages) train: the
/// clipped surrogate in `epochs` passes of `batch_size`-sequence optimizer steps, with the
/// sampling log-probs as the old policy (the recipes that score a whole round's samples
/// before they train: `step-pg`, `score`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct OfflineUpdate {
    pub epochs: u32,
    pub batch_size: usize,
    pub micro_batch_size: usize,
    pub epsilon_low: f32,
    pub epsilon_high: f32,
    pub loss_aggregation: LossAggregation,
    /// The estimator of the KL terms (of lines with a `kl_coef`).
    pub kl_estimator: KlEstimator,
}

/// Trains the checkpoint of round `init` on the round's `train.jsonl` rollouts as `update`
/// says, with a fresh optimizer, natively or through the external trainer, and saves the
/// round's checkpoint; the KL terms of lines with a `kl_coef` are measured against the
/// checkpoint of round `reference`, and `shuffle` names the seed of its minibatch order.
#[allow(clippy::too_many_arguments)]
pub(crate) fn offline_pg_stage(
    run: &mut Run,
    round: u32,
    init: u32,
    reference: Option<u32>,
    update: &OfflineUpdate,
    optimizer: &OptimizerConfig,
    shuffle: &str,
    obs: &mut dyn Observer,
) -> Result<()> {
    let data = format!("{}/train.jsonl", RunDir::round_dir(round));
    let n = crate::trainer::count_lines(&run.dir.path(&data))?;
    let rl = RlConfig {
        num_iterations: update.epochs,
        minibatches: n.div_ceil(update.batch_size).max(1) as u32,
        micro_batch_size: update.micro_batch_size,
        epsilon_low: update.epsilon_low,
        epsilon_high: update.epsilon_high,
        loss_aggregation: update.loss_aggregation,
        kl_estimator: update.kl_estimator,
        ..RlConfig::default()
    };
    let plan = PgPlan::offline(&rl, n, run.plan.max_new_tokens, run.seed(round, shuffle));
    let train = crate::config::TrainConfig {
        steps: Some(plan.updates.len() as u64),
        batch_size: update.batch_size,
        ..crate::config::TrainConfig::default()
    };
    let reference = match reference {
        Some(r) => {
            run.check_checkpoint(r)?;
            Some(run.weights_dir(&RunDir::checkpoint_dir(r))?)
        }
        None => None,
    };
    let mut m = run.manifest(round)?;
    m.init_checkpoint = Some(RunDir::checkpoint_dir(init));
    let job = run.job(
        crate::trainer::Objective::Pg {
            plan,
            reference,
            optimizer_state: None,
        },
        round,
        &data,
        &RunDir::checkpoint_dir(init),
        &train,
        optimizer,
    )?;
    let report = run.train(
        &job,
        crate::run::Start::Round(init),
        &mut m,
        obs,
        &mut |_, _, _| Ok(()),
    )?;
    m.train = Some(report.stats);
    let metrics = m.metrics.get_or_insert_with(BTreeMap::new);
    metrics.extend(report.metrics);
    run.write_manifest(&m)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 16: what an external `pg` job reports comes back as the numbers the round logs.
    #[test]
    fn issue16_step_statistics_survive_a_trainer_report() {
        let u = Updated {
            stats: PgStats {
                tokens: 412,
                clipped_low: 3,
                clipped_high: 5,
                kl: 0.123456789012345,
                entropy: 301.5,
            },
            loss: -0.0311,
            sft_loss: 0.72,
            grad_norm: 1.25,
        };
        let report = u.report(64, 4);
        assert_eq!((report.stats.examples, report.stats.steps), (64, 4));
        let text = serde_json::to_string(&report).unwrap();
        let back: TrainReport = serde_json::from_str(&text).unwrap();
        assert_eq!(Updated::from_report(&back), (u, vec![]));
        // A report without them leaves the step's numbers undefined, and says which.
        let (none, missing) = Updated::from_report(&TrainReport::default());
        assert!(none.loss.is_nan() && none.grad_norm.is_nan());
        assert_eq!(missing.len(), REPORTED.len());
    }

    /// Each pass's steps cover the kept completions once, in a fresh order per pass, and
    /// the anchors ride along in the same steps.
    #[test]
    fn plans_split_each_pass_into_minibatches() {
        let cfg = RlConfig {
            num_iterations: 2,
            minibatches: 3,
            sft_coef: 0.5,
            ..RlConfig::default()
        };
        let seed = |what: &str, it: u32| derive_seed(1, 1, what, it as u64);
        let keep = [0, 2, 3, 5, 6, 7, 9];
        let plan = PgPlan::passes(&cfg, &keep, &[2, 9], 16, &seed);
        assert_eq!(plan.updates.len(), 6);
        for pass in 0..2 {
            let steps: Vec<&PgUpdate> = plan.updates.iter().filter(|u| u.pass == pass).collect();
            let mut rows: Vec<usize> = steps.iter().flat_map(|u| u.rows.clone()).collect();
            let anchors: usize = steps.iter().map(|u| u.anchors.len()).sum();
            rows.sort();
            assert_eq!(rows, keep);
            assert_eq!(anchors, 2);
        }
        assert_ne!(plan.updates[0].rows, plan.updates[3].rows);
        assert_eq!(plan.max_new_tokens, 16);
    }
}
