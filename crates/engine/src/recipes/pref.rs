//! Preference rounds (`dpo-verified`, `scpo`, `spin`, `self-rewarding`): pairs from the
//! round's groups ([`crate::pairs`]) and DPO-family training against a reference model.
//!
//! How this differs from the papers' setups:
//! - Self-Rewarding LMs (Yuan et al., 2024) and ScPO (Prasad et al., 2024) start from a
//!   pretrained instruction model; here M0 is trained from scratch on a small labeled set
//!   (the seed stage), then every round samples unlabeled problems only.
//! - The reference is the previous round's model by default (iterative DPO, as both papers);
//!   `reference = "seed"` keeps M0.
//! - `self-rewarding` judges with a Y/N verdict read from the logits (see [`crate::judge`])
//!   and mixes a judge SFT loss into every DPO step, on the current model's own samples of
//!   the labeled problems labeled by the verifier, so the judge keeps up with the policy.

use super::{resolve, section, Column, Family, Format, Recipe, Sections};
use crate::config::{
    check_fraction, check_train, non_negative, Budget, Checkpoint, OptimizerConfig, RunConfig,
    SamplingConfig, TrainConfig,
};
use crate::judge::{
    judge_scores, round_judge_examples, seed_judge_examples, JudgeFormat, JudgeStats, JUDGE_CHARS,
};
use crate::monitor::round_monitors;
use crate::pairs::{
    judged_pairs, spin_pairs, truth_metrics, verified_pairs, vote_metrics, vote_pairs, vote_shares,
    Pair, PairCounts,
};
use crate::progress::{Observer, Silent};
use crate::run::{records, Run, Start};
use crate::sampling::{sample_groups, sampled_tokens};
use crate::store::RunDir;
use crate::train::{steps_for, Order, TrainStats, Updater};
use crate::trainer::{chunked_logprobs, Objective};
use crate::{Error, Result};
use autodidact_core::{Example, Group, Policy, Task, TrainablePolicy};
use autodidact_objectives::{
    dpo, sft, BatchShape, DpoInputs, DpoLoss, DpoSettings, DpoStats, SftNormalization,
};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::Arc;

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
    /// How each round samples: `samples` completions per problem (k; the voters of `scpo`).
    pub sampling: SamplingConfig,
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
    pub reference: Checkpoint,
    /// Steps and batches; `batch_size` counts pairs.
    pub train: TrainConfig,
    pub optimizer: OptimizerConfig,
}

impl Default for PrefConfig {
    fn default() -> Self {
        Self {
            rounds: 3,
            problems: 1000,
            sampling: SamplingConfig::default(),
            pairs_per_problem: 1,
            min_vote_share: 0.0,
            weight_by_margin: true,
            judge_margin: 0.5,
            loss: DpoLoss::Sigmoid,
            beta: 0.1,
            label_smoothing: 0.0,
            sft_coef: 0.0,
            reference: Checkpoint::Previous,
            train: TrainConfig::default(),
            optimizer: OptimizerConfig {
                lr: 1e-4,
                ..OptimizerConfig::default()
            },
        }
    }
}

impl PrefConfig {
    /// Its DPO-family loss.
    fn dpo(&self) -> DpoRound {
        DpoRound {
            loss: self.loss,
            beta: self.beta,
            label_smoothing: self.label_smoothing,
            sft_coef: self.sft_coef,
            reference: self.reference,
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
    /// `[judge.model]`: a judge other than the policy, described as `[model]` describes one
    /// (a served model, `backend = "openai"`, or a checkpoint). It scores the samples and is
    /// not trained, so the judge examples (`seed_negatives`, `samples_per_labeled`) and
    /// `coef` are not used. Absent: the policy judges itself.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<autodidact_core::ModelConfig>,
}

impl Default for JudgeConfig {
    fn default() -> Self {
        Self {
            seed_negatives: 2,
            samples_per_labeled: 4,
            coef: 1.0,
            length_weight: 0.0,
            model: None,
        }
    }
}

/// The preference family: recipes `dpo-verified`, `scpo`, `spin` and `self-rewarding`,
/// sections `[pref]` and `[judge]`.
pub struct Preference;

/// Where a preference recipe's pairs come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Verifier-correct (chosen) against verifier-incorrect (rejected): the labeled upper
    /// bound of the preference recipes.
    Verified,
    /// Self-Consistency Preference Optimization: the most-voted answer's completion against
    /// the least-voted one's, weighted by the vote margin; no labels.
    Scpo,
    /// SPIN: the gold demonstration against the model's own generation.
    Spin,
    /// Self-Rewarding: the model judges its own samples; best against worst by judged score.
    SelfRewarding,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Verified => "dpo-verified",
            Kind::Scpo => "scpo",
            Kind::Spin => "spin",
            Kind::SelfRewarding => "self-rewarding",
        }
    }
}

