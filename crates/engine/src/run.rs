//! A run: its stages in order, each journaled, resumable after a crash.
//!
//! Stages read their inputs from the run directory (the parent checkpoint, the curated set)
//! and write their outputs there before the journal records them, so an interrupted run
//! replays the stage it was in from the same inputs and, for a fixed seed and thread count,
//! ends with the same numbers as an uninterrupted one.
//!
//! This module holds the run itself (creation, resumption, the stage loop, the lineage
//! helpers the recipes use, and the seed stage); the recipe's round stages live in
//! [`crate::recipes`], and `run/eval_stage.rs` holds the evaluation that ends every round
//! (with drift and the controller's decision).

use crate::config::{OptimizerConfig, RunConfig, RunPlan, TrainConfig};
use crate::controller::{alarm_value, decide, AlarmKind, Decision};
use crate::eval::{
    evaluate_with_samples, first_accuracy, greedy_groups, held_out_problems, problem_seed,
    EvalReport, EvalSettings,
};
use crate::monitor::mean_kl;
use crate::progress::{Observer, Silent};
use crate::recipes::{Column, Recipe};
use crate::sampling::{derive_seed, sample_groups};
use crate::store::{
    sha256_bytes, sha256_file, sha256_prefix, Finding, JournalEntry, RunDir, RunInfo, RunLock,
    RunStatus, CONFIG_FILE, METRICS_FILE, RUN_FILE, RUN_FORMAT_VERSION,
};
use crate::train::{steps_for, TrainStats};
use crate::trainer::{
    check_output, failure, run_external, run_native, Objective, TrainJob, TrainReport,
    TrainerBackend, TRAINER_JOB, TRAINER_LOG, TRAINER_STATS,
};
use crate::{Error, Result};
use autodidact_core::{Backends, Example, Group, Problem, SamplingParams, Split, TrainablePolicy};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

mod eval_stage;
mod external;

pub(crate) use external::ExternalSteps;

/// One stage of a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// Supervised warm start of M0 (round 0).
    Seed,
    /// A stage of the recipe's round (round ≥ 1): `sample`, `train`, `rl`, ...
    Round(&'static str, u32),
    /// Evaluate the round's model on the held-out split.
    Eval(u32),
}

impl Stage {
    pub fn name(&self) -> &'static str {
        match self {
            Stage::Seed => "seed",
            Stage::Round(name, _) => name,
            Stage::Eval(_) => "eval",
        }
    }
    pub fn round(&self) -> u32 {
        match *self {
            Stage::Seed => 0,
            Stage::Round(_, r) | Stage::Eval(r) => r,
        }
    }
}

/// Every stage of a run of `recipe`, in order.
pub fn stages(recipe: &dyn Recipe) -> Vec<Stage> {
    let mut s = vec![Stage::Seed, Stage::Eval(0)];
    for round in 1..=recipe.rounds() {
        s.extend(
            recipe
                .round_stages()
                .iter()
                .map(|&name| Stage::Round(name, round)),
        );
        s.push(Stage::Eval(round));
    }
    s
}

/// `rounds/rNNNN/manifest.json`: a round's lineage, settings, counts and file hashes. Each
/// stage adds its part.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub round: u32,
    pub recipe: String,
    /// The checkpoint that sampled this round's data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_checkpoint: Option<String>,
    /// The checkpoint this round's training started from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_checkpoint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub settings: Option<Value>,
    /// What the round's curation counted (recipe-specific).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counts: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train: Option<TrainStats>,
    /// Round metrics of the training stage (policy-gradient recipes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<BTreeMap<String, f64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval: Option<Value>,
    /// What the controller chose for this round (temperature) and decided after it (alarms,
    /// stop, rollback).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub controller: Option<Decision>,
    /// SHA-256 of each file the round wrote, by path relative to the run directory.
    #[serde(default)]
    pub files: BTreeMap<String, String>,
    /// Files that differed from what the run recorded when `autodidact resume --force`
    /// continued it anyway (written into the manifest of the first stage that ran after).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub forced: Vec<Finding>,
}

/// A line of `samples.jsonl`.
#[derive(Serialize, Deserialize)]
pub(crate) struct SampleRecord<'a> {
    problem_id: &'a str,
    prompt: &'a str,
    completion: &'a str,
    grade: autodidact_core::Grade,
    #[serde(skip_serializing_if = "Option::is_none")]
    answer: Option<&'a str>,
    /// Why the verifier could not grade it, when it could not.
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
    reward: f32,
    finish: autodidact_core::FinishReason,
    /// Sampled from the hinted prompt (rationalization).
    hinted: bool,
    /// The problem's reference completion, when the task has one (the report marks where
    /// a sample departs from it).
    #[serde(skip_serializing_if = "Option::is_none")]
    reference: Option<&'a str>,
}

