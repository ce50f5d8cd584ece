//! `autodidact bench`: training and sampling throughput of the native model.
//!
//! Throughput is computed from the median time of a training step (after three warm-up
//! steps) and of a sampling batch (after one warm-up batch), so a transient slowdown of a
//! shared machine does not decide the figure.
//! Each preset is measured in its own process (the binary re-runs itself with
//! `--preset`), so peak RSS is that preset's alone. Training runs next-token SFT
//! on random tokens (batch × context, AdamW, clipping, as a real step), sampling
//! generates from a one-token prompt until the context is full, with a KV cache,
//! temperature 1. `bench/torch_reference.py` measures the same model and
//! workload in PyTorch; `bench/compare.sh` prints the ratios.

use anyhow::{bail, Context, Result};
use autodidact_nn::{
    Activations, AdamWConfig, ForwardOptions, Gradients, Rng, SampleWorkspace, SamplingConfig,
    TokenBatch, TransformerConfig,
};
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
    sample_new_tokens: usize,
    sample_tokens_per_s: f64,
    gemm_peak_flops_per_s: f64,
    peak_rss_bytes: Option<u64>,
}

pub fn run(args: &BenchArgs, threads: usize) -> Result<()> {
    if args.batch == 0 || args.steps == 0 {
        bail!("--batch and --steps must be at least 1");
    }
    match &args.preset {
        Some(p) => {
            let report = measure(p, args, threads)?;
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
    let rss = r.peak_rss_bytes.map_or("n/a".into(), |b| {
        format!("{:.0} MiB", b as f64 / (1 << 20) as f64)
    });
    println!(
        "{:<6} {:>9} params  train {:>8.0} tok/s ({:>5.1} GFLOP/s, {:>4.1}% of GEMM peak {:.0} GFLOP/s, loss {:.3})  \
         sample {:>8.0} tok/s  peak RSS {rss}  [{} threads, batch {}, context {}]",
        r.preset,
        r.params,
        r.train_tokens_per_s,
        r.train_flops_per_s / 1e9,
        100.0 * r.train_flops_per_s / r.gemm_peak_flops_per_s,
        r.gemm_peak_flops_per_s / 1e9,
        r.final_loss,
        r.sample_tokens_per_s,
        r.threads,
        r.batch,
        r.seq_len
    );
    Ok(())
}

fn measure(preset: &str, args: &BenchArgs, threads: usize) -> Result<Report> {
    let cfg = TransformerConfig::from_preset(preset, args.vocab)?;
    // The training step keeps the whole batch's activations; refuse what would not fit.
    autodidact_core::memory::check(
        "--batch",
        cfg.state_bytes(threads) + cfg.train_activation_bytes(args.batch, cfg.context_length),
        &format!("a {preset} training step over {} sequences", args.batch),
    )?;
    let mut model = cfg.build(0)?;
    let (b, t) = (args.batch, cfg.context_length);

    // Training: random sequences of context + 1 tokens, mean next-token loss.
    let mut rng = Rng::new(1);
    let seqs: Vec<Vec<u32>> = (0..b)
        .map(|_| {
            (0..=t)
                .map(|_| rng.below(args.vocab as u64) as u32)
                .collect()
        })
        .collect();
    let batch = TokenBatch::from_sequences(&seqs)?;
    let weights = vec![1.0 / batch.num_tokens() as f32; b * t];
    let mut act = Activations::new();
    let mut grads = Gradients::new(&model);
    let mut opt = AdamWConfig::default().build(&model)?;
    let warmup = 3;
    let mut loss = 0.0;
    let mut step_s = Vec::with_capacity(args.steps);
    for step in 0..warmup + args.steps {
        let start = Instant::now();
        let out = model.forward(&batch, ForwardOptions::default(), &mut act)?;
        loss = -out.logprobs.iter().map(|&l| l as f64).sum::<f64>() / batch.num_tokens() as f64;
        grads.zero();
        model.backward(&mut act, &weights, None, &mut grads)?;
        grads.clip_global_norm(1.0);
        opt.step(model.params_mut(), &grads.data, 1e-3)?;
        if step >= warmup {
            step_s.push(start.elapsed().as_secs_f64());
        }
    }
    let train_tps = (b * t) as f64 / median(&mut step_s);
    drop(act);

    // Sampling: one-token prompts, fill the context.
    let sampling = SamplingConfig {
        temperature: 1.0,
        top_k: 0,
        top_p: 1.0,
        max_new_tokens: t - 1,
        stop_tokens: vec![],
    };
    let prompts = vec![vec![1u32]; b];
    let seeds: Vec<u64> = (0..b as u64).collect();
    let mut ws = SampleWorkspace::new();
    model.sample_with(&prompts, &seeds, &sampling, &mut ws)?; // warm-up
    let reps = 5;
    let mut rep_s = Vec::with_capacity(reps);
    let mut new_tokens = 0;
    for _ in 0..reps {
        let start = Instant::now();
        let out = model.sample_with(&prompts, &seeds, &sampling, &mut ws)?;
        rep_s.push(start.elapsed().as_secs_f64());
        new_tokens = out.iter().map(|s| s.tokens.len()).sum::<usize>();
    }
    let sample_tps = new_tokens as f64 / median(&mut rep_s);
    // Read before the GEMM measurement, whose 2048² matrices would dominate a tiny model's peak.
    let peak_rss = autodidact_core::memory::peak_rss_bytes();

    Ok(Report {
        preset: preset.to_string(),
        params: model.num_params(),
        threads,
        batch: b,
        seq_len: t,
        train_steps: args.steps,
        train_tokens_per_s: train_tps,
        train_flops_per_s: 6.0 * model.num_params() as f64 * train_tps,
        final_loss: loss,
        sample_new_tokens: new_tokens,
        sample_tokens_per_s: sample_tps,
        gemm_peak_flops_per_s: autodidact_nn::bench::gemm_peak_flops(),
        peak_rss_bytes: peak_rss,
    })
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