impl Family for Preference {
    fn recipes(&self) -> &'static [&'static str] {
        &["dpo-verified", "scpo", "spin", "self-rewarding"]
    }
    fn sections(&self) -> &'static [&'static str] {
        &["pref", "judge"]
    }
    fn resolve(&self, name: &str, value: toml::Value) -> Result<toml::Value> {
        match name {
            "judge" => resolve::<JudgeConfig>(name, value),
            _ => resolve::<PrefConfig>(name, value),
        }
    }
    fn build(&self, recipe: &str, sections: &Sections) -> Result<Arc<dyn Recipe>> {
        let kind = match recipe {
            "scpo" => Kind::Scpo,
            "spin" => Kind::Spin,
            "self-rewarding" => Kind::SelfRewarding,
            _ => Kind::Verified,
        };
        let cfg: PrefConfig = section(sections, "pref")?;
        let judge: JudgeConfig = section(sections, "judge")?;
        check_pref(kind, &cfg)?;
        if kind == Kind::SelfRewarding {
            non_negative("judge.coef", judge.coef, "")?;
            check_fraction("judge.length_weight", judge.length_weight)?;
        }
        Ok(Arc::new(Pref { kind, cfg, judge }))
    }
}

/// A preference recipe with its settings.
pub struct Pref {
    kind: Kind,
    cfg: PrefConfig,
    judge: JudgeConfig,
}

const COLUMNS: &[Column] = &[
    Column {
        header: "pairs",
        key: "pairs/count",
        format: Format::Count,
    },
    Column {
        header: "chosen correct",
        key: "pairs/chosen_gold_accuracy",
        format: Format::Percent,
    },
    Column {
        header: "judge accuracy",
        key: "judge/accuracy",
        format: Format::Percent,
    },
];

impl Recipe for Pref {
    fn name(&self) -> &'static str {
        self.kind.name()
    }
    fn rounds(&self) -> u32 {
        self.cfg.rounds
    }
    fn pool(&self) -> (usize, String) {
        (self.cfg.problems, "pref.problems".into())
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
            "sample" => self.pairs_stage(run, round, obs),
            _ => self.pref_train_stage(run, round, obs),
        }
    }
    fn check(&self, _config: &RunConfig, _task: &dyn Task, budget: &Budget) -> Result<()> {
        let p = &self.cfg;
        let pairs = p.problems.saturating_mul(p.pairs_per_problem);
        budget.batch("pref.train.batch_size", 2 * p.train.batch_size.min(pairs))?;
        budget.held(
            "pref.problems",
            p.problems,
            "pref.sampling.samples",
            p.sampling.samples as u64,
        )
    }
    fn extra_alphabet(&self) -> &'static str {
        if self.self_judges() {
            JUDGE_CHARS
        } else {
            ""
        }
    }
    fn extra_tokens(
        &self,
        _max_new_tokens: usize,
        tok: &dyn autodidact_core::Tokenizer,
        _task: &dyn Task,
    ) -> Result<usize> {
        if self.self_judges() {
            JudgeFormat::of(tok).added_tokens(tok)
        } else {
            Ok(0)
        }
    }
    fn judge_model(&self) -> Option<&autodidact_core::ModelConfig> {
        self.judge
            .model
            .as_ref()
            .filter(|_| self.kind == Kind::SelfRewarding)
    }
    /// The self-judge's seed examples (`self-rewarding`).
    fn seed_examples(&self, run: &Run) -> Result<Vec<Example>> {
        if !self.self_judges() {
            return Ok(Vec::new());
        }
        seed_judge_examples(
            &*run.plan.task,
            run.plan.model.tokenizer(),
            &run.problems.labeled,
            self.judge.seed_negatives,
            run.seed(0, "judge"),
        )
    }
    fn seed_examples_per_labeled(&self) -> usize {
        if self.self_judges() {
            2 + self.judge.seed_negatives
        } else {
            1
        }
    }
    fn scoring_rows(&self) -> usize {
        if self.kind == Kind::SelfRewarding {
            512
        } else {
            256
        }
    }
    fn columns(&self) -> &'static [Column] {
        COLUMNS
    }
    /// `dpo-verified` ranks its pairs by a reward model in place of the verifier; the others
    /// pair by votes, a gold demonstration or a judge.
    fn takes_proxy_reward(&self) -> bool {
        self.kind == Kind::Verified
    }
}

