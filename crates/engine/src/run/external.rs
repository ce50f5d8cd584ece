//! Training stages run by the external trainer (`[train] backend = "external"`): a stage's
//! one job ([`Run::train`]'s SFT and DPO stages), and a policy-gradient round's job per
//! rollout step ([`ExternalSteps`]).
//!
//! Every job goes the same way: its file is written to the round's `trainer-job.json`, the
//! command runs with its output appended to the round's `trainer.log`, the checkpoint it
//! wrote is checked against the one it started from, and its report is read. Only then is
//! the checkpoint put in place as the round's and recorded in the manifest (with the job,
//! the log and the report); a job that fails leaves the round's checkpoint unwritten and
//! `resume` runs the stage again.

use super::*;
use crate::recipes::pg::{PgBatch, PgPlan, StepTrainer, Updated};
use crate::trainer::RolloutLine;
use autodidact_core::Policy;
use std::path::PathBuf;

impl Run {
    /// The directory (absolute) holding the weights of checkpoint `rel` (or its adapters): a
    /// served model's round-0 checkpoint records its servers, and its weights are
    /// `model.openai.weights`.
    pub(crate) fn weights_dir(&self, rel: &str) -> Result<PathBuf> {
        match self.plan.model.served_weights() {
            Some(w) if !autodidact_core::holds_weights(&self.dir.path(rel)) => {
                Ok(std::path::absolute(w)
                    .map_err(|e| autodidact_core::Error::io("resolving", w, e))?)
            }
            _ => self.absolute(rel),
        }
    }

    /// [`Run::train`] by the external trainer: writes the job, runs the command, checks its
    /// checkpoint and puts it in place (a served model's servers are pointed at it).
    pub(super) fn train_external(
        &self,
        job: &TrainJob,
        start: Start,
        name: &str,
        m: &mut Manifest,
        obs: &mut dyn Observer,
    ) -> Result<TrainReport> {
        let record = match start {
            // The trainer starts from files: the seed stage's fresh model first.
            Start::Policy(p) => {
                p.save(&job.model)?;
                Some(p)
            }
            Start::Round(r) => {
                self.check_checkpoint(r)?;
                // What a served model's checkpoint records (its servers) comes from here.
                match self.plan.model.served_weights() {
                    Some(_) => Some(
                        self.plan
                            .model
                            .load(&self.dir.path(&RunDir::checkpoint_dir(r)))?,
                    ),
                    None => None,
                }
            }
        };
        self.restart_log(job.round)?;
        obs.stage_started(&format!("{name} (external trainer)"), 0);
        let report = self.external_job(job, obs)?;
        self.install_external(job, record, m)?;
        Ok(report)
    }