/// The problems of a run, drawn from the task by the run seed.
pub(crate) struct Problems {
    pub(crate) labeled: Vec<Problem>,
    pub(crate) unlabeled: Vec<Problem>,
    pub(crate) eval: Vec<Problem>,
}

/// A run in progress. It holds the run directory's lock for as long as it lives.
pub struct Run {
    pub(crate) dir: RunDir,
    info: RunInfo,
    pub(crate) plan: RunPlan,
    pub(crate) problems: Problems,
    /// What `resume --force` accepted, until a stage's manifest records it.
    forced: Vec<Finding>,
    _lock: RunLock,
}

/// Logs a task writes (an external verifier's stderr), relative to the run directory.
pub const LOG_DIR: &str = "logs";

/// One row of the end-of-run table.
#[derive(Clone, Debug, PartialEq)]
pub struct RoundRow {
    pub round: u32,
    pub pass_at_1: f64,
    pub pass_at_k: f64,
    pub maj_at_k: f64,
    /// The recipe's columns ([`Run::columns`]): the rendered value, if the round has one.
    pub extra: Vec<Option<String>>,
}

impl Run {
    /// Creates the run directory `out` for `plan` (refusing one that holds anything).
    pub fn create(plan: RunPlan, out: &Path, threads: usize) -> Result<Self> {
        let toml = plan.config.to_toml();
        let problems = draw(&plan)?;
        let info = RunInfo {
            format_version: RUN_FORMAT_VERSION,
            autodidact_version: env!("CARGO_PKG_VERSION").into(),
            seed: plan.config.seed,
            threads,
            status: RunStatus::Running,
            config_sha256: Some(sha256_bytes(toml.as_bytes())),
            problems_sha256: Some(problems.sha256()),
            reward_sha256: plan.reward.as_ref().map(|r| r.digest.clone()),
            accepted: BTreeMap::new(),
        };
        let (dir, lock) = RunDir::create(out, &toml, &info)?;
        plan.task.set_log_dir(&dir.path(LOG_DIR))?;
        Ok(Self {
            dir,
            info,
            plan,
            problems,
            forced: Vec::new(),
            _lock: lock,
        })
    }