impl Pref {
    /// Whether the policy is its own judge (`self-rewarding` without `[judge.model]`).
    fn self_judges(&self) -> bool {
        self.kind == Kind::SelfRewarding && self.judge.model.is_none()
    }

    /// Sample k completions per problem, score them with the recipe's reward source, and
    /// build preference pairs; record the gold truth beside the proxy.
    fn pairs_stage(&self, run: &mut Run, round: u32, obs: &mut dyn Observer) -> Result<()> {
        let parent = run.parent(round)?;
        let c = &run.plan.config;
        let cfg = &self.cfg;
        let mut policy = run.load_policy(parent)?;
        let task = &*run.plan.task;
        let params = run.plan.sampling(&cfg.sampling);
        // With `[reward] model` (dpo-verified only), every sample's reward is the proxy's.
        let (mut groups, mut metrics) =
            run.sample_pool(&mut *policy, round, cfg.sampling.samples, &params, obs)?;
        let proxy_rewards: Option<Vec<Vec<f32>>> = run
            .plan
            .reward
            .as_ref()
            .map(|_| groups.iter().map(|g| g.rewards.clone()).collect());
        let scores = match (&run.plan.judge, self.kind) {
            (Some(spec), Kind::SelfRewarding) => {
                let mut judge = spec.init(0)?;
                let s = self.self_judge(run, &mut *judge, round, &groups, &mut metrics, obs)?;
                for (k, v) in judge.take_serving_stats() {
                    metrics.insert(format!("judge/{k}"), v);
                }
                Some(s)
            }
            (None, Kind::SelfRewarding) => {
                Some(self.self_judge(run, &mut *policy, round, &groups, &mut metrics, obs)?)
            }
            _ => proxy_rewards,
        };
        let (pairs, counts, proxy) = build_pairs(self.kind, cfg, &groups, scores.as_deref());
        if let Some(proxy) = &proxy {
            for (g, p) in groups.iter_mut().zip(proxy) {
                g.rewards = p.clone();
            }
        }
        metrics.extend(truth_metrics(&groups, proxy.as_deref(), &pairs, &counts));
        let chosen: std::collections::HashSet<(&str, &str)> = pairs
            .iter()
            .map(|p| (p.problem_id.as_str(), p.chosen.as_str()))
            .collect();
        let selected: Vec<Vec<bool>> = groups
            .iter()
            .map(|g| {
                g.completions
                    .iter()
                    .map(|x| chosen.contains(&(g.problem.id.as_str(), x.text.as_str())))
                    .collect()
            })
            .collect();
        metrics.extend(round_monitors(&groups, &selected, c.monitor.n_star));
        if let (Kind::Scpo, Some(shares)) = (self.kind, &proxy) {
            metrics.extend(vote_metrics(&groups, shares));
        }
        metrics.insert(
            "rollout/sampled_tokens".into(),
            sampled_tokens(&groups) as f64,
        );
        let rd = RunDir::round_dir(round);
        // Judge examples for this round: the current model's samples of the labeled problems
        // and fresh corruptions of their solutions, labeled by the verifier, balanced.
        if self.self_judges() && self.judge.samples_per_labeled > 0 {
            let labeled = sample_groups(
                &mut *policy,
                task,
                &run.problems.labeled,
                self.judge.samples_per_labeled,
                &params,
                run.seed(round, "judge-samples"),
                &mut Silent,
            )?;
            let judge = round_judge_examples(
                task,
                policy.tokenizer(),
                &labeled,
                self.judge.seed_negatives,
                run.seed(round, "judge"),
            )?;
            metrics.insert("judge/train_examples".into(), judge.len() as f64);
            run.dir.write_jsonl(&format!("{rd}/judge.jsonl"), &judge)?;
        }
        run.dir.write_jsonl(
            &format!("{rd}/samples.jsonl"),
            &records(&groups, false).collect::<Vec<_>>(),
        )?;
        run.dir.write_jsonl(&format!("{rd}/train.jsonl"), &pairs)?;
        obs.stage_finished(&format!(
            "r{round} pairs: {} pairs from {} problems ({} without a pair), chosen correct {:.2}, rejected correct {:.2}",
            counts.pairs,
            counts.groups,
            counts.groups_without_pair(),
            metrics["pairs/chosen_gold_accuracy"],
            metrics["pairs/rejected_gold_accuracy"],
        ));
        let mut m = run.manifest(round)?;
        m.parent_checkpoint = Some(RunDir::checkpoint_dir(parent));
        m.settings = Some(
            json!({"pref": cfg, "judge": (self.kind == Kind::SelfRewarding).then_some(&self.judge)}),
        );
        m.metrics = Some(metrics);
        run.hash_into(&mut m, &format!("{rd}/samples.jsonl"))?;
        run.hash_into(&mut m, &format!("{rd}/train.jsonl"))?;
        if run.dir.path(&format!("{rd}/judge.jsonl")).exists() {
            run.hash_into(&mut m, &format!("{rd}/judge.jsonl"))?;
        }
        run.write_manifest(&m)
    }