    /// Starts the round's `trainer.log` afresh.
    fn restart_log(&self, round: u32) -> Result<()> {
        let log = self
            .dir
            .path(&format!("{}/{TRAINER_LOG}", RunDir::round_dir(round)));
        match std::fs::remove_file(&log) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(autodidact_core::Error::io("removing", &log, e).into())
            }
            _ => Ok(()),
        }
    }

    /// Runs `job` by the external command: writes its file, runs the command (its output
    /// appended to the round's `trainer.log`), checks the checkpoint it wrote at
    /// `job.output` against the one it started from, and reads its report.
    fn external_job(&self, job: &TrainJob, obs: &mut dyn Observer) -> Result<TrainReport> {
        let round = job.round;
        let rd = RunDir::round_dir(round);
        let config_rel = format!("{rd}/{TRAINER_JOB}");
        self.dir.write_json(&config_rel, job)?;
        let log = self.dir.path(&format!("{rd}/{TRAINER_LOG}"));
        let stats = job.stats.clone().expect("a run's jobs name their report");
        let _ = std::fs::remove_file(&stats);
        if job.output.exists() {
            std::fs::remove_dir_all(&job.output)
                .map_err(|e| autodidact_core::Error::io("removing", &job.output, e))?;
        }
        run_external(
            &self.plan.config.train,
            job,
            &self.dir.path(&config_rel),
            &log,
            self.info.threads,
        )?;
        let probes: Vec<&str> = self
            .problems
            .eval
            .iter()
            .take(8)
            .map(|p| p.prompt.as_str())
            .collect();
        let model = &*self.plan.model;
        let load = |dir: &Path| -> Result<Box<dyn TrainablePolicy>> { Ok(model.load(dir)?) };
        // A served model's weights are loaded by its servers, not here.
        let served = model.served_weights().is_some();
        let load = (!served).then_some(&load as crate::trainer::LoadFn);
        check_output(&job.output, &job.model, &probes, load)
            .map_err(|message| failure(round, message, &log))?;
        match std::fs::read_to_string(&stats) {
            Ok(text) => serde_json::from_str(&text).map_err(|e| {
                let m = format!(
                    "wrote a report {} that does not parse: {e}",
                    stats.display()
                );
                failure(round, m, &log)
            }),
            Err(_) => {
                obs.note(&format!(
                    "round {round}: the external trainer reported no statistics ({} is absent)",
                    stats.display()
                ));
                Ok(TrainReport::default())
            }
        }
    }

    /// Puts the checked output of the external `job` in place as its round's checkpoint and
    /// records it, the job, the trainer's log and its report in `m`. A served model's
    /// checkpoint also gets `record`'s servers (the served policy), which are pointed at it.
    fn install_external(
        &self,
        job: &TrainJob,
        record: Option<Box<dyn TrainablePolicy>>,
        m: &mut Manifest,
    ) -> Result<()> {
        let round = job.round;
        let dir = self.dir.path(&RunDir::checkpoint_dir(round));
        autodidact_core::fs::replace_dir(&job.output, &dir)?;
        if self.plan.model.served_weights().is_some() {
            record
                .expect("a served model's record comes with its job")
                .save(&dir)?;
            self.plan.model.sync(&dir)?;
        }
        self.hash_checkpoint(round, m)?;
        let rd = RunDir::round_dir(round);
        self.hash_into(m, &format!("{rd}/{TRAINER_JOB}"))?;
        self.hash_into(m, &format!("{rd}/{TRAINER_LOG}"))?;
        if let Some(stats) = job.stats.as_ref().filter(|s| s.exists()) {
            self.hash_into(m, &self.relative(stats)?)?;
        }
        Ok(())
    }
}

/// A policy-gradient round trained by the external trainer: each rollout step's updates
/// are one job (objective `pg`) on the step's completions (`rounds/rNNNN/rollout.jsonl`),
/// starting from the previous step's checkpoint and optimizer state; the next step samples
/// from the new weights (a served model's servers are pointed at them). The last step's
/// checkpoint becomes the round's.
pub(crate) struct ExternalSteps<'r> {
    run: &'r Run,
    round: u32,
    optimizer: OptimizerConfig,
    /// The policy that samples: the last step's weights (a served model: its servers).
    policy: Box<dyn TrainablePolicy>,
    /// The checkpoint the next step starts from: the round's starting one, then the last
    /// step's output (removed once the next step's is in).
    model: PathBuf,
    optimizer_state: Option<PathBuf>,
    reference: Option<PathBuf>,
    step: u32,
    /// The last step's job.
    last: Option<TrainJob>,
    /// Whether a report that left out the step's statistics was noted.
    noted: bool,
}

/// The dataset of a policy-gradient step, in its round's directory.
const ROLLOUT_DATA: &str = "rollout.jsonl";