    /// Opens the run in `root` to continue it from its last completed stage, after taking its
    /// lock and checking every file its completed stages recorded ([`RunDir::verify`]). A file
    /// that differs stops it with an [`Error::Integrity`] naming the file, unless `force`: then
    /// each is noted, accepted in `run.json` and recorded in the next manifest written. The
    /// model is planned again from the run's config through `backends`.
    pub fn open(
        root: &Path,
        threads: usize,
        force: bool,
        backends: &Backends,
        obs: &mut dyn Observer,
    ) -> Result<Self> {
        let (dir, mut info) = RunDir::open(root)?;
        let lock = dir.lock()?;
        if let Some(pid) = lock.stale_holder {
            obs.note(&format!(
                "process {pid} stopped without releasing this run (killed or crashed); continuing where it left off"
            ));
        }
        dir.remove_leftovers()?;
        let journal = dir.journal()?;
        dir.settle_pending(&journal)?;
        let found = dir.verify(&info, &journal)?;
        if let Some(first) = found.first() {
            if !force {
                let more = match found.len() {
                    1 => String::new(),
                    n => format!(
                        " (and {} more: {})",
                        n - 1,
                        found[1..]
                            .iter()
                            .map(|f| f.file.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                };
                return Err(Error::integrity(
                    dir.path(&first.file),
                    format!("{}{more}", first.problem),
                ));
            }
            for f in &found {
                obs.note(&format!(
                    "--force: continuing with {} as it is ({})",
                    f.file, f.problem
                ));
                info.accepted.insert(f.file.clone(), f.current().into());
            }
        }
        let path = dir.path(CONFIG_FILE);
        let text = std::fs::read_to_string(&path)
            .map_err(|e| autodidact_core::Error::io("reading", &path, e))?;
        let plan = RunConfig::parse_stored(&text, &path.display().to_string())?.plan(backends)?;
        let config_sha = sha256_bytes(text.as_bytes());
        if plan.config.seed != info.seed {
            if !force {
                return Err(Error::integrity(
                    dir.path(RUN_FILE),
                    format!(
                        "records seed {} but {CONFIG_FILE} has seed {}",
                        info.seed, plan.config.seed
                    ),
                ));
            }
            obs.note(&format!(
                "--force: continuing with seed {} from {CONFIG_FILE} (the run started with seed {})",
                plan.config.seed, info.seed
            ));
            info.accepted
                .insert("seed".into(), plan.config.seed.to_string());
            info.seed = plan.config.seed;
        }
        // A run from before format 3 has no line_sha256 in its journal: now that its files
        // are verified against the journal, write the journal again with them.
        let unchecked_journal = info.format_version < 3 && !journal.is_empty();
        if unchecked_journal {
            dir.rewrite_journal(&journal)?;
        }
        // A format-1 run recorded no config hash: record it now, so later resumes check it.
        let upgrade = info.config_sha256.as_deref() != Some(&config_sha) || unchecked_journal;
        if upgrade || !found.is_empty() {
            info.config_sha256 = Some(config_sha);
            info.format_version = RUN_FORMAT_VERSION;
            dir.write_json(RUN_FILE, &info)?;
        }
        if info.threads != threads {
            obs.note(&format!(
                "this run started with {} threads and continues with {threads}: its numbers may differ slightly from an uninterrupted run (pass --threads {} to match)",
                info.threads, info.threads
            ));
        }
        plan.task.set_log_dir(&dir.path(LOG_DIR))?;
        let problems = draw(&plan)?;
        let problems_sha = problems.sha256();
        match info.problems_sha256.as_deref() {
            Some(recorded) if recorded != problems_sha => {
                if !force {
                    return Err(Error::integrity(
                        dir.path(RUN_FILE),
                        format!(
                            "the task's problems differ from those the run started with (was a task file edited?); restore them, or pass --force to continue with the problems as they are now (task: {})",
                            plan.config.task.describe()
                        ),
                    ));
                }
                obs.note("--force: continuing with the task's problems as they are now (they differ from those the run started with)");
                info.accepted
                    .insert("problems".into(), problems_sha.clone());
                info.problems_sha256 = Some(problems_sha);
                dir.write_json(RUN_FILE, &info)?;
            }
            // Runs from before problems were hashed record them now.
            None => {
                info.problems_sha256 = Some(problems_sha);
                dir.write_json(RUN_FILE, &info)?;
            }
            Some(_) => {}
        }
        let reward_sha = plan.reward.as_ref().map(|r| r.digest.clone());
        if info.reward_sha256.is_none() && reward_sha.is_some() {
            // A run started before reward models were hashed (its config, checked above,
            // already named the model) records its own now.
            info.reward_sha256 = reward_sha.clone();
            dir.write_json(RUN_FILE, &info)?;
        }
        if reward_sha != info.reward_sha256 {
            let model = plan
                .config
                .reward
                .model
                .as_ref()
                .map(|p| p.display().to_string());
            let what = model.as_deref().unwrap_or("(none)");
            if !force {
                return Err(Error::integrity(
                    dir.path(RUN_FILE),
                    format!(
                        "the reward model reward.model = {what} differs from the one the run started with (retrained or edited?); restore it, or pass --force to continue with it as it is now"
                    ),
                ));
            }
            obs.note(&format!(
                "--force: continuing with the reward model {what} as it is now"
            ));
            info.accepted.insert(
                "reward".into(),
                reward_sha.clone().unwrap_or_else(|| "none".into()),
            );
            info.reward_sha256 = reward_sha;
            dir.write_json(RUN_FILE, &info)?;
        }
        Ok(Self {
            dir,
            info,
            plan,
            problems,
            forced: found,
            _lock: lock,
        })
    }

    pub fn dir(&self) -> &RunDir {
        &self.dir
    }

    pub fn plan(&self) -> &RunPlan {
        &self.plan
    }

    /// Runs every stage not yet journaled; returns the per-round table.
    pub fn execute(&mut self, obs: &mut dyn Observer) -> Result<Vec<RoundRow>> {
        let status = self.run_stages(usize::MAX, obs)?;
        if self.info.status != status {
            self.dir.set_status(&mut self.info, status)?;
        }
        // The run is complete and journaled whatever happens here; `autodidact report`
        // rewrites the page. The event file is rewritten too (a run from before it existed
        // gets one on `resume`).
        crate::tensorboard::write_events(&self.dir)?;
        crate::report::write_report(self.dir.root())?;
        self.table()
    }

    /// Runs stages until the journal holds `stages` of them (or the run ends), and stops as a
    /// kill right after that journal line would: for tests of resumption.
    pub fn execute_until(&mut self, stages: usize, obs: &mut dyn Observer) -> Result<()> {
        self.run_stages(stages, obs).map(|_| ())
    }

    /// The stage loop of [`Run::execute`], stopping once `limit` stages are journaled.
    fn run_stages(&mut self, limit: usize, obs: &mut dyn Observer) -> Result<RunStatus> {
        let recipe = self.plan.recipe.clone();
        let all = stages(&*recipe);
        let done = self.dir.journal()?;
        if done.len() > all.len() {
            return Err(Error::run(
                self.dir.root(),
                format!(
                    "its journal records {} stages but its config has only {}",
                    done.len(),
                    all.len()
                ),
            ));
        }
        for (entry, stage) in done.iter().zip(&all) {
            if entry.stage != stage.name() || entry.round != stage.round() {
                return Err(Error::run(
                    self.dir.root(),
                    format!("its journal records stage {} of round {} where its config expects {} of round {}", entry.stage, entry.round, stage.name(), stage.round()),
                ));
            }
        }
        self.dir
            .truncate_metrics(done.last().map_or(0, |e| e.metrics_bytes))?;
        if !done.is_empty() && done.len() < all.len() {
            let last = &done[done.len() - 1];
            obs.note(&format!(
                "resuming after stage {} of round {}",
                last.stage, last.round
            ));
        }
        let mut status = RunStatus::Complete;
        let end = all.len().min(limit.max(done.len()));
        for &stage in &all[done.len()..end] {
            // A round starts only if the controller did not stop the run after the last one
            // (checked here rather than after the eval stage, so a resumed run stops too).
            if matches!(stage, Stage::Round(name, _) if name == recipe.round_stages()[0]) {
                let before = stage.round() - 1;
                if let Some(reason) = self.decision(before)?.stop {
                    obs.note(&format!("stopped after round {before}: {reason}"));
                    status = RunStatus::Stopped;
                    break;
                }
            }
            let start = Instant::now();
            match stage {
                Stage::Seed => self.seed_stage(obs)?,
                Stage::Round(name, r) => recipe.run_stage(name, r, self, obs)?,
                Stage::Eval(r) => self.eval_stage(r, obs)?,
            }
            let metrics_bytes = self.dir.metrics_bytes()?;
            self.dir.append_journal(&JournalEntry {
                stage: stage.name().into(),
                round: stage.round(),
                seconds: start.elapsed().as_secs_f64(),
                metrics_bytes,
                metrics_sha256: Some(sha256_prefix(&self.dir.path(METRICS_FILE), metrics_bytes)?),
                manifest_sha256: self.dir.current_manifest_sha256(stage.round())?,
            })?;
            self.dir.commit_manifest(stage.round())?;
            crate::tensorboard::write_events(&self.dir)?;
        }
        Ok(status)
    }

    /// The recipe's columns of the end-of-run table.
    pub fn columns(&self) -> &'static [Column] {
        self.plan.recipe.columns()
    }

    /// The per-round table, read back from `metrics.jsonl`.
    pub fn table(&self) -> Result<Vec<RoundRow>> {
        let columns = self.columns();
        Ok(self
            .dir
            .metrics()?
            .iter()
            .filter_map(|m| {
                Some(RoundRow {
                    round: m.get("round")?.as_u64()? as u32,
                    pass_at_1: m.get("eval/pass@1")?.as_f64()?,
                    pass_at_k: m.get("eval/pass@k")?.as_f64()?,
                    maj_at_k: m.get("eval/maj@k")?.as_f64()?,
                    extra: columns
                        .iter()
                        .map(|c| Some(c.render(m.get(c.key)?.as_f64()?)))
                        .collect(),
                })
            })
            .collect())
    }

    pub(crate) fn seed(&self, round: u32, stage: &str) -> u64 {
        derive_seed(self.plan.config.seed, round, stage, 0)
    }

    /// Checks the files of the checkpoint of `round` against the round's manifest.
    pub(crate) fn check_checkpoint(&self, round: u32) -> Result<()> {
        let rel = RunDir::checkpoint_dir(round);
        self.dir
            .check_recorded(round, &format!("{rel}/"), &self.info.accepted)
    }

    /// Loads the checkpoint of `round`, after checking its files against the round's manifest
    /// (a served model's servers are pointed at it first).
    pub(crate) fn load_policy(&self, round: u32) -> Result<Box<dyn TrainablePolicy>> {
        let rel = RunDir::checkpoint_dir(round);
        self.dir
            .check_recorded(round, &format!("{rel}/"), &self.info.accepted)?;
        let dir = self.dir.path(&rel);
        self.plan.model.sync(&dir)?;
        Ok(self.plan.model.load(&dir)?)
    }

    /// The controller's decision recorded with `round` (empty if none).
    pub(crate) fn decision(&self, round: u32) -> Result<Decision> {
        Ok(self.manifest(round)?.controller.unwrap_or_default())
    }

    /// The round whose model round `round` starts from: the previous one, unless the
    /// controller rolled back after it.
    pub(crate) fn parent(&self, round: u32) -> Result<u32> {
        let before = round - 1;
        Ok(self.decision(before)?.next_parent.unwrap_or(before))
    }

    pub(crate) fn manifest(&self, round: u32) -> Result<Manifest> {
        if let Some(rel) = self.dir.current_manifest_rel(round) {
            self.dir.read_json(&rel)
        } else {
            Ok(Manifest {
                round,
                recipe: self.plan.config.recipe.clone(),
                ..Default::default()
            })
        }
    }

    /// Writes the round's manifest; a metric that is undefined for the round (NaN, which JSON
    /// cannot hold) is left out, and what `resume --force` accepted is recorded in the first
    /// manifest written after it.
    pub(crate) fn write_manifest(&mut self, m: &Manifest) -> Result<()> {
        let mut m = m.clone();
        if let Some(metrics) = &mut m.metrics {
            metrics.retain(|_, v| v.is_finite());
        }
        m.forced.append(&mut self.forced);
        self.dir.write_manifest(m.round, &m)
    }

    pub(crate) fn hash_into(&self, m: &mut Manifest, rel: &str) -> Result<()> {
        m.files
            .insert(rel.to_string(), sha256_file(&self.dir.path(rel))?);
        Ok(())
    }

    /// Saves the round's checkpoint and records the SHA-256 of each of its files.
    pub(crate) fn save_checkpoint(
        &self,
        policy: &dyn TrainablePolicy,
        round: u32,
        m: &mut Manifest,
    ) -> Result<()> {
        policy.save(&self.dir.path(&RunDir::checkpoint_dir(round)))?;
        self.hash_checkpoint(round, m)
    }

    /// Records the SHA-256 of each file of the round's checkpoint.
    fn hash_checkpoint(&self, round: u32, m: &mut Manifest) -> Result<()> {
        let rel = RunDir::checkpoint_dir(round);
        let dir = self.dir.path(&rel);
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .map_err(|e| autodidact_core::Error::io("reading", &dir, e))?
            .filter_map(|e| e.ok())
            .filter(|e| e.path().is_file())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| !n.starts_with('.'))
            .collect();
        names.sort();
        for name in names {
            self.hash_into(m, &format!("{rel}/{name}"))?;
        }
        Ok(())
    }

