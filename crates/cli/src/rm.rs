//! `autodidact rm data|train|score|bon`: reward models learned from a verifier's labels, and
//! the best-of-n over-optimization sweep against them (`autodidact_engine::rm`, `overopt`).

use crate::tools::{completion_limits, load, CheckpointTask};
use anyhow::{bail, Context, Result};
use autodidact_core::{Group, Policy, SamplingParams, Split, Task};
use autodidact_engine::config::apply_set;
use autodidact_engine::eval::{problem_seed, render_prompts};
use autodidact_engine::overopt::{best_of_n, best_of_n_kl, describe, Curve, Fit, Form};
use autodidact_engine::report::{overopt_charts, standalone_svg};
use autodidact_engine::rm::{
    self, aggregate, check_aggregation, completions_of, data_lines, disagreement, eval_metrics,
    labels_from_groups, pairs_from_groups, read_data, steps_from_groups, summary, Aggregation,
    Ensemble, RmConfig, RmData,
};
use autodidact_engine::sampling::sample_groups;
use autodidact_engine::steps::{step_values, StepPattern, StepRule};
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
    /// Fit the over-optimization forms to best-of-n sweeps (`rm bon`'s JSON) and to runs
    /// against a reward model (held-out pass@1 against √KL to the start), and plot gold and
    /// proxy against √KL as SVG.
    Fit(FitArgs),
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
    /// Seed of the problems and samples. Training problems are drawn as a run with the same
    /// seed draws them, labeled set first: seed 0 starts with the problems whose solutions
    /// a seed-0 run's seed stage trained on, so use another for labels of unseen problems.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum Kind {
    /// `{"prompt", "completion", "label"}`: an outcome classifier (BCE).
    Labels,
    /// `{"prompt", "chosen", "rejected"}`: Bradley–Terry.
    Pairs,
    /// `{"prompt", "completions": [steps], "labels": [per step]}`: a process reward model,
    /// each step labelled from --rollouts continuations of the prefix it ends.
    Steps,
}

/// The reward models at `path`; `steps` (default min) is for process models only.
fn load_ensemble(path: &std::path::Path, steps: Option<Steps>) -> Result<Ensemble> {
    let rule = steps.map_or(StepRule::Min, StepRule::from);
    let e = Ensemble::load(&crate::backends::linked(), path, rule)?;
    if steps.is_some() && !e.is_process() {
        bail!(
            "--steps: {} is an outcome reward model; only a process reward model (trained on steps) combines step scores",
            path.display()
        );
    }
    Ok(e)
}

/// How a process reward model's step scores make a completion's score.
#[derive(Clone, Copy, ValueEnum)]
pub enum Steps {
    /// The weakest step's score.
    Min,
    /// Σ log σ(step score): the log of the product of the steps' probabilities.
    Product,
}

impl From<Steps> for StepRule {
    fn from(s: Steps) -> Self {
        match s {
            Steps::Min => StepRule::Min,
            Steps::Product => StepRule::Product,
        }
    }
}

#[derive(Args)]
pub struct DataArgs {
    #[command(flatten)]
    sampling: Sampling,
    #[arg(long, value_enum, default_value = "labels")]
    kind: Kind,
    /// Steps: continuations sampled from each step's prefix to estimate its value.
    #[arg(long, default_value_t = 4)]
    rollouts: usize,
    /// Steps: a regex after each match of which a step ends (default: the task's trace
    /// separators, `[;#]` for the built-in tasks).
    #[arg(long)]
    step_pattern: Option<String>,
    /// Steps: label each step with its estimated value (the fraction of continuations that
    /// reach a right answer) instead of whether any does (Math-Shepherd's hard estimate).
    #[arg(long)]
    soft: bool,
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
    /// A process reward model's completion score from its steps' (labels and pairs data;
    /// default min).
    #[arg(long, value_enum)]
    steps: Option<Steps>,
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
    /// A process reward model's completion score from its steps' (default min).
    #[arg(long, value_enum)]
    steps: Option<Steps>,
    /// Where to write the sweep (JSON): every n's KL, gold and proxy per aggregation, and
    /// the fits.
    #[arg(long)]
    out: PathBuf,
}

#[derive(Args)]
pub struct FitArgs {
    /// A sweep `rm bon` wrote: each of its rewards is a curve, fitted as d(α − βd)
    /// (repeatable).
    #[arg(long)]
    bon: Vec<PathBuf>,
    /// A run whose reward came from a reward model: fitted as d(α − β log d) (repeatable).
    #[arg(long)]
    run: Vec<PathBuf>,
    /// A directory to write `gold.svg` and `proxy.svg` to.
    #[arg(long)]
    out: Option<PathBuf>,
}

pub fn rm(command: &RmCommand) -> Result<()> {
    match command {
        RmCommand::Data(a) => data(a),
        RmCommand::Train(a) => train(a),
        RmCommand::Score(a) => score(a),
        RmCommand::Bon(a) => bon(a),
        RmCommand::Fit(a) => fit_curves(a),
    }
}

/// Graded samples, and what drew them.
struct Sampled {
    groups: Vec<Group>,
    policy: Box<dyn Policy>,
    task: Box<dyn Task>,
    params: SamplingParams,
}