    /// DPO-family training on the round's pairs, from the previous round's model.
    fn pref_train_stage(&self, run: &mut Run, round: u32, obs: &mut dyn Observer) -> Result<()> {
        let cfg = &self.cfg;
        dpo_stage(
            run,
            round,
            &cfg.dpo(),
            self.judge.coef,
            &cfg.train,
            &cfg.optimizer,
            obs,
        )
    }

    /// The self-judge's score of every sample (one row per group), with its agreement with
    /// the verifier in `metrics` (`judge/*`) and the diagnostic length bias applied.
    fn self_judge(
        &self,
        run: &Run,
        policy: &mut dyn Policy,
        round: u32,
        groups: &[Group],
        metrics: &mut BTreeMap<String, f64>,
        obs: &mut dyn Observer,
    ) -> Result<Vec<Vec<f32>>> {
        let items: Vec<(&autodidact_core::Problem, &str)> = groups
            .iter()
            .flat_map(|g| g.completions.iter().map(|x| (&g.problem, x.text.as_str())))
            .collect();
        obs.stage_started(&format!("r{round} judge"), items.len() as u64);
        let flat = judge_scores(policy, &items, run.plan.score_rows)?;
        obs.stage_progress(items.len() as u64, 0);
        let truth: Vec<bool> = groups
            .iter()
            .flat_map(|g| g.verdicts.iter().map(|v| v.is_correct()))
            .collect();
        let js = JudgeStats::of(&flat, &truth);
        for (k, v) in [
            ("judge/accuracy", js.accuracy()),
            ("judge/precision", js.precision()),
            ("judge/recall", js.recall()),
            ("judge/mean_score", js.mean_score),
        ] {
            // Precision with nothing judged correct (or recall with nothing correct) is
            // undefined: left out rather than written as NaN.
            if v.is_finite() {
                metrics.insert(k.to_string(), v);
            }
        }
        // The injected length bias (a diagnostic, `judge.length_weight`).
        let w = self.judge.length_weight;
        let max_len = run.plan.max_new_tokens.max(1) as f32;
        let lengths = groups
            .iter()
            .flat_map(|g| g.completions.iter().map(|x| x.tokens.len() as f32));
        let flat: Vec<f32> = flat
            .iter()
            .zip(lengths)
            .map(|(&s, len)| (1.0 - w) * s + w * len / max_len)
            .collect();
        Ok(flat
            .chunks(self.cfg.sampling.samples)
            .map(|s| s.to_vec())
            .collect())
    }
}

