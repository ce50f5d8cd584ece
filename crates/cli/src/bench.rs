//! `autodidact bench`: training and sampling throughput of a policy, built through the backend
//! factory as a run builds it (today the native model's presets).
//!
//! Throughput is computed from the median time of a training step (after three warm-up
//! steps) and of a sampling batch (after one warm-up batch), so a transient slowdown of a
//! shared machine does not decide the figure.
//! Each preset is measured in its own process (the binary re-runs itself with
//! `--preset`), so peak RSS is that preset's alone. Training runs next-token SFT
//! on `<bos>` and random tokens (batch × context, AdamW, clipping, through the policy's
//! forward/backward/step as a real step), sampling generates from the `<bos>` prompt until
//! the context is full (stop tokens ignored), with a KV cache, temperature 1. `bench/torch_reference.py` measures the same model and
//! workload in PyTorch; `bench/compare.sh` prints the ratios.

use anyhow::{bail, Context, Result};
use autodidact_core::{Example, ModelConfig, Rng, SamplingParams};
use autodidact_engine::train::adamw_settings;
use autodidact_nn::TransformerConfig;
use serde::Serialize;
use std::time::Instant;

#[derive(clap::Args)]
pub struct BenchArgs {
    /// Measure one preset (tiny, small, base); all of them when omitted.
    #[arg(long)]
    preset: Option<String>,
    /// Print one JSON object per preset instead of a table.
    #[arg(long)]
    json: bool,
    /// Sequences per training step and rows per sampling batch.
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// Timed training steps (after 3 warm-up steps).
    #[arg(long, default_value_t = 20)]
    steps: usize,
    /// Vocabulary size of the benchmark model.
    #[arg(long, default_value_t = 32)]
    vocab: usize,
    /// Measure this pretrained checkpoint directory instead of the presets (its own
    /// vocabulary; `--vocab` and `--preset` do not apply).
    #[arg(long, conflicts_with_all = ["preset", "vocab"])]
    checkpoint: Option<std::path::PathBuf>,
    /// Tokens per training sequence (default: the model's context length, 512 for a checkpoint).
    #[arg(long)]
    seq_len: Option<usize>,
    /// Rows per sampling batch (default: --batch).
    #[arg(long)]
    sample_batch: Option<usize>,
    /// New tokens per sampled row (default: seq_len − 1).
    #[arg(long)]
    new_tokens: Option<usize>,
    /// Train LoRA adapters of this rank (alpha = 2 · rank, every projection) on the
    /// checkpoint instead of every weight.
    #[arg(long, requires = "checkpoint")]
    lora_rank: Option<usize>,
    /// Measure serving instead (with --checkpoint): the in-process sampler against one
    /// `autodidact serve` under --batch concurrent clients, and one of two servers against
    /// the pool over both (--steps rounds of --batch rows, --new-tokens each, default 64).
    #[arg(long, requires = "checkpoint", conflicts_with = "lora_rank")]
    serve: bool,
    /// Measure `autodidact serve` under abuse instead (with --checkpoint): a well-behaved
    /// client's latency alone and while --batch slowloris connections, oversized bodies,
    /// malformed JSON, guard violations and slow bodies hit the server (--steps requests each
    /// time); the connections it held and its peak memory.
    #[arg(long, requires = "checkpoint", conflicts_with_all = ["lora_rank", "serve"])]
    serve_abuse: bool,
    /// With --serve-abuse: the server's --max-connections.
    #[arg(long, default_value_t = autodidact_serve::DEFAULT_MAX_CONNECTIONS, requires = "serve_abuse")]
    max_connections: usize,
}

#[derive(Serialize)]
struct Report {
    preset: String,
    params: usize,
    threads: usize,
    batch: usize,
    seq_len: usize,
    train_steps: usize,
    train_tokens_per_s: f64,
    /// 6 · params · train tokens/s.
    train_flops_per_s: f64,
    final_loss: f64,
    sample_batch: usize,
    sample_new_tokens: usize,
    sample_tokens_per_s: f64,
    gemm_peak_flops_per_s: f64,
    /// Peak resident memory of the training steps and of the sampling (reset in between).
    train_peak_rss_bytes: Option<u64>,
    sample_peak_rss_bytes: Option<u64>,
    /// Peak resident memory of the whole benchmark (before the GEMM-peak measurement).
    peak_rss_bytes: Option<u64>,
}

