//! The run configuration: TOML read with serde, unknown keys rejected, `--set` overrides,
//! then checked and resolved into a [`RunPlan`] before anything runs.

use crate::controller::{AlarmAction, AlarmConfig, AlarmKind};
use crate::recipes::{self, Recipe, Sections};
use crate::train::LrSchedule;
use crate::trainer::{TrainerBackend, TrainerConfig};
use crate::{Error, Result};
pub use autodidact_core::ModelConfig;
use autodidact_core::{memory, Backends, ModelSpec, SamplingParams, Task};
use autodidact_objectives::SftNormalization;
use autodidact_tasks::TaskConfig;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// The built-in demo: expert iteration on 3-digit addition with the tiny model.
pub const DEMO_CONFIG: &str = include_str!("../../../examples/star-addition.toml");

/// Which round's checkpoint a stage starts from or compares against (`restart_from`,
/// `reference`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Checkpoint {
    /// M0, the seed stage's model (ReST-EM and the original STaR restart from it every round).
    #[default]
    Seed,
    /// The previous round's model: the round's parent.
    Previous,
}

impl Checkpoint {
    /// The round whose checkpoint this is, for a round whose parent is `parent`.
    pub fn round(self, parent: u32) -> u32 {
        match self {
            Checkpoint::Seed => 0,
            Checkpoint::Previous => parent,
        }
    }
}

/// A run's whole configuration (the file `config.toml` of a run directory): the sections every
/// run has, and the recipe sections (`[star]`, `[rl]`, ...), which their recipe families in
/// [`crate::recipes`] own and resolve.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    /// The recipe that runs the rounds (one of the recipes of [`crate::recipes::FAMILIES`]).
    pub recipe: String,
    /// Seeds every random choice of the run (initial weights, problem draws, samples, batches).
    #[serde(default)]
    pub seed: u64,
    pub task: TaskConfig,
    #[serde(default)]
    pub model: ModelConfig,
    #[serde(default)]
    pub seed_stage: SeedStageConfig,
    #[serde(default)]
    pub eval: EvalConfig,
    #[serde(default)]
    pub monitor: MonitorConfig,
    #[serde(default)]
    pub controller: ControllerConfig,
    /// `[train]`: who runs the training stages (the native trainer, or an external command).
    #[serde(default, skip_serializing_if = "TrainerConfig::is_default")]
    pub train: TrainerConfig,
    /// `[reward]`: the verifier, or a learned reward model or ensemble as the reward.
    #[serde(
        default,
        skip_serializing_if = "crate::reward::RewardConfig::is_default"
    )]
    pub reward: crate::reward::RewardConfig,
    /// The recipe sections of the file, and every section of the run's recipe, resolved by
    /// their families (every default filled in).
    #[serde(skip)]
    pub sections: Sections,
}

/// How a stage samples (`[<section>.sampling]`): the one sampling-settings type of every
/// section that samples.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SamplingConfig {
    /// Completions sampled per prompt: k of expert iteration and pass@k, the group size G of
    /// GRPO, the voters of ScPO, n of best-of-n.
    pub samples: usize,
    /// Softmax temperature; 0 is greedy.
    pub temperature: f32,
    /// Nucleus sampling: keep the smallest set of tokens whose probability reaches `top_p`.
    pub top_p: f32,
}

impl Default for SamplingConfig {
    fn default() -> Self {
        Self {
            samples: 8,
            temperature: 1.0,
            top_p: 1.0,
        }
    }
}

impl SamplingConfig {
    /// The sampler's parameters: this temperature and top-p, with the completion length and
    /// stop strings of `limits`.
    pub fn params(&self, limits: SamplingParams) -> SamplingParams {
        SamplingParams {
            temperature: self.temperature,
            top_p: self.top_p,
            ..limits
        }
    }

    /// Checks temperature and top-p of `[<section>.sampling]` (the count of samples each
    /// section checks itself: what it needs depends on what it does with them).
    pub fn check(&self, section: &str) -> Result<()> {
        check_temperature(&format!("{section}.sampling.temperature"), self.temperature)?;
        check_top_p(&format!("{section}.sampling.top_p"), self.top_p)
    }
}