fn check_pref(kind: Kind, p: &PrefConfig) -> Result<()> {
    if p.problems == 0 {
        return Err(Error::config("pref.problems", "must be at least 1"));
    }
    let least = if kind == Kind::Spin { 1 } else { 2 };
    if p.sampling.samples < least {
        return Err(Error::config(
            "pref.sampling.samples",
            format!(
                "{} is too small: {} pairs completions of one group, so it needs at least {least}",
                p.sampling.samples,
                kind.name()
            ),
        ));
    }
    if p.pairs_per_problem == 0 {
        return Err(Error::config(
            "pref.pairs_per_problem",
            "must be at least 1",
        ));
    }
    p.sampling.check("pref")?;
    check_fraction("pref.min_vote_share", p.min_vote_share)?;
    check_fraction("pref.judge_margin", p.judge_margin)?;
    p.dpo().check("pref", &p.train)?;
    p.optimizer.check("pref")
}

/// A round's DPO-family loss, as a recipe's section sets it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct DpoRound {
    pub loss: DpoLoss,
    pub beta: f32,
    pub label_smoothing: f32,
    pub sft_coef: f32,
    pub reference: Checkpoint,
}

impl DpoRound {
    /// Checks the settings of section `section` (`pref`, `step.dpo`) with its `train`.
    pub(crate) fn check(&self, section: &str, train: &TrainConfig) -> Result<()> {
        if !(self.beta.is_finite() && self.beta > 0.0) {
            return Err(Error::config(
                format!("{section}.beta"),
                format!("{} must be a finite number > 0", self.beta),
            ));
        }
        if !(0.0..0.5).contains(&self.label_smoothing) {
            return Err(Error::config(
                format!("{section}.label_smoothing"),
                format!("{} must be in [0, 0.5)", self.label_smoothing),
            ));
        }
        non_negative(
            format!("{section}.sft_coef"),
            self.sft_coef,
            " (0: no NLL term)",
        )?;
        check_train(&format!("{section}.train"), train)
    }
}

/// DPO-family training on the round's pairs (`train.jsonl`) from the previous round's model,
/// against the reference `loss` names; with the self-judge's examples of the round
/// (`judge.jsonl`, weighted `judge_coef`) when it wrote them.
pub(crate) fn dpo_stage(
    run: &mut Run,
    round: u32,
    loss: &DpoRound,
    judge_coef: f32,
    train: &TrainConfig,
    optimizer: &OptimizerConfig,
    obs: &mut dyn Observer,
) -> Result<()> {
    let parent = run.parent(round)?;
    let rd = RunDir::round_dir(round);
    let judge_rel = format!("{rd}/judge.jsonl");
    let ref_round = loss.reference.round(parent);
    let reference = RunDir::checkpoint_dir(ref_round);
    run.check_checkpoint(ref_round)?;
    let objective = Objective::Dpo {
        loss: loss.loss,
        beta: loss.beta,
        label_smoothing: loss.label_smoothing,
        sft_coef: loss.sft_coef,
        // A served model's round-0 checkpoint holds its servers' record: its weights are
        // the served ones.
        reference: run.weights_dir(&reference)?,
        score_rows: run.plan.score_rows,
        judge: match run.dir.path(&judge_rel).exists() {
            true => Some(run.absolute(&judge_rel)?),
            false => None,
        },
        judge_coef,
    };
    let job = run.job(
        objective,
        round,
        &format!("{rd}/train.jsonl"),
        &RunDir::checkpoint_dir(parent),
        train,
        optimizer,
    )?;
    let mut m = run.manifest(round)?;
    let mut metrics = m.metrics.take().unwrap_or_default();
    m.init_checkpoint = Some(RunDir::checkpoint_dir(parent));
    let report = run.train(&job, Start::Round(parent), &mut m, obs, &mut |_, _, _| {
        Ok(())
    })?;
    if let Some(acc) = report.metrics.get("rewards/accuracies") {
        obs.note(&format!("r{round}: reward accuracy {acc:.2}"));
    }
    metrics.extend(report.metrics);
    m.settings
        .get_or_insert_with(|| json!({}))
        .as_object_mut()
        .expect("settings are an object")
        .insert("reference_checkpoint".into(), json!(reference));
    m.metrics = Some(metrics);
    m.train = Some(report.stats);
    run.write_manifest(&m)
}

