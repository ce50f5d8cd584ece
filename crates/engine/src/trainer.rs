//! Who runs a training stage: the native trainer in process, or an external command
//! (`[train] backend = "external"`): TRL under `accelerate launch`, a DeepSpeed job, or
//! `autodidact train` itself.
//!
//! A stage describes its training as a [`TrainJob`]: the objective and its settings, the
//! seed, the dataset (the round's `train.jsonl`, in TRL's formats: `prompt`/`completion`
//! for SFT, `prompt`/`chosen`/`rejected` for the DPO family), the checkpoint to start from
//! and where the new one goes. The native trainer runs the job in process
//! ([`run_native`]); `autodidact train --config JOB` runs the same function on a job file,
//! so a run that trains through `autodidact train` gets the numbers of one that trains in
//! process. An external command gets the job file as `{config}` and its paths as
//! placeholders; the engine captures its output into the round's `trainer.log`, stops it
//! after `timeout_s`, and takes its checkpoint only once it loads and matches the policy
//! (architecture and tokenizer). It may report what it did (steps, losses, metrics) in the
//! job's `stats` file ([`TrainReport`]).
//!
//! Policy-gradient recipes sample between updates within a round, so their round is one
//! job per rollout step (objective `pg`): the step's completions ([`RolloutLine`]s, with
//! advantages and sampling log-probs), the plan of optimizer steps over them ([`PgPlan`]),
//! the schedule's position, the reference checkpoint and the optimizer state to continue;
//! the next step samples from the weights the job wrote.
//!
//! How external training differs from native: the seed stage's held-out curve
//! (`seed_stage.eval_every`) needs evaluation inside the trainer's loop and is not logged;
//! with `rl.kl_mode = "reward"` the engine would need the reference's log-probs before the
//! update, so policy gradient trains externally with the KL term in the loss only.

use crate::config::{OptimizerConfig, TrainConfig};
use crate::pairs::Pair;
use crate::progress::Observer;
use crate::recipes::pg::{fit_pg, PgBatch, PgPlan};
use crate::recipes::pref::{fit_dpo, reference_logps, PrefConfig};
use crate::store::read_jsonl;
use crate::train::{fit_sft, TrainStats, Updater};
use crate::{Error, Result};
use autodidact_core::{
    BackendKind, Backends, Example, ModelTokenizer, Policy, TrainablePolicy, ADAPTER_CONFIG,
};
use autodidact_objectives::DpoLoss;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::{BufRead, Read, Seek};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// `[train]`: who runs the training stages.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainerConfig {
    pub backend: TrainerBackend,
    /// `external`: the program and its arguments (no shell). In each argument `{data}`,
    /// `{model}`, `{output}`, `{round}`, `{config}` and `{threads}` become the stage's
    /// dataset, starting checkpoint, the directory to write the new checkpoint to, the
    /// round, the job file ([`TrainJob`]) and the run's thread count.
    pub command: Vec<String>,
    /// `external`: seconds the command may run before it is stopped (with every process it
    /// started).
    pub timeout_s: u64,
}

impl Default for TrainerConfig {
    fn default() -> Self {
        Self {
            backend: TrainerBackend::Native,
            command: Vec::new(),
            timeout_s: 3600,
        }
    }
}

/// Which trainer runs the training stages.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TrainerBackend {
    /// The engine's own trainer, in process.
    #[default]
    Native,
    /// A command per stage (`[train] command`).
    External,
}

/// Files of a training stage in its round's directory: the job (`{config}`), the external
/// trainer's output, and its report.
pub const TRAINER_JOB: &str = "trainer-job.json";
pub const TRAINER_LOG: &str = "trainer.log";
pub const TRAINER_STATS: &str = "trainer-stats.json";

/// The placeholders of `[train] command`.
pub const PLACEHOLDERS: [&str; 6] = ["data", "model", "output", "round", "config", "threads"];