pub fn run(args: &BenchArgs, threads: usize) -> Result<()> {
    if args.batch == 0 || args.steps == 0 {
        bail!("--batch and --steps must be at least 1");
    }
    if let (true, Some(dir)) = (args.serve_abuse, &args.checkpoint) {
        return crate::bench_abuse::run(dir, args.batch, args.steps, args.max_connections);
    }
    if let (true, Some(dir)) = (args.serve, &args.checkpoint) {
        let new = args.new_tokens.unwrap_or(64);
        return crate::bench_serve::run(dir, args.batch, args.steps, new, threads);
    }
    if let Some(dir) = &args.checkpoint {
        let model = ModelConfig {
            checkpoint: Some(dir.clone()),
            lora: args.lora_rank.map(|rank| autodidact_core::LoraConfig {
                rank,
                alpha: 2.0 * rank as f32,
                ..Default::default()
            }),
            ..ModelConfig::default()
        };
        let label = match args.lora_rank {
            Some(r) => format!("{} (LoRA rank {r})", dir.display()),
            None => dir.display().to_string(),
        };
        let report = measure(&label, &model, "", args, threads)?;
        return print(&report, args.json);
    }
    match &args.preset {
        Some(p) => {
            if args.vocab < 4 {
                bail!("--vocab must be at least 4 (3 special tokens and one character)");
            }
            let alphabet: String = (0..args.vocab as u32 - 3)
                .map(|i| char::from_u32(0x100 + i).expect("a valid character"))
                .collect();
            let model = ModelConfig {
                preset: p.to_string(),
                ..ModelConfig::default()
            };
            let report = measure(p, &model, &alphabet, args, threads)?;
            print(&report, args.json)
        }
        None => {
            let exe = std::env::current_exe()
                .context("locating the autodidact binary to re-run per preset")?;
            for p in TransformerConfig::PRESETS {
                let mut cmd = std::process::Command::new(&exe);
                cmd.args(["--threads", &threads.to_string(), "bench", "--preset", p]);
                cmd.args([
                    "--batch",
                    &args.batch.to_string(),
                    "--steps",
                    &args.steps.to_string(),
                ]);
                cmd.args(["--vocab", &args.vocab.to_string()]);
                if args.json {
                    cmd.arg("--json");
                }
                let status = cmd
                    .status()
                    .with_context(|| format!("running the {p} benchmark"))?;
                if !status.success() {
                    bail!("the {p} benchmark failed ({status})");
                }
            }
            Ok(())
        }
    }
}

fn print(r: &Report, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string(r)?);
        return Ok(());
    }
    let mib = |b: Option<u64>| {
        b.map_or("n/a".into(), |b| {
            format!("{:.0} MiB", b as f64 / (1 << 20) as f64)
        })
    };
    let (train_rss, sample_rss) = (mib(r.train_peak_rss_bytes), mib(r.sample_peak_rss_bytes));
    println!(
        "{:<6} {:>9} params  train {:>8.0} tok/s ({:>5.1} GFLOP/s, {:>4.1}% of GEMM peak {:.0} GFLOP/s, loss {:.3})  \
         peak RSS {train_rss}; sample {:>8.0} tok/s (batch {}) peak RSS {sample_rss}  [{} threads, batch {}, seq_len {}]",
        r.preset,
        r.params,
        r.train_tokens_per_s,
        r.train_flops_per_s / 1e9,
        100.0 * r.train_flops_per_s / r.gemm_peak_flops_per_s,
        r.gemm_peak_flops_per_s / 1e9,
        r.final_loss,
        r.sample_tokens_per_s,
        r.sample_batch,
        r.threads,
        r.batch,
        r.seq_len
    );
    Ok(())
}