/// AdamW and its learning-rate schedule (`[<section>.optimizer]`): the one optimizer-settings
/// type of every section that trains.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OptimizerConfig {
    /// Peak learning rate.
    pub lr: f32,
    /// Linear warm-up steps.
    pub warmup_steps: u64,
    /// Cosine decay floor as a fraction of `lr` (1: constant after warm-up).
    pub min_lr_ratio: f32,
    /// AdamW decoupled weight decay (matrices and embeddings only).
    pub weight_decay: f32,
    /// Global gradient-norm clip; 0 disables it.
    pub max_grad_norm: f32,
}

impl Default for OptimizerConfig {
    fn default() -> Self {
        Self {
            lr: 1e-3,
            warmup_steps: 10,
            min_lr_ratio: 0.1,
            weight_decay: 0.0,
            max_grad_norm: 1.0,
        }
    }
}

impl OptimizerConfig {
    /// Checks `[<section>.optimizer]`, naming the bad key.
    pub fn check(&self, section: &str) -> Result<()> {
        let key = format!("{section}.optimizer");
        LrSchedule {
            peak_lr: self.lr,
            warmup_steps: 0,
            total_steps: 1,
            min_lr_ratio: self.min_lr_ratio,
        }
        .validate(&key)?;
        non_negative(format!("{key}.weight_decay"), self.weight_decay, "")?;
        non_negative(
            format!("{key}.max_grad_norm"),
            self.max_grad_norm,
            " (0 disables clipping)",
        )
    }
}

/// How much a supervised stage trains and on what batches (`[<section>.train]`); its
/// optimizer is the section's `[<section>.optimizer]`.
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
    /// Token-mean or sequence-mean negative log-likelihood.
    pub normalization: SftNormalization,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            steps: None,
            epochs: None,
            batch_size: 32,
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
    pub optimizer: OptimizerConfig,
}

impl Default for SeedStageConfig {
    fn default() -> Self {
        Self {
            labeled: 64,
            eval_every: 0,
            train: TrainConfig::default(),
            optimizer: OptimizerConfig::default(),
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
    /// The k of pass@k and maj@k.
    pub k: usize,
    /// How pass@k and maj@k sample (`samples` ≥ k per problem); pass@1 is greedy.
    pub sampling: SamplingConfig,
}

impl Default for EvalConfig {
    fn default() -> Self {
        Self {
            problems: 200,
            k: 8,
            sampling: SamplingConfig::default(),
        }
    }
}

/// The most tokens a completion may be asked for: a model's whole context at its largest.
const MAX_TOKENS: usize = 1 << 24;

impl RunConfig {
    /// Parses TOML `text` (from `origin`, for messages) and applies `key=value` overrides; the
    /// recipe sections are resolved by the families that own them.
    pub fn parse(text: &str, origin: &str, sets: &[String]) -> Result<Self> {
        let mut table = parse_table(text, origin)?;
        for set in sets {
            apply_set(&mut table, set)?;
        }
        if let Some((old, new)) = moved_keys()
            .into_iter()
            .find(|(old, _)| get_path(&table, old).is_some())
        {
            return Err(Error::config(
                old,
                format!("has moved to `{new}` (each section now has one `sampling` and one `optimizer` table); write it there"),
            ));
        }
        Self::from_table(table, origin)
    }

    /// Parses the `config.toml` of a run directory: a run written before the `sampling` and
    /// `optimizer` tables has its keys moved to their new places first, so it still resumes.
    pub fn parse_stored(text: &str, origin: &str) -> Result<Self> {
        let mut table = parse_table(text, origin)?;
        for (old, new) in moved_keys() {
            if let Some(value) = take_path(&mut table, &old) {
                set_path(&mut table, &new, value)?;
            }
        }
        Self::from_table(table, origin)
    }

    fn from_table(mut table: toml::Table, origin: &str) -> Result<Self> {
        let mut sections = Sections::new();
        for name in recipes::all_sections() {
            if let Some(value) = table.remove(name) {
                sections.insert(name.to_string(), value);
            }
        }
        let de = toml::Value::Table(table);
        let mut config: RunConfig = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let mut message = one_line(&e.inner().to_string());
            if !path.contains('.') && message.starts_with("unknown field") {
                // The recipe sections were taken out before: name them too.
                let sections: Vec<String> =
                    recipes::all_sections().map(|s| format!("`{s}`")).collect();
                message += &format!(", or a recipe section: {}", sections.join(", "));
            }
            let key = if path == "." {
                origin.to_string()
            } else {
                path
            };
            Error::config(key, message)
        })?;
        let family = recipes::family_of(&config.recipe)?;
        for name in family.sections() {
            sections
                .entry(name.to_string())
                .or_insert(toml::Value::Table(Default::default()));
        }
        for (name, value) in sections.iter_mut() {
            let owner = recipes::owner_of(name).expect("only owned sections are taken");
            let given = std::mem::replace(value, toml::Value::Boolean(false));
            *value = owner.resolve(name, given)?;
        }
        config.sections = sections;
        Ok(config)
    }

