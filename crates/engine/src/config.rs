//! The run configuration: TOML read with serde, unknown keys rejected, `--set` overrides,
//! then checked and resolved into a [`RunPlan`] before anything runs.

use crate::controller::{AlarmAction, AlarmConfig, AlarmKind};
use crate::train::LrSchedule;
use crate::{Error, Result};
pub use autodidact_core::ModelConfig;
use autodidact_core::{memory, Backends, ModelSpec, SamplingParams, Task};
use autodidact_objectives::{
    AdvantageEstimator, DpoLoss, KlEstimator, LossAggregation, RewardScaling, SftNormalization,
};
use autodidact_tasks::TaskConfig;
use serde::{Deserialize, Serialize};

/// The built-in demo: expert iteration on 3-digit addition with the tiny model.
pub const DEMO_CONFIG: &str = include_str!("../../../examples/star-addition.toml");

/// Which recipe runs the rounds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Recipe {
    /// Expert iteration: sample, keep verified-correct completions, SFT (STaR, ReST-EM).
    Star,
    /// Policy gradient with group-normalized advantages (`[rl]`).
    Grpo,
    /// Policy gradient with leave-one-out baselines (`[rl]`).
    Rloo,
    /// Policy gradient with a batch-mean baseline, or none (`[rl] baseline`).
    Reinforce,
    /// DPO on pairs of a verifier-correct (chosen) and a verifier-incorrect (rejected)
    /// completion: the labeled upper bound of the preference recipes (`[pref]`).
    DpoVerified,
    /// Self-Consistency Preference Optimization: the most-voted answer's completion against
    /// the least-voted one's, weighted by the vote margin; no labels (`[pref]`).
    Scpo,
    /// SPIN: the gold demonstration against the model's own generation (`[pref]`).
    Spin,
    /// Self-Rewarding: the model judges its own samples; best against worst by judged score
    /// (`[pref]`, `[judge]`).
    SelfRewarding,
}

impl Recipe {
    pub fn name(self) -> &'static str {
        match self {
            Recipe::Star => "star",
            Recipe::Grpo => "grpo",
            Recipe::Rloo => "rloo",
            Recipe::Reinforce => "reinforce",
            Recipe::DpoVerified => "dpo-verified",
            Recipe::Scpo => "scpo",
            Recipe::Spin => "spin",
            Recipe::SelfRewarding => "self-rewarding",
        }
    }
    /// Whether the recipe trains on preference pairs (`[pref]`).
    pub fn is_preference(self) -> bool {
        matches!(
            self,
            Recipe::DpoVerified | Recipe::Scpo | Recipe::Spin | Recipe::SelfRewarding
        )
    }
    /// The advantage estimator of a policy-gradient recipe (`None` for `star`).
    pub fn estimator(self, rl: &RlConfig) -> Option<AdvantageEstimator> {
        match self {
            Recipe::Star
            | Recipe::DpoVerified
            | Recipe::Scpo
            | Recipe::Spin
            | Recipe::SelfRewarding => None,
            Recipe::Grpo => Some(AdvantageEstimator::Grpo),
            Recipe::Rloo => Some(AdvantageEstimator::Rloo),
            Recipe::Reinforce => Some(match rl.baseline {
                Baseline::BatchMean => AdvantageEstimator::Reinforce,
                Baseline::None => AdvantageEstimator::Raw,
            }),
        }
    }
}

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

/// Which checkpoint is the KL reference.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reference {
    /// M0, the seed stage's model.
    #[default]
    Seed,
    /// The previous round's model.
    Previous,
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
    /// Completions per prompt (G, TRL's `num_generations`).
    pub group_size: usize,
    pub temperature: f32,
    pub top_p: f32,
    /// Optimizer steps per rollout batch (μ), with the sampling log-probs as the old policy.
    pub num_iterations: u32,
    /// Optimizer steps per pass over a rollout batch: the batch is shuffled and split into this
    /// many minibatches (TRL's `steps_per_generation`); 1 is one step on the whole batch.
    pub minibatches: u32,
    /// Sequences per forward/backward pass (memory only; it does not change the update).
    pub micro_batch_size: usize,
    pub lr: f32,
    /// Linear warm-up updates at the start of the run.
    pub warmup_steps: u64,
    /// Cosine decay of the learning rate over the run's updates down to `min_lr_ratio · lr`
    /// (1: constant).
    pub min_lr_ratio: f32,
    pub weight_decay: f32,
    pub max_grad_norm: f32,
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
    pub reference: Reference,
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
            group_size: 8,
            temperature: 1.0,
            top_p: 1.0,
            num_iterations: 1,
            minibatches: 1,
            micro_batch_size: 256,
            lr: 1e-3,
            warmup_steps: 0,
            min_lr_ratio: 1.0,
            weight_decay: 0.0,
            max_grad_norm: 1.0,
            scale_rewards: RewardScaling::Group,
            baseline: Baseline::BatchMean,
            epsilon_low: 0.2,
            epsilon_high: 0.2,
            loss_aggregation: LossAggregation::Token,
            beta: 0.0,
            kl_estimator: KlEstimator::K3,
            kl_mode: KlMode::Loss,
            reference: Reference::Seed,
            entropy_coef: 0.0,
            sft_coef: 0.0,
            keep_optimizer: true,
            drop_zero_std: false,
            rewards: RewardWeights::default(),
        }
    }
}