fn measure(
    label: &str,
    model: &ModelConfig,
    alphabet: &str,
    args: &BenchArgs,
    threads: usize,
) -> Result<Report> {
    // The benchmark model goes through the backend factory like a run's: a preset over a
    // character vocabulary of `--vocab` tokens (3 of them special), or a checkpoint.
    let spec = crate::backends::linked().plan(model, alphabet)?;
    let default_len = if model.checkpoint.is_some() {
        512
    } else {
        spec.context_length()
    };
    let t = args.seq_len.unwrap_or(default_len);
    if t < 2 || t > spec.context_length() {
        bail!("--seq-len {t} must be in 2..={}", spec.context_length());
    }
    let b = args.batch;
    let sb = args.sample_batch.unwrap_or(b);
    let new = args.new_tokens.unwrap_or(t - 1);
    // The training step keeps the whole batch's activations; refuse what would not fit.
    autodidact_core::memory::check(
        "--batch",
        spec.state_bytes(threads) + spec.train_activation_bytes(b, t),
        &format!("a {label} training step over {b} sequences of {t} tokens"),
    )?;
    let mut policy = spec.init(0)?;
    let vocab = spec.tokenizer().vocab_size() as u64;
    let prompt = one_token_prompt(spec.tokenizer())?;

    // Training: the prompt and t random tokens per sequence (t read by the model), mean
    // next-token loss.
    let load_peak = autodidact_core::memory::peak_rss_bytes();
    autodidact_core::memory::reset_peak_rss();
    let mut rng = Rng::new(1);
    let batch: Vec<Example> = (0..b)
        .map(|_| Example {
            prompt: prompt.into(),
            completion: String::new(),
            completion_tokens: Some((0..t).map(|_| rng.below(vocab) as u32).collect()),
        })
        .collect();
    policy.reset_optimizer(&adamw_settings(0.0))?;
    let tokens = (b * t) as f32;
    let weights = vec![vec![1.0 / tokens; t]; b];
    let warmup = 3;
    let mut loss = 0.0;
    let mut step_s = Vec::with_capacity(args.steps);
    for step in 0..warmup + args.steps {
        let start = Instant::now();
        let lp = policy.forward(&batch, false)?.logprobs;
        loss = -lp.iter().flatten().map(|&l| l as f64).sum::<f64>() / tokens as f64;
        policy.backward(&weights, None)?;
        policy.step(1e-3, 1.0)?;
        if step >= warmup {
            step_s.push(start.elapsed().as_secs_f64());
        }
    }
    let train_tps = (b * t) as f64 / median(&mut step_s);
    let train_peak = autodidact_core::memory::peak_rss_bytes();
    drop(batch);
    // Sampling starts from a fresh policy, so its peak memory is the weights and the KV cache,
    // not the training buffers (as a separate sampling process would see it).
    drop(policy);
    let mut policy = spec.init(0)?;

    let params = sampling_workload(new);
    let prompts = vec![prompt.to_string(); sb];
    let seeds: Vec<u64> = (0..sb as u64).collect();
    autodidact_core::memory::reset_peak_rss();
    policy.sample(&prompts, &seeds, &params)?; // warm-up
    let reps = 5;
    let mut rep_s = Vec::with_capacity(reps);
    let mut new_tokens = 0;
    for _ in 0..reps {
        let start = Instant::now();
        let out = policy.sample(&prompts, &seeds, &params)?;
        rep_s.push(start.elapsed().as_secs_f64());
        new_tokens = out.iter().map(|c| c.tokens.len()).sum::<usize>();
    }
    let sample_tps = new_tokens as f64 / median(&mut rep_s);
    // Read before the GEMM measurement, whose 2048² matrices would dominate a tiny model's peak.
    let sample_peak = autodidact_core::memory::peak_rss_bytes();
    let params_count = spec.num_params() as usize;

    Ok(Report {
        preset: label.to_string(),
        params: params_count,
        threads,
        batch: b,
        seq_len: t,
        sample_batch: sb,
        train_steps: args.steps,
        train_tokens_per_s: train_tps,
        train_flops_per_s: 6.0 * params_count as f64 * train_tps,
        final_loss: loss,
        sample_new_tokens: new_tokens,
        sample_tokens_per_s: sample_tps,
        gemm_peak_flops_per_s: autodidact_nn::bench::gemm_peak_flops(),
        train_peak_rss_bytes: train_peak,
        sample_peak_rss_bytes: sample_peak,
        peak_rss_bytes: [load_peak, train_peak, sample_peak]
            .into_iter()
            .flatten()
            .max(),
    })
}

/// A one-token prompt: `<bos>` where the tokenizer adds one, else a newline.
pub(crate) fn one_token_prompt(tok: &dyn autodidact_core::Tokenizer) -> Result<&'static str> {
    Ok(if tok.encode_prompt("")?.is_empty() {
        "\n"
    } else {
        ""
    })
}

/// How sampling is measured: `new` tokens per row whatever they are (stop tokens ignored),
/// at temperature 1.
pub(crate) fn sampling_workload(new: usize) -> SamplingParams {
    SamplingParams {
        temperature: 1.0,
        ignore_stop: true,
        ..SamplingParams::greedy(new)
    }
}

/// Median of the timings (robust to the transient slowdowns of a shared machine).
fn median(xs: &mut [f64]) -> f64 {
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    if n % 2 == 1 {
        xs[n / 2]
    } else {
        0.5 * (xs[n / 2 - 1] + xs[n / 2])
    }
}