    /// The configuration as TOML, every default filled in.
    pub fn to_toml(&self) -> String {
        let mut table = match toml::Value::try_from(self) {
            Ok(toml::Value::Table(t)) => t,
            _ => unreachable!("a RunConfig serializes to a table"),
        };
        for (name, value) in &self.sections {
            table.insert(name.clone(), value.clone());
        }
        toml::to_string_pretty(&table).expect("a RunConfig always serializes")
    }

    /// The run's recipe, built from its resolved sections.
    pub fn recipe(&self) -> Result<Arc<dyn Recipe>> {
        recipes::family_of(&self.recipe)?.build(&self.recipe, &self.sections)
    }
}

fn parse_table(text: &str, origin: &str) -> Result<toml::Table> {
    text.parse()
        .map_err(|e: toml::de::Error| Error::config(origin, one_line(&e.to_string())))
}

/// Keys that moved when every section got one `sampling` and one `optimizer` table, as
/// (old, new) dotted paths.
fn moved_keys() -> Vec<(String, String)> {
    const OPTIMIZER: [&str; 5] = [
        "lr",
        "warmup_steps",
        "min_lr_ratio",
        "weight_decay",
        "max_grad_norm",
    ];
    let mut moved = Vec::new();
    let mut add = |old: String, new: String| moved.push((old, new));
    for section in ["seed_stage", "star", "pref", "raft"] {
        for f in OPTIMIZER {
            add(
                format!("{section}.train.{f}"),
                format!("{section}.optimizer.{f}"),
            );
        }
    }
    for f in OPTIMIZER {
        add(format!("rl.{f}"), format!("rl.optimizer.{f}"));
    }
    for (section, fields) in [
        ("star", &["samples", "temperature", "top_p"][..]),
        ("pref", &["samples", "temperature", "top_p"][..]),
        ("raft", &["samples", "temperature", "top_p"][..]),
        ("rl", &["temperature", "top_p"][..]),
        ("eval", &["samples", "temperature"][..]),
    ] {
        for f in fields {
            add(format!("{section}.{f}"), format!("{section}.sampling.{f}"));
        }
    }
    add("rl.group_size".into(), "rl.sampling.samples".into());
    moved
}

fn get_path<'a>(table: &'a toml::Table, path: &str) -> Option<&'a toml::Value> {
    let (head, rest) = path.split_once('.').unwrap_or((path, ""));
    let v = table.get(head)?;
    if rest.is_empty() {
        Some(v)
    } else {
        get_path(v.as_table()?, rest)
    }
}

fn take_path(table: &mut toml::Table, path: &str) -> Option<toml::Value> {
    match path.split_once('.') {
        None => table.remove(path),
        Some((head, rest)) => take_path(table.get_mut(head)?.as_table_mut()?, rest),
    }
}

