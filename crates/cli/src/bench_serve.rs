//! `autodidact bench --serve --checkpoint DIR`: what serving costs. Three measurements in one
//! process, on the same rows (one-token prompts, `--new-tokens` tokens each, stop tokens
//! ignored, temperature 1, a distinct seed per row):
//!
//! 1. the in-process sampler on `--threads` threads, `--clients` rows per call (the
//!    reference);
//! 2. one `autodidact serve` child on as many threads, driven by `--clients` concurrent
//!    clients (the openai backend's pool, one request per row, closed loop);
//! 3. two `serve` children: first one alone, then both through the pool, which shows how
//!    sampling scales out over endpoints.
//!
//! Clients cost CPU too (HTTP on loopback, a thread per request in flight). Where the
//! machine has the CPUs (Linux), each party is held to CPUs of its own, as on separate
//! machines: the reference and the one server to the same `--threads` CPUs, the clients to
//! the rest, and for (3) each server to `--threads` CPUs of its own (two servers of
//! `--threads` threads). Where it has too few, they share every CPU, (3) uses two servers of
//! half the threads, and the report says so. Server CPU time is read from `/proc`, so the
//! report also gives tokens per CPU-second of the server against those of the reference.
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
pub(crate) struct Server {
    pub(crate) child: Child,
    pub(crate) url: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `autodidact serve` on `dir` with `threads` threads, held to `cpus` if given.
fn spawn(dir: &Path, threads: usize, cpus: Option<&[usize]>) -> Result<Server> {
    spawn_with(dir, threads, cpus, &[])
}

/// [`spawn`] with `extra` arguments to `serve`.
pub(crate) fn spawn_with(
    dir: &Path,
    threads: usize,
    cpus: Option<&[usize]>,
    extra: &[&str],
) -> Result<Server> {
    let exe = std::env::current_exe().context("locating the autodidact binary")?;
    let mut cmd = Command::new(exe);
    cmd.args(["--threads", &threads.to_string(), "serve", "--port", "0"])
        .args(["--model-name", "bench", "--max-batch-rows", "512"])
        .args(extra)
        .arg("--checkpoint")
        .arg(dir)
        .stdout(Stdio::piped());
    if let Some(cpus) = cpus {
        hold_child(&mut cmd, cpus.to_vec());
    }
    let mut child = cmd.spawn().context("starting autodidact serve")?;
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

/// The CPUs this process may run on (Linux; `None` elsewhere or when unreadable).
#[cfg(target_os = "linux")]
fn available_cpus() -> Option<Vec<usize>> {
    // SAFETY: `set` is a plain bit set the call fills in; it is read only on success.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    if unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) } != 0
    {
        return None;
    }
    Some(
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&c| unsafe { libc::CPU_ISSET(c, &set) })
            .collect(),
    )
}

#[cfg(not(target_os = "linux"))]
fn available_cpus() -> Option<Vec<usize>> {
    None
}

/// Holds the calling thread (and the threads it starts from now on) to `cpus`.
#[cfg(target_os = "linux")]
fn hold_thread(cpus: &[usize]) -> std::io::Result<()> {
    // SAFETY: fills a stack bit set and makes one system call on it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for &c in cpus {
            libc::CPU_SET(c, &mut set);
        }
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

#[cfg(not(target_os = "linux"))]
fn hold_thread(_cpus: &[usize]) -> std::io::Result<()> {
    Ok(())
}

/// Holds this thread and every thread of the pool to `cpus`.
fn hold_process(cpus: &[usize]) -> Result<()> {
    hold_thread(cpus).context("setting this thread's CPUs")?;
    let failed: Vec<std::io::Error> = rayon::broadcast(|_| hold_thread(cpus))
        .into_iter()
        .filter_map(|r| r.err())
        .collect();
    match failed.into_iter().next() {
        Some(e) => Err(anyhow::Error::new(e).context("setting the thread pool's CPUs")),
        None => Ok(()),
    }
}

/// Holds the child to `cpus`.
#[cfg(target_os = "linux")]
fn hold_child(cmd: &mut Command, cpus: Vec<usize>) {
    use std::os::unix::process::CommandExt;
    // SAFETY: between fork and exec the closure only fills a stack value and makes one
    // system call; nothing allocates or takes a lock.
    unsafe {
        cmd.pre_exec(move || hold_thread(&cpus));
    }
}

#[cfg(not(target_os = "linux"))]
fn hold_child(_cmd: &mut Command, _cpus: Vec<usize>) {}

/// Who runs where: `None` where the parties share every CPU.
struct Layout {
    /// The reference and the one server.
    first: Option<Vec<usize>>,
    /// The clients of (2).
    clients_of_one: Option<Vec<usize>>,
    /// The two servers of (3), and their clients.
    pair: Option<(Vec<usize>, Vec<usize>, Vec<usize>)>,
}

impl Layout {
    fn new(threads: usize) -> Self {
        let cpus = available_cpus().unwrap_or_default();
        let take = |from: usize, n: usize| cpus[from..from + n].to_vec();
        let one = cpus.len() > threads;
        let two = cpus.len() > 2 * threads;
        Self {
            first: one.then(|| take(0, threads)),
            clients_of_one: one.then(|| cpus[threads..].to_vec()),
            pair: two.then(|| {
                (
                    take(0, threads),
                    take(threads, threads),
                    cpus[2 * threads..].to_vec(),
                )
            }),
        }
    }
}

/// Distinct, non-consecutive seeds: each row is a request of its own.
fn seeds(rows: usize) -> Vec<u64> {
    (0..rows as u64).map(|i| i * 1_000_003 + 17).collect()
}

/// What a run through the servers gave: completion tokens per second, and per CPU-second
/// of the servers (where their CPU time can be read).
struct Driven {
    tokens_per_s: f64,
    tokens_per_cpu_s: Option<f64>,
}

/// CPU time (user + system) a process has used so far, in seconds (Linux).
#[cfg(target_os = "linux")]
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start at its closing ')':
    // utime and stime are the 14th and 15th fields of the line.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    // SAFETY: sysconf only reads a constant of the system.
    let per_s = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (per_s > 0.0).then(|| ticks / per_s)
}

