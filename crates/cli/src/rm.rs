//! `autodidact rm data|train|score|bon`: reward models learned from a verifier's labels, and
//! the best-of-n over-optimization sweep against them (`autodidact_engine::rm`, `overopt`).

use crate::tools::{completion_limits, load, CheckpointTask};
use anyhow::{bail, Context, Result};
use autodidact_core::{Group, SamplingParams, Split};
use autodidact_engine::config::apply_set;
use autodidact_engine::eval::{problem_seed, render_prompts};
use autodidact_engine::overopt::{best_of_n, best_of_n_kl, fit, Fit, Form};
use autodidact_engine::rm::{
    self, aggregate, check_aggregation, completions_of, data_from_groups, data_lines, disagreement,
    eval_metrics, read_data, summary, Aggregation, Ensemble, RmConfig, RmLoss,
};
use autodidact_engine::sampling::sample_groups;
use autodidact_engine::Silent;
use clap::{Args, Subcommand, ValueEnum};
use serde_json::json;
use std::path::PathBuf;

#[derive(Subcommand)]
pub enum RmCommand {
    /// Sample completions of a task's training problems from a checkpoint and write them
    /// with the verifier's labels: the labeled data of a reward model.
    Data(DataArgs),
    /// Train a reward model (or an ensemble) on labels or preference pairs.
    Train(TrainArgs),
    /// Score a labels or pairs file with a reward model or ensemble: accuracy and calibration
    /// of each member and of each aggregation.
    Score(ScoreArgs),
    /// Best-of-n against a reward model, for n up to --samples: gold and proxy reward
    /// against √KL, with the over-optimization fit, per aggregation of the ensemble.
    Bon(BonArgs),
}

/// Where samples come from: a checkpoint, a task, how many.
#[derive(Args)]
pub struct Sampling {
    /// The checkpoint to sample from.
    #[command(flatten)]
    source: CheckpointTask,
    /// Problems to sample.
    #[arg(long, default_value_t = 200)]
    problems: usize,
    /// Completions per problem.
    #[arg(long, default_value_t = 4)]
    samples: usize,
    /// Sampling temperature.
    #[arg(long, default_value_t = 1.0)]
    temperature: f32,
    /// Seed of the problems and samples.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum Kind {
    /// `{"prompt", "completion", "label"}`: an outcome classifier (BCE).
    Labels,
    /// `{"prompt", "chosen", "rejected"}`: Bradley–Terry.
    Pairs,
}

#[derive(Args)]
pub struct DataArgs {
    #[command(flatten)]
    sampling: Sampling,
    #[arg(long, value_enum, default_value = "labels")]
    kind: Kind,
    /// The JSONL file to write.
    #[arg(long)]
    out: PathBuf,
}

#[derive(Args)]
pub struct TrainArgs {
    /// The checkpoint whose backbone the reward models start from.
    #[arg(long)]
    base: PathBuf,
    /// Labels or pairs (JSONL; `rm data` writes them, TRL's reward datasets are pairs).
    #[arg(long)]
    data: PathBuf,
    /// A new or empty directory for the reward models.
    #[arg(long)]
    out: PathBuf,
    /// A training setting: `--set members=4`, `--set optimizer.lr=3e-3` (repeatable; keys:
    /// members, subset, eval_fraction, epochs, batch_size, micro_batch, center, seed,
    /// optimizer.{lr, warmup_steps, min_lr_ratio, weight_decay, max_grad_norm}).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    sets: Vec<String>,
}

#[derive(Args)]
pub struct ScoreArgs {
    /// A directory `rm train` wrote, or one reward-model checkpoint.
    #[arg(long)]
    model: PathBuf,
    /// Labels or pairs to score.
    #[arg(long)]
    data: PathBuf,
    /// λ of the uncertainty-weighted aggregation (mean − λ·variance).
    #[arg(long, default_value_t = 1.0)]
    lambda: f32,
}

#[derive(Args)]
pub struct BonArgs {
    #[command(flatten)]
    sampling: Sampling,
    /// The reward model or ensemble to pick the best of n with.
    #[arg(long)]
    model: PathBuf,
    /// λ of the uncertainty-weighted aggregation (mean − λ·variance).
    #[arg(long, default_value_t = 1.0)]
    lambda: f32,
    /// Where to write the sweep (JSON): every n's KL, gold and proxy per aggregation, and
    /// the fits.
    #[arg(long)]
    out: PathBuf,
}

