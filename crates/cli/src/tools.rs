//! `autodidact eval`, `sample`, `tasks` and `import`: using a checkpoint and the built-in tasks
//! outside a run, and bringing a model in.

use anyhow::{bail, Context, Result};
use autodidact_core::memory;
use autodidact_core::{BackendKind, SamplingParams, Split, Task, TrainablePolicy};
use autodidact_engine::config::apply_set;
use autodidact_engine::config::{check_completions, EvalConfig, SamplingConfig};
use autodidact_engine::eval::{evaluate, held_out_problems, render_prompts, EvalSettings};
use autodidact_engine::Silent;
use autodidact_engine::{store, RunConfig};
use autodidact_tasks::TaskConfig;
use clap::Args;
use std::io::Write;
use std::path::{Path, PathBuf};

/// A checkpoint and the task a command uses it on (`eval`, `rm data`, `rm bon`).
#[derive(Args)]
pub struct CheckpointTask {
    /// Checkpoint directory (model.safetensors, config.json, tokenizer.json). A checkpoint
    /// inside a run directory (RUN/checkpoints/rNNNN) is used as that run uses it: its task
    /// (and for `eval` its held-out problems, eval settings and seed) are the defaults.
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Built-in task (see `autodidact tasks`); default: the run's.
    #[arg(long)]
    pub task: Option<String>,
    /// Task setting: `--set digits=4` (repeatable; replaces the run's task settings).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub sets: Vec<String>,
}

impl CheckpointTask {
    /// The run the checkpoint belongs to, if any, and the task to use: `--task` with
    /// `--set`, or the run's task when neither is given (`--task` alone keeps none of the
    /// run's settings, `--set` alone applies to the run's task).
    pub fn resolve(&self) -> Result<(Option<(PathBuf, RunConfig)>, TaskConfig)> {
        let run = run_of(&self.checkpoint)?;
        let task = match (&run, &self.task) {
            (Some((_, cfg)), None) if self.sets.is_empty() => cfg.task.clone(),
            (Some((_, cfg)), name) => {
                task_config(name.as_deref().unwrap_or(cfg.task.name()), &self.sets)?
            }
            (None, Some(name)) => task_config(name, &self.sets)?,
            (None, None) => bail!(
                "--task is needed: {} is not inside a run directory (RUN/checkpoints/rNNNN) whose task could be used",
                self.checkpoint.display()
            ),
        };
        Ok((run, task))
    }
}

#[derive(Args)]
pub struct EvalArgs {
    #[command(flatten)]
    source: CheckpointTask,
    /// Held-out problems [default: the run's eval.problems, else 200].
    #[arg(long)]
    problems: Option<usize>,
    /// Completions sampled per problem for pass@k and maj@k [default: the run's, else 8].
    #[arg(long)]
    samples: Option<usize>,
    /// The k of pass@k and maj@k [default: the run's, else 8].
    #[arg(long)]
    k: Option<usize>,
    /// Sampling temperature of the pass@k samples; pass@1 is greedy [default: the run's, else 1].
    #[arg(long)]
    temperature: Option<f32>,
    /// Most tokens per completion [default: the run's model.max_new_tokens, else the task's
    /// longest solution and a stop token].
    #[arg(long)]
    max_new_tokens: Option<usize>,
    /// A string that ends a completion where it first appears (repeatable) [default: the
    /// run's model.stop].
    #[arg(long = "stop", value_name = "STRING")]
    stop: Vec<String>,
    /// Run seed the held-out problems and samples are derived from, as in a run with this
    /// seed [default: the run's, else 0].
    #[arg(long)]
    seed: Option<u64>,
}