impl TrainerConfig {
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }

    /// Checks `[train]`, naming the bad key.
    pub fn check(&self) -> Result<()> {
        match self.backend {
            TrainerBackend::Native => {
                if !self.command.is_empty() {
                    return Err(Error::config(
                        "train.command",
                        "is only used with train.backend = \"external\"",
                    ));
                }
            }
            TrainerBackend::External => {
                if self.command.is_empty() || self.command[0].is_empty() {
                    return Err(Error::config(
                        "train.command",
                        "train.backend = \"external\" needs the trainer's program and arguments, e.g. [\"accelerate\", \"launch\", \"integrations/trl/sft.py\", \"--config\", \"{config}\"]",
                    ));
                }
                for arg in &self.command {
                    for name in placeholders(arg) {
                        if !PLACEHOLDERS.contains(&name) {
                            return Err(Error::config(
                                "train.command",
                                format!(
                                    "unknown placeholder {{{name}}} in {arg:?}; the placeholders are {}",
                                    PLACEHOLDERS.map(|p| format!("{{{p}}}")).join(", ")
                                ),
                            ));
                        }
                    }
                }
                if !self
                    .command
                    .iter()
                    .any(|a| a.contains("{output}") || a.contains("{config}"))
                {
                    return Err(Error::config(
                        "train.command",
                        "names neither {output} nor {config}: the trainer would not know where to write the checkpoint",
                    ));
                }
                if !(1..=604_800).contains(&self.timeout_s) {
                    return Err(Error::config(
                        "train.timeout_s",
                        format!("{} must be in 1..=604800 (a week)", self.timeout_s),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// The `{name}` placeholders of `arg`.
fn placeholders(arg: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = arg;
    while let Some(open) = rest.find('{') {
        let Some(close) = rest[open..].find('}') else {
            break;
        };
        out.push(&rest[open + 1..open + close]);
        rest = &rest[open + close + 1..];
    }
    out
}

/// What a training stage asks of its trainer: the file `{config}`. (Its fields are not
/// checked for unknown ones: serde cannot with the flattened objective.)
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainJob {
    #[serde(flatten)]
    pub objective: Objective,
    pub round: u32,
    /// Seeds the order of the examples.
    pub seed: u64,
    /// The dataset, JSON lines.
    pub data: PathBuf,
    /// The checkpoint training starts from.
    pub model: PathBuf,
    /// Where the new checkpoint goes (a directory the trainer creates).
    pub output: PathBuf,
    /// Where the trainer may report what it did ([`TrainReport`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stats: Option<PathBuf>,
    /// The backend that loads `model` (the run's `model.backend`).
    pub backend: BackendKind,
    pub train: TrainConfig,
    pub optimizer: OptimizerConfig,
}

/// The loss a job trains, with its own settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "objective", rename_all = "snake_case")]
pub enum Objective {
    /// Supervised fine-tuning on `prompt`/`completion` lines.
    Sft,
    /// The DPO family on `prompt`/`chosen`/`rejected` lines (with a per-pair `weight`).
    Dpo {
        loss: DpoLoss,
        beta: f32,
        label_smoothing: f32,
        /// Weight of an NLL term on the chosen completions.
        sft_coef: f32,
        /// The reference model's checkpoint.
        reference: PathBuf,
        /// Rows of a reference scoring pass.
        score_rows: usize,
        /// Judge-format demonstrations trained beside the pairs (self-rewarding), and their
        /// SFT weight.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        judge: Option<PathBuf>,
        #[serde(default)]
        judge_coef: f32,
    },
    /// Clipped policy-gradient steps on a rollout batch ([`RolloutLine`]s): the steps a
    /// policy-gradient round takes on one rollout.
    Pg {
        /// Which completions each optimizer step trains, the surrogate and the schedule.
        plan: PgPlan,
        /// The reference model's checkpoint, when the loss has a KL term.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reference: Option<PathBuf>,
        /// A checkpoint whose saved optimizer state the steps continue (absent: a fresh
        /// optimizer); the trainer saves its state with the new checkpoint.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        optimizer_state: Option<PathBuf>,
    },
}

/// A line of a policy-gradient dataset: a sampled completion with its reward and advantage,
/// its tokens as sampled (ending with the stop token when it stopped) and the sampling
/// policy's log-prob of each. `export --format trl` writes rollouts in this layout.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutLine {
    pub prompt: String,
    pub completion: String,
    pub reward: f32,
    pub advantage: f32,
    pub completion_ids: Vec<u32>,
    pub old_logprobs: Vec<f32>,
    /// With step-level credit, the advantage of each completion token (the step it belongs
    /// to), read instead of `advantage`. Every line of a dataset has it or none does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_advantages: Option<Vec<f32>>,
    /// The KL term's coefficient for this completion, in place of the plan's `beta` (SCoRe's
    /// stage I holds first attempts to the reference harder than second attempts). Every
    /// line of a dataset has it or none does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kl_coef: Option<f32>,
}

impl Objective {
    pub fn name(&self) -> &'static str {
        match self {
            Objective::Sft => "sft",
            Objective::Dpo { .. } => "dpo",
            Objective::Pg { .. } => "pg",
        }
    }
}

/// What a trainer did: the round's training statistics and the metrics it adds to the
/// round (`rewards/accuracies` of the DPO family, ...).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TrainReport {
    #[serde(default)]
    pub stats: TrainStats,
    #[serde(default)]
    pub metrics: BTreeMap<String, f64>,
    /// The loss of every update, in order (for comparing trainers' curves).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub losses: Vec<f64>,
}

/// How a training data line that does not parse is described.
const DATA: &str = "is not a training example of this objective";

/// Runs `job` on `policy` (loaded from `job.model`) in process; a DPO reference other than
/// `job.model` is loaded with `load`.
pub fn run_native(
    job: &TrainJob,
    policy: &mut dyn TrainablePolicy,
    load: LoadFn,
    obs: &mut dyn Observer,
    on_step: &mut dyn FnMut(u64, f64, &mut dyn TrainablePolicy) -> Result<()>,
) -> Result<TrainReport> {
    match &job.objective {
        Objective::Sft => {
            let examples: Vec<Example> = read_jsonl(&job.data, DATA)?;
            let mut losses = Vec::new();
            let stats = fit_sft(
                policy,
                &examples,
                &job.train,
                &job.optimizer,
                job.seed,
                obs,
                &mut |step, loss, p| {
                    losses.push(loss);
                    on_step(step, loss, p)
                },
            )?;
            Ok(TrainReport {
                stats,
                metrics: BTreeMap::new(),
                losses,
            })
        }
        Objective::Dpo {
            loss,
            beta,
            label_smoothing,
            sft_coef,
            reference,
            score_rows,
            judge,
            judge_coef,
        } => {
            let pairs: Vec<Pair> = read_jsonl(&job.data, DATA)?;
            let judge: Vec<Example> = match judge {
                Some(path) => read_jsonl(path, DATA)?,
                None => Vec::new(),
            };
            let refs = if reference == &job.model {
                reference_logps(policy, &pairs, *score_rows)?
            } else {
                let mut r = load(reference)?;
                reference_logps(&mut *r, &pairs, *score_rows)?
            };
            let cfg = PrefConfig {
                loss: *loss,
                beta: *beta,
                label_smoothing: *label_smoothing,
                sft_coef: *sft_coef,
                train: job.train.clone(),
                optimizer: job.optimizer.clone(),
                ..PrefConfig::default()
            };
            let mut losses = Vec::new();
            let fit = fit_dpo(
                policy,
                &pairs,
                &refs,
                &judge,
                *judge_coef,
                &cfg,
                job.seed,
                obs,
                &mut |_, loss| losses.push(loss),
            )?;
            Ok(TrainReport {
                stats: fit.stats,
                metrics: fit.metrics,
                losses,
            })
        }
        Objective::Pg {
            plan,
            reference,
            optimizer_state,
        } => {
            let lines: Vec<RolloutLine> = read_jsonl(&job.data, DATA)?;
            let bad = |message: String| Error::file(&job.data, message);
            plan.check(lines.len()).map_err(|e| {
                Error::file(
                    &job.data,
                    format!("does not fit the job's plan of updates: {e}"),
                )
            })?;
            // The surrogate's completions need a sampling log-prob per token.
            let mut surrogate: Vec<usize> =
                plan.updates.iter().flat_map(|u| u.rows.clone()).collect();
            surrogate.sort_unstable();
            surrogate.dedup();
            for i in surrogate {
                let l = &lines[i];
                if l.completion_ids.is_empty() || l.completion_ids.len() != l.old_logprobs.len() {
                    return Err(bad(format!(
                        "line {}: has {} completion_ids and {} old_logprobs; a completion needs at least one token and a log-prob for each",
                        i + 1,
                        l.completion_ids.len(),
                        l.old_logprobs.len()
                    )));
                }
                if !l.advantage.is_finite() || l.old_logprobs.iter().any(|x| !x.is_finite()) {
                    return Err(bad(format!(
                        "line {}: its advantage and old_logprobs must be finite numbers",
                        i + 1
                    )));
                }
                if let Some(c) = l.kl_coef {
                    if !(c.is_finite() && c >= 0.0) {
                        return Err(bad(format!(
                            "line {}: kl_coef {c} must be a finite number ≥ 0",
                            i + 1
                        )));
                    }
                }
                if let Some(t) = &l.token_advantages {
                    if t.len() != l.completion_ids.len() || t.iter().any(|x| !x.is_finite()) {
                        return Err(bad(format!(
                            "line {}: has {} token_advantages for {} completion_ids; give one finite number per token",
                            i + 1,
                            t.len(),
                            l.completion_ids.len()
                        )));
                    }
                }
            }
            let per_token = lines
                .iter()
                .filter(|l| l.token_advantages.is_some())
                .count();
            if per_token != 0 && per_token != lines.len() {
                return Err(bad(format!(
                    "{per_token} of {} lines have token_advantages; give them on every line or on none",
                    lines.len()
                )));
            }
            let with_coef = lines.iter().filter(|l| l.kl_coef.is_some()).count();
            if with_coef != 0 && with_coef != lines.len() {
                return Err(bad(format!(
                    "{with_coef} of {} lines have a kl_coef; give it on every line or on none",
                    lines.len()
                )));
            }
            let kl_coefs: Option<Vec<f32>> = (with_coef != 0).then(|| {
                lines
                    .iter()
                    .map(|l| l.kl_coef.unwrap_or_default())
                    .collect()
            });
            let kl_term = match &kl_coefs {
                Some(c) => c.iter().any(|&c| c > 0.0),
                None => plan.surrogate.beta > 0.0,
            };
            let token_advantages: Option<Vec<Vec<f32>>> = (per_token != 0).then(|| {
                lines
                    .iter()
                    .map(|l| l.token_advantages.clone().unwrap_or_default())
                    .collect()
            });
            let examples: Vec<Example> = lines
                .iter()
                .map(|l| Example {
                    prompt: l.prompt.clone(),
                    completion: l.completion.clone(),
                    completion_tokens: Some(l.completion_ids.clone()),
                })
                .collect();
            let old: Vec<Vec<f32>> = lines.iter().map(|l| l.old_logprobs.clone()).collect();
            let advantages: Vec<f32> = lines.iter().map(|l| l.advantage).collect();
            let rewards: Vec<f32> = lines.iter().map(|l| l.reward).collect();
            let refs = match (kl_term, reference) {
                (false, _) => None,
                (true, None) => {
                    return Err(Error::config(
                        "reference",
                        "the job's loss has a KL term (plan.surrogate.beta > 0, or a line's kl_coef > 0) but names no reference checkpoint",
                    ))
                }
                // Scored a micro-batch at a time: all lines at once would hold every
                // position's logits together.
                (true, Some(r)) if r == &job.model => {
                    Some(chunked_logprobs(policy, &examples, plan.micro_batch_size)?)
                }
                (true, Some(r)) => Some(chunked_logprobs(
                    &mut *load(r)?,
                    &examples,
                    plan.micro_batch_size,
                )?),
            };
            let mut up = Updater::start(
                policy,
                &job.optimizer,
                plan.schedule_total,
                plan.schedule_first,
                optimizer_state.as_deref(),
            )?;
            let batch = PgBatch {
                examples: &examples,
                old: &old,
                rewards: &rewards,
                advantages: &advantages,
                token_advantages: token_advantages.as_deref(),
                kl_coefs: kl_coefs.as_deref(),
                refs: refs.as_deref(),
            };
            let updated = fit_pg(&mut up, &batch, plan)?;
            Ok(updated.report(lines.len(), plan.updates.len() as u64))
        }
    }
}

/// The `pg` objective for a dataset of rollouts alone (`autodidact train --objective pg`,
/// on `export --format trl`'s rollouts): one pass over every line in `minibatches`
/// optimizer steps, shuffled by `seed`, with `[rl]`'s default surrogate (no KL term).
pub fn pg_objective(data: &Path, minibatches: u32, seed: u64) -> Result<Objective> {
    let lines: Vec<RolloutLine> = read_jsonl(data, DATA)?;
    let longest = lines
        .iter()
        .map(|l| l.completion_ids.len())
        .max()
        .unwrap_or(1);
    Ok(Objective::Pg {
        plan: PgPlan::for_dataset(lines.len(), longest, minibatches, seed),
        reference: None,
        optimizer_state: None,
    })
}

/// `policy`'s log-probs of `examples`, `rows` examples per call (one call would hold every
/// position's logits of them all at once).
pub(crate) fn chunked_logprobs<P: Policy + ?Sized>(
    policy: &mut P,
    examples: &[Example],
    rows: usize,
) -> Result<Vec<Vec<f32>>> {
    let mut out = Vec::with_capacity(examples.len());
    for chunk in examples.chunks(rows.max(1)) {
        out.extend(policy.logprobs(chunk)?);
    }
    Ok(out)
}

/// Loads a checkpoint directory as the run's model.
pub type LoadFn<'a> = &'a dyn Fn(&Path) -> Result<Box<dyn TrainablePolicy>>;

/// Runs `job` with the native trainer: loads its model, trains, saves to `job.output` and
/// reports to `job.stats`.
pub fn run_job(job: &TrainJob, backends: &Backends, obs: &mut dyn Observer) -> Result<()> {
    let mut policy = backends.load(job.backend, &job.model)?;
    obs.stage_started(
        &format!("r{} {}", job.round, job.objective.name()),
        crate::train::steps_for(&job.train, count_lines(&job.data)?),
    );
    let load =
        |dir: &Path| -> Result<Box<dyn TrainablePolicy>> { Ok(backends.load(job.backend, dir)?) };
    let report = run_native(job, &mut *policy, &load, obs, &mut |_, _, _| Ok(()))?;
    obs.stage_finished(&format!(
        "r{} {}: {} examples, {} steps, loss {:.3} → {:.3}",
        job.round,
        job.objective.name(),
        report.stats.examples,
        report.stats.steps,
        report.stats.first_loss,
        report.stats.last_loss
    ));
    policy.save(&job.output)?;
    if let Some(path) = &job.stats {
        let text = serde_json::to_string_pretty(&report).expect("a report serializes");
        std::fs::write(path, text).map_err(|e| autodidact_core::Error::io("writing", path, e))?;
    }
    Ok(())
}

/// Lines (examples) of the JSON-lines file at `path`, blank ones not counted.
pub(crate) fn count_lines(path: &Path) -> Result<usize> {
    let f =
        std::fs::File::open(path).map_err(|e| autodidact_core::Error::io("reading", path, e))?;
    Ok(std::io::BufReader::new(f)
        .lines()
        .map_while(|l| l.ok())
        .filter(|l| !l.trim().is_empty())
        .count())
}

/// Runs `command` for `job` (whose file is at `config`), its output appended to `log`, and waits
/// at most `timeout`. Fails with the log's last lines unless it exits 0.
pub fn run_external(
    cfg: &TrainerConfig,
    job: &TrainJob,
    config: &Path,
    log: &Path,
    threads: usize,
) -> Result<()> {
    let fill = |arg: &str| {
        arg.replace("{data}", &job.data.display().to_string())
            .replace("{model}", &job.model.display().to_string())
            .replace("{output}", &job.output.display().to_string())
            .replace("{round}", &job.round.to_string())
            .replace("{config}", &config.display().to_string())
            .replace("{threads}", &threads.to_string())
    };
    let args: Vec<String> = cfg.command.iter().map(|a| fill(a)).collect();
    // Every job of a stage appends to its log, under a line naming the command.
    let mut out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| autodidact_core::Error::io("opening", log, e))?;
    use std::io::Write;
    writeln!(out, "# autodidact: {}", args.join(" "))
        .map_err(|e| autodidact_core::Error::io("writing", log, e))?;
    let err = out
        .try_clone()
        .map_err(|e| autodidact_core::Error::io("opening", log, e))?;
    let mut cmd = Command::new(&args[0]);
    cmd.args(&args[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err));
    #[cfg(unix)]
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    die_with_parent(&mut cmd);
    let fail = |message: String| failure(job.round, message, log);
    let mut child = cmd
        .spawn()
        .map_err(|e| fail(format!("could not start {:?}: {e}", args[0])))?;
    let deadline = Instant::now() + Duration::from_secs(cfg.timeout_s);
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() >= deadline => {
                stop_group(&mut child);
                return Err(fail(format!(
                    "ran past train.timeout_s = {} s and was stopped",
                    cfg.timeout_s
                )));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => return Err(fail(format!("could not be waited for: {e}"))),
        }
    };
    if !status.success() {
        return Err(fail(format!("{:?} failed ({status})", args[0])));
    }
    Ok(())
}

/// The error of an external trainer that failed, with the last lines of its log.
pub fn failure(round: u32, message: String, log: &Path) -> Error {
    Error::Trainer {
        round,
        message,
        log: log.to_path_buf(),
        tail: tail(log, 20),
    }
}

/// Makes the trainer die with this process (on Linux): a run killed with SIGKILL must not
/// leave its trainer running, holding an accelerator and writing into the round that
/// `resume` trains again. (A trainer that starts workers of its own should stop them when
/// it dies; its process group is stopped only on a timeout.)
fn die_with_parent(cmd: &mut Command) {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::process::CommandExt;
        let parent = std::process::id() as libc::pid_t;
        // SAFETY: prctl and getppid are async-signal-safe; nothing else runs between fork
        // and exec. The signal is tied to the thread that spawns, which waits for the child.
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // The parent died before the signal was armed.
                if libc::getppid() != parent {
                    return Err(std::io::Error::other("the run that started it has ended"));
                }
                Ok(())
            });
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = cmd;
}