    /// The round's `k` graded samples of every unlabeled problem, with a learned reward's
    /// scores as their rewards when the run has one (and its `proxy/*`, `gold/*` metrics).
    pub(crate) fn sample_pool(
        &self,
        policy: &mut dyn TrainablePolicy,
        round: u32,
        k: usize,
        params: &SamplingParams,
        obs: &mut dyn Observer,
    ) -> Result<(Vec<Group>, BTreeMap<String, f64>)> {
        obs.stage_started(
            &format!("r{round} sample"),
            self.problems.unlabeled.len() as u64,
        );
        let mut groups = sample_groups(
            policy,
            &*self.plan.task,
            &self.problems.unlabeled,
            k,
            params,
            self.seed(round, "sample"),
            obs,
        )?;
        let proxy = match &self.plan.reward {
            Some(r) => r.rescore(&mut groups)?,
            None => BTreeMap::new(),
        };
        Ok((groups, proxy))
    }

    /// Fine-tunes the checkpoint of round `init` on the round's curated `train.jsonl` (SFT with
    /// `train`'s settings) and saves the round's checkpoint: the training stage of the
    /// recipes that curate demonstrations.
    pub(crate) fn sft_stage(
        &mut self,
        round: u32,
        init: u32,
        train: &TrainConfig,
        optimizer: &OptimizerConfig,
        obs: &mut dyn Observer,
    ) -> Result<()> {
        let mut m = self.manifest(round)?;
        m.init_checkpoint = Some(RunDir::checkpoint_dir(init));
        let job = self.job(
            Objective::Sft,
            round,
            &format!("{}/train.jsonl", RunDir::round_dir(round)),
            &RunDir::checkpoint_dir(init),
            train,
            optimizer,
        )?;
        let report = self.train(&job, Start::Round(init), &mut m, obs, &mut |_, _, _| Ok(()))?;
        m.train = Some(report.stats);
        self.write_manifest(&m)
    }