/// A run's whole configuration (the file `config.toml` of a run directory).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    pub recipe: Recipe,
    /// Seeds every random choice of the run (initial weights, problem draws, samples, batches).
    #[serde(default)]
    pub seed: u64,
    pub task: TaskConfig,
    #[serde(default)]
    pub model: ModelConfig,
    #[serde(default)]
    pub seed_stage: SeedStageConfig,
    #[serde(default)]
    pub star: StarConfig,
    #[serde(default)]
    pub rl: RlConfig,
    #[serde(default)]
    pub pref: PrefConfig,
    #[serde(default)]
    pub judge: JudgeConfig,
    #[serde(default)]
    pub eval: EvalConfig,
    #[serde(default)]
    pub monitor: MonitorConfig,
    #[serde(default)]
    pub controller: ControllerConfig,
}

/// How a stage trains: optimizer, schedule, batches (`[seed_stage.train]`, `[star.train]`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// Optimizer steps; with `epochs` set instead, steps = ceil(epochs × examples / batch_size);
    /// with neither, one epoch.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub steps: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub epochs: Option<f64>,
    /// Sequences per optimizer step.
    pub batch_size: usize,
    /// Peak learning rate.
    pub lr: f32,
    /// Linear warm-up steps.
    pub warmup_steps: u64,
    /// Cosine decay floor as a fraction of `lr`.
    pub min_lr_ratio: f32,
    /// AdamW decoupled weight decay (matrices and embeddings only).
    pub weight_decay: f32,
    /// Global gradient-norm clip; 0 disables it.
    pub max_grad_norm: f32,
    /// Token-mean or sequence-mean negative log-likelihood.
    pub normalization: SftNormalization,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            steps: None,
            epochs: None,
            batch_size: 32,
            lr: 1e-3,
            warmup_steps: 10,
            min_lr_ratio: 0.1,
            weight_decay: 0.0,
            max_grad_norm: 1.0,
            normalization: SftNormalization::Token,
        }
    }
}

/// Supervised warm start of M0 on a small labeled set (`[seed_stage]`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SeedStageConfig {
    /// Labeled training problems (drawn from the train split, disjoint from the unlabeled ones).
    pub labeled: usize,
    /// Every `eval_every` steps, log held-out greedy pass@1 (the seed-only curve); 0: never.
    pub eval_every: u64,
    pub train: TrainConfig,
}

impl Default for SeedStageConfig {
    fn default() -> Self {
        Self {
            labeled: 64,
            eval_every: 0,
            train: TrainConfig::default(),
        }
    }
}

/// Where each round's training starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RestartFrom {
    /// From M0 every round (ReST-EM, the original STaR).
    Seed,
    /// From the previous round's model.
    Previous,
}

/// Expert iteration (`[star]`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StarConfig {
    /// Self-training rounds after the seed stage (0: seed stage only).
    pub rounds: u32,
    /// Unlabeled training problems sampled every round.
    pub problems: usize,
    /// Completions sampled per problem (k).
    pub samples: usize,
    pub temperature: f32,
    pub top_p: f32,
    /// Keep at most this many distinct correct completions per problem; 0 keeps all.
    pub max_per_problem: usize,
    /// For problems with no correct sample, sample again with the answer as a hint and keep
    /// one correct trace (trained without the hint).
    pub rationalize: bool,
    pub restart_from: RestartFrom,
    pub train: TrainConfig,
}

impl Default for StarConfig {
    fn default() -> Self {
        Self {
            rounds: 3,
            problems: 1000,
            samples: 4,
            temperature: 1.0,
            top_p: 1.0,
            max_per_problem: 0,
            rationalize: false,
            restart_from: RestartFrom::Previous,
            train: TrainConfig::default(),
        }
    }
}