/// Stops the child and every process of its group.
fn stop_group(child: &mut std::process::Child) {
    #[cfg(unix)]
    // SAFETY: signals the process group the child leads (it was started in a group of its
    // own); no memory is touched.
    unsafe {
        libc::kill(-(child.id() as i32), libc::SIGKILL);
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// The last `n` lines of the file at `path` (at most its last 64 KiB are read).
fn tail(path: &Path, n: usize) -> String {
    let Ok(mut f) = std::fs::File::open(path) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(std::io::SeekFrom::Start(len.saturating_sub(64 << 10)));
    let mut bytes = Vec::new();
    let _ = f.read_to_end(&mut bytes);
    let text = String::from_utf8_lossy(&bytes);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Checks that the checkpoint an external trainer wrote at `output` is one of the policy
/// that started at `init`: the same architecture in `config.json`, a tokenizer that
/// encodes `probes` the same, and weights that load (`load`, when given, checks every
/// tensor's shape; a served model's servers load them instead).
pub fn check_output(
    output: &Path,
    init: &Path,
    probes: &[&str],
    load: Option<LoadFn>,
) -> std::result::Result<(), String> {
    if !output.is_dir() {
        return Err(format!("wrote no checkpoint at {}", output.display()));
    }
    let config = |dir: &Path| -> std::result::Result<serde_json::Value, String> {
        let p = dir.join("config.json");
        let text = std::fs::read_to_string(&p).map_err(|e| format!("{}: {e}", p.display()))?;
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", p.display()))
    };
    if init.join(ADAPTER_CONFIG).exists() {
        // LoRA adapters: the same adapters of the same base model.
        let adapters = |dir: &Path| -> std::result::Result<serde_json::Value, String> {
            let p = dir.join(ADAPTER_CONFIG);
            let text = std::fs::read_to_string(&p)
                .map_err(|e| format!("wrote no LoRA adapters ({}: {e})", p.display()))?;
            serde_json::from_str(&text).map_err(|e| format!("{}: {e}", p.display()))
        };
        let (want, got) = (adapters(init)?, adapters(output)?);
        for key in ADAPTER_KEYS {
            if want.get(key) != got.get(key) {
                return Err(format!(
                    "wrote other LoRA adapters: {ADAPTER_CONFIG} has {key} = {}, the policy's has {}",
                    got.get(key).unwrap_or(&serde_json::Value::Null),
                    want.get(key).unwrap_or(&serde_json::Value::Null)
                ));
            }
        }
    } else if let Some(e) = architecture_differs(&config(init)?, &config(output)?) {
        return Err(e);
    }
    let tokenizer = |dir: &Path| -> std::result::Result<ModelTokenizer, String> {
        ModelTokenizer::load(dir)
            .map_err(|e| format!("its tokenizer does not load: {e}"))?
            .ok_or_else(|| format!("{} holds no tokenizer", dir.display()))
    };
    let (tw, tg) = (tokenizer(init)?, tokenizer(output)?);
    use autodidact_core::Tokenizer;
    if tw.vocab_size() != tg.vocab_size() {
        return Err(format!(
            "wrote a tokenizer of {} tokens; the policy's has {}",
            tg.vocab_size(),
            tw.vocab_size()
        ));
    }
    for p in probes {
        if tw.encode_prompt(p).ok() != tg.encode_prompt(p).ok() {
            return Err(format!(
                "wrote a tokenizer that encodes {p:?} differently from the policy's"
            ));
        }
    }
    if let Some(load) = load {
        load(output).map_err(|e| format!("wrote a checkpoint that does not load: {e}"))?;
    }
    Ok(())
}

/// How the `config.json` of a trainer's checkpoint (`got`) differs from the policy's
/// (`want`) in a key that fixes the architecture, if it does.
fn architecture_differs(want: &serde_json::Value, got: &serde_json::Value) -> Option<String> {
    // transformers 5 writes the rotary settings under `rope_parameters`.
    let field = |v: &serde_json::Value, key: &str| {
        v.get(key)
            .filter(|x| !x.is_null())
            .or_else(|| v.get("rope_parameters").and_then(|r| r.get(key)))
            .cloned()
    };
    ARCHITECTURE_KEYS.iter().find_map(|&key| {
        let w = field(want, key)?;
        let g = field(got, key).unwrap_or(serde_json::Value::Null);
        (!same_number_or_value(&w, &g)).then(|| {
            format!(
                "wrote a checkpoint of another architecture: config.json has {key} = {g}, the policy's has {w}"
            )
        })
    })
}

/// The keys of PEFT's `adapter_config.json` that fix a LoRA checkpoint's adapters.
const ADAPTER_KEYS: [&str; 4] = [
    "base_model_name_or_path",
    "r",
    "lora_alpha",
    "target_modules",
];

/// The keys of a Hugging Face `config.json` that fix the architecture.
const ARCHITECTURE_KEYS: [&str; 11] = [
    "architectures",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "vocab_size",
    "tie_word_embeddings",
    "rope_theta",
    "rms_norm_eps",
];

/// Equal values, numbers compared as numbers (`10000` and `10000.0`).
fn same_number_or_value(a: &serde_json::Value, b: &serde_json::Value) -> bool {
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => x == y,
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issue16_the_command_is_checked_by_key() {
        let ext = |command: &[&str]| TrainerConfig {
            backend: TrainerBackend::External,
            command: command.iter().map(|s| s.to_string()).collect(),
            timeout_s: 10,
        };
        let err = |c: TrainerConfig| c.check().unwrap_err().to_string();
        assert!(err(ext(&[])).contains("train.command"));
        assert!(err(ext(&["t", "{data}", "{nope}"])).contains("unknown placeholder {nope}"));
        assert!(err(ext(&["t", "{data}"])).contains("neither {output} nor {config}"));
        let mut c = ext(&["t", "--out", "{output}"]);
        c.timeout_s = 0;
        assert!(err(c).contains("train.timeout_s"));
        assert!(ext(&["t", "--config={config}"]).check().is_ok());
        let native = TrainerConfig {
            command: vec!["x".into()],
            ..TrainerConfig::default()
        };
        assert!(err(native).contains("only used with"));
        assert_eq!(placeholders("a{b}c{d}"), ["b", "d"]);
    }

    #[test]
    fn issue16_architecture_checks_read_both_config_layouts() {
        let ours = serde_json::json!({"hidden_size": 64, "rope_theta": 10000.0, "vocab_size": 19});
        let tf5 = serde_json::json!({"hidden_size": 64, "vocab_size": 19, "dtype": "float32",
            "rope_parameters": {"rope_theta": 10000, "rope_type": "default"}});
        assert_eq!(architecture_differs(&ours, &tf5), None);
        let narrow = serde_json::json!({"hidden_size": 8, "rope_theta": 10000.0, "vocab_size": 19});
        let e = architecture_differs(&ours, &narrow).unwrap();
        assert!(e.contains("hidden_size = 8, the policy's has 64"), "{e}");
        let other_rope = serde_json::json!({"hidden_size": 64, "vocab_size": 19,
            "rope_parameters": {"rope_theta": 500000.0}});
        assert!(architecture_differs(&ours, &other_rope)
            .unwrap()
            .contains("rope_theta"));
    }

    #[test]
    fn issue16_jobs_round_trip_as_json() {
        let job = TrainJob {
            objective: Objective::Dpo {
                loss: DpoLoss::Sigmoid,
                beta: 0.1,
                label_smoothing: 0.0,
                sft_coef: 0.0,
                reference: "/r/checkpoints/r0000".into(),
                score_rows: 64,
                judge: None,
                judge_coef: 0.0,
            },
            round: 2,
            seed: 7,
            data: "/r/rounds/r0002/train.jsonl".into(),
            model: "/r/checkpoints/r0001".into(),
            output: "/r/checkpoints/.r0002.tmp-external".into(),
            stats: Some("/r/rounds/r0002/trainer-stats.json".into()),
            backend: BackendKind::Native,
            train: TrainConfig::default(),
            optimizer: OptimizerConfig::default(),
        };
        let text = serde_json::to_string(&job).unwrap();
        assert!(text.contains(r#""objective":"dpo""#), "{text}");
        assert_eq!(serde_json::from_str::<TrainJob>(&text).unwrap(), job);
        // A policy-gradient step: its plan, reference and optimizer state travel whole.
        let mut plan = PgPlan::for_dataset(7, 12, 3, 5);
        plan.surrogate.beta = 0.04;
        plan.sft_coef = 0.1;
        plan.updates[1].anchors = vec![6, 2];
        assert_eq!(plan.updates.len(), 3);
        let pg = TrainJob {
            objective: Objective::Pg {
                plan: plan.clone(),
                reference: Some("/r/checkpoints/r0000".into()),
                optimizer_state: Some("/r/checkpoints/.r0002.step-0000.tmp-external".into()),
            },
            ..job
        };
        let text = serde_json::to_string(&pg).unwrap();
        assert!(text.contains(r#""objective":"pg""#), "{text}");
        assert_eq!(serde_json::from_str::<TrainJob>(&text).unwrap(), pg);
        assert!(plan.check(7).is_ok());
        let e = plan.check(6).unwrap_err();
        assert!(
            e.contains("names line 6") && e.contains("has 6 lines"),
            "{e}"
        );
    }
}