    /// The job of a training stage of `round` on the dataset `data` (relative to the run
    /// directory), starting from the checkpoint `init` (relative too).
    pub(crate) fn job(
        &self,
        objective: Objective,
        round: u32,
        data: &str,
        init: &str,
        train: &TrainConfig,
        optimizer: &OptimizerConfig,
    ) -> Result<TrainJob> {
        let (model, output) = (
            self.weights_dir(init)?,
            self.scratch_checkpoint(round, None)?,
        );
        self.job_at(objective, round, data, model, output, train, optimizer)
    }

    /// [`Run::job`] starting from the checkpoint `model` and writing to `output` (absolute
    /// paths).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn job_at(
        &self,
        objective: Objective,
        round: u32,
        data: &str,
        model: std::path::PathBuf,
        output: std::path::PathBuf,
        train: &TrainConfig,
        optimizer: &OptimizerConfig,
    ) -> Result<TrainJob> {
        let rd = RunDir::round_dir(round);
        Ok(TrainJob {
            objective,
            round,
            seed: self.seed(round, if round == 0 { "seed" } else { "train" }),
            data: self.absolute(data)?,
            model,
            output,
            stats: Some(self.absolute(&format!("{rd}/{TRAINER_STATS}"))?),
            // A served model's weights are a Hugging Face checkpoint the native backend loads.
            backend: match self.plan.model.served_weights() {
                Some(_) => autodidact_core::BackendKind::Native,
                None => self.plan.config.model.backend,
            },
            train: train.clone(),
            optimizer: optimizer.clone(),
        })
    }

    /// Where an external trainer writes round `round`'s checkpoint (of rollout step `step`,
    /// for a policy-gradient round) before it is checked: a temporary directory beside the
    /// run's checkpoints, which `resume` clears when a crash leaves it.
    pub(crate) fn scratch_checkpoint(
        &self,
        round: u32,
        step: Option<u32>,
    ) -> Result<std::path::PathBuf> {
        let name = RunDir::checkpoint_dir(round);
        let name = name.trim_start_matches("checkpoints/");
        self.absolute(&match step {
            None => format!("checkpoints/.{name}.tmp-external"),
            Some(s) => format!("checkpoints/.{name}.step-{s:04}.tmp-external"),
        })
    }

    /// The absolute path of `rel` in the run directory (what a trainer in another directory
    /// needs).
    pub(crate) fn absolute(&self, rel: &str) -> Result<std::path::PathBuf> {
        let p = self.dir.path(rel);
        std::path::absolute(&p).map_err(|e| autodidact_core::Error::io("resolving", &p, e).into())
    }

    /// `p` (an absolute path in the run directory) relative to the run directory.
    fn relative(&self, p: &std::path::Path) -> Result<String> {
        let root = self.absolute("")?;
        Ok(p.strip_prefix(&root)
            .map(|r| r.to_string_lossy().into_owned())
            .unwrap_or_else(|_| p.display().to_string()))
    }

    /// Trains the round's checkpoint as `job` says and records it in `m` (its files; the
    /// trainer's report is returned), starting from `start`; an external trainer reads it
    /// from `job.model` (written first when it is a fresh model). A job whose dataset is empty
    /// trains nothing: the round's model is its starting one.
    pub(crate) fn train(
        &self,
        job: &TrainJob,
        start: Start,
        m: &mut Manifest,
        obs: &mut dyn Observer,
        on_step: &mut dyn FnMut(u64, f64, &mut dyn TrainablePolicy) -> Result<()>,
    ) -> Result<TrainReport> {
        let round = job.round;
        let rel = |p: &std::path::Path| self.relative(p);
        // What the job reads was recorded by this round's earlier stage: check it first.
        self.dir
            .check_recorded(round, &rel(&job.data)?, &self.info.accepted)?;
        if let Objective::Dpo { judge: Some(j), .. } = &job.objective {
            self.dir
                .check_recorded(round, &rel(j)?, &self.info.accepted)?;
        }
        let examples = crate::trainer::count_lines(&job.data)?;
        let name = match (round, &job.objective) {
            (0, _) => "seed".to_string(),
            (_, Objective::Sft) => format!("r{round} train"),
            (_, Objective::Dpo { loss, .. }) => format!("r{round} {}", loss.name()),
            (_, Objective::Pg { .. }) => format!("r{round} pg"),
        };
        let load_start = |run: &Run, start: Start| match start {
            Start::Policy(p) => Ok::<_, Error>(p),
            Start::Round(r) => run.load_policy(r),
        };
        let served = self.plan.model.served_weights().is_some();
        if examples == 0 {
            obs.note(&format!(
                "round {round}: its training set is empty; its model is its initial checkpoint"
            ));
            if served {
                // The new checkpoint is the starting weights with the servers' record.
                let to = self.dir.path(&RunDir::checkpoint_dir(round));
                copy_dir(&job.model, &to)?;
            }
            let p = load_start(self, start)?;
            self.save_checkpoint(&*p, round, m)?;
            return Ok(TrainReport::default());
        }
        let report = match self.plan.config.train.backend {
            TrainerBackend::Native => {
                let mut p = load_start(self, start)?;
                obs.stage_started(&name, steps_for(&job.train, examples));
                let model = &*self.plan.model;
                let loader = |dir: &std::path::Path| -> Result<Box<dyn TrainablePolicy>> {
                    Ok(model.load(dir)?)
                };
                let report = run_native(job, &mut *p, &loader, obs, on_step)?;
                self.save_checkpoint(&*p, round, m)?;
                report
            }
            TrainerBackend::External => self.train_external(job, start, &name, m, obs)?,
        };
        let s = &report.stats;
        obs.stage_finished(&format!(
            "{name}: {} examples, {} steps, loss {:.3} → {:.3}",
            s.examples, s.steps, s.first_loss, s.last_loss
        ));
        Ok(report)
    }

    /// Round 0: M0 learns from the labeled set, logging the seed-only curve; with
    /// `seed_stage.train.steps = 0`, M0 is the pretrained checkpoint as it is.
    fn seed_stage(&mut self, obs: &mut dyn Observer) -> Result<()> {
        let cfg = &self.plan.config;
        let policy = self.plan.model.init(self.seed(0, "init"))?;
        if cfg.seed_stage.train.steps == Some(0) {
            obs.stage_started("seed", 0);
            obs.stage_finished(
                "seed: none (seed_stage.train.steps = 0): M0 is the pretrained checkpoint",
            );
            let mut m = self.manifest(0)?;
            m.settings =
                Some(json!({"seed_stage": cfg.seed_stage, "model": self.plan.model.describe()}));
            self.save_checkpoint(&*policy, 0, &mut m)?;
            return self.write_manifest(&m);
        }
        let mut examples: Vec<Example> = self.problems.labeled.iter().map(demonstration).collect();
        examples.extend(self.plan.recipe.clone().seed_examples(self)?);
        let rd = RunDir::round_dir(0);
        let train_rel = format!("{rd}/train.jsonl");
        self.dir.write_jsonl(&train_rel, &examples)?;
        let mut m = self.manifest(0)?;
        m.settings =
            Some(json!({"seed_stage": cfg.seed_stage, "model": self.plan.model.describe()}));
        self.hash_into(&mut m, &train_rel)?;
        let init = format!("{rd}/.init.tmp-external");
        let job = self.job(
            Objective::Sft,
            0,
            &train_rel,
            &init,
            &cfg.seed_stage.train,
            &cfg.seed_stage.optimizer,
        )?;
        let steps = steps_for(&cfg.seed_stage.train, examples.len());
        let every = cfg.seed_stage.eval_every;
        let (dir, task, eval, greedy) = (
            &self.dir,
            &*self.plan.task,
            &self.problems.eval,
            self.plan.greedy(),
        );
        let report = self.train(
            &job,
            Start::Policy(policy),
            &mut m,
            obs,
            &mut |step, loss, p| {
                if every > 0 && (step % every == 0 || step == steps) {
                    let acc = first_accuracy(&greedy_groups(p, task, eval, &greedy, &mut Silent)?);
                    dir.append_metrics(
                        &json!({"seed/step": step, "seed/loss": loss, "seed/eval_pass@1": acc}),
                    )?;
                }
                Ok(())
            },
        )?;
        let _ = std::fs::remove_dir_all(self.dir.path(&init));
        m.train = Some(report.stats);
        self.write_manifest(&m)
    }
}