/// Pairs of a round for `recipe`, with the proxy reward of every sample (`None` where the
/// recipe has no proxy: `dpo-verified` uses the gold verifier, `spin` no reward).
/// `scores` are the self-judge's (`self-rewarding`) or, for `dpo-verified` with `[reward]
/// model`, the reward model's: its pairs are then the best against the worst distinct
/// completion by that score (any difference; `judge_margin` is a judge's probability).
pub fn build_pairs(
    kind: Kind,
    cfg: &PrefConfig,
    groups: &[Group],
    scores: Option<&[Vec<f32>]>,
) -> (Vec<Pair>, PairCounts, Option<Vec<Vec<f32>>>) {
    let n = cfg.pairs_per_problem;
    match kind {
        Kind::Scpo => {
            let shares: Vec<Vec<f32>> = groups.iter().map(vote_shares).collect();
            let (p, c) = vote_pairs(groups, &shares, n, cfg.min_vote_share, cfg.weight_by_margin);
            (p, c, Some(shares))
        }
        Kind::SelfRewarding => {
            let scores = scores.expect("self-rewarding judges its samples");
            let (p, c) = judged_pairs(groups, scores, n, cfg.judge_margin);
            (p, c, Some(scores.to_vec()))
        }
        Kind::Spin => {
            let (p, c) = spin_pairs(groups, n);
            (p, c, None)
        }
        Kind::Verified => match scores {
            Some(proxy) => {
                let (p, c) = judged_pairs(groups, proxy, n, 0.0);
                (p, c, Some(proxy.to_vec()))
            }
            None => {
                let (p, c) = verified_pairs(groups, n);
                (p, c, None)
            }
        },
    }
}

/// The (chosen, rejected) examples of `pairs`.
fn pair_examples(pairs: &[Pair]) -> (Vec<Example>, Vec<Example>) {
    pairs
        .iter()
        .map(|p| {
            (
                Example::new(p.prompt.clone(), p.chosen.clone()),
                Example::new(p.prompt.clone(), p.rejected.clone()),
            )
        })
        .unzip()
}

/// Summed log-probs of each pair's chosen and rejected completion under `reference`, scored
/// in passes of at most `rows` (and 256) sequences.
pub fn reference_logps(
    reference: &mut dyn Policy,
    pairs: &[Pair],
    rows: usize,
) -> Result<Vec<(f32, f32)>> {
    let (c, r) = pair_examples(pairs);
    let rows = rows.clamp(1, 256);
    let lc = chunked_logprobs(reference, &c, rows)?;
    let lr = chunked_logprobs(reference, &r, rows)?;
    Ok(lc
        .iter()
        .zip(&lr)
        .map(|(a, b)| (a.iter().sum(), b.iter().sum()))
        .collect())
}

/// What a DPO fit did: the usual training stats and the mean TRL metrics over its steps.
pub struct DpoFit {
    pub stats: TrainStats,
    pub metrics: BTreeMap<String, f64>,
}

