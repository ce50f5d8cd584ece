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
use crate::run::Run;
use crate::sampling::{derive_seed, sample_groups};
use crate::store::RunDir;
use crate::train::{Order, Updater};
use crate::{Error, Result};
use autodidact_core::{
    Completion, Example, FinishReason, Grade, Group, Policy, Problem, SamplingParams, Task,
    TrainablePolicy, Verdict,
};
use autodidact_objectives::{
    advantages, fold_kl, policy_gradient, sequence_kl, sft, AdvantageEstimator, Advantages,
    BatchShape, KlEstimator, LossAggregation, PgInputs, PgSettings, PgStats, RewardScaling,
    SftNormalization,
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
    fn check(&self, _config: &RunConfig, _task: &dyn Task, budget: &Budget) -> Result<()> {
        let r = &self.cfg;
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
    fn columns(&self) -> &'static [Column] {
        COLUMNS
    }
}

impl Pg {
    /// A round of policy-gradient steps on fresh rollouts.
    fn rl_stage(&self, run: &mut Run, round: u32, obs: &mut dyn Observer) -> Result<()> {
        let parent = run.parent(round)?;
        let cfg = &self.cfg;
        let mut policy = run.load_policy(parent)?;
        let ref_round = cfg.reference.round(parent);
        let mut reference = if cfg.beta > 0.0 {
            Some(run.load_policy(ref_round)?)
        } else {
            None
        };
        let previous = run.dir.path(&RunDir::checkpoint_dir(parent));
        let cx = RlContext {
            previous_checkpoint: (parent > 0).then_some(previous.as_path()),
            task: &*run.plan.task,
            pool: &run.problems.unlabeled,
            estimator: self.estimator,
            sampling: run.plan.sampling(&cfg.sampling),
            seed: run.plan.config.seed,
            round,
            n_star: run.plan.config.monitor.n_star,
        };
        obs.stage_started(
            &format!("r{round} {}", self.name),
            cfg.steps_per_round as u64,
        );
        let out = rl_round(
            &mut *policy,
            reference
                .as_mut()
                .map(|r| &mut **r as &mut dyn autodidact_core::Policy),
            cfg,
            &cx,
            obs,
        )?;
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
        let rd = RunDir::round_dir(round);
        run.dir
            .write_jsonl(&format!("{rd}/samples.jsonl"), &out.records)?;
        let mut m = run.manifest(round)?;
        m.parent_checkpoint = Some(RunDir::checkpoint_dir(parent));
        m.init_checkpoint = Some(RunDir::checkpoint_dir(parent));
        m.settings = Some(
            json!({"rl": cfg, "reference_checkpoint": (cfg.beta > 0.0).then(|| RunDir::checkpoint_dir(ref_round))}),
        );
        m.metrics = Some(out.metrics);
        run.hash_into(&mut m, &format!("{rd}/samples.jsonl"))?;
        run.save_checkpoint(&*policy, round, &mut m)?;
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
    /// Excluded from training (its group's rewards were all equal and `drop_zero_std` is on).
    pub dropped: bool,
    /// The completion's tokens as sampled, and the sampling policy's log-prob of each (the
    /// "old" policy of the clipped update).
    pub completion_tokens: Vec<u32>,
    pub logprobs: Vec<f32>,
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
    /// The checkpoint of the previous RL round, whose optimizer state `keep_optimizer`
    /// continues (`None` in round 1: M0's optimizer belongs to the seed stage).
    pub previous_checkpoint: Option<&'a std::path::Path>,
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

/// Runs one round of `cfg.steps_per_round` steps on `policy`; `reference` scores completions
/// for the KL term when `beta > 0`. Each step is four separate steps: [`Rollout::sample`],
/// [`Scored::of`], [`update`] (on the shared [`Updater`]) and [`RoundLog::step`].
pub fn rl_round(
    policy: &mut dyn TrainablePolicy,
    mut reference: Option<&mut dyn Policy>,
    cfg: &RlConfig,
    cx: &RlContext,
    obs: &mut dyn Observer,
) -> Result<RlRound> {
    let updates = cfg.steps_per_round as u64 * cfg.num_iterations as u64 * cfg.minibatches as u64;
    // With `keep_optimizer`, AdamW continues from the previous RL round (saved with its
    // checkpoint); otherwise it restarts. The learning-rate schedule always spans the run:
    // warm-up at its start, cosine decay to `min_lr_ratio · lr` at its end.
    let mut up = Updater::start(
        policy,
        &cfg.optimizer,
        cfg.rounds.max(cx.round) as u64 * updates,
        (cx.round as u64 - 1) * updates,
        cx.previous_checkpoint.filter(|_| cfg.keep_optimizer),
    )?;
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
        let rollout = Rollout::sample(&mut *up.policy, &prompts, cfg, cx, step)?;
        let reference = reference.as_mut().map(|r| &mut **r as &mut dyn Policy);
        let scored = Scored::of(&rollout, reference, cfg, cx)?;
        let updated = update(&mut up, &rollout, &scored, cfg, cx, step)?;
        log.step(rollout, scored, &updated, cfg, step);
        obs.stage_progress(step as u64 + 1, log.sampled_tokens);
    }
    Ok(log.finish(cfg, cx))
}

/// One step's samples: G completions for each prompt, with their verdicts and sampling
/// log-probs (the old policy of the clipped surrogate).
struct Rollout {
    groups: Vec<Group>,
    /// Per completion, in group order: the training example and its sampling log-probs.
    examples: Vec<Example>,
    old: Vec<Vec<f32>>,
    /// Per completion: its length in tokens.
    lens: Vec<f32>,
}

impl Rollout {
    fn sample(
        policy: &mut dyn TrainablePolicy,
        prompts: &[Problem],
        cfg: &RlConfig,
        cx: &RlContext,
        step: u32,
    ) -> Result<Self> {
        let seed = derive_seed(cx.seed, cx.round, "rollout", step as u64);
        let groups = sample_groups(
            policy,
            cx.task,
            prompts,
            cfg.sampling.samples,
            &cx.sampling,
            seed,
            &mut crate::Silent,
        )?;
        let mut out = Self {
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
    /// Per completion: excluded from the update (its group had zero spread, `drop_zero_std`).
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
        let mut rewards: Vec<f32> = rollout
            .completions()
            .map(|(_, c, v)| {
                reward(
                    cfg,
                    v.grade,
                    v.score,
                    c.tokens.len(),
                    cx.sampling.max_new_tokens,
                )
            })
            .collect();
        let refs = match reference {
            Some(r) if cfg.beta > 0.0 => Some(r.logprobs(&rollout.examples)?),
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
        let dropped: Vec<bool> = (0..rewards.len())
            .map(|i| cfg.drop_zero_std && adv.zero_std[i / g])
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
#[derive(Default)]
struct Updated {
    stats: PgStats,
    loss: f64,
    sft_loss: f64,
    grad_norm: f64,
}

/// Optimizer updates on the kept completions of a scored rollout: `num_iterations` passes,
/// each split into `minibatches` optimizer steps over a fresh shuffle (TRL's
/// `steps_per_generation`), with micro-batches of `micro_batch_size` accumulated per step.
fn update(
    up: &mut Updater,
    rollout: &Rollout,
    scored: &Scored,
    cfg: &RlConfig,
    cx: &RlContext,
    step: u32,
) -> Result<Updated> {
    let settings = PgSettings {
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
    };
    let (examples, keep) = (&rollout.examples, &scored.keep);
    let mut out = Updated::default();
    let updates_per_step = (cfg.num_iterations * cfg.minibatches) as f64;
    for it in 0..cfg.num_iterations {
        let pass_seed =
            |what: &str| derive_seed(cx.seed, cx.round, what, ((step as u64) << 16) | it as u64);
        let mut perm = Order::new(keep.len(), pass_seed("minibatch"));
        let shuffled: Vec<usize> = perm
            .next_batch(keep.len())
            .into_iter()
            .map(|j| keep[j])
            .collect();
        // With `sft_coef`, every verifier-correct completion of the rollout (its zero-spread
        // groups included) is also shuffled into the minibatches for an NLL term.
        let anchors: Vec<usize> = if cfg.sft_coef > 0.0 {
            let correct: Vec<usize> = rollout
                .completions()
                .enumerate()
                .filter(|(_, (_, _, v))| v.is_correct())
                .map(|(i, _)| i)
                .collect();
            let mut o = Order::new(correct.len(), pass_seed("anchor"));
            o.next_batch(correct.len())
                .into_iter()
                .map(|j| correct[j])
                .collect()
        } else {
            Vec::new()
        };
        let parts = (cfg.minibatches as usize).min(shuffled.len().max(anchors.len()).max(1));
        for part in 0..parts {
            let slice = |v: &[usize]| -> Vec<usize> {
                v[part * v.len() / parts..(part + 1) * v.len() / parts].to_vec()
            };
            let (idx, anchor) = (slice(&shuffled), slice(&anchors));
            if idx.is_empty() && anchor.is_empty() {
                continue;
            }
            if !anchor.is_empty() {
                let ex: Vec<Example> = anchor.iter().map(|&i| examples[i].clone()).collect();
                let nll_loss = up.accumulate(&ex, false, |s| {
                    let nll = sft(
                        &s.logprobs,
                        BatchShape::of(&s.logprobs),
                        SftNormalization::Token,
                    );
                    let w: Vec<Vec<f32>> = nll
                        .weights
                        .iter()
                        .map(|r| r.iter().map(|w| w * cfg.sft_coef).collect())
                        .collect();
                    (w, None, nll.loss)
                })?;
                if it == 0 {
                    out.sft_loss += nll_loss / parts as f64;
                }
            }
            let rows =
                |v: &[Vec<f32>]| -> Vec<Vec<f32>> { idx.iter().map(|&i| v[i].clone()).collect() };
            let ex: Vec<Example> = idx.iter().map(|&i| examples[i].clone()).collect();
            let old_k = rows(&rollout.old);
            let ref_k = scored.refs.as_deref().map(rows);
            let adv_k: Vec<f32> = idx.iter().map(|&i| scored.adv.values[i]).collect();
            let mut shape = BatchShape::of(&old_k);
            shape.max_len = cx.sampling.max_new_tokens;
            for start in (0..ex.len()).step_by(cfg.micro_batch_size) {
                let r = start..(start + cfg.micro_batch_size).min(ex.len());
                let (pass_loss, pass_stats) = up.accumulate(&ex[r.clone()], true, |s| {
                    let o = policy_gradient(
                        &settings,
                        &PgInputs {
                            logprobs: &s.logprobs,
                            old_logprobs: &old_k[r.clone()],
                            ref_logprobs: ref_k.as_ref().map(|v| &v[r.clone()]),
                            entropies: s.entropies.as_deref(),
                            advantages: &adv_k[r],
                        },
                        shape,
                    );
                    (o.weights, o.entropy_coefs, (o.loss, o.stats))
                })?;
                if it == 0 {
                    out.stats.add(&pass_stats);
                    out.loss += pass_loss / parts as f64;
                }
            }
            let norm = up.step()?;
            out.grad_norm += norm as f64 / updates_per_step;
        }
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
