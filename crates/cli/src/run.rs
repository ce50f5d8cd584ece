//! `autodidact run` and `autodidact resume`.

use crate::progress::observer;
use anyhow::{Context, Result};
use autodidact_engine::{RoundRow, Run, RunConfig, DEMO_CONFIG};
use clap::Args;
use std::path::PathBuf;

#[derive(Args)]
pub struct RunArgs {
    /// Run configuration (TOML); without it, the built-in demo (examples/star-addition.toml).
    config: Option<PathBuf>,
    /// Override a setting: `--set star.rounds=2` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    sets: Vec<String>,
    /// Run directory to create (default: runs/<recipe>-<task>-<UTC time>).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Print only the final table.
    #[arg(long, short)]
    quiet: bool,
}

#[derive(Args)]
pub struct ResumeArgs {
    /// The run directory to continue.
    run_dir: PathBuf,
    #[arg(long, short)]
    quiet: bool,
}

pub fn run(args: &RunArgs, threads: usize) -> Result<()> {
    let (text, origin) = match &args.config {
        Some(path) => (
            std::fs::read_to_string(path)
                .with_context(|| format!("reading config {}", path.display()))?,
            path.display().to_string(),
        ),
        None => (DEMO_CONFIG.to_string(), "built-in demo config".to_string()),
    };
    let plan = RunConfig::parse(&text, &origin, &args.sets)?.plan()?;
    let out = match &args.out {
        Some(p) => p.clone(),
        None => PathBuf::from("runs").join(format!(
            "{}-{}-{}",
            plan.config.recipe.name(),
            plan.config.task.name(),
            utc_stamp()
        )),
    };
    let mut obs = observer(args.quiet);
    let mut run = Run::create(plan, &out, threads)?;
    eprintln!("run directory: {}", out.display());
    let rows = run.execute(obs.as_mut())?;
    finish(&run, &rows);
    Ok(())
}

pub fn resume(args: &ResumeArgs, threads: usize) -> Result<()> {
    let mut obs = observer(args.quiet);
    let mut run = Run::open(&args.run_dir, threads, obs.as_mut())?;
    let rows = run.execute(obs.as_mut())?;
    finish(&run, &rows);
    Ok(())
}

fn finish(run: &Run, rows: &[RoundRow]) {
    let k = run.plan().config.eval.k;
    println!("{}", table(rows, k));
    let root = run.dir().root().display();
    println!("run directory: {root}");
    println!("  config.toml     the resolved configuration");
    println!("  metrics.jsonl   one line per round (and the seed-only curve)");
    println!("  journal.jsonl   completed stages with their durations");
    println!("  rounds/rNNNN/   samples.jsonl, train.jsonl, eval.json, manifest.json");
    println!("  checkpoints/    model.safetensors, config.json, tokenizer.json per round");
}

/// The end-of-run table, in Markdown so it can be pasted into a README. Expert iteration
/// shows what it kept; policy-gradient recipes show their mean training reward.
pub fn table(rows: &[RoundRow], k: usize) -> String {
    let rl = rows.iter().any(|r| r.reward.is_some());
    let tail = if rl {
        "| train reward |\n"
    } else {
        "| kept | distinct correct |\n"
    };
    let sep = if rl { "---:|\n" } else { "---:|---:|\n" };
    let mut s = format!("| round | pass@1 | pass@{k} | maj@{k} {tail}|---:|---:|---:|---:|{sep}");
    let opt = |v: Option<u64>| v.map_or("–".to_string(), |v| v.to_string());
    for r in rows {
        let extra = if rl {
            r.reward.map_or("–".to_string(), |v| format!("{v:.3}"))
        } else {
            format!("{} | {}", opt(r.kept), opt(r.distinct))
        };
        s += &format!(
            "| {} | {:.1}% | {:.1}% | {:.1}% | {extra} |\n",
            r.round,
            100.0 * r.pass_at_1,
            100.0 * r.pass_at_k,
            100.0 * r.maj_at_k,
        );
    }
    s.trim_end().to_string()
}

/// `YYYYMMDD-HHMMSS` in UTC (civil-from-days, Howard Hinnant's algorithm).
fn utc_stamp() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + (m <= 2) as i64;
    format!(
        "{y:04}{m:02}{d:02}-{:02}{:02}{:02}",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}