/// Trains `policy` on `pairs` (with their reference log-probs) for `cfg.train`'s steps, with a
/// fresh optimizer, plus `cfg.sft_coef` × the chosen side's token-mean NLL; when `judge` is non-empty, every step also takes a batch of judge
/// examples with SFT weight `judge_coef`. `after_step(step, loss)` runs after every update.
#[allow(clippy::too_many_arguments)]
pub fn fit_dpo(
    policy: &mut dyn TrainablePolicy,
    pairs: &[Pair],
    refs: &[(f32, f32)],
    judge: &[Example],
    judge_coef: f32,
    cfg: &PrefConfig,
    seed: u64,
    obs: &mut dyn Observer,
    after_step: &mut dyn FnMut(u64, f64),
) -> Result<DpoFit> {
    let t = &cfg.train;
    let steps = steps_for(t, pairs.len());
    let mut up = Updater::start(policy, &cfg.optimizer, steps, 0, None)?;
    let settings = DpoSettings {
        loss: cfg.loss,
        beta: cfg.beta,
        label_smoothing: cfg.label_smoothing,
    };
    let (chosen, rejected) = pair_examples(pairs);
    let mut order = Order::new(pairs.len(), seed);
    let mut judge_order = Order::new(judge.len(), seed ^ 0x9e37_79b9_7f4a_7c15);
    let batch = t.batch_size.min(pairs.len());
    let mut stats = TrainStats {
        examples: pairs.len(),
        steps,
        ..Default::default()
    };
    let mut dstats = DpoStats::default();
    let (mut judge_loss, mut sft_loss) = (0.0, 0.0);
    for step in 0..steps {
        let idx = order.next_batch(batch);
        let mut ex: Vec<Example> = idx.iter().map(|&i| chosen[i].clone()).collect();
        ex.extend(idx.iter().map(|&i| rejected[i].clone()));
        let (loss, tokens) = up.accumulate(&ex, false, |s| {
            let lp = s.logprobs;
            let (lc, lr) = lp.split_at(idx.len());
            let rc: Vec<f32> = idx.iter().map(|&i| refs[i].0).collect();
            let rr: Vec<f32> = idx.iter().map(|&i| refs[i].1).collect();
            let w: Vec<f32> = idx.iter().map(|&i| pairs[i].weight).collect();
            let out = dpo(
                &settings,
                &DpoInputs {
                    chosen: lc,
                    rejected: lr,
                    ref_chosen: &rc,
                    ref_rejected: &rr,
                    weights: Some(&w),
                },
                idx.len(),
            );
            let mut weights = out.chosen_weights;
            if cfg.sft_coef > 0.0 {
                let nll = sft(lc, BatchShape::of(lc), SftNormalization::Token);
                for (w, n) in weights.iter_mut().zip(&nll.weights) {
                    for (a, b) in w.iter_mut().zip(n) {
                        *a += cfg.sft_coef * b;
                    }
                }
                sft_loss += nll.loss / steps as f64;
            }
            weights.extend(out.rejected_weights);
            dstats.add(&out.stats);
            let tokens = lp.iter().map(|r| r.len() as u64).sum::<u64>();
            (weights, None, (out.loss, tokens))
        })?;
        stats.tokens += tokens;
        if !judge.is_empty() && judge_coef > 0.0 {
            let jb: Vec<Example> = judge_order
                .next_batch(t.batch_size.min(judge.len()))
                .into_iter()
                .map(|i| judge[i].clone())
                .collect();
            stats.tokens += up.accumulate(&jb, false, |s| {
                let js = sft(&s.logprobs, BatchShape::of(&s.logprobs), t.normalization);
                let scaled: Vec<Vec<f32>> = js
                    .weights
                    .iter()
                    .map(|r| r.iter().map(|w| w * judge_coef).collect())
                    .collect();
                judge_loss += js.loss / steps as f64;
                let tokens = s.logprobs.iter().map(|r| r.len() as u64).sum::<u64>();
                (scaled, None, tokens)
            })?;
        }
        up.step()?;
        stats.record_loss(step, loss);
        after_step(step + 1, loss);
        obs.stage_progress(step + 1, stats.tokens);
    }
    let mut metrics = dstats.metrics();
    metrics.insert("dpo/first_loss".into(), stats.first_loss);
    metrics.insert("dpo/last_loss".into(), stats.last_loss);
    if cfg.sft_coef > 0.0 {
        metrics.insert("dpo/chosen_nll".into(), sft_loss);
    }
    if !judge.is_empty() && judge_coef > 0.0 {
        metrics.insert("judge/train_loss".into(), judge_loss);
    }
    Ok(DpoFit { stats, metrics })
}