#[derive(Args)]
pub struct SampleArgs {
    /// Checkpoint directory (model.safetensors, config.json, tokenizer.json).
    #[arg(long)]
    checkpoint: PathBuf,
    /// The prompt, e.g. `347+285=`.
    #[arg(long)]
    prompt: String,
    /// Send the prompt as a user message, formatted by the checkpoint's chat template.
    #[arg(long)]
    chat: bool,
    /// Completions to draw (printed as they are sampled, in batches).
    #[arg(long, short, default_value_t = 4)]
    n: u64,
    /// Sampling temperature; 0 is greedy.
    #[arg(long, default_value_t = 1.0)]
    temperature: f32,
    /// Nucleus sampling: keep the smallest set of tokens whose probability reaches top_p.
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    /// Keep only the top_k most likely tokens; 0 keeps all.
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    /// Most tokens per completion (default: as many as the context leaves).
    #[arg(long)]
    max_new_tokens: Option<usize>,
    /// A string that ends a completion where it first appears, cut from the text
    /// (repeatable); the model's stop tokens end completions as well.
    #[arg(long = "stop", value_name = "STRING")]
    stop: Vec<String>,
    /// Seed of completion 0; completion i uses seed + i.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

#[derive(Args)]
pub struct ImportArgs {
    /// A GGUF model file (llama.cpp's format), e.g. SmolLM2-135M-Instruct.Q4_1.gguf.
    file: PathBuf,
    /// The checkpoint directory to write (must not exist, or be empty).
    #[arg(long)]
    out: PathBuf,
    /// Float type of the written weights: f32 keeps the dequantized values exactly; bf16
    /// halves the size.
    #[arg(long, value_enum, default_value_t = ImportDtype::F32)]
    dtype: ImportDtype,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum ImportDtype {
    F32,
    Bf16,
}

#[derive(Args)]
pub struct ExportArgs {
    /// A checkpoint directory: a full model, or LoRA adapters (adapter_config.json) with the
    /// base model they name. With --format: a run directory.
    checkpoint: PathBuf,
    /// The directory to write (must not exist, or be empty): model.safetensors (float32),
    /// config.json and the tokenizer, loadable by transformers; with --format, every round's
    /// training data.
    #[arg(long)]
    out: PathBuf,
    /// Export a run's training data (every completed round's SFT examples, preference pairs
    /// or rollouts) in this trainer's layout instead of a checkpoint.
    #[arg(long, value_enum)]
    format: Option<DataFormat>,
}

/// The layouts of `export --format`.
#[derive(Clone, Copy, clap::ValueEnum)]
pub enum DataFormat {
    Trl,
    Openrlhf,
}

/// `autodidact export CHECKPOINT --out DIR`, or `autodidact export RUN --format F --out DIR`.
pub fn export(a: &ExportArgs) -> Result<()> {
    if let Some(f) = a.format {
        use autodidact_engine::export;
        let format = match f {
            DataFormat::Trl => export::Format::Trl,
            DataFormat::Openrlhf => export::Format::OpenRlhf,
        };
        let done = export::export(&a.checkpoint, format, &a.out)?;
        let totals: Vec<String> = export::totals(&done)
            .iter()
            .map(|(k, n)| format!("{n} {k} lines"))
            .collect();
        println!(
            "exported {} rounds ({}) to {}",
            done.rounds.len(),
            totals.join(", "),
            a.out.display()
        );
        return Ok(());
    }
    if std::fs::read_dir(&a.out).is_ok_and(|mut d| d.next().is_some()) {
        anyhow::bail!(
            "--out {}: the directory holds files; choose a new or empty one",
            a.out.display()
        );
    }
    let ck = autodidact_nn::checkpoint::load(&a.checkpoint)
        .with_context(|| format!("loading {}", a.checkpoint.display()))?;
    let what = match ck.model.lora() {
        Some(l) => format!(
            "LoRA adapters (rank {}, {} values) merged into {}",
            l.config().rank,
            l.num_params(),
            l.base_model()
                .map_or("the base model".into(), |b| b.dir.display().to_string())
        ),
        None => "the model".into(),
    };
    let model = ck.model.merged();
    autodidact_nn::checkpoint::save(&a.out, &model, ck.tokenizer.as_ref(), None)
        .with_context(|| format!("writing {}", a.out.display()))?;
    println!(
        "exported {what} ({:.1}M parameters) to {}",
        model.num_params() as f64 / 1e6,
        a.out.display()
    );
    Ok(())
}

/// `autodidact import FILE.gguf --out DIR`.
pub fn import(a: &ImportArgs) -> Result<()> {
    let dtype = match a.dtype {
        ImportDtype::F32 => autodidact_nn::import::WeightDtype::F32,
        ImportDtype::Bf16 => autodidact_nn::import::WeightDtype::Bf16,
    };
    let started = std::time::Instant::now();
    let done = autodidact_nn::import::import_gguf(&a.file, &a.out, dtype)
        .with_context(|| format!("importing {}", a.file.display()))?;
    let c = &done.config;
    let types: Vec<String> = done
        .tensor_types
        .iter()
        .map(|(t, n)| format!("{n} {t}"))
        .collect();
    println!(
        "imported {} ({} model, {:.1}M parameters: {} layers, d_model {}, {} heads / {} key-value heads, vocabulary {}; tensors {}) into {} in {:.1} s",
        a.file.display(),
        done.architecture,
        c.num_params() as f64 / 1e6,
        c.num_layers,
        c.hidden_size,
        c.num_heads,
        c.num_kv_heads,
        done.vocab_size,
        types.join(", "),
        done.dir.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Completions `sample` draws per call to the policy: each batch is printed before the next
/// is drawn, so memory stays bounded for any `-n`.
const SAMPLE_BATCH: u64 = 256;

/// The run a checkpoint belongs to (`RUN/checkpoints/rNNNN`), with its configuration.
fn run_of(checkpoint: &Path) -> Result<Option<(PathBuf, RunConfig)>> {
    let Some((root, _)) = run_checkpoint(checkpoint) else {
        return Ok(None);
    };
    let config = root.join(store::CONFIG_FILE);
    let text = std::fs::read_to_string(&config)
        .with_context(|| format!("reading {}", config.display()))?;
    let cfg = RunConfig::parse_stored(&text, &config.display().to_string())?;
    Ok(Some((root.to_path_buf(), cfg)))
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

/// How long a completion sampled from a checkpoint of `run` may be and where it stops:
/// `max_new` and `stop` when given, else the run's `[model]` settings, else the task's
/// longest solution and a stop token, and no stop string.
pub(crate) fn completion_limits(
    run: Option<&(PathBuf, RunConfig)>,
    task: &dyn Task,
    max_new: Option<usize>,
    stop: &[String],
) -> Result<(usize, Vec<String>)> {
    let model = run.map(|(_, cfg)| &cfg.model);
    let (_, max_solution) = task.max_chars();
    let max_new = max_new
        .or(model.and_then(|m| m.max_new_tokens))
        .unwrap_or(max_solution + 1);
    if max_new == 0 {
        bail!("--max-new-tokens must be at least 1");
    }
    let stop = match model {
        Some(m) if stop.is_empty() => m.stop.clone(),
        _ => stop.to_vec(),
    };
    autodidact_core::check_stop_strings("--stop", &stop)?;
    Ok((max_new, stop))
}

/// The run directory and round of a checkpoint at `RUN/checkpoints/rNNNN`, if it is one.
fn run_checkpoint(checkpoint: &Path) -> Option<(PathBuf, u32)> {
    let round: u32 = checkpoint
        .file_name()?
        .to_str()?
        .strip_prefix('r')?
        .parse()
        .ok()?;
    let parent = checkpoint.parent()?;
    let root = parent.parent()?;
    (parent.file_name()? == "checkpoints" && root.join(store::RUN_FILE).exists())
        .then(|| (root.to_path_buf(), round))
}

/// Loads a checkpoint through the backend factory; one inside a run directory (`run`, from
/// [`run_of`]) is first checked against the SHA-256s its round's manifest recorded, as the run
/// itself does before loading it, and loaded by the backend of the run's `[model]`.
pub(crate) fn load(
    dir: &Path,
    run: Option<&(PathBuf, RunConfig)>,
) -> Result<Box<dyn TrainablePolicy>> {
    let mut kind = BackendKind::default();
    if let (Some((root, cfg)), Some((_, round))) = (run, run_checkpoint(dir)) {
        let (run, info) = store::RunDir::open(root)?;
        let files = format!("{}/", store::RunDir::checkpoint_dir(round));
        run.check_recorded(round, &files, &info.accepted)?;
        kind = cfg.model.backend;
    }
    crate::backends::linked()
        .load(kind, dir)
        .with_context(|| format!("loading checkpoint {}", dir.display()))
}

pub fn eval(a: &EvalArgs) -> Result<()> {
    let (run, task_cfg) = a.source.resolve()?;
    let (defaults, run_seed) = match &run {
        Some((_, cfg)) => (cfg.eval.clone(), cfg.seed),
        None => (EvalConfig::default(), 0),
    };
    let e = EvalConfig {
        problems: a.problems.unwrap_or(defaults.problems),
        k: a.k.unwrap_or(defaults.k),
        sampling: SamplingConfig {
            samples: a.samples.unwrap_or(defaults.sampling.samples),
            temperature: a.temperature.unwrap_or(defaults.sampling.temperature),
            ..defaults.sampling
        },
    };
    let seed = a.seed.unwrap_or(run_seed);
    if e.problems == 0 {
        bail!("--problems must be at least 1");
    }
    if e.k == 0 || e.sampling.samples < e.k {
        bail!(
            "--k must be at least 1 and at most --samples ({} given)",
            e.sampling.samples
        );
    }
    if !(e.sampling.temperature.is_finite() && e.sampling.temperature >= 0.0) {
        bail!("--temperature must be a finite number ≥ 0");
    }
    let task = task_cfg.build()?;
    let (max_new, stop) = completion_limits(run.as_ref(), &*task, a.max_new_tokens, &a.stop)?;
    let available = memory::available()?;
    check_completions(
        "--problems",
        e.problems,
        "--samples",
        e.sampling.samples as u64,
        max_new,
        0,
        available,
    )?;
    let mut policy = load(&a.source.checkpoint, run.as_ref())?;
    let mut problems = held_out_problems(&*task, e.problems, seed)?;
    let ctx = policy.context_length();
    render_prompts(
        &mut problems,
        policy.tokenizer(),
        ctx,
        max_new,
        Some("--max-new-tokens"),
    )?;
    let greedy = SamplingParams::greedy(max_new).with_stop(stop);
    let settings = EvalSettings::of_run(&e, seed, greedy);
    if let Some((root, _)) = &run {
        eprintln!(
            "evaluating as run {} evaluates its rounds (seed {seed}; task, problems and settings from its config unless given here)",
            root.display()
        );
    }
    let r = evaluate(&mut *policy, &*task, &problems, &settings, &mut Silent)?;
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
    let mut policy = load(&a.checkpoint, run_of(&a.checkpoint)?.as_ref())?;
    let prompt = if a.chat {
        let user = autodidact_core::ChatMessage {
            role: "user".into(),
            content: a.prompt.clone(),
        };
        policy.tokenizer().chat_prompt(&[user])?
    } else {
        a.prompt.clone()
    };
    let room = policy
        .context_length()
        .saturating_sub(policy.tokenizer().encode_prompt(&prompt)?.len());
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
        ignore_stop: false,
        stop: a.stop.clone(),
        top_logprobs: 0,
    };
    autodidact_core::check_stop_strings("--stop", &params.stop)?;
    let mut out = std::io::stdout().lock();
    let mut start = 0u64;
    while start < a.n {
        let rows = SAMPLE_BATCH.min(a.n - start);
        let prompts = vec![prompt.clone(); rows as usize];
        let seeds: Vec<u64> = (start..start + rows)
            .map(|i| a.seed.wrapping_add(i))
            .collect();
        for (i, c) in policy.sample(&prompts, &seeds, &params)?.iter().enumerate() {
            let lp: f32 = c.logprobs.iter().sum();
            let line = format!(
                "[{}] {}{}    (log p {lp:.2}, {:?})",
                start + i as u64,
                prompt,
                c.text,
                c.finish
            );
            if writeln!(out, "{line}").is_err() {
                return Ok(()); // the reader went away (`| head`)
            }
        }
        start += rows;
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
    println!("jsonl");
    println!("  your own problems, one JSON object per line: {{\"id\", \"prompt\" or \"messages\", \"answer\", \"solution\"?, \"meta\"?}}");
    println!("  [task] name = \"jsonl\", train = \"FILE\", eval = \"FILE\"? (else a hash split of train),");
    println!("  extract = [\"boxed\", \"gsm8k\", \"answer_is\", \"marker\", \"last_number\", {{regex = \"...\"}}] (tried in order),");
    println!("  compare = \"math\" (equivalent answers: 0.75 = \\frac34), \"exact\", or \"python_tests\" (code run with the");
    println!("  answer's unit tests in a sandbox); see docs/tasks.md, examples/star-word-problems.toml, examples/star-code.toml");
    Ok(())
}