/// The numeric fields of a metrics line.
pub(crate) fn numbers(line: &Value) -> BTreeMap<String, f64> {
    line.as_object()
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| Some((k.clone(), v.as_f64()?)))
        .collect()
}

fn summary(r: &EvalReport) -> Value {
    json!({
        "problems": r.problems, "samples": r.samples, "k": r.k, "temperature": r.temperature,
        "pass@1": r.pass_at_1, "pass@k": r.pass_at_k, "maj@k": r.maj_at_k,
    })
}

/// Copies the files of the directory `from` into `to` (created), hard-linking where it can.
fn copy_dir(from: &std::path::Path, to: &std::path::Path) -> Result<()> {
    let io = |op: &'static str, p: &std::path::Path| {
        let p = p.to_path_buf();
        move |e| autodidact_core::Error::io(op, p, e)
    };
    std::fs::create_dir_all(to).map_err(io("creating", to))?;
    for entry in std::fs::read_dir(from).map_err(io("reading", from))? {
        let path = entry.map_err(io("reading", from))?.path();
        if path.is_file() {
            let dest = to.join(path.file_name().expect("a file has a name"));
            let _ = std::fs::remove_file(&dest);
            if std::fs::hard_link(&path, &dest).is_err() {
                std::fs::copy(&path, &dest).map_err(io("copying", &path))?;
            }
        }
    }
    Ok(())
}