#[cfg(not(target_os = "linux"))]
fn cpu_seconds(_pid: u32) -> Option<f64> {
    None
}

/// CPU seconds the servers have used so far.
fn servers_cpu(servers: &[&Server]) -> Option<f64> {
    servers.iter().map(|s| cpu_seconds(s.child.id())).sum()
}

/// `rows` rows through the pool over `servers`, with `clients` requests in flight in all.
fn drive(
    servers: &[&Server],
    tokenizer: &ModelTokenizer,
    ctx: usize,
    prompt: &str,
    clients: usize,
    rows: usize,
    new: usize,
) -> Result<Driven> {
    let cfg = OpenAiConfig {
        base_urls: servers.iter().map(|s| s.url.clone()).collect(),
        model: "bench".into(),
        max_concurrency: clients.div_ceil(servers.len()),
        max_n: 1,
        ..OpenAiConfig::default()
    };
    let mut pool = RemotePolicy::connect(cfg, tokenizer.clone(), ctx)?;
    let p = crate::bench::sampling_workload(new);
    // Warm-up: one round of requests.
    pool.sample(&vec![prompt.to_string(); clients], &seeds(clients), &p)?;
    pool.take_serving_stats();
    let cpu0 = servers_cpu(servers);
    let start = Instant::now();
    pool.sample(&vec![prompt.to_string(); rows], &seeds(rows), &p)?;
    let secs = start.elapsed().as_secs_f64();
    let cpu = servers_cpu(servers).zip(cpu0).map(|(b, a)| b - a);
    let tokens = pool
        .take_serving_stats()
        .get("serving/completion_tokens")
        .copied()
        .unwrap_or(0.0);
    Ok(Driven {
        tokens_per_s: tokens / secs,
        tokens_per_cpu_s: cpu.filter(|&c| c > 0.0).map(|c| tokens / c),
    })
}

/// CPU seconds this process has used so far (user + system).
fn own_cpu_seconds() -> Option<f64> {
    // SAFETY: getrusage fills the zeroed struct it is given.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) } != 0 {
        return None;
    }
    let s = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
    Some(s(u.ru_utime) + s(u.ru_stime))
}