/// Samples `s.samples` completions of `s.problems` problems of `split`, graded.
fn sample(s: &Sampling, split: Split) -> Result<Sampled> {
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
    let groups = sample_groups(
        &mut *policy,
        &*task,
        &problems,
        s.samples,
        &params,
        s.seed,
        &mut Silent,
    )?;
    Ok(Sampled {
        groups,
        policy,
        task,
        params,
    })
}

fn data(a: &DataArgs) -> Result<()> {
    if a.rollouts == 0 {
        bail!("--rollouts must be at least 1");
    }
    let Sampled {
        groups,
        mut policy,
        task,
        params,
    } = sample(&a.sampling, Split::Train)?;
    let data = match a.kind {
        Kind::Labels => labels_from_groups(&groups),
        Kind::Pairs => pairs_from_groups(&groups),
        Kind::Steps => {
            let pattern =
                StepPattern::for_task("--step-pattern", a.step_pattern.as_deref(), &*task)?;
            let src = pattern.as_str();
            let values = step_values(
                &mut *policy,
                &*task,
                &groups,
                &pattern,
                a.rollouts,
                &params,
                a.sampling.seed,
                &mut Silent,
            )?;
            eprintln!(
                "steps end after each match of `{src}`: train with --set step_pattern='{src}'"
            );
            steps_from_groups(&groups, &values, &pattern, a.soft)
        }
    };
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
        Kind::Steps => "stepped completions",
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
    let mut ensemble = load_ensemble(&a.model, a.steps)?;
    let choices = aggregations(ensemble.len(), a.lambda)?;
    let seqs = data.sequences(0..data.len());
    // Steps data is already split: each prefix is scored as it is.
    let scores = match data {
        RmData::Steps(_) => ensemble.sequence_scores(&seqs)?,
        _ => ensemble.scores(&seqs)?,
    };
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
    let mut ensemble = load_ensemble(&a.model, a.steps)?;
    // Member 0 alone first (for an ensemble), then each aggregation of all members.
    let mut choices: Vec<(&str, Option<Aggregation>)> = aggregations(ensemble.len(), a.lambda)?
        .into_iter()
        .map(|(name, how)| (name, Some(how)))
        .collect();
    if ensemble.len() > 1 {
        choices.insert(0, ("member_0", None));
    }
    let groups = sample(&a.sampling, Split::Eval)?.groups;
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
        let mut rows = Vec::new();
        for &n in &ns {
            let (p, g) = best_of_n(&proxy, &gold, n).context("best-of-n over the samples")?;
            let d = best_of_n_kl(n as u32).sqrt();
            println!("{name:>12} {n:>5} {d:>7.3} {g:>7.3} {p:>8.3}");
            points.push((d, g, Some(p)));
            rows.push(json!({"n": n, "kl": d * d, "sqrt_kl": d, "gold": g, "proxy": p}));
        }
        // Gold relative to n = 1, fitted on n ≥ 2.
        let f: Option<Fit> = Curve::new(name, Form::BestOfN, points).fit;
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

fn fit_curves(a: &FitArgs) -> Result<()> {
    if a.bon.is_empty() && a.run.is_empty() {
        bail!("nothing to fit: give --bon FILE (from rm bon) or --run DIR, or both");
    }
    let mut curves = Vec::new();
    for path in &a.bon {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let v: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("{} is not JSON", path.display()))?;
        let sweeps = v["sweeps"].as_object().with_context(|| {
            format!(
                "{} has no \"sweeps\": it is not a file rm bon wrote",
                path.display()
            )
        })?;
        let stem = path
            .file_stem()
            .map_or("bon".into(), |s| s.to_string_lossy());
        for (name, sweep) in sweeps {
            let points = sweep["points"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|p| {
                    let f = |k: &str| {
                        p[k].as_f64().with_context(|| {
                            format!(
                                "{}: a point of {name} has no number \"{k}\"",
                                path.display()
                            )
                        })
                    };
                    Ok((f("sqrt_kl")?, f("gold")?, Some(f("proxy")?)))
                })
                .collect::<Result<Vec<_>>>()?;
            curves.push(Curve::new(format!("{stem} {name}"), Form::BestOfN, points));
        }
    }
    for dir in &a.run {
        let run = autodidact_engine::report::RunData::load(dir)?;
        let curve = Curve::of_run(&run.name, &run.rounds).with_context(|| {
            format!(
                "{}: fewer than two rounds log eval/pass@1 and drift/kl_to_seed",
                dir.display()
            )
        })?;
        curves.push(curve);
    }
    println!("{:>24} {:>7} {:>7} {:>8}", "curve", "√KL", "gold", "proxy");
    for c in &curves {
        for p in &c.points {
            let proxy = p.2.map_or("—".into(), |x| format!("{x:.3}"));
            println!("{:>24} {:>7.3} {:>7.3} {proxy:>8}", c.name, p.0, p.1);
        }
        println!("{:>24} {}", c.name, describe(c.fit.as_ref()));
    }
    if let Some(out) = &a.out {
        std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
        let [gold, proxy] = overopt_charts(&curves, (560.0, 320.0));
        for (file, svg) in [("gold.svg", gold), ("proxy.svg", proxy)] {
            autodidact_core::fs::write_atomic(&out.join(file), standalone_svg(&svg).as_bytes())?;
        }
        eprintln!("wrote gold.svg and proxy.svg to {}", out.display());
    }
    Ok(())
}