pub fn rm(command: &RmCommand) -> Result<()> {
    match command {
        RmCommand::Data(a) => data(a),
        RmCommand::Train(a) => train(a),
        RmCommand::Score(a) => score(a),
        RmCommand::Bon(a) => bon(a),
    }
}

/// Samples `s.samples` completions of `s.problems` problems of `split`, graded.
fn sample(s: &Sampling, split: Split) -> Result<Vec<Group>> {
    let (run, task_cfg) = s.source.resolve()?;
    if s.problems == 0 || s.samples == 0 {
        bail!("--problems and --samples must be at least 1");
    }
    if !(s.temperature.is_finite() && s.temperature >= 0.0) {
        bail!("--temperature must be a finite number ≥ 0");
    }
    let task = task_cfg.build()?;
    let mut policy = load(&s.source.checkpoint, run.as_ref())?;
    let (max_new, stop) = completion_limits(run.as_ref(), &*task, None, &[])?;
    let mut problems = task
        .problems(split, s.problems, problem_seed(s.seed))
        .context("drawing problems (--problems)")?;
    let ctx = policy.context_length();
    render_prompts(
        &mut problems,
        policy.tokenizer(),
        ctx,
        max_new,
        Some("--problems"),
    )?;
    let params = SamplingParams {
        temperature: s.temperature,
        ..SamplingParams::greedy(max_new).with_stop(stop)
    };
    Ok(sample_groups(
        &mut *policy,
        &*task,
        &problems,
        s.samples,
        &params,
        s.seed,
        &mut Silent,
    )?)
}

fn data(a: &DataArgs) -> Result<()> {
    let groups = sample(&a.sampling, Split::Train)?;
    let loss = match a.kind {
        Kind::Labels => RmLoss::Outcome,
        Kind::Pairs => RmLoss::BradleyTerry,
    };
    let data = data_from_groups(&groups, loss);
    let n = groups.iter().map(|g| g.completions.len()).sum::<usize>();
    let right = groups
        .iter()
        .flat_map(|g| &g.verdicts)
        .filter(|v| v.is_correct())
        .count();
    if data.is_empty() {
        bail!("no {} to write: {right} of {n} samples are correct, and pairs need a right and a wrong completion of one problem", kind_name(a.kind));
    }
    autodidact_core::fs::write_atomic(&a.out, data_lines(&data).as_bytes())?;
    println!(
        "{} {} from {n} samples ({right} correct) → {}",
        data.len(),
        kind_name(a.kind),
        a.out.display()
    );
    Ok(())
}

fn kind_name(k: Kind) -> &'static str {
    match k {
        Kind::Labels => "labels",
        Kind::Pairs => "pairs",
    }
}

fn train(a: &TrainArgs) -> Result<()> {
    let mut table = toml::Table::new();
    for s in &a.sets {
        apply_set(&mut table, s)?;
    }
    let resolved = autodidact_engine::recipes::resolve::<RmConfig>("rm", table.into())?;
    let cfg: RmConfig = resolved.try_into().context("reading the --set values")?;
    let info = rm::train(
        &crate::backends::linked(),
        &a.base,
        &a.data,
        &a.out,
        &cfg,
        &mut |line| eprintln!("{line}"),
    )?;
    println!(
        "{} reward model{} ({:?}) trained on {} lines, {} held out → {}",
        info.members.len(),
        if info.members.len() == 1 { "" } else { "s" },
        info.loss,
        info.train_lines,
        info.eval_lines,
        a.out.display()
    );
    if !info.eval.is_empty() {
        println!("held-out, members' mean: {}", summary(&info.eval));
    }
    Ok(())
}

/// The aggregations `score` and `bon` compare, after checking `--lambda`: the mean alone
/// for one model.
fn aggregations(members: usize, lambda: f32) -> Result<Vec<(&'static str, Aggregation)>> {
    let uwo = Aggregation::Uncertainty { lambda };
    check_aggregation("--lambda", uwo)?;
    let mut v = vec![("mean", Aggregation::Mean)];
    if members > 1 {
        v.push(("worst_case", Aggregation::WorstCase));
        v.push(("uncertainty", uwo));
    }
    Ok(v)
}

