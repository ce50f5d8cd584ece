//! Progress on the terminal: bars (stage, tokens/s, ETA) when stderr is a terminal, plain
//! lines otherwise, nothing with `--quiet`.

use autodidact_engine::Observer;
use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::time::Instant;

/// Draws a bar per stage.
pub struct Bars {
    bar: Option<ProgressBar>,
    start: Instant,
}

/// Prints one line per finished stage.
pub struct Lines;

/// Builds the observer `--quiet` and the terminal call for.
pub fn observer(quiet: bool) -> Box<dyn Observer> {
    if quiet {
        Box::new(autodidact_engine::Silent)
    } else if std::io::stderr().is_terminal() {
        Box::new(Bars {
            bar: None,
            start: Instant::now(),
        })
    } else {
        Box::new(Lines)
    }
}

impl Observer for Bars {
    fn stage_started(&mut self, stage: &str, total: u64) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
        let bar = ProgressBar::new(total);
        bar.set_style(
            ProgressStyle::with_template("{prefix:>14} [{bar:30}] {pos}/{len} {msg} ETA {eta}")
                .expect("a valid template")
                .progress_chars("=> "),
        );
        bar.set_prefix(stage.to_string());
        self.bar = Some(bar);
        self.start = Instant::now();
    }
    fn stage_progress(&mut self, done: u64, tokens: u64) {
        if let Some(b) = &self.bar {
            b.set_position(done);
            let secs = self.start.elapsed().as_secs_f64().max(1e-3);
            b.set_message(format!("{:.0} tok/s", tokens as f64 / secs));
        }
    }
    fn stage_finished(&mut self, summary: &str) {
        match self.bar.take() {
            Some(b) => {
                b.finish_and_clear();
                b.println(summary);
            }
            None => eprintln!("{summary}"),
        }
    }
    fn note(&mut self, line: &str) {
        match &self.bar {
            Some(b) => b.println(format!("note: {line}")),
            None => eprintln!("note: {line}"),
        }
    }
}

impl Observer for Lines {
    fn stage_started(&mut self, _: &str, _: u64) {}
    fn stage_progress(&mut self, _: u64, _: u64) {}
    fn stage_finished(&mut self, summary: &str) {
        eprintln!("{summary}");
    }
    fn note(&mut self, line: &str) {
        eprintln!("note: {line}");
    }
}