/// Sets dotted `path` in `table`, creating the tables on the way.
fn set_path(table: &mut toml::Table, path: &str, value: toml::Value) -> Result<()> {
    let parts: Vec<&str> = path.split('.').collect();
    let mut t = table;
    for part in &parts[..parts.len() - 1] {
        t = t
            .entry(part.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut()
            .ok_or_else(|| Error::config(path, format!("`{part}` is a value, not a section")))?;
    }
    t.insert(parts[parts.len() - 1].to_string(), value);
    Ok(())
}

pub(crate) fn one_line(s: &str) -> String {
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
    if path.split('.').any(|p| p.is_empty()) {
        return Err(Error::config(
            path,
            "an override key must look like section.key",
        ));
    }
    set_path(table, path, value)
}

/// A checked configuration and what it builds.
pub struct RunPlan {
    pub config: RunConfig,
    /// The recipe that runs the rounds, with its settings.
    pub recipe: Arc<dyn Recipe>,
    pub task: Box<dyn Task>,
    /// The policy's model, from `[model]` through the backend factory.
    pub model: Box<dyn ModelSpec>,
    /// Longest completion a sample may have: `model.max_new_tokens`, or the task's longest
    /// solution and the stop token.
    pub max_new_tokens: usize,
    /// Rows of a scoring pass: the recipe's [`crate::recipes::Recipe::scoring_rows`], or
    /// fewer when the model's activations for that many do not fit in memory.
    pub score_rows: usize,
    /// The recipe's own judge model (`[judge.model]`), through the backend factory.
    pub judge: Option<Box<dyn ModelSpec>>,
    /// The learned reward (`[reward] model`) that replaces the verifier's, loaded.
    pub reward: Option<crate::reward::ProxyReward>,
}

pub(crate) fn check_train(key: &str, t: &TrainConfig) -> Result<()> {
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
    Ok(())
}

/// Fails unless `v` is a finite number ≥ 0; `note` says what 0 means, if anything.
pub(crate) fn non_negative(key: impl Into<String>, v: f32, note: &str) -> Result<()> {
    if v.is_finite() && v >= 0.0 {
        Ok(())
    } else {
        Err(Error::config(
            key,
            format!("{v} must be a finite number ≥ 0{note}"),
        ))
    }
}

pub(crate) fn check_temperature(key: &str, t: f32) -> Result<()> {
    non_negative(key, t, " (0 is greedy)")
}

pub(crate) fn check_top_p(key: &str, p: f32) -> Result<()> {
    if p > 0.0 && p <= 1.0 {
        Ok(())
    } else {
        Err(Error::config(key, format!("{p} must be in (0, 1]")))
    }
}

pub(crate) fn check_fraction(key: &str, v: f32) -> Result<()> {
    if (0.0..=1.0).contains(&v) {
        Ok(())
    } else {
        Err(Error::config(key, format!("{v} must be in [0, 1]")))
    }
}

impl RunConfig {
    /// Checks every setting and builds the recipe, the task and, through `backends`, the model.
    pub fn plan(&self, backends: &Backends) -> Result<RunPlan> {
        let recipe = self.recipe()?;
        // A task's own settings are config keys; a task file's errors name the file and line.
        let task = self.task.build().map_err(|e| match e {
            autodidact_core::Error::Invalid { what, message }
                if what == "task" || what.starts_with("task.") =>
            {
                Error::config(what, message)
            }
            other => other.into(),
        })?;
        let mut alphabet = task.alphabet();
        // A recipe's own format (the judge's) joins the vocabulary (M0 learns it). A
        // checkpoint brings its own tokenizer, and its judge asks in its chat template.
        let extra = if self.model.pretrained() {
            ""
        } else {
            recipe.extra_alphabet()
        };
        for c in extra.chars() {
            if alphabet.contains(c) {
                return Err(Error::config(
                    "recipe",
                    format!(
                        "{}'s format uses {c:?}, which the task {} already uses",
                        recipe.name(),
                        task.name()
                    ),
                ));
            }
            alphabet.push(c);
        }
        let model = backends
            .plan(&self.model, &alphabet)
            .map_err(core_to_config)?;
        // A checkpoint without a chat template reads the recipe's format in its own
        // vocabulary, which its seed stage built: one trained for another recipe may lack it.
        let format = recipe.extra_alphabet();
        if self.model.pretrained() && !model.tokenizer().has_chat_template() {
            if let Err(e) = model.tokenizer().encode(format) {
                return Err(Error::config(
                    "model.checkpoint",
                    format!(
                        "{}'s format uses the characters {format:?}, and this checkpoint's vocabulary cannot encode them ({e}); start from a checkpoint whose seed stage ran with recipe = \"{}\", or train M0 in this run",
                        recipe.name(),
                        recipe.name()
                    ),
                ));
            }
        }
        let (max_prompt, max_solution) = task.max_chars();
        autodidact_core::check_stop_strings("model.stop", &self.model.stop)
            .map_err(core_to_config)?;
        let max_new_tokens = match self.model.max_new_tokens {
            Some(0) => return Err(Error::config("model.max_new_tokens", "must be at least 1")),
            // No model reads more (the context is at most 2^24 tokens); the sums of lengths
            // below stay far from overflowing.
            Some(n) if n > MAX_TOKENS => {
                return Err(Error::config(
                    "model.max_new_tokens",
                    format!("{n} is more than any context holds; give at most {MAX_TOKENS}"),
                ))
            }
            Some(n) => n,
            None => max_solution + 1,
        };
        // <bos> prompt solution <eos>, of which the model reads all but the last token; a
        // recipe's own sequences (a judge's) add their markers. A pretrained model's prompts
        // are counted in tokens once they are drawn and rendered ([`crate::run`]).
        let extra = recipe.extra_tokens(max_new_tokens, model.tokenizer(), &*task)?;
        let needed = max_prompt + max_new_tokens + extra;
        if !self.model.pretrained() && model.context_length() < needed {
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
        // A served model trains only through an external trainer that starts from its
        // weights, with its servers pointed at each new checkpoint.
        let served_trains =
            self.train.backend == TrainerBackend::External && model.served_weights().is_some();
        if !model.trains() && (s.train.steps != Some(0) || recipe.rounds() > 0) && !served_trains {
            return Err(Error::config(
                "model.backend",
                format!(
                    "\"{}\" serves a model that does not train here: evaluate it with seed_stage.train.steps = 0 and {}.rounds = 0, or train it with [train] backend = \"external\" and model.openai.weights and model.openai.reload set",
                    self.model.backend.name(),
                    recipe.name()
                ),
            ));
        }
        if served_trains && s.train.steps != Some(0) {
            return Err(Error::config(
                "seed_stage.train.steps",
                "must be 0 for a served model: the served weights are M0",
            ));
        }
        self.train.check()?;
        if s.train.steps == Some(0) {
            if !self.model.pretrained() {
                return Err(Error::config(
                    "seed_stage.train.steps",
                    "0 (no seed stage) needs a pretrained model.checkpoint; a model trained from scratch starts from random weights",
                ));
            }
        } else {
            check_train("seed_stage.train", &s.train)?;
        }
        s.optimizer.check("seed_stage")?;
        let e = &self.eval;
        if e.problems == 0 {
            return Err(Error::config("eval.problems", "must be at least 1"));
        }
        if e.k == 0 {
            return Err(Error::config("eval.k", "must be at least 1"));
        }
        if e.sampling.samples < e.k {
            return Err(Error::config(
                "eval.sampling.samples",
                format!(
                    "{} is below eval.k = {}; pass@k needs at least k samples per problem",
                    e.sampling.samples, e.k
                ),
            ));
        }
        e.sampling.check("eval")?;
        if self.monitor.n_star == 0 {
            return Err(Error::config("monitor.n_star", "must be at least 1"));
        }
        let ctl = &self.controller;
        if ctl.balance && !recipe.balances() {
            return Err(Error::config(
                "controller.balance",
                format!(
                    "B-STaR balancing steers the star recipe's sampling, not {}",
                    recipe.name()
                ),
            ));
        }
        for (i, a) in ctl.alarms.iter().enumerate() {
            if !a.threshold.is_finite() {
                return Err(Error::config(
                    format!("controller.alarms[{i}].threshold"),
                    format!("{} must be a finite number", a.threshold),
                ));
            }
        }
        if self.reward.model.is_some() && !recipe.takes_proxy_reward() {
            return Err(Error::config(
                "reward.model",
                format!(
                    "{} builds its training data from its own judge, votes or gold demonstrations; a reward model drives the policy-gradient recipes, raft, star and dpo-verified",
                    recipe.name()
                ),
            ));
        }
        // A reward model stays loaded for the whole run, beside the policy.
        let reward = self.reward.build(backends)?;
        let held = reward.as_ref().map_or(0, |r| r.memory_bytes());
        let budget = Budget::new(&*model, max_new_tokens, held)?;
        // Scoring passes (drift on held-out samples, reference log-probs, a judge) run in
        // chunks of the recipe's rows, halved until a chunk fits (a large model's do not).
        let scoring = |rows: usize| {
            memory::check_fits_or(
                "model",
                budget.state.saturating_add(model.train_activation_bytes(rows, model.context_length())),
                &format!("the activations of a scoring pass over {rows} sequences with this model's shape"),
                budget.available,
                "choose a smaller model (model.preset, hidden_size, num_layers, intermediate_size or context_length)",
            )
            .map_err(core_to_config)
        };
        let mut score_rows = recipe.scoring_rows();
        while score_rows > 1 && scoring(score_rows).is_err() {
            score_rows /= 2;
        }
        scoring(score_rows)?;
        // A batch never holds more examples than its stage has: the labeled set with what
        // the recipe adds to it.
        let labeled = s.labeled.saturating_mul(recipe.seed_examples_per_labeled());
        budget.batch(
            "seed_stage.train.batch_size",
            s.train.batch_size.min(labeled),
        )?;
        recipe.check(self, &*task, &budget)?;
        budget.held(
            "eval.problems",
            e.problems,
            "eval.sampling.samples",
            e.sampling.samples as u64,
        )?;
        // The judge's own model: its errors name `judge.model.*`.
        let judge = recipe
            .judge_model()
            .map(|m| {
                if !m.pretrained() {
                    return Err(Error::config(
                        "judge.model",
                        "a judge is a served model (backend = \"openai\") or a pretrained checkpoint; set one of them",
                    ));
                }
                backends.plan(m, "").map_err(|e| match e {
                    autodidact_core::Error::Invalid { what, message } => {
                        Error::config(format!("judge.{what}"), message)
                    }
                    other => other.into(),
                })
            })
            .transpose()?;
        Ok(RunPlan {
            config: self.clone(),
            recipe,
            task,
            model,
            max_new_tokens,
            score_rows,
            judge,
            reward,
        })
    }
}

/// The memory a run may use (see `autodidact_core::memory`), for the checks of its plan: the
/// weights, gradients and optimizer state of the policy and a reference model, the sampler's
/// workspace and a reward model, are always held; a check adds what one stage holds on top.
pub struct Budget<'a> {
    model: &'a dyn ModelSpec,
    max_new_tokens: usize,
    state: u64,
    available: Option<u64>,
}

impl<'a> Budget<'a> {
    /// `held`: bytes held beside the policy for the whole run (a reward model's).
    fn new(model: &'a dyn ModelSpec, max_new_tokens: usize, held: u64) -> Result<Self> {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        Ok(Self {
            model,
            max_new_tokens,
            state: (2 * model.state_bytes(threads) + model.sample_workspace_bytes())
                .saturating_add(held),
            available: memory::available()?,
        })
    }

    /// Refuses a training pass over `rows` sequences (set by `key`) that would not fit.
    pub fn batch(&self, key: &str, rows: usize) -> Result<()> {
        let need = self
            .model
            .train_activation_bytes(rows, self.model.context_length());
        memory::check_fits(
            key,
            self.state.saturating_add(need),
            &format!("the activations of a training pass over {rows} sequences"),
            self.available,
        )
        .map_err(core_to_config)
    }

    /// Refuses holding `count` items of `per` completions each (see [`check_completions`]).
    pub fn held(&self, count_key: &str, count: usize, per_key: &str, per: u64) -> Result<()> {
        check_completions(
            count_key,
            count,
            per_key,
            per,
            self.max_new_tokens,
            self.state,
            self.available,
        )
        .map_err(core_to_config)
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
    /// Greedy decoding with the run's completion length and stop strings.
    pub fn greedy(&self) -> SamplingParams {
        SamplingParams::greedy(self.max_new_tokens).with_stop(self.config.model.stop.clone())
    }

    /// The sampler's parameters for `sampling`, with the run's completion length and stop
    /// strings.
    pub fn sampling(&self, sampling: &SamplingConfig) -> SamplingParams {
        sampling.params(self.greedy())
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

    /// Issue 16: `[train]` is checked at start-up, by key.
    #[test]
    fn issue16_bad_trainer_settings_fail_at_start_up() {
        let ext = "train.backend=external";
        let cases: &[(&[&str], &str)] = &[
            (
                &[ext],
                "config key `train.command`: train.backend = \"external\" needs",
            ),
            (
                &[ext, r#"train.command=["t", "{data}", "{modle}"]"#],
                "unknown placeholder {modle}",
            ),
            (
                &[ext, r#"train.command=["t", "{data}"]"#],
                "names neither {output} nor {config}",
            ),
            (
                &[
                    ext,
                    r#"train.command=["t", "{config}"]"#,
                    "train.timeout_s=0",
                ],
                "config key `train.timeout_s`",
            ),
            (&[r#"train.command=["t"]"#], "only used with train.backend"),
            (
                &["train.backend=remote"],
                "unknown variant `remote`, expected `native` or `external`",
            ),
            (&["train.nope=1"], "config key `train.nope`"),
        ];
        for (sets, want) in cases {
            let e = err(sets);
            assert!(e.contains(want), "{sets:?}: {e}");
        }
        parse(&[ext, r#"train.command=["t", "--config", "{config}"]"#]).unwrap();
        // Policy gradient trains externally, with the KL term in the loss only.
        let grpo = include_str!("../../../examples/grpo-addition.toml");
        let plan = |extra: &[&str]| {
            let mut sets = vec![
                ext.to_string(),
                r#"train.command=["t", "{config}"]"#.to_string(),
            ];
            sets.extend(extra.iter().map(|s| s.to_string()));
            RunConfig::parse(grpo, "grpo", &sets)
                .and_then(|c| c.plan(&crate::testutil::mock_backends()))
        };
        plan(&["rl.beta=0.1"]).unwrap();
        let e = plan(&["rl.beta=0.1", "rl.kl_mode=reward"])
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("config key `rl.kl_mode`: \"reward\" folds the reference"),
            "{e}"
        );
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
            (&["rl.sampling.samples=1"], "config key `rl.sampling.samples`: 1 is too small: grpo compares"),
            (&["recipe=rloo", "rl.sampling.samples=1"], "rloo compares completions within a group"),
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
            "rl.sampling.samples=1".to_string(),
            "rl.baseline=none".to_string(),
        ];
        RunConfig::parse(grpo, "grpo", &sets)
            .unwrap()
            .plan(&crate::testutil::mock_backends())
            .unwrap();
    }

    #[test]
    fn moved_keys_name_their_new_place_and_stored_configs_are_moved() {
        for (set, new) in [
            ("star.samples=2", "star.sampling.samples"),
            ("star.train.lr=0.01", "star.optimizer.lr"),
            ("eval.temperature=0.5", "eval.sampling.temperature"),
            ("rl.group_size=4", "rl.sampling.samples"),
            (
                "seed_stage.train.warmup_steps=3",
                "seed_stage.optimizer.warmup_steps",
            ),
        ] {
            let e = err(&[set]);
            assert!(e.contains(&format!("has moved to `{new}`")), "{set}: {e}");
        }
        // A run directory's config.toml from before the move still reads, with its values in
        // their new places.
        let old = DEMO_CONFIG
            .replace("[star.sampling]\nsamples = 4", "[star.sampling]")
            .replace("[star]\n", "[star]\nsamples = 3\n")
            + "\n[rl]\ngroup_size = 5\nlr = 0.5\n";
        assert!(RunConfig::parse(&old, "old", &[]).is_err());
        let c = RunConfig::parse_stored(&old, "old").unwrap();
        assert_eq!(
            c.sections["star"]["sampling"]["samples"].as_integer(),
            Some(3)
        );
        assert_eq!(
            c.sections["rl"]["sampling"]["samples"].as_integer(),
            Some(5)
        );
        assert_eq!(c.sections["rl"]["optimizer"]["lr"].as_float(), Some(0.5));
        // A partial table keeps its section's own defaults for what it leaves out.
        assert_eq!(
            c.sections["rl"]["optimizer"]["min_lr_ratio"].as_float(),
            Some(1.0)
        );
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
            "star.sampling.samples=2",
            "star.restart_from=seed",
            "task.digits=2",
            "eval.sampling.temperature=0.5",
        ])
        .unwrap();
        let star = &plan.config.sections["star"];
        assert_eq!(star["sampling"]["samples"].as_integer(), Some(2));
        assert_eq!(star["restart_from"].as_str(), Some("seed"));
        assert_eq!(plan.config.eval.sampling.temperature, 0.5);
    }

    #[test]
    fn issue14_stop_strings_reach_every_sampling_call() {
        let plan = parse(&["model.stop=[\"#\"]", "model.max_new_tokens=9"]).unwrap();
        let hot = SamplingConfig {
            temperature: 0.7,
            ..SamplingConfig::default()
        };
        let p = plan.sampling(&hot);
        assert_eq!((p.temperature, p.max_new_tokens), (0.7, 9));
        assert_eq!(p.stop, ["#"]);
        assert_eq!(plan.greedy().stop, ["#"]);
        assert_eq!(plan.greedy().temperature, 0.0);
    }

    #[test]
    fn bad_input_names_the_key() {
        let cases: &[(&[&str], &str)] = &[
            (
                &["star.sample=2"],
                "config key `star.sample`: unknown field `sample`",
            ),
            (
                &["star.sampling.samples=four"],
                "config key `star.sampling.samples`: invalid type: string \"four\"",
            ),
            (
                &["star.sampling.samples=0"],
                "config key `star.sampling.samples`: k must be at least 1",
            ),
            (
                &["star.sampling.temperature=-1"],
                "config key `star.sampling.temperature`",
            ),
            (
                &["model.context_length=16"],
                "config key `model.context_length`: 16 is too short for addition",
            ),
            (
                &["eval.sampling.samples=2"],
                "config key `eval.sampling.samples`: 2 is below eval.k",
            ),
            (&["task.digits=0"], "config key `task.digits`"),
            (
                &["model.stop=[\"#\", \"\"]"],
                "config key `model.stop`: stop string 1 is empty",
            ),
            (&["task.name=subtraction"], "unknown variant `subtraction`"),
            (
                &["star.restart_from=never"],
                "config key `star.restart_from`: unknown variant `never`",
            ),
            (&["star.optimizer.lr=0"], "config key `star.optimizer.lr`"),
            (
                &["star.train.steps=10"],
                "config key `star.train.steps`: set exactly one",
            ),
            (&["nonsense"], "section.key=value"),
            (
                &["foo.bar=1"],
                "config key `foo`: unknown field `foo`, expected one of `recipe`",
            ),
            (
                &["foo.bar=1"],
                "or a recipe section: `star`, `rl`, `pref`, `judge`, `raft`",
            ),
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