/// Preference-optimization rounds (`[pref]`): recipes `dpo-verified`, `scpo`, `spin`,
/// `self-rewarding`. Each round samples `samples` completions per problem with the previous
/// round's model, builds pairs, and trains the DPO-family loss against the reference.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PrefConfig {
    pub rounds: u32,
    /// Training problems sampled every round (unlabeled, except for `spin`, which pairs each
    /// with its gold demonstration).
    pub problems: usize,
    /// Completions sampled per problem (k; the voters of `scpo`).
    pub samples: usize,
    pub temperature: f32,
    pub top_p: f32,
    /// Most pairs built from one problem's group.
    pub pairs_per_problem: usize,
    /// `scpo`: keep a pair only when its chosen answer has at least this share of the votes.
    pub min_vote_share: f32,
    /// `scpo`: weight each pair by its vote margin (V⁺ − V⁻)/k (ScPO's weighted loss).
    pub weight_by_margin: bool,
    /// `self-rewarding`: pair best and worst only when their judged scores differ by at least
    /// this much.
    pub judge_margin: f32,
    pub loss: DpoLoss,
    /// β of the DPO-family loss.
    pub beta: f32,
    /// ε of `sigmoid` (cDPO) and `robust`.
    pub label_smoothing: f32,
    /// Weight α of an NLL term on the chosen completions (token mean over the batch), added
    /// to the pairwise loss: Iterative RPO's and ScPO's loss; TRL's `loss_type = [<loss>,
    /// "sft"]` with `loss_weights = [1, α]`. 0: the pairwise loss alone.
    pub sft_coef: f32,
    /// The reference model: M0 or the previous round's (iterative DPO).
    pub reference: Reference,
    /// Optimizer and schedule; `batch_size` counts pairs.
    pub train: TrainConfig,
}

impl Default for PrefConfig {
    fn default() -> Self {
        Self {
            rounds: 3,
            problems: 1000,
            samples: 8,
            temperature: 1.0,
            top_p: 1.0,
            pairs_per_problem: 1,
            min_vote_share: 0.0,
            weight_by_margin: true,
            judge_margin: 0.5,
            loss: DpoLoss::Sigmoid,
            beta: 0.1,
            label_smoothing: 0.0,
            sft_coef: 0.0,
            reference: Reference::Previous,
            train: TrainConfig {
                lr: 1e-4,
                ..TrainConfig::default()
            },
        }
    }
}

/// The self-judge (`[judge]`, recipe `self-rewarding`): the policy reads
/// `?<prompt><completion>>` and its probability of `Y` against `N` is the score.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JudgeConfig {
    /// Judge examples per labeled problem in the seed stage: its gold solution (`Y`) and
    /// this many corrupted copies, labeled by the verifier.
    pub seed_negatives: usize,
    /// Every round, the judge also trains (SFT, mixed into each DPO step) on the current
    /// model's own samples of the labeled problems, labeled by the verifier.
    pub samples_per_labeled: usize,
    /// Weight of the judge SFT loss beside the DPO loss.
    pub coef: f32,
    /// A diagnostic that injects a known bias: the reward becomes
    /// `(1 − w)·judged score + w·length/max_length`, so longer completions win pairs whatever
    /// their correctness (0: off). For testing the proxy–gold alarms, not for training.
    pub length_weight: f32,
}

impl Default for JudgeConfig {
    fn default() -> Self {
        Self {
            seed_negatives: 2,
            samples_per_labeled: 4,
            coef: 1.0,
            length_weight: 0.0,
        }
    }
}

/// The per-round monitors (`[monitor]`, `crate::monitor`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MonitorConfig {
    /// n* of B-STaR's balance score: the number of distinct correct samples per problem at
    /// which exploration counts as sufficient.
    pub n_star: usize,
    /// Held-out problems whose evaluation samples the drift monitors score (KL to M0 and to
    /// the previous round, token entropy); 0 turns drift off.
    pub drift_problems: usize,
}

impl Default for MonitorConfig {
    fn default() -> Self {
        Self {
            n_star: 4,
            drift_problems: 64,
        }
    }
}