fn score(a: &ScoreArgs) -> Result<()> {
    let data = read_data(&a.data)?;
    let mut ensemble = Ensemble::load(&crate::backends::linked(), &a.model)?;
    let choices = aggregations(ensemble.len(), a.lambda)?;
    let scores = ensemble.scores(&data.sequences(0..data.len()))?;
    for (m, s) in scores.iter().enumerate() {
        println!("member {m}: {}", summary(&eval_metrics(&data, s)));
    }
    for (name, how) in choices {
        let agg = aggregate(&scores, how);
        println!("{name}: {}", summary(&eval_metrics(&data, &agg)));
    }
    if scores.len() > 1 {
        println!(
            "disagreement (mean member std): {:.4}",
            disagreement(&scores)
        );
    }
    Ok(())
}

fn bon(a: &BonArgs) -> Result<()> {
    let mut ensemble = Ensemble::load(&crate::backends::linked(), &a.model)?;
    // Member 0 alone first (for an ensemble), then each aggregation of all members.
    let mut choices: Vec<(&str, Option<Aggregation>)> = aggregations(ensemble.len(), a.lambda)?
        .into_iter()
        .map(|(name, how)| (name, Some(how)))
        .collect();
    if ensemble.len() > 1 {
        choices.insert(0, ("member_0", None));
    }
    let groups = sample(&a.sampling, Split::Eval)?;
    let examples = completions_of(&groups);
    let k = a.sampling.samples;
    let member_scores = ensemble.scores(&examples)?;
    let per_problem =
        |flat: &[f32]| -> Vec<Vec<f32>> { flat.chunks(k).map(|c| c.to_vec()).collect() };
    let gold: Vec<Vec<f32>> = groups
        .iter()
        .map(|g| {
            g.verdicts
                .iter()
                .map(|v| v.is_correct() as u8 as f32)
                .collect()
        })
        .collect();
    let ns: Vec<usize> = std::iter::successors(Some(1usize), |n| Some(n * 2))
        .take_while(|&n| n <= k)
        .collect();
    let mut sweeps = serde_json::Map::new();
    println!(
        "{:>12} {:>5} {:>7} {:>7} {:>8}",
        "reward", "n", "√KL", "gold", "proxy"
    );
    for (name, how) in choices {
        let flat = match how {
            Some(how) => aggregate(&member_scores, how),
            None => member_scores[0].clone(),
        };
        let proxy = per_problem(&flat);
        let mut points = Vec::new();
        let (mut rows, mut base) = (Vec::new(), 0.0);
        for &n in &ns {
            let (p, g) = best_of_n(&proxy, &gold, n).context("best-of-n over the samples")?;
            let d = best_of_n_kl(n as u32).sqrt();
            if n == 1 {
                base = g;
            }
            println!("{name:>12} {n:>5} {d:>7.3} {g:>7.3} {p:>8.3}");
            points.push((d, g - base));
            rows.push(json!({"n": n, "kl": d * d, "sqrt_kl": d, "gold": g, "proxy": p}));
        }
        let f: Option<Fit> = fit(Form::BestOfN, &points[1..]);
        if let Some(f) = &f {
            match f.peak {
                Some((d, v)) => println!(
                    "{name:>12} fit d(α − βd): α {:.4} β {:.4} (r² {:.3}), gold peaks at √KL {d:.2} (n ≈ {:.0}), +{v:.3} over n = 1",
                    f.alpha, f.beta, f.r2, n_at(d)
                ),
                None => println!(
                    "{name:>12} fit d(α − βd): α {:.4} β {:.4} (r² {:.3}), gold does not peak",
                    f.alpha, f.beta, f.r2
                ),
            }
        }
        sweeps.insert(name.into(), json!({"points": rows, "fit": f}));
    }
    let out = json!({
        "checkpoint": a.sampling.source.checkpoint,
        "model": a.model,
        "members": member_scores.len(),
        "problems": groups.len(),
        "samples": k,
        "temperature": a.sampling.temperature,
        "lambda": a.lambda,
        "disagreement": disagreement(&member_scores),
        "sweeps": sweeps,
    });
    let text = serde_json::to_string_pretty(&out)?;
    autodidact_core::fs::write_atomic(&a.out, text.as_bytes())?;
    eprintln!("wrote {}", a.out.display());
    Ok(())
}

/// The n whose best-of-n KL is `d²` (bisection on the monotone closed form).
fn n_at(d: f64) -> f64 {
    let (mut lo, mut hi) = (1.0f64, 1e9f64);
    let kl = |n: f64| n.ln() - (n - 1.0) / n;
    for _ in 0..200 {
        let mid = (lo * hi).sqrt();
        if kl(mid) < d * d {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    lo
}