/// Where a training stage starts.
pub(crate) enum Start {
    /// A model in memory (the seed stage's fresh one).
    Policy(Box<dyn TrainablePolicy>),
    /// The checkpoint of a round (its files checked against the round's manifest).
    Round(u32),
}

fn demonstration(p: &Problem) -> Example {
    Example::new(p.prompt.clone(), p.solution.clone().unwrap_or_default())
}

pub(crate) fn records(groups: &[Group], hinted: bool) -> impl Iterator<Item = SampleRecord<'_>> {
    groups.iter().flat_map(move |g| {
        g.completions
            .iter()
            .zip(&g.verdicts)
            .zip(&g.rewards)
            .map(move |((c, v), &r)| SampleRecord {
                problem_id: &g.problem.id,
                prompt: &g.problem.prompt,
                completion: &c.text,
                grade: v.grade,
                answer: v.answer.as_deref(),
                reason: v.reason.as_deref(),
                reward: r,
                finish: c.finish,
                hinted,
                reference: g.problem.solution.as_deref(),
            })
    })
}

impl Problems {
    /// SHA-256 of every problem, as JSON lines, labeled, unlabeled, then held-out.
    fn sha256(&self) -> String {
        let mut text = String::new();
        for p in self.labeled.iter().chain(&self.unlabeled).chain(&self.eval) {
            text.push_str(&serde_json::to_string(p).expect("problems serialize"));
            text.push('\n');
        }
        sha256_bytes(text.as_bytes())
    }
}

