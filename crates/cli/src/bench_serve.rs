//! `autodidact bench --serve --checkpoint DIR`: what serving costs. Three measurements in one
//! process, on the same rows (one-token prompts, `--new-tokens` tokens each, stop tokens
//! ignored, temperature 1, a distinct seed per row):
//!
//! 1. the in-process sampler, `--clients` rows per call (the reference);
//! 2. one `autodidact serve` child with every thread, driven by `--clients` concurrent
//!    clients (the openai backend's pool, one request per row, closed loop);
//! 3. two `serve` children with half the threads each: first one alone, then both through
//!    the pool, which shows how sampling scales out over endpoints.
//!
//! Tokens are counted as the servers report them (`usage.completion_tokens`).

use anyhow::{bail, Context, Result};
use autodidact_core::{BackendKind, ModelTokenizer, OpenAiConfig, Policy};
use autodidact_remote::RemotePolicy;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Instant;

/// An `autodidact serve` child, killed when dropped.
struct Server {
    child: Child,
    url: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(dir: &Path, threads: usize) -> Result<Server> {
    let exe = std::env::current_exe().context("locating the autodidact binary")?;
    let mut child = Command::new(exe)
        .args(["--threads", &threads.to_string(), "serve", "--port", "0"])
        .args(["--model-name", "bench", "--max-batch-rows", "512"])
        .arg("--checkpoint")
        .arg(dir)
        .stdout(Stdio::piped())
        .spawn()
        .context("starting autodidact serve")?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().context("the server's output")?).read_line(&mut line)?;
    let Some(url) = line.split(" on ").nth(1) else {
        bail!("autodidact serve did not start: it printed {line:?}");
    };
    Ok(Server {
        url: url.trim().to_string(),
        child,
    })
}

/// Distinct, non-consecutive seeds: each row is a request of its own.
fn seeds(rows: usize) -> Vec<u64> {
    (0..rows as u64).map(|i| i * 1_000_003 + 17).collect()
}

/// Completion tokens per second of `rows` rows through the pool over `urls`, with `clients`
/// requests in flight in all.
fn drive(
    urls: &[&str],
    tokenizer: &ModelTokenizer,
    ctx: usize,
    prompt: &str,
    clients: usize,
    rows: usize,
    new: usize,
) -> Result<f64> {
    let cfg = OpenAiConfig {
        base_urls: urls.iter().map(|u| u.to_string()).collect(),
        model: "bench".into(),
        max_concurrency: clients.div_ceil(urls.len()),
        max_n: 1,
        ..OpenAiConfig::default()
    };
    let mut pool = RemotePolicy::connect(cfg, tokenizer.clone(), ctx)?;
    let p = crate::bench::sampling_workload(new);
    // Warm-up: one round of requests.
    pool.sample(&vec![prompt.to_string(); clients], &seeds(clients), &p)?;
    pool.take_serving_stats();
    let start = Instant::now();
    pool.sample(&vec![prompt.to_string(); rows], &seeds(rows), &p)?;
    let secs = start.elapsed().as_secs_f64();
    let tokens = pool
        .take_serving_stats()
        .get("serving/completion_tokens")
        .copied()
        .unwrap_or(0.0);
    Ok(tokens / secs)
}

pub fn run(dir: &Path, clients: usize, rounds: usize, new: usize, threads: usize) -> Result<()> {
    if clients == 0 || rounds == 0 || new == 0 {
        bail!("--batch (clients), --steps (rounds) and --new-tokens must be at least 1");
    }
    let tokenizer = ModelTokenizer::load(dir)?
        .with_context(|| format!("{} holds no tokenizer.json", dir.display()))?;
    let rows = clients * rounds;

    // 1. In process.
    let mut native = crate::backends::linked().load(BackendKind::Native, dir)?;
    let ctx = native.context_length();
    if new + 1 > ctx {
        bail!("--new-tokens {new} does not fit the context of {ctx} tokens");
    }
    let prompt = crate::bench::one_token_prompt(native.tokenizer())?;
    let p = crate::bench::sampling_workload(new);
    let batch = vec![prompt.to_string(); clients];
    native.sample(&batch, &seeds(clients), &p)?; // warm-up
    let start = Instant::now();
    let mut tokens = 0;
    for r in 0..rounds {
        let s: Vec<u64> = seeds(rows)[r * clients..(r + 1) * clients].to_vec();
        tokens += native
            .sample(&batch, &s, &p)?
            .iter()
            .map(|c| c.tokens.len())
            .sum::<usize>();
    }
    let in_process = tokens as f64 / start.elapsed().as_secs_f64();
    drop(native);

    // 2. One server with every thread.
    let one = {
        let s = spawn(dir, threads)?;
        drive(&[&s.url], &tokenizer, ctx, prompt, clients, rows, new)?
    };

    // 3. Two servers with half the threads each.
    let half = (threads / 2).max(1);
    let (a, b) = (spawn(dir, half)?, spawn(dir, half)?);
    let alone = drive(&[&a.url], &tokenizer, ctx, prompt, clients, rows, new)?;
    let both = drive(
        &[&a.url, &b.url],
        &tokenizer,
        ctx,
        prompt,
        clients,
        rows,
        new,
    )?;

    println!(
        "{}: {rows} rows of {new} tokens, {clients} clients, {threads} threads",
        dir.display()
    );
    println!("  in process                      {in_process:>9.0} tok/s");
    println!(
        "  one serve ({threads} threads)            {one:>9.0} tok/s   {:.2}x in process",
        one / in_process
    );
    println!(
        "  one serve of two ({half} thread{})    {alone:>9.0} tok/s",
        if half == 1 { "" } else { "s" }
    );
    println!(
        "  pool over both                  {both:>9.0} tok/s   {:.2}x one of them",
        both / alone
    );
    Ok(())
}
