//! `autodidact train`: the native trainer as a command, with the interface of an external
//! one: a dataset, a starting checkpoint, an output directory and an objective, or the job
//! file a run writes for its trainer (`{config}`), with which it trains exactly as the run
//! would in process.

use anyhow::{bail, Context, Result};
use autodidact_core::BackendKind;
use autodidact_engine::config::{OptimizerConfig, TrainConfig};
use autodidact_engine::recipes::pg::RlConfig;
use autodidact_engine::recipes::pref::PrefConfig;
use autodidact_engine::trainer::{self, Objective, TrainJob};
use clap::{Args, ValueEnum};
use std::path::PathBuf;

#[derive(Args)]
pub struct TrainArgs {
    /// A training job as a run writes it for its trainer (`{config}`): its objective,
    /// settings, seed and paths. The flags below override its paths.
    #[arg(long)]
    config: Option<PathBuf>,
    /// The dataset, JSON lines: `prompt`/`completion` (sft), `prompt`/`chosen`/`rejected`
    /// (dpo), or rollouts as `export --format trl` writes them (pg: `prompt`, `completion`,
    /// `reward`, `advantage`, `completion_ids`, `old_logprobs`).
    #[arg(long)]
    data: Option<PathBuf>,
    /// The checkpoint to start from.
    #[arg(long)]
    model: Option<PathBuf>,
    /// Where to write the trained checkpoint.
    #[arg(long)]
    out: Option<PathBuf>,
    /// The loss (without --config; with it, it must agree with the job's).
    #[arg(long, value_enum)]
    objective: Option<ObjectiveArg>,
    /// dpo, pg: the reference model's checkpoint (dpo's default: --model; pg needs one only
    /// when its job's loss has a KL term).
    #[arg(long)]
    reference: Option<PathBuf>,
    /// Write what training did (steps, losses, metrics) to this JSON file.
    #[arg(long)]
    stats: Option<PathBuf>,
    /// Without --config: seeds the order of the examples.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Without --config: optimizer steps (default: one epoch; pg: the one pass over the
    /// rollouts split into this many updates, default 1).
    #[arg(long)]
    steps: Option<u64>,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ObjectiveArg {
    Sft,
    Dpo,
    Pg,
}

pub fn train(a: &TrainArgs) -> Result<()> {
    let mut job = match &a.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            let job: TrainJob = serde_json::from_str(&text).with_context(|| {
                format!(
                    "{} is not a training job as a run writes one",
                    path.display()
                )
            })?;
            if let Some(o) = a.objective {
                let want = match o {
                    ObjectiveArg::Sft => "sft",
                    ObjectiveArg::Dpo => "dpo",
                    ObjectiveArg::Pg => "pg",
                };
                if want != job.objective.name() {
                    bail!(
                        "--objective {want} disagrees with {}, whose objective is {}",
                        path.display(),
                        job.objective.name()
                    );
                }
            }
            job
        }
        None => {
            let (Some(data), Some(model), Some(out), Some(objective)) =
                (&a.data, &a.model, &a.out, a.objective)
            else {
                bail!("give --config JOB, or --data, --model, --out and --objective");
            };
            // The defaults of the sections that train these objectives: [star] and [pref].
            let pref = PrefConfig::default();
            let (objective, train, optimizer) = match objective {
                ObjectiveArg::Sft => (
                    Objective::Sft,
                    TrainConfig::default(),
                    OptimizerConfig::default(),
                ),
                ObjectiveArg::Pg => {
                    // [rl]'s defaults; --steps splits the one pass into that many updates.
                    let steps = u32::try_from(a.steps.unwrap_or(1)).unwrap_or(u32::MAX);
                    let objective = trainer::pg_objective(data, steps, a.seed)?;
                    let Objective::Pg { plan, .. } = &objective else {
                        unreachable!("pg_objective builds a pg objective")
                    };
                    let train = TrainConfig {
                        steps: Some(plan.updates.len() as u64),
                        epochs: None,
                        ..TrainConfig::default()
                    };
                    (objective, train, RlConfig::default().optimizer)
                }
                ObjectiveArg::Dpo => (
                    Objective::Dpo {
                        loss: pref.loss,
                        beta: pref.beta,
                        label_smoothing: pref.label_smoothing,
                        sft_coef: pref.sft_coef,
                        reference: a.reference.clone().unwrap_or_else(|| model.clone()),
                        score_rows: 64,
                        judge: None,
                        judge_coef: 0.0,
                    },
                    pref.train,
                    pref.optimizer,
                ),
            };
            TrainJob {
                round: 0,
                seed: a.seed,
                data: data.clone(),
                model: model.clone(),
                output: out.clone(),
                stats: None,
                backend: BackendKind::default(),
                train: match &objective {
                    // --steps counted the plan's updates.
                    Objective::Pg { .. } => train,
                    _ => TrainConfig {
                        steps: a.steps.or(train.steps),
                        epochs: if a.steps.is_some() {
                            None
                        } else {
                            train.epochs
                        },
                        ..train
                    },
                },
                optimizer,
                objective,
            }
        }
    };
    if let Some(p) = &a.data {
        job.data = p.clone();
    }
    if let Some(p) = &a.model {
        job.model = p.clone();
    }
    if let Some(p) = &a.out {
        job.output = p.clone();
    }
    if let Some(p) = &a.stats {
        job.stats = Some(p.clone());
    }
    match (&a.reference, &mut job.objective) {
        (Some(r), Objective::Dpo { reference, .. }) => *reference = r.clone(),
        (Some(r), Objective::Pg { reference, .. }) => *reference = Some(r.clone()),
        _ => {}
    }
    let backends = crate::backends::linked();
    let mut obs = crate::progress::observer(false);
    trainer::run_job(&job, &backends, &mut *obs)?;
    println!("{}", job.output.display());
    Ok(())
}
