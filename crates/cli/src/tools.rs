//! `autodidact eval`, `sample` and `tasks`: using a checkpoint and the built-in tasks outside
//! a run.

use anyhow::{bail, Context, Result};
use autodidact_core::{Policy, SamplingParams, Split};
use autodidact_engine::config::apply_set;
use autodidact_engine::eval::{evaluate, EvalSettings};
use autodidact_engine::Silent;
use autodidact_nn::NativePolicy;
use autodidact_tasks::TaskConfig;
use clap::Args;
use std::path::{Path, PathBuf};

#[derive(Args)]
pub struct EvalArgs {
    /// Checkpoint directory (model.safetensors, config.json, tokenizer.json).
    #[arg(long)]
    checkpoint: PathBuf,
    /// Built-in task to evaluate on (see `autodidact tasks`).
    #[arg(long)]
    task: String,
    /// Task setting: `--set digits=4` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    sets: Vec<String>,
    /// Held-out problems.
    #[arg(long, default_value_t = 200)]
    problems: usize,
    /// Samples per problem for pass@k and maj@k.
    #[arg(long, default_value_t = 8)]
    samples: usize,
    #[arg(long, default_value_t = 8)]
    k: usize,
    #[arg(long, default_value_t = 1.0)]
    temperature: f32,
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

#[derive(Args)]
pub struct SampleArgs {
    #[arg(long)]
    checkpoint: PathBuf,
    /// The prompt, e.g. `347+285=`.
    #[arg(long)]
    prompt: String,
    /// Completions to draw.
    #[arg(long, short, default_value_t = 4)]
    n: usize,
    /// 0 is greedy.
    #[arg(long, default_value_t = 1.0)]
    temperature: f32,
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    /// Default: as many as the context leaves.
    #[arg(long)]
    max_new_tokens: Option<usize>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

fn task_config(name: &str, sets: &[String]) -> Result<TaskConfig> {
    let mut table = toml::Table::new();
    table.insert("name".into(), toml::Value::String(name.into()));
    for s in sets {
        apply_set(&mut table, s)?;
    }
    toml::Value::Table(table)
        .try_into()
        .with_context(|| format!("task `{name}` with settings {sets:?} (see `autodidact tasks`)"))
}

fn load(dir: &Path) -> Result<NativePolicy> {
    NativePolicy::load(dir).with_context(|| format!("loading checkpoint {}", dir.display()))
}

pub fn eval(a: &EvalArgs) -> Result<()> {
    if a.problems == 0 {
        bail!("--problems must be at least 1");
    }
    if a.k == 0 || a.samples < a.k {
        bail!(
            "--k must be at least 1 and at most --samples ({} given)",
            a.samples
        );
    }
    if !(a.temperature.is_finite() && a.temperature >= 0.0) {
        bail!("--temperature must be a finite number ≥ 0");
    }
    let task = task_config(&a.task, &a.sets)?.build()?;
    let mut policy = load(&a.checkpoint)?;
    let problems = task.problems(Split::Eval, a.problems, a.seed)?;
    let (max_prompt, max_solution) = task.max_chars();
    let room = policy.context_length().saturating_sub(max_prompt + 1);
    if room == 0 {
        bail!("the checkpoint's context ({} tokens) cannot hold this task's prompts ({max_prompt} characters)", policy.context_length());
    }
    let settings = EvalSettings {
        samples: a.samples,
        k: a.k,
        temperature: a.temperature,
        max_new_tokens: (max_solution + 1).min(room),
        seed: a.seed,
    };
    let r = evaluate(&mut policy, &*task, &problems, &settings, &mut Silent)?;
    println!(
        "{} problems of {} (held-out split): pass@1 {:.1}%  pass@{k} {:.1}%  maj@{k} {:.1}%  (mean sample accuracy {:.1}%)",
        r.problems,
        task.name(),
        100.0 * r.pass_at_1,
        100.0 * r.pass_at_k,
        100.0 * r.maj_at_k,
        100.0 * r.mean_sample_accuracy,
        k = r.k
    );
    Ok(())
}

pub fn sample(a: &SampleArgs) -> Result<()> {
    let mut policy = load(&a.checkpoint)?;
    let room = policy
        .context_length()
        .saturating_sub(a.prompt.chars().count() + 1);
    if room == 0 {
        bail!(
            "the prompt does not fit the checkpoint's context of {} tokens",
            policy.context_length()
        );
    }
    let params = SamplingParams {
        temperature: a.temperature,
        top_k: a.top_k,
        top_p: a.top_p,
        max_new_tokens: a.max_new_tokens.unwrap_or(room),
    };
    let prompts = vec![a.prompt.clone(); a.n];
    let seeds: Vec<u64> = (0..a.n as u64).map(|i| a.seed.wrapping_add(i)).collect();
    for (i, c) in policy.sample(&prompts, &seeds, &params)?.iter().enumerate() {
        let lp: f32 = c.logprobs.iter().sum();
        println!(
            "[{i}] {}{}    (log p {lp:.2}, {:?})",
            a.prompt, c.text, c.finish
        );
    }
    Ok(())
}

pub fn tasks() -> Result<()> {
    for cfg in TaskConfig::catalog() {
        let task = cfg.build()?;
        let p = task.problems(Split::Train, 1, 0)?.remove(0);
        println!("{}", cfg.name());
        println!("  {}", cfg.describe());
        println!("  prompt:   {}", p.prompt);
        println!("  solution: {}", p.solution.unwrap_or_default());
        println!("  answer:   {}", p.answer.unwrap_or_default());
        if let Some(h) = task.hinted_prompt(&task.problems(Split::Train, 1, 0)?[0]) {
            println!("  hinted:   {h}   (rationalization prompt)");
        }
        println!();
    }
    Ok(())
}
