//! The `autodidact` command-line tool.

mod backends;
mod bench;
mod bench_abuse;
mod bench_serve;
mod progress;
mod report;
mod rm;
mod run;
mod serve;
mod tools;
mod train;

use anyhow::{Context, Result};
use clap::{CommandFactory, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "autodidact",
    version,
    about = "A self-improvement engine for language models"
)]
struct Cli {
    /// Worker threads for the model's kernels (default: every available core).
    #[arg(long, global = true)]
    threads: Option<usize>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run a self-improvement loop (default: the built-in demo, expert iteration on addition).
    Run(run::RunArgs),
    /// Continue an interrupted run from its last completed stage.
    Resume(run::ResumeArgs),
    /// Evaluate a checkpoint on a built-in task's held-out split.
    Eval(tools::EvalArgs),
    /// Sample completions of a prompt from a checkpoint.
    Sample(tools::SampleArgs),
    /// List the built-in tasks with an example problem, trace and answer.
    Tasks,
    /// Convert a GGUF model file into a checkpoint directory (Hugging Face layout).
    Import(tools::ImportArgs),
    /// Write a checkpoint as a full Hugging Face model directory, merging LoRA adapters into
    /// their base model.
    Export(tools::ExportArgs),
    /// Measure training and sampling throughput of the native model's presets on this machine.
    Bench(bench::BenchArgs),
    /// Write RUN_DIR/report.html: curves, lineage, samples and configuration of a run.
    Report(report::ReportArgs),
    /// Write one HTML page overlaying the curves of several runs.
    Compare(report::CompareArgs),
    /// Serve a checkpoint behind the OpenAI API (/v1/completions, /v1/chat/completions).
    Serve(serve::ServeArgs),
    /// Train a checkpoint on a dataset with the native trainer: the command form of a run's
    /// training stage, usable as its external trainer.
    Train(train::TrainArgs),
    /// Reward models: label data with a verifier, train (ensembles too), score, and sweep
    /// best-of-n against them for over-optimization.
    #[command(subcommand)]
    Rm(rm::RmCommand),
}

fn main() {
    // Output piped into `head` ends quietly, as for any Unix tool, instead of panicking on a
    // closed pipe.
    #[cfg(unix)]
    // SAFETY: restoring the default disposition of SIGPIPE before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    if let Err(e) = run() {
        // The whole chain on one line: what failed, then why; a value a user typed is not
        // echoed whole however long it is.
        eprintln!("error: {}", error_line(&e));
        std::process::exit(1);
    }
}

/// The error's chain on one line: what failed, then why. A cause that the message before it
/// already ends with (an I/O error shown inside "writing FILE: ...") is not repeated.
fn error_line(e: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in e.chain().map(|c| c.to_string()) {
        if !parts.last().is_some_and(|p| p.ends_with(&cause)) {
            parts.push(cause);
        }
    }
    let parts: Vec<String> = parts
        .iter()
        .map(|p| autodidact_core::error::clip(p, 600))
        .collect();
    parts.join(": ")
}

fn run() -> Result<()> {
    let cli = Cli::parse();
    // Bare `autodidact` asks what the tool does: the help, and success.
    let Some(command) = cli.command else {
        Cli::command().print_help()?;
        println!();
        return Ok(());
    };
    let threads = match cli.threads {
        Some(0) => anyhow::bail!("--threads must be at least 1"),
        Some(n) => n,
        None => std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
    };
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global()
        .context("starting the worker thread pool")?;
    match command {
        Command::Run(args) => run::run(&args, threads),
        Command::Resume(args) => run::resume(&args, threads),
        Command::Eval(args) => tools::eval(&args),
        Command::Sample(args) => tools::sample(&args),
        Command::Tasks => tools::tasks(),
        Command::Import(args) => tools::import(&args),
        Command::Export(args) => tools::export(&args),
        Command::Bench(args) => bench::run(&args, threads),
        Command::Report(args) => report::report(&args),
        Command::Compare(args) => report::compare(&args),
        Command::Serve(args) => serve::serve(&args),
        Command::Train(args) => train::train(&args),
        Command::Rm(command) => rm::rm(&command),
    }
}

#[cfg(test)]
mod tests {
    use super::error_line;

    #[test]
    fn issue17_an_io_cause_shown_in_its_message_is_not_repeated() {
        let io = std::io::Error::from_raw_os_error(libc::ENOSPC);
        let e = anyhow::Error::new(autodidact_core::Error::io("writing", "/run/x", io));
        let line = error_line(&e);
        assert_eq!(line.matches("No space left on device").count(), 1, "{line}");
        assert!(line.starts_with("writing /run/x: No space left"), "{line}");
        // A context whose cause says something new keeps both.
        let e = anyhow::anyhow!("disk").context("saving round 3");
        assert_eq!(error_line(&e), "saving round 3: disk");
    }
}