/// Labeled, unlabeled and held-out problems for the run's seed.
fn draw(plan: &RunPlan) -> Result<Problems> {
    let c = &plan.config;
    let seed = problem_seed(c.seed);
    let (pool, key) = plan.recipe.pool();
    // The labeled problems come first, so every recipe with the same seed stage gets the same
    // labeled set (and the same M0) whatever its pool size.
    let mut train = plan
        .task
        .problems(Split::Train, c.seed_stage.labeled + pool, seed)
        .map_err(|e| Error::config(&key, format!("with seed_stage.labeled: {e}")))?;
    let unlabeled = train.split_off(c.seed_stage.labeled);
    let eval = held_out_problems(&*plan.task, c.eval.problems, c.seed)?;
    if c.seed_stage.train.steps != Some(0) {
        if let Some(p) = train.iter().find(|p| p.solution.is_none()) {
            return Err(Error::config(
                "seed_stage.labeled",
                format!("problem {} has no reference solution to learn from", p.id),
            ));
        }
    }
    let mut problems = Problems {
        labeled: train,
        unlabeled,
        eval,
    };
    render_prompts(plan, &mut problems)?;
    Ok(problems)
}

/// Renders conversation prompts with the model's chat template and, for a pretrained model
/// (whose prompts the plan could not count in tokens), checks that each leaves room for a
/// completion.
fn render_prompts(plan: &RunPlan, problems: &mut Problems) -> Result<()> {
    let all = problems
        .labeled
        .iter_mut()
        .chain(&mut problems.unlabeled)
        .chain(&mut problems.eval);
    crate::eval::render_prompts(
        all,
        plan.model.tokenizer(),
        plan.model.context_length(),
        plan.max_new_tokens
            + plan
                .recipe
                .extra_tokens(plan.max_new_tokens, plan.model.tokenizer(), &*plan.task)?,
        plan.config
            .model
            .pretrained()
            .then_some("model.context_length (or model.max_new_tokens)"),
    )
}