/// The controller (`[controller]`, `crate::controller`): alarms, early stopping and B-STaR
/// balancing.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ControllerConfig {
    /// B-STaR balancing (recipe `star`): sample each round at the temperature of
    /// `temperatures` whose balance score is highest on `probe_problems` pool problems.
    pub balance: bool,
    pub temperatures: Vec<f32>,
    pub probe_problems: usize,
    /// Stop when held-out pass@1 has not improved on its best for this many rounds (0: never).
    pub patience: u32,
    /// `[[controller.alarms]]`: kind, threshold, action (warn, stop, rollback).
    pub alarms: Vec<AlarmConfig>,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        let warn = |kind, threshold| AlarmConfig {
            kind,
            threshold,
            action: AlarmAction::Warn,
        };
        Self {
            balance: false,
            temperatures: vec![0.6, 0.8, 1.0, 1.2, 1.5],
            probe_problems: 200,
            patience: 0,
            alarms: vec![
                warn(AlarmKind::ProxyGoldDivergence, 0.1),
                warn(AlarmKind::ExplorationCollapse, 0.05),
                warn(AlarmKind::EntropyCollapse, 0.005),
            ],
        }
    }
}

/// Held-out evaluation after every round (`[eval]`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EvalConfig {
    /// Held-out problems.
    pub problems: usize,
    /// Completions sampled per problem for pass@k and maj@k (n ≥ k).
    pub samples: usize,
    /// The k of pass@k and maj@k.
    pub k: usize,
    /// Sampling temperature for pass@k and maj@k (pass@1 is greedy).
    pub temperature: f32,
}

impl Default for EvalConfig {
    fn default() -> Self {
        Self {
            problems: 200,
            samples: 8,
            k: 8,
            temperature: 1.0,
        }
    }
}