pub fn run(dir: &Path, clients: usize, rounds: usize, new: usize, threads: usize) -> Result<()> {
    if clients == 0 || rounds == 0 || new == 0 {
        bail!("--batch (clients), --steps (rounds) and --new-tokens must be at least 1");
    }
    let tokenizer = ModelTokenizer::load(dir)?
        .with_context(|| format!("{} holds no tokenizer.json", dir.display()))?;
    let rows = clients * rounds;
    let layout = Layout::new(threads);
    let all = available_cpus();

    // 1. In process.
    if let Some(cpus) = &layout.first {
        hold_process(cpus)?;
    }
    let mut native = crate::backends::linked().load(BackendKind::Native, dir)?;
    let ctx = native.context_length();
    if new + 1 > ctx {
        bail!("--new-tokens {new} does not fit the context of {ctx} tokens");
    }
    let prompt = crate::bench::one_token_prompt(native.tokenizer())?;
    let p = crate::bench::sampling_workload(new);
    let batch = vec![prompt.to_string(); clients];
    native.sample(&batch, &seeds(clients), &p)?; // warm-up
    let cpu0 = own_cpu_seconds();
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
    let in_process_cpu = own_cpu_seconds()
        .zip(cpu0)
        .map(|(b, a)| tokens as f64 / (b - a));
    drop(native);

    // 2. One server on the same CPUs; the clients on the others.
    let one = {
        let s = spawn(dir, threads, layout.first.as_deref())?;
        if let Some(cpus) = layout.clients_of_one.as_ref().or(all.as_ref()) {
            hold_thread(cpus).context("setting the clients' CPUs")?;
        }
        drive(&[&s], &tokenizer, ctx, prompt, clients, rows, new)?
    };

    // 3. Two servers on CPUs of their own, or of half the threads on the same CPUs.
    let (per_server, (a, b)) = match &layout.pair {
        Some((a, b, rest)) => {
            hold_thread(rest).context("setting the clients' CPUs")?;
            (
                threads,
                (spawn(dir, threads, Some(a))?, spawn(dir, threads, Some(b))?),
            )
        }
        None => {
            if let Some(cpus) = &all {
                hold_thread(cpus).context("setting the clients' CPUs")?;
            }
            let half = (threads / 2).max(1);
            (half, (spawn(dir, half, None)?, spawn(dir, half, None)?))
        }
    };
    let alone = drive(&[&a], &tokenizer, ctx, prompt, clients, rows, new)?;
    let both = drive(&[&a, &b], &tokenizer, ctx, prompt, clients, rows, new)?;

    let ratio = |a: Option<f64>, b: Option<f64>| match a.zip(b) {
        Some((a, b)) => format!("{:.2}x", a / b),
        None => "?".into(),
    };
    let cpus = |c: &Option<Vec<usize>>| match c {
        Some(c) => format!("CPUs {c:?}"),
        None => "every CPU".into(),
    };
    let row = |what: String, tps: f64, per_cpu: Option<f64>, note: String| {
        let per_cpu = per_cpu.map_or("?".into(), |t| format!("{t:.0}"));
        println!("  {what:<58} {tps:>9.0} {per_cpu:>10}   {note}");
    };
    println!(
        "{}: {rows} rows of {new} tokens, {clients} clients",
        dir.display()
    );
    println!("  {:<58} {:>9} {:>10}", "", "tok/s", "tok/CPU-s");
    let t = |n: usize| format!("{n} thread{}", if n == 1 { "" } else { "s" });
    row(
        format!("in process, {} on {}", t(threads), cpus(&layout.first)),
        in_process,
        in_process_cpu,
        String::new(),
    );
    row(
        format!(
            "one serve there, clients on {}",
            cpus(&layout.clients_of_one)
        ),
        one.tokens_per_s,
        one.tokens_per_cpu_s,
        format!(
            "{} in process ({} per CPU-second)",
            ratio(Some(one.tokens_per_s), Some(in_process)),
            ratio(one.tokens_per_cpu_s, in_process_cpu)
        ),
    );
    let (first, note) = match &layout.pair {
        Some((a, b, rest)) => (
            format!("one serve of two, {} each on {a:?} | {b:?}", t(per_server)),
            format!("clients on CPUs {rest:?}"),
        ),
        None => (
            format!("one serve of two, {} each", t(per_server)),
            format!(
                "every party on every CPU (held apart from {} CPUs)",
                2 * threads + 1
            ),
        ),
    };
    row(first, alone.tokens_per_s, alone.tokens_per_cpu_s, note);
    row(
        "the pool over both".into(),
        both.tokens_per_s,
        both.tokens_per_cpu_s,
        format!("{:.2}x one of them", both.tokens_per_s / alone.tokens_per_s),
    );
    Ok(())
}