impl<'r> ExternalSteps<'r> {
    /// Round `round`'s steps from the checkpoint of round `parent`, with the reference of
    /// round `reference` (a KL term) and AdamW continuing from the checkpoint `resume`.
    pub(crate) fn start(
        run: &'r Run,
        round: u32,
        parent: u32,
        reference: Option<u32>,
        resume: Option<&Path>,
        optimizer: &OptimizerConfig,
    ) -> Result<Self> {
        let policy = run.load_policy(parent)?;
        let reference = match reference {
            Some(r) => {
                run.check_checkpoint(r)?;
                Some(run.weights_dir(&RunDir::checkpoint_dir(r))?)
            }
            None => None,
        };
        let optimizer_state = match resume {
            Some(p) => Some(
                std::path::absolute(p)
                    .map_err(|e| autodidact_core::Error::io("resolving", p, e))?,
            ),
            None => None,
        };
        run.restart_log(round)?;
        Ok(Self {
            run,
            round,
            optimizer: optimizer.clone(),
            policy,
            model: run.weights_dir(&RunDir::checkpoint_dir(parent))?,
            optimizer_state,
            reference,
            step: 0,
            last: None,
            noted: false,
        })
    }

    /// Puts the last step's checkpoint in place as the round's and records it, the last
    /// step's job, dataset and report, and the trainer's log in `m`.
    pub(crate) fn finish(self, m: &mut Manifest) -> Result<()> {
        let job = self
            .last
            .expect("a policy-gradient round takes at least one step");
        self.run.install_external(&job, Some(self.policy), m)?;
        let data = format!("{}/{ROLLOUT_DATA}", RunDir::round_dir(self.round));
        self.run.hash_into(m, &data)
    }
}

impl StepTrainer for ExternalSteps<'_> {
    fn policy(&mut self) -> &mut dyn Policy {
        &mut *self.policy
    }

    fn update(
        &mut self,
        batch: &PgBatch,
        plan: &PgPlan,
        obs: &mut dyn Observer,
    ) -> Result<Updated> {
        let run = self.run;
        let lines: Vec<RolloutLine> = (0..batch.examples.len())
            .map(|i| {
                let e = &batch.examples[i];
                RolloutLine {
                    prompt: e.prompt.clone(),
                    completion: e.completion.clone(),
                    reward: batch.rewards[i],
                    advantage: batch.advantages[i],
                    completion_ids: e.completion_tokens.clone().unwrap_or_default(),
                    old_logprobs: batch.old[i].clone(),
                    token_advantages: batch.token_advantages.map(|t| t[i].clone()),
                    kl_coef: batch.kl_coefs.map(|c| c[i]),
                }
            })
            .collect();
        let rd = RunDir::round_dir(self.round);
        let data = format!("{rd}/{ROLLOUT_DATA}");
        run.dir.write_jsonl(&data, &lines)?;
        let objective = Objective::Pg {
            plan: plan.clone(),
            reference: self.reference.clone(),
            optimizer_state: self.optimizer_state.clone(),
        };
        let train = TrainConfig {
            steps: Some(plan.updates.len() as u64),
            epochs: None,
            ..TrainConfig::default()
        };
        let output = run.scratch_checkpoint(self.round, Some(self.step))?;
        let job = run.job_at(
            objective,
            self.round,
            &data,
            self.model.clone(),
            output,
            &train,
            &self.optimizer,
        )?;
        let report = run.external_job(&job, obs)?;
        // The last step's checkpoint has served its purpose (the round's starting one stays).
        if self.last.is_some() {
            std::fs::remove_dir_all(&self.model)
                .map_err(|e| autodidact_core::Error::io("removing", &self.model, e))?;
        }
        // The next step samples from the new weights and starts from them.
        if run.plan.model.served_weights().is_some() {
            run.plan.model.sync(&job.output)?;
        } else {
            self.policy = run.plan.model.load(&job.output)?;
        }
        self.model = job.output.clone();
        self.optimizer_state = Some(job.output.clone());
        self.step += 1;
        self.last = Some(job);
        let (updated, missing) = Updated::from_report(&report);
        if !missing.is_empty() && !self.noted {
            self.noted = true;
            obs.note(&format!(
                "round {}: the external trainer's report leaves out {}; the round's update metrics are undefined",
                self.round,
                missing.join(", ")
            ));
        }
        Ok(updated)
    }
}
