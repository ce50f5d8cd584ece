//! Issue 3: `kill -9` at random moments of a small run, followed by `resume`, ends with the
//! same metrics, evaluations and checkpoints as an uninterrupted run with the same seed and
//! thread count.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_autodidact");

const SETS: &[&str] = &[
    "task.digits=2",
    "seed_stage.labeled=48",
    "seed_stage.eval_every=40",
    "seed_stage.train.steps=160",
    "star.rounds=3",
    "star.problems=96",
    "star.sampling.samples=2",
    "star.rationalize=true",
    "star.train.epochs=2.0",
    "eval.problems=24",
    "eval.sampling.samples=3",
    "eval.k=2",
];

fn command(args: &[&str]) -> Command {
    let mut c = Command::new(BIN);
    c.args(["--threads", "2"]).args(args).arg("--quiet");
    c.stdout(Stdio::null()).stderr(Stdio::piped());
    c
}

fn run_args(out: &Path) -> Vec<String> {
    let mut a = vec!["run".to_string(), "--out".into(), out.display().to_string()];
    for s in SETS {
        a.push("--set".into());
        a.push(s.to_string());
    }
    a
}

fn journal_lines(dir: &Path) -> usize {
    std::fs::read_to_string(dir.join("journal.jsonl"))
        .map(|t| t.lines().count())
        .unwrap_or(0)
}

/// Starts `args`, waits until the journal has `after_stages` lines plus `delay`, and kills it
/// with SIGKILL. Returns whether the process was killed (false if it had already finished).
fn run_and_kill(args: &[String], dir: &Path, after_stages: usize, delay: Duration) -> bool {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut child = command(&args).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(300);
    while !dir.join("run.json").exists() || journal_lines(dir) < after_stages {
        if child.try_wait().unwrap().is_some() || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    std::thread::sleep(delay);
    let finished = child.try_wait().unwrap().is_some();
    child.kill().ok(); // SIGKILL on Unix
    child.wait().unwrap();
    !finished
}

fn finish(args: &[&str]) {
    let out = command(args).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn outcome(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files = vec!["metrics.jsonl".to_string()];
    for r in 0..=3 {
        files.push(format!("rounds/r{r:04}/eval.json"));
        files.push(format!("rounds/r{r:04}/train.jsonl"));
        files.push(format!("checkpoints/r{r:04}/model.safetensors"));
        if r > 0 {
            files.push(format!("rounds/r{r:04}/samples.jsonl"));
            files.push(format!("rounds/r{r:04}/manifest.json"));
        }
    }
    files
        .into_iter()
        .map(|f| {
            let bytes = std::fs::read(dir.join(&f)).unwrap_or_else(|e| panic!("{f}: {e}"));
            (f, bytes)
        })
        .collect()
}

/// Hidden temporary files or directories anywhere in the run.
fn leftovers(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.file_name().unwrap().to_string_lossy().starts_with('.') {
                found.push(p.display().to_string());
            } else if p.is_dir() {
                stack.push(p);
            }
        }
    }
    found
}

#[test]
fn kill_9_then_resume_matches_an_uninterrupted_run() {
    let tmp = tempfile::tempdir().unwrap();
    let reference = tmp.path().join("reference");
    let args: Vec<String> = run_args(&reference);
    finish(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let want = outcome(&reference);
    let stages = journal_lines(&reference);
    assert_eq!(stages, 2 + 3 * 3);

    // Kill points: inside the seed stage, just after a journal line, and inside sample,
    // train and eval stages of later rounds (delays are spread so they land at different
    // moments of a stage).
    let plans: [&[(usize, u64)]; 2] = [
        &[(0, 150), (1, 0), (2, 40), (4, 25), (6, 300)],
        &[(0, 400), (3, 10), (5, 60), (8, 5), (9, 90)],
    ];
    for (n, plan) in plans.iter().enumerate() {
        let dir = tmp.path().join(format!("killed{n}"));
        let start = run_args(&dir);
        let resume = vec!["resume".to_string(), dir.display().to_string()];
        let mut killed = 0;
        for (i, &(after, ms)) in plan.iter().enumerate() {
            let args = if i == 0 { &start } else { &resume };
            killed += run_and_kill(args, &dir, after, Duration::from_millis(ms)) as usize;
        }
        assert!(
            killed >= 3,
            "plan {n}: only {killed} kills landed before the run ended"
        );
        finish(&resume.iter().map(String::as_str).collect::<Vec<_>>());
        let got = outcome(&dir);
        for ((f, a), (_, b)) in want.iter().zip(&got) {
            assert!(a == b, "plan {n}: {f} differs from the uninterrupted run");
        }
        assert_eq!(journal_lines(&dir), stages);
        assert_eq!(
            leftovers(&dir),
            Vec::<String>::new(),
            "plan {n}: temporary files left behind"
        );
    }
}
