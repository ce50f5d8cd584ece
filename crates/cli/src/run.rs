//! `autodidact run` and `autodidact resume`.

use crate::progress::observer;
use anyhow::{Context, Result};
use autodidact_engine::recipes::Column;
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
    /// Print only the final table: no progress, notes, monitor summary or file list.
    #[arg(long, short)]
    quiet: bool,
}

#[derive(Args)]
pub struct ResumeArgs {
    /// The run directory to continue.
    run_dir: PathBuf,
    /// Continue even though a file of a completed stage differs from what the run recorded
    /// of it (each is named; the run records that it was accepted).
    #[arg(long)]
    force: bool,
    /// Print only the final table: no progress, notes, monitor summary or file list.
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
    let plan = RunConfig::parse(&text, &origin, &args.sets)?.plan(&crate::backends::linked())?;
    let out = match &args.out {
        Some(p) => p.clone(),
        None => PathBuf::from("runs").join(format!(
            "{}-{}-{}",
            plan.config.recipe,
            plan.config.task.name(),
            utc_stamp()
        )),
    };
    let mut obs = observer(args.quiet);
    let mut run = Run::create(plan, &out, threads)?;
    if !args.quiet {
        eprintln!("run directory: {}", out.display());
    }
    let rows = run.execute(obs.as_mut())?;
    finish(&run, &rows, args.quiet);
    Ok(())
}

pub fn resume(args: &ResumeArgs, threads: usize) -> Result<()> {
    let mut obs = observer(args.quiet);
    let mut run = Run::open(
        &args.run_dir,
        threads,
        args.force,
        &crate::backends::linked(),
        obs.as_mut(),
    )?;
    let rows = run.execute(obs.as_mut())?;
    finish(&run, &rows, args.quiet);
    Ok(())
}

/// Prints the per-round table with what its columns are and the run directory; unless
/// `quiet`, also the monitors by round and the run's files.
fn finish(run: &Run, rows: &[RoundRow], quiet: bool) {
    let e = &run.plan().config.eval;
    println!("{}", table(rows, run.columns(), e.k));
    // A recipe's columns measure the held-out problems (`eval/…`, greedy) or the round's
    // own training samples.
    let (held, own): (Vec<&Column>, Vec<&Column>) = used_columns(rows, run.columns())
        .into_iter()
        .map(|(_, c)| c)
        .partition(|c| c.key.starts_with("eval/"));
    let mut note = String::new();
    for (cols, what) in [
        (held, "the held-out problems, greedy"),
        (own, "the round's own training samples"),
    ] {
        if !cols.is_empty() {
            let names: Vec<&str> = cols.iter().map(|c| c.header).collect();
            note.push_str(&format!("; {}: {what}", names.join(", ")));
        }
    }
    println!(
        "held-out: greedy pass@1, and pass@{k} / maj@{k} of {k} samples, on {} held-out problems{note}",
        e.problems,
        k = e.k
    );
    if quiet {
        println!("run directory: {}", run.dir().root().display());
        return;
    }
    if let Ok(data) = autodidact_engine::report::RunData::load(run.dir().root()) {
        for line in autodidact_engine::report::text_summary(&data) {
            println!("{line}");
        }
    }
    let root = run.dir().root().display();
    println!("run directory: {root}");
    println!("  report.html     curves, lineage, samples and configuration (open in a browser)");
    println!("  config.toml     the resolved configuration");
    println!("  metrics.jsonl   one line per round (and the seed-only curve)");
    println!("  journal.jsonl   completed stages with their durations");
    println!("  tensorboard/    every metric as TensorBoard events (tensorboard --logdir runs/)");
    println!("  rounds/rNNNN/   samples.jsonl, train.jsonl, eval.json, manifest.json");
    println!("  checkpoints/    each round's model (or LoRA adapters) and tokenizer, loadable by transformers (peft)");
}

/// The end-of-run table, in Markdown so it can be pasted into a README. Beside the held-out
/// metrics, each recipe shows what its rounds produced (its columns, `columns`): expert
/// iteration what it kept, policy-gradient recipes their mean training reward, preference
/// recipes their pairs and how often the chosen side was correct (and the self-judge's
/// accuracy). A column no round has a value for is left out.
pub fn table(rows: &[RoundRow], columns: &[Column], k: usize) -> String {
    let pct = |v: Option<f64>| v.map(|v| format!("{:.1}%", 100.0 * v));
    let used = used_columns(rows, columns);
    let mut s = format!("| round | held-out pass@1 | held-out pass@{k} | held-out maj@{k} |");
    for (_, c) in &used {
        s += &format!(" {} |", c.header);
    }
    s += &format!("\n|---:|---:|---:|---:|{}\n", "---:|".repeat(used.len()));
    for r in rows {
        s += &format!(
            "| {} | {} | {} | {} |",
            r.round,
            pct(Some(r.pass_at_1)).unwrap_or_default(),
            pct(Some(r.pass_at_k)).unwrap_or_default(),
            pct(Some(r.maj_at_k)).unwrap_or_default(),
        );
        for (i, _) in &used {
            s += &format!(" {} |", r.extra[*i].as_deref().unwrap_or("–"));
        }
        s += "\n";
    }
    s.trim_end().to_string()
}

/// The recipe's columns some round has a value for, with their index.
fn used_columns<'a>(rows: &[RoundRow], columns: &'a [Column]) -> Vec<(usize, &'a Column)> {
    columns
        .iter()
        .enumerate()
        .filter(|(i, _)| rows.iter().any(|r| r.extra[*i].is_some()))
        .collect()
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

#[cfg(test)]
mod tests {
    use super::*;

    use autodidact_engine::recipes::Format;

    fn col(header: &'static str, format: Format) -> Column {
        Column {
            header,
            key: header,
            format,
        }
    }

    fn row(round: u32, extra: &[Option<&str>]) -> RoundRow {
        RoundRow {
            round,
            pass_at_1: 0.25,
            pass_at_k: 0.5,
            maj_at_k: 0.125,
            extra: extra.iter().map(|v| v.map(String::from)).collect(),
        }
    }

    #[test]
    fn table_shows_the_columns_the_recipe_produced() {
        let star = [
            col("kept", Format::Count),
            col("distinct correct", Format::Count),
        ];
        let rows = [row(0, &[None, None]), row(1, &[Some("10"), Some("12")])];
        assert_eq!(
            table(&rows, &star, 8),
            "| round | held-out pass@1 | held-out pass@8 | held-out maj@8 | kept | distinct correct |\n\
             |---:|---:|---:|---:|---:|---:|\n\
             | 0 | 25.0% | 50.0% | 12.5% | – | – |\n\
             | 1 | 25.0% | 50.0% | 12.5% | 10 | 12 |"
        );
        // A column no round has a value for is left out.
        let pref = [
            col("pairs", Format::Count),
            col("chosen correct", Format::Percent),
            col("judge accuracy", Format::Percent),
        ];
        let rows = [row(1, &[Some("7"), Some("50.0%"), None])];
        assert_eq!(
            table(&rows, &pref, 4),
            "| round | held-out pass@1 | held-out pass@4 | held-out maj@4 | pairs | chosen correct |\n\
             |---:|---:|---:|---:|---:|---:|\n\
             | 1 | 25.0% | 50.0% | 12.5% | 7 | 50.0% |"
        );
        assert_eq!(pref[1].render(0.5), "50.0%");
        assert_eq!(star[0].render(12.0), "12");
    }
}
