//! `autodidact report` and `autodidact compare`: the self-contained HTML pages of runs.

use anyhow::{bail, Context, Result};
use autodidact_engine::report::{render_compare, write_report, RunData};
use clap::Args;
use std::path::PathBuf;

#[derive(Args)]
pub struct ReportArgs {
    /// Run directory; the report is written to RUN_DIR/report.html.
    run_dir: PathBuf,
}

#[derive(Args)]
pub struct CompareArgs {
    /// Run directories to overlay (two or more).
    #[arg(required = true, num_args = 2..)]
    run_dirs: Vec<PathBuf>,
    /// Where to write the page.
    #[arg(long, default_value = "compare.html")]
    out: PathBuf,
}

pub fn report(args: &ReportArgs) -> Result<()> {
    let path = write_report(&args.run_dir)
        .with_context(|| format!("writing the report of {}", args.run_dir.display()))?;
    println!("{}", path.display());
    Ok(())
}

pub fn compare(args: &CompareArgs) -> Result<()> {
    let runs = args
        .run_dirs
        .iter()
        .map(|d| RunData::load(d).with_context(|| format!("reading run {}", d.display())))
        .collect::<Result<Vec<_>>>()?;
    if args.out.is_dir() {
        bail!(
            "--out {}: is a directory; give a file name such as compare.html",
            args.out.display()
        );
    }
    autodidact_core::fs::write_atomic(&args.out, render_compare(&runs).as_bytes())
        .with_context(|| format!("writing {}", args.out.display()))?;
    println!("{}", args.out.display());
    Ok(())
}