impl RunConfig {
    /// Parses TOML `text` (from `origin`, for messages) and applies `key=value` overrides.
    pub fn parse(text: &str, origin: &str, sets: &[String]) -> Result<Self> {
        let mut table: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| Error::config(origin, one_line(&e.to_string())))?;
        for set in sets {
            apply_set(&mut table, set)?;
        }
        let de = toml::Value::Table(table);
        serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let key = if path == "." {
                origin.to_string()
            } else {
                path
            };
            Error::config(key, one_line(&e.inner().to_string()))
        })
    }

    /// Rounds after the seed stage, from the recipe's section.
    pub fn rounds(&self) -> u32 {
        match self.recipe {
            Recipe::Star => self.star.rounds,
            r if r.is_preference() => self.pref.rounds,
            _ => self.rl.rounds,
        }
    }

    /// The configuration as TOML, every default filled in.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("a RunConfig always serializes")
    }
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Applies `section.key=value`; the value is read as TOML (`4`, `0.5`, `true`, `"x"`), and as
/// a plain string when it is not valid TOML (`restart_from=seed`).
pub fn apply_set(table: &mut toml::Table, set: &str) -> Result<()> {
    let (path, raw) = set
        .split_once('=')
        .ok_or_else(|| Error::config(set, "an override must look like section.key=value"))?;
    let path = path.trim();
    let raw = raw.trim();
    let value = format!("v = {raw}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_string()));
    let parts: Vec<&str> = path.split('.').collect();
    if parts.iter().any(|p| p.is_empty()) {
        return Err(Error::config(
            path,
            "an override key must look like section.key",
        ));
    }
    let mut t = table;
    for part in &parts[..parts.len() - 1] {
        let entry = t
            .entry(part.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        t = entry
            .as_table_mut()
            .ok_or_else(|| Error::config(path, format!("`{part}` is a value, not a section")))?;
    }
    t.insert(parts[parts.len() - 1].to_string(), value);
    Ok(())
}

/// A checked configuration and what it builds.
pub struct RunPlan {
    pub config: RunConfig,
    pub task: Box<dyn Task>,
    /// The policy's model, from `[model]` through the backend factory.
    pub model: Box<dyn ModelSpec>,
    /// Longest completion a sample may have (the task's longest solution and the stop token).
    pub max_new_tokens: usize,
}

fn check_train(key: &str, t: &TrainConfig) -> Result<()> {
    match (t.steps, t.epochs) {
        (Some(_), Some(_)) => {
            return Err(Error::config(
                format!("{key}.steps"),
                "set exactly one of `steps` and `epochs`",
            ))
        }
        (Some(0), _) => return Err(Error::config(format!("{key}.steps"), "must be at least 1")),
        (_, Some(e)) if !(e.is_finite() && e > 0.0) => {
            return Err(Error::config(
                format!("{key}.epochs"),
                format!("{e} must be a number above 0"),
            ))
        }
        _ => {}
    }
    if t.batch_size == 0 {
        return Err(Error::config(
            format!("{key}.batch_size"),
            "must be at least 1",
        ));
    }
    check_optimizer(key, t.lr, t.min_lr_ratio, t.weight_decay, t.max_grad_norm)
}

/// Learning rate, decay floor, weight decay and clipping of a training section `key`.
fn check_optimizer(
    key: &str,
    lr: f32,
    min_lr_ratio: f32,
    weight_decay: f32,
    max_grad_norm: f32,
) -> Result<()> {
    LrSchedule {
        peak_lr: lr,
        warmup_steps: 0,
        total_steps: 1,
        min_lr_ratio,
    }
    .validate(key)?;
    non_negative(format!("{key}.weight_decay"), weight_decay, "")?;
    non_negative(
        format!("{key}.max_grad_norm"),
        max_grad_norm,
        " (0 disables clipping)",
    )
}

/// Fails unless `v` is a finite number ≥ 0; `note` says what 0 means, if anything.
fn non_negative(key: impl Into<String>, v: f32, note: &str) -> Result<()> {
    if v.is_finite() && v >= 0.0 {
        Ok(())
    } else {
        Err(Error::config(
            key,
            format!("{v} must be a finite number ≥ 0{note}"),
        ))
    }
}

fn check_rl(recipe: Recipe, r: &RlConfig) -> Result<()> {
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
    let group_method = matches!(recipe, Recipe::Grpo | Recipe::Rloo);
    if group_method && r.group_size < 2 {
        return Err(Error::config(
            "rl.group_size",
            format!(
                "{} is too small: {} compares completions within a group, so it needs at least 2",
                r.group_size,
                recipe.name()
            ),
        ));
    }
    positive("group_size", r.group_size)?;
    if recipe != Recipe::Reinforce && r.baseline != Baseline::BatchMean {
        return Err(Error::config(
            "rl.baseline",
            format!(
                "applies to the reinforce recipe only; {} uses its own group baseline (remove the key)",
                recipe.name()
            ),
        ));
    }
    check_temperature("rl.temperature", r.temperature)?;
    check_top_p("rl.top_p", r.top_p)?;
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
    check_optimizer("rl", r.lr, r.min_lr_ratio, r.weight_decay, r.max_grad_norm)?;
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

fn check_temperature(key: &str, t: f32) -> Result<()> {
    non_negative(key, t, " (0 is greedy)")
}

fn check_top_p(key: &str, p: f32) -> Result<()> {
    if p > 0.0 && p <= 1.0 {
        Ok(())
    } else {
        Err(Error::config(key, format!("{p} must be in (0, 1]")))
    }
}

fn check_fraction(key: &str, v: f32) -> Result<()> {
    if (0.0..=1.0).contains(&v) {
        Ok(())
    } else {
        Err(Error::config(key, format!("{v} must be in [0, 1]")))
    }
}

fn check_pref(recipe: Recipe, p: &PrefConfig) -> Result<()> {
    if p.problems == 0 {
        return Err(Error::config("pref.problems", "must be at least 1"));
    }
    let least = if recipe == Recipe::Spin { 1 } else { 2 };
    if p.samples < least {
        return Err(Error::config(
            "pref.samples",
            format!(
                "{} is too small: {} pairs completions of one group, so it needs at least {least}",
                p.samples,
                recipe.name()
            ),
        ));
    }
    if p.pairs_per_problem == 0 {
        return Err(Error::config(
            "pref.pairs_per_problem",
            "must be at least 1",
        ));
    }
    check_temperature("pref.temperature", p.temperature)?;
    check_top_p("pref.top_p", p.top_p)?;
    check_fraction("pref.min_vote_share", p.min_vote_share)?;
    check_fraction("pref.judge_margin", p.judge_margin)?;
    if !(p.beta.is_finite() && p.beta > 0.0) {
        return Err(Error::config(
            "pref.beta",
            format!("{} must be a finite number > 0", p.beta),
        ));
    }
    if !(0.0..0.5).contains(&p.label_smoothing) {
        return Err(Error::config(
            "pref.label_smoothing",
            format!("{} must be in [0, 0.5)", p.label_smoothing),
        ));
    }
    non_negative("pref.sft_coef", p.sft_coef, " (0: no NLL term)")?;
    check_train("pref.train", &p.train)
}

impl RunConfig {
    /// Checks every setting and builds the task and, through `backends`, the model.
    pub fn plan(&self, backends: &Backends) -> Result<RunPlan> {
        let task = self.task.build().map_err(core_to_config)?;
        let mut alphabet = task.alphabet();
        if self.recipe == Recipe::SelfRewarding {
            // The judge format's characters join the vocabulary (M0 learns to judge).
            for c in crate::judge::JUDGE_CHARS.chars() {
                if alphabet.contains(c) {
                    return Err(Error::config(
                        "recipe",
                        format!(
                            "self-rewarding's judge format uses {c:?}, which the task {} already uses",
                            task.name()
                        ),
                    ));
                }
                alphabet.push(c);
            }
        }
        let model = backends
            .plan(&self.model, &alphabet)
            .map_err(core_to_config)?;
        let (max_prompt, max_solution) = task.max_chars();
        // <bos> prompt solution <eos>, of which the model reads all but the last token; a judge
        // sequence adds its markers and verdict.
        let needed = max_prompt
            + max_solution
            + 1
            + if self.recipe == Recipe::SelfRewarding {
                crate::judge::EXTRA_TOKENS
            } else {
                0
            };
        if model.context_length() < needed {
            return Err(Error::config(
                "model.context_length",
                format!(
                    "{} is too short for {} with these settings: prompts and solutions need up to {needed} tokens; set it to at least {needed}",
                    model.context_length(),
                    task.name()
                ),
            ));
        }
        let s = &self.seed_stage;
        if s.labeled == 0 {
            return Err(Error::config("seed_stage.labeled", "must be at least 1"));
        }
        check_train("seed_stage.train", &s.train)?;
        let st = &self.star;
        if self.recipe == Recipe::Star && st.problems == 0 {
            return Err(Error::config("star.problems", "must be at least 1"));
        }
        if st.samples == 0 {
            return Err(Error::config("star.samples", "k must be at least 1"));
        }
        check_temperature("star.temperature", st.temperature)?;
        check_top_p("star.top_p", st.top_p)?;
        check_train("star.train", &st.train)?;
        if self.recipe.estimator(&self.rl).is_some() {
            check_rl(self.recipe, &self.rl)?;
        }
        if self.recipe.is_preference() {
            check_pref(self.recipe, &self.pref)?;
        }
        if self.recipe == Recipe::SelfRewarding {
            non_negative("judge.coef", self.judge.coef, "")?;
            check_fraction("judge.length_weight", self.judge.length_weight)?;
        }
        let e = &self.eval;
        if e.problems == 0 {
            return Err(Error::config("eval.problems", "must be at least 1"));
        }
        if e.k == 0 {
            return Err(Error::config("eval.k", "must be at least 1"));
        }
        if e.samples < e.k {
            return Err(Error::config(
                "eval.samples",
                format!(
                    "{} is below eval.k = {}; pass@k needs at least k samples per problem",
                    e.samples, e.k
                ),
            ));
        }
        check_temperature("eval.temperature", e.temperature)?;
        if self.monitor.n_star == 0 {
            return Err(Error::config("monitor.n_star", "must be at least 1"));
        }
        let ctl = &self.controller;
        if ctl.balance {
            if self.recipe != Recipe::Star {
                return Err(Error::config(
                    "controller.balance",
                    format!(
                        "B-STaR balancing steers the star recipe's sampling, not {}",
                        self.recipe.name()
                    ),
                ));
            }
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
        for (i, a) in ctl.alarms.iter().enumerate() {
            if !a.threshold.is_finite() {
                return Err(Error::config(
                    format!("controller.alarms[{i}].threshold"),
                    format!("{} must be a finite number", a.threshold),
                ));
            }
        }
        self.check_memory(&*model, max_solution + 1)?;
        Ok(RunPlan {
            config: self.clone(),
            task,
            model,
            max_new_tokens: max_solution + 1,
        })
    }

    /// Refuses settings whose memory would not fit this machine (see
    /// `autodidact_core::memory`): the completions a round holds, and the activations of the
    /// largest batch a training pass runs, each with the weights, gradients and optimizer
    /// state of the policy and a reference model. Sampling itself runs in bounded chunks.
    fn check_memory(&self, model: &dyn ModelSpec, max_new_tokens: usize) -> Result<()> {
        let available = memory::available()?;
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        // Policy and reference model, and the sampler's workspace (bounded by chunking).
        let state = 2 * model.state_bytes(threads) + model.sample_workspace_bytes();
        let fits = |key: &str, need: u64, what: &str| {
            memory::check_fits(key, state.saturating_add(need), what, available)
                .map_err(core_to_config)
        };
        let ctx = model.context_length();
        let batch = |key: &str, rows: usize| {
            fits(
                key,
                model.train_activation_bytes(rows, ctx),
                &format!("the activations of a training pass over {rows} sequences"),
            )
        };
        let held = |count_key: &str, count: usize, per_key: &str, per: u64| {
            check_completions(
                count_key,
                count,
                per_key,
                per,
                max_new_tokens,
                state,
                available,
            )
            .map_err(core_to_config)
        };
        // A batch never holds more examples than its stage has: the labeled set (with hinted
        // copies and judge examples), or the completions a round can keep.
        let labeled = self
            .seed_stage
            .labeled
            .saturating_mul(2 + self.judge.seed_negatives);
        // Scoring passes (drift on held-out samples, reference log-probs, the self-judge) run
        // in fixed chunks of rows: only the model's shape makes them large.
        let scoring_rows = if self.recipe == Recipe::SelfRewarding {
            512
        } else {
            256
        };
        memory::check_fits_or(
            "model",
            state.saturating_add(model.train_activation_bytes(scoring_rows, ctx)),
            &format!("the activations of a scoring pass over {scoring_rows} sequences with this model's shape"),
            available,
            "choose a smaller model (model.preset, hidden_size, num_layers, intermediate_size or context_length)",
        )
        .map_err(core_to_config)?;
        batch(
            "seed_stage.train.batch_size",
            self.seed_stage.train.batch_size.min(labeled),
        )?;
        match self.recipe {
            Recipe::Star => {
                let st = &self.star;
                // Rationalization samples unsolved problems a second time.
                let copies = if st.rationalize { 2 } else { 1 };
                let kept = st
                    .problems
                    .saturating_mul(st.samples)
                    .saturating_mul(copies as usize);
                batch("star.train.batch_size", st.train.batch_size.min(kept))?;
                held(
                    "star.problems",
                    st.problems,
                    "star.samples",
                    copies * st.samples as u64,
                )?;
            }
            r if r.is_preference() => {
                let p = &self.pref;
                let pairs = p.problems.saturating_mul(p.pairs_per_problem);
                batch("pref.train.batch_size", 2 * p.train.batch_size.min(pairs))?;
                held(
                    "pref.problems",
                    p.problems,
                    "pref.samples",
                    p.samples as u64,
                )?;
            }
            _ => {
                let r = &self.rl;
                batch("rl.micro_batch_size", r.micro_batch_size)?;
                let step = r.prompts_per_step.saturating_mul(r.group_size);
                batch("rl.prompts_per_step", step)?;
                held(
                    "rl.prompts_per_step",
                    step,
                    "rl.steps_per_round",
                    r.steps_per_round as u64,
                )?;
            }
        }
        let e = &self.eval;
        held(
            "eval.problems",
            e.problems,
            "eval.samples",
            e.samples as u64,
        )
    }
}

/// Bytes one sampled completion takes while a round holds it: its tokens, log-probs and text,
/// its verdict, and its line of `samples.jsonl` (an upper bound for short completions).
pub fn completion_bytes(max_new_tokens: usize) -> u64 {
    512 + 16 * max_new_tokens as u64
}

/// Refuses holding `count` items of `per` completions each (on top of `reserved` bytes) when
/// it would not fit `available` memory: named by `count_key` when even one completion per
/// item would not fit, else by `per_key`. Run plans and `autodidact eval` both check this.
pub fn check_completions(
    count_key: &str,
    count: usize,
    per_key: &str,
    per: u64,
    max_new_tokens: usize,
    reserved: u64,
    available: Option<u64>,
) -> autodidact_core::Result<()> {
    let bytes = completion_bytes(max_new_tokens);
    let what = |n: u64| format!("{n} completions ({count_key} × {per_key}, held for one round)");
    let fits = |key: &str, n: u64| {
        let need = reserved.saturating_add(n.saturating_mul(bytes));
        memory::check_fits(key, need, &what(n), available)
    };
    fits(count_key, count as u64)?;
    fits(per_key, (count as u64).saturating_mul(per))
}

fn core_to_config(e: autodidact_core::Error) -> Error {
    match e {
        autodidact_core::Error::Invalid { what, message } => Error::config(what, message),
        other => other.into(),
    }
}

impl RunPlan {
    pub fn sampling(&self, temperature: f32, top_p: f32) -> SamplingParams {
        SamplingParams {
            temperature,
            top_k: 0,
            top_p,
            max_new_tokens: self.max_new_tokens,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(sets: &[&str]) -> Result<RunPlan> {
        let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
        RunConfig::parse(DEMO_CONFIG, "demo", &sets)?.plan(&crate::testutil::mock_backends())
    }

    fn err(sets: &[&str]) -> String {
        match parse(sets) {
            Ok(_) => panic!("{sets:?} should fail"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn bad_rl_settings_fail_at_start_up() {
        let grpo = include_str!("../../../examples/grpo-addition.toml");
        let err = |sets: &[&str]| {
            let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
            match RunConfig::parse(grpo, "grpo", &sets)
                .and_then(|c| c.plan(&crate::testutil::mock_backends()))
            {
                Ok(_) => panic!("{sets:?} should fail"),
                Err(e) => e.to_string(),
            }
        };
        RunConfig::parse(grpo, "grpo", &[])
            .unwrap()
            .plan(&crate::testutil::mock_backends())
            .unwrap();
        let cases: &[(&[&str], &str)] = &[
            (&["rl.beta=-0.1"], "config key `rl.beta`: -0.1 must be a finite number ≥ 0"),
            (&["rl.epsilon_low=0"], "config key `rl.epsilon_low`: 0 must be in (0, 1)"),
            (&["rl.epsilon_high=1.5"], "config key `rl.epsilon_high`: 1.5 must be in (0, 1)"),
            (&["rl.group_size=1"], "config key `rl.group_size`: 1 is too small: grpo compares"),
            (&["recipe=rloo", "rl.group_size=1"], "rloo compares completions within a group"),
            (&["rl.loss_aggregation=mean"], "config key `rl.loss_aggregation`: unknown variant `mean`, expected one of `token`, `sequence`, `constant`"),
            (&["rl.kl_estimator=k4"], "unknown variant `k4`"),
            (&["rl.scale_rewards=std"], "unknown variant `std`"),
            (&["rl.prompts_per_step=0"], "config key `rl.prompts_per_step`: must be at least 1"),
            (&["rl.baseline=none"], "config key `rl.baseline`: applies to the reinforce recipe only"),
            (&["recipe=reinforce", "rl.baseline=mean"], "unknown variant `mean`, expected `batch_mean` or `none`"),
        ];
        for (sets, want) in cases {
            let e = err(sets);
            assert!(e.contains(want), "{sets:?}: {e}");
        }
        // REINFORCE has no groups: one sample per prompt is fine, with or without a baseline.
        let sets = vec![
            "recipe=reinforce".to_string(),
            "rl.group_size=1".to_string(),
            "rl.baseline=none".to_string(),
        ];
        RunConfig::parse(grpo, "grpo", &sets)
            .unwrap()
            .plan(&crate::testutil::mock_backends())
            .unwrap();
    }

    #[test]
    fn demo_config_plans_and_round_trips() {
        let plan = parse(&[]).unwrap();
        let text = plan.config.to_toml();
        let again = RunConfig::parse(&text, "resolved", &[]).unwrap();
        assert_eq!(again, plan.config);
    }

    #[test]
    fn overrides_apply_with_types() {
        let plan = parse(&[
            "star.samples=2",
            "star.restart_from=seed",
            "task.digits=2",
            "eval.temperature=0.5",
        ])
        .unwrap();
        assert_eq!(plan.config.star.samples, 2);
        assert_eq!(plan.config.star.restart_from, RestartFrom::Seed);
        assert_eq!(plan.config.eval.temperature, 0.5);
    }

    #[test]
    fn bad_input_names_the_key() {
        let cases: &[(&[&str], &str)] = &[
            (
                &["star.sample=2"],
                "config key `star.sample`: unknown field `sample`",
            ),
            (
                &["star.samples=four"],
                "config key `star.samples`: invalid type: string \"four\"",
            ),
            (
                &["star.samples=0"],
                "config key `star.samples`: k must be at least 1",
            ),
            (&["star.temperature=-1"], "config key `star.temperature`"),
            (
                &["model.context_length=16"],
                "config key `model.context_length`: 16 is too short for addition",
            ),
            (
                &["eval.samples=2"],
                "config key `eval.samples`: 2 is below eval.k",
            ),
            (&["task.digits=0"], "config key `task.digits`"),
            (&["task.name=subtraction"], "unknown variant `subtraction`"),
            (
                &["star.restart_from=never"],
                "config key `star.restart_from`: unknown variant `never`",
            ),
            (&["star.train.lr=0"], "config key `star.train.lr`"),
            (
                &["star.train.steps=10"],
                "config key `star.train.steps`: set exactly one",
            ),
            (&["nonsense"], "section.key=value"),
        ];
        for (sets, want) in cases {
            let e = err(sets);
            assert!(e.contains(want), "{sets:?}: {e}");
            assert!(!e.contains('\n'), "one line: {e}");
        }
        let e = RunConfig::parse("recipe = \"star\"\n[task\n", "x.toml", &[])
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("config key `x.toml`"), "{e}");
    }
}
