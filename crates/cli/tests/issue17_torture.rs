//! Issue 17: torture. Small runs of every recipe are killed with SIGKILL at random moments,
//! have single bytes corrupted in random files, and run out of disk at random moments; after
//! each `resume` a run must either end byte-identical to an uninterrupted reference run or
//! stop with a clear message. It must never end silently different.
//!
//! CI runs a few dozen of each. By hand, raise the counts (and pick the seed that a failure
//! printed to replay its choices):
//!
//! ```text
//! AUTODIDACT_TORTURE_KILLS=500 AUTODIDACT_TORTURE_CORRUPTIONS=200 AUTODIDACT_TORTURE_DISK_FULL=50 \
//!   cargo test --release -p autodidact-cli --test issue17_torture -- --nocapture
//! ```
//!
//! The disk-full part mounts size-limited tmpfs file systems, so it needs root (and a kernel
//! that lets the test mount); elsewhere it says so and skips itself.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

mod common;

use common::files;

const BIN: &str = env!("CARGO_BIN_EXE_autodidact");

/// Settings every run shares: a 2-digit addition task and a small evaluation.
const SMALL: &[&str] = &[
    "task.digits=2",
    "seed_stage.eval_every=0",
    "eval.problems=8",
    "eval.sampling.samples=2",
    "eval.k=2",
];

/// An M0 that solves some sums, trained once per recipe format (by a run with no rounds) and
/// fine-tuned for a few steps by each run's seed stage, so that most of a run's time goes to
/// its rounds.
struct Family {
    config: &'static str,
    sets: &'static [&'static str],
}

const FAMILIES: &[Family] = &[
    Family {
        config: "examples/star-addition.toml",
        sets: &["star.rounds=0"],
    },
    Family {
        config: "examples/self-rewarding-addition.toml",
        sets: &["pref.rounds=0"],
    },
    Family {
        config: "examples/s2r-addition.toml",
        sets: &["correct.rounds=0", "correct.s2r.init_rounds=0"],
    },
    Family {
        config: "examples/score-addition.toml",
        sets: &["correct.rounds=0", "correct.score.stage_one_rounds=0"],
    },
];

/// The base runs' seed stage.
const BASE: &[&str] = &["seed_stage.labeled=96", "seed_stage.train.steps=500"];

/// A tortured run's seed stage: a few steps from its family's M0.
const SEED: &[&str] = &["seed_stage.labeled=48", "seed_stage.train.steps=20"];

/// Where an arm's policy samples and trains.
#[derive(Clone, Copy, PartialEq)]
enum Backend {
    /// In process.
    Native,
    /// In process, trained by `autodidact train` as the external trainer
    /// (`[train] backend = "external"`).
    External,
    /// Served by an `autodidact serve` child (`model.backend = "openai"`) that is pointed at
    /// each new checkpoint, trained by `autodidact train`: the practitioner's loop.
    Served,
}

/// One recipe on one backend, shrunk to two rounds of a few problems (each run takes 1 to 3 s
/// on 2 threads).
struct Arm {
    name: &'static str,
    /// The example configuration it starts from, relative to the repository root.
    config: &'static str,
    /// Its index in [`FAMILIES`].
    family: usize,
    backend: Backend,
    sets: &'static [&'static str],
}

const ARMS: &[Arm] = &[
    Arm {
        name: "star",
        config: "examples/star-addition.toml",
        family: 0,
        backend: Backend::Native,
        sets: &[
            "star.rounds=2",
            "star.problems=256",
            "star.rationalize=true",
        ],
    },
    Arm {
        name: "grpo",
        config: "examples/grpo-addition.toml",
        family: 0,
        backend: Backend::Native,
        sets: &["rl.rounds=2", "rl.steps_per_round=3", "rl.problems=128"],
    },
    Arm {
        name: "dpo-verified",
        config: "examples/dpo-verified-addition.toml",
        family: 0,
        backend: Backend::Native,
        sets: &[
            "pref.rounds=2",
            "pref.problems=128",
            "pref.sampling.samples=4",
        ],
    },
    Arm {
        name: "self-rewarding",
        config: "examples/self-rewarding-addition.toml",
        family: 1,
        backend: Backend::Native,
        sets: &[
            "pref.rounds=2",
            "pref.problems=64",
            "pref.sampling.samples=4",
        ],
    },
    Arm {
        name: "s2r",
        config: "examples/s2r-addition.toml",
        family: 2,
        backend: Backend::Native,
        sets: &["correct.rounds=2", "correct.problems=64"],
    },
    Arm {
        name: "score",
        config: "examples/score-addition.toml",
        family: 3,
        backend: Backend::Native,
        sets: &["correct.rounds=2", "correct.problems=64"],
    },
    Arm {
        name: "step-pg",
        config: "examples/step-pg-addition.toml",
        family: 0,
        backend: Backend::Native,
        sets: &["step.rounds=2", "step.problems=32", "step.rollouts=2"],
    },
    Arm {
        name: "first-pit",
        config: "examples/first-pit-addition.toml",
        family: 0,
        backend: Backend::Native,
        sets: &["step.rounds=2", "step.problems=32", "step.rollouts=2"],
    },
    Arm {
        name: "tree-search",
        config: "examples/tree-search-addition.toml",
        family: 0,
        backend: Backend::Native,
        sets: &["tree.rounds=2", "tree.problems=32"],
    },
    Arm {
        name: "raft",
        config: "examples/raft-addition.toml",
        family: 0,
        backend: Backend::Native,
        sets: &["raft.rounds=2", "raft.problems=128"],
    },
    Arm {
        name: "star-external",
        config: "examples/star-addition.toml",
        family: 0,
        backend: Backend::External,
        sets: &["star.rounds=2", "star.problems=128"],
    },
    Arm {
        name: "grpo-external",
        config: "examples/grpo-addition.toml",
        family: 0,
        backend: Backend::External,
        sets: &["rl.rounds=2", "rl.steps_per_round=2", "rl.problems=64"],
    },
    Arm {
        name: "dpo-served",
        config: "examples/dpo-verified-addition.toml",
        family: 0,
        backend: Backend::Served,
        sets: &[
            "pref.rounds=2",
            "pref.problems=64",
            "pref.sampling.samples=4",
        ],
    },
    Arm {
        name: "grpo-served",
        config: "examples/grpo-addition.toml",
        family: 0,
        backend: Backend::Served,
        sets: &["rl.rounds=2", "rl.steps_per_round=2", "rl.problems=64"],
    },
];

/// The test's choices, replayable from the seed it prints.
struct Rng(autodidact_core::Rng);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0.below(n as u64) as usize
    }
    fn unit(&mut self) -> f64 {
        self.0.uniform_f64()
    }
}

fn env_count(var: &str, default: usize) -> usize {
    match std::env::var(var) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{var}={v:?} is not a count")),
        Err(_) => default,
    }
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn command(args: &[String]) -> Command {
    let mut c = Command::new(BIN);
    c.current_dir(repo_root())
        .args(["--threads", "2"])
        .args(args)
        .arg("--quiet")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    c
}

fn args(config: &str, out: &Path, sets: &[&[&str]]) -> Vec<String> {
    let mut a = vec![
        "run".to_string(),
        config.into(),
        "--out".into(),
        out.display().to_string(),
    ];
    for s in sets.iter().flat_map(|s| s.iter()) {
        a.push("--set".into());
        a.push(s.to_string());
    }
    a
}

/// Trains the M0 of each family in `needed` under `tmp`; returns each one's checkpoint, by
/// family.
fn bases(tmp: &Path, needed: &[usize]) -> BTreeMap<usize, PathBuf> {
    FAMILIES
        .iter()
        .enumerate()
        .filter(|(i, _)| needed.contains(i))
        .map(|(i, f)| {
            let dir = tmp.join(format!("base{i}"));
            let start = Instant::now();
            let out = finish(&args(f.config, &dir, &[SMALL, BASE, f.sets]));
            assert!(out.status.success(), "{}: {}", f.config, stderr(&out));
            eprintln!(
                "torture: M0 of {}: {:.1} s",
                f.config,
                start.elapsed().as_secs_f64()
            );
            (i, dir.join("checkpoints/r0000"))
        })
        .collect()
}

fn resume_args(dir: &Path) -> Vec<String> {
    vec!["resume".into(), dir.display().to_string()]
}

fn finish(args: &[String]) -> Output {
    command(args).output().unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn copy_dir(from: &Path, to: &Path) {
    for f in files(from) {
        let dest = to.join(&f);
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        std::fs::copy(from.join(&f), dest).unwrap();
    }
}

/// What a finished run must hold, file by file, in a form two runs of the same config share:
/// the journal without its timings (and the line hashes that cover them), the report without the run's directory name, the event
/// file by its length (its wall times start at the run's start). The lock file is left out.
///
/// A served run's metrics also hold the servers' latencies, wall times too: with `served`,
/// they are left out of the metrics and manifests, and so are the journal's hashes of those.
fn outcome(dir: &Path, served: bool) -> BTreeMap<String, Vec<u8>> {
    let mut timings = vec!["seconds", "line_sha256"];
    if served {
        timings.extend(["metrics_bytes", "metrics_sha256", "manifest_sha256"]);
    }
    files(dir)
        .into_iter()
        .filter(|f| f != "run.lock")
        .map(|f| {
            let bytes = std::fs::read(dir.join(&f)).unwrap();
            let (key, value) = if f == "journal.jsonl" {
                // The timing, and the line's own hash, which covers it (`resume` checks that
                // hash).
                (f, without_keys(&bytes, |k| timings.contains(&k)))
            } else if served && (f == "metrics.jsonl" || f.ends_with("manifest.json")) {
                let latency = |k: &str| k.starts_with("serving/latency_");
                (f, without_keys(&bytes, latency))
            } else if f == "report.html" {
                // It shows each stage's seconds: what matters is that it is the report of the
                // run as it now is.
                let out = Command::new(BIN)
                    .args(["--threads", "2", "report"])
                    .arg(dir)
                    .output()
                    .unwrap();
                let now = std::fs::read(dir.join(&f)).unwrap();
                let state = if !out.status.success() {
                    "cannot be rewritten"
                } else if now != bytes {
                    "is stale: `autodidact report` rewrites it differently"
                } else {
                    "is the run's"
                };
                (f, state.as_bytes().to_vec())
            } else if f.starts_with("tensorboard/") {
                ("tensorboard/".into(), bytes.len().to_le_bytes().to_vec())
            } else {
                (f, bytes)
            };
            (key, value)
        })
        .collect()
}

/// The JSON (or JSON lines) `bytes` without the keys `drop` names, at any depth.
fn without_keys(bytes: &[u8], drop: impl Fn(&str) -> bool + Copy) -> Vec<u8> {
    fn strip(v: &mut serde_json::Value, drop: impl Fn(&str) -> bool + Copy) {
        match v {
            serde_json::Value::Object(o) => {
                o.retain(|k, _| !drop(k));
                o.values_mut().for_each(|x| strip(x, drop));
            }
            serde_json::Value::Array(a) => a.iter_mut().for_each(|x| strip(x, drop)),
            _ => {}
        }
    }
    let text = String::from_utf8_lossy(bytes);
    let lines: Vec<String> = text
        .lines()
        .map(|l| match serde_json::from_str::<serde_json::Value>(l) {
            Ok(mut v) => {
                strip(&mut v, drop);
                v.to_string()
            }
            Err(_) => format!("not JSON: {l}"),
        })
        .collect();
    match serde_json::from_str::<serde_json::Value>(&text) {
        // A whole-file JSON document (a manifest), pretty-printed over many lines.
        Ok(mut v) if lines.len() > 1 => {
            strip(&mut v, drop);
            v.to_string().into_bytes()
        }
        _ => lines.join("\n").into_bytes(),
    }
}

/// How `got` differs from the reference outcome `want`, if it does.
fn difference(want: &BTreeMap<String, Vec<u8>>, got: &BTreeMap<String, Vec<u8>>) -> Option<String> {
    let mut problems = Vec::new();
    for (f, bytes) in want {
        match got.get(f) {
            None => problems.push(format!("{f} is missing")),
            Some(b) if b != bytes => problems.push(format!("{f} differs")),
            Some(_) => {}
        }
    }
    for f in got.keys().filter(|f| !want.contains_key(*f)) {
        problems.push(format!("{f} is left over"));
    }
    (!problems.is_empty()).then(|| problems.join(", "))
}

/// An uninterrupted run of an arm from its family's M0: its outcome, wall time and size on
/// disk.
///
/// Every run of an arm, the reference included, runs in the same directory ([`Reference::at`],
/// moved or removed once it is judged), so that files naming their run's directory (an
/// external trainer's job and log) compare byte for byte.
struct Reference {
    arm: &'static Arm,
    /// The `--set`s that point the arm at its family's M0 and its backend.
    sets: Vec<String>,
    /// Where the arm's runs run.
    at: PathBuf,
    /// The finished reference run (moved from `at`).
    dir: PathBuf,
    outcome: BTreeMap<String, Vec<u8>>,
    seconds: f64,
    bytes: u64,
    /// A served arm's server, which every run of the arm points at each new checkpoint.
    _server: Option<common::Server>,
}

/// The external trainer's command: the binary under test's `train`.
fn trainer_sets() -> Vec<String> {
    vec![
        "train.backend=external".into(),
        format!(
            "train.command=[{BIN:?}, \"--threads\", \"{{threads}}\", \"train\", \"--config\", \"{{config}}\"]"
        ),
    ]
}

impl Reference {
    fn new(arm: &'static Arm, base: &Path, tmp: &Path) -> Reference {
        let mut server = None;
        let sets = match arm.backend {
            Backend::Native => vec![format!("model.checkpoint={}", base.display())],
            Backend::External => {
                let mut s = trainer_sets();
                s.push(format!("model.checkpoint={}", base.display()));
                s
            }
            Backend::Served => {
                // One completion per decode batch: what a completion's log-probs come to
                // depends on what else the server batches with it (in the last float bits,
                // as with any batching server), and a policy-gradient round trains on them.
                let s = common::serve_with(base, &["--max-batch-rows", "1"], &[]);
                let mut sets = trainer_sets();
                sets.extend([
                    "model.backend=openai".into(),
                    format!("model.openai.base_urls=[{:?}]", s.url()),
                    "model.openai.model=tiny".into(),
                    format!("model.openai.tokenizer={:?}", base.display().to_string()),
                    format!("model.openai.weights={:?}", base.display().to_string()),
                    "model.openai.reload=update_weights_from_disk".into(),
                    // The served weights are M0 as they are.
                    "seed_stage.train.steps=0".into(),
                ]);
                server = Some(s);
                sets
            }
        };
        let mut r = Reference {
            arm,
            sets,
            at: tmp.join("at").join(arm.name).join("run"),
            dir: tmp.join(format!("reference-{}", arm.name)),
            outcome: BTreeMap::new(),
            seconds: 0.0,
            bytes: 0,
            _server: server,
        };
        let start = Instant::now();
        let out = finish(&r.run_args(&r.at));
        assert!(out.status.success(), "{}: {}", arm.name, stderr(&out));
        r.seconds = start.elapsed().as_secs_f64();
        r.bytes = files(&r.at)
            .iter()
            .map(|f| std::fs::metadata(r.at.join(f)).unwrap().len())
            .sum();
        r.outcome = outcome(&r.at, arm.backend == Backend::Served);
        std::fs::rename(&r.at, &r.dir).unwrap();
        r
    }

    /// The outcome of a run of this arm in `dir`.
    fn outcome_of(&self, dir: &Path) -> BTreeMap<String, Vec<u8>> {
        outcome(dir, self.arm.backend == Backend::Served)
    }

    /// The command line of a run of this arm into `out`.
    fn run_args(&self, out: &Path) -> Vec<String> {
        let mine: Vec<&str> = self.sets.iter().map(String::as_str).collect();
        args(self.arm.config, out, &[SMALL, SEED, &mine, self.arm.sets])
    }
}

/// What one tortured run came to.
#[derive(Default)]
struct Tally {
    /// Kills, corruptions or disk-full moments that landed.
    injected: usize,
    /// Runs that ended byte-identical to their reference.
    identical: usize,
    /// Resumes that stopped with a message naming what was wrong.
    refused: usize,
    /// Everything else: each is a failure of the test, described.
    failures: Vec<String>,
}

impl Tally {
    fn print(&self, what: &str) {
        eprintln!(
            "torture {what}: {} injected, {} runs identical to the reference, {} refused with a message, {} failures",
            self.injected,
            self.identical,
            self.refused,
            self.failures.len()
        );
    }
}

fn spawn(args: &[String]) -> Child {
    command(args).spawn().unwrap()
}

/// Waits up to `delay` for `child`; kills it with SIGKILL if it is still running. Returns its
/// output when it ended by itself.
fn kill_after(mut child: Child, delay: Duration) -> Option<Output> {
    let deadline = Instant::now() + delay;
    while Instant::now() < deadline {
        if child.try_wait().unwrap().is_some() {
            return Some(child.wait_with_output().unwrap());
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    child.kill().ok();
    child.wait().unwrap();
    None
}

/// Kills one run of `arm` at up to `kills` random moments, then resumes it to the end.
/// Snapshots of the run directory as a kill left it are added to `snapshots`, named after
/// `label`.
fn killed_run(
    reference: &Reference,
    label: &Path,
    kills: usize,
    rng: &mut Rng,
    snapshots: &mut Vec<(usize, PathBuf)>,
    index: usize,
    tally: &mut Tally,
) {
    let dir = &reference.at;
    let mut args = reference.run_args(dir);
    let mut landed = 0;
    let end = loop {
        let child = spawn(&args);
        if landed == kills {
            break child.wait_with_output().unwrap();
        }
        let delay = Duration::from_secs_f64(rng.unit() * reference.seconds * 1.1);
        match kill_after(child, delay) {
            Some(out) => break out,
            None => {
                landed += 1;
                tally.injected += 1;
                if dir.join("run.json").exists() && rng.below(4) == 0 {
                    let snap = label.with_extension(format!("snap{landed}"));
                    copy_dir(dir, &snap);
                    snapshots.push((index, snap));
                }
                if dir.join("run.json").exists() {
                    args = resume_args(dir);
                } else {
                    // Killed before the run directory was whole: `run` refuses a directory
                    // that holds anything, so start again in a fresh one.
                    std::fs::remove_dir_all(dir).ok();
                }
            }
        }
    };
    if !end.status.success() {
        tally.failures.push(format!(
            "{}: after {landed} kills the run stopped: {}",
            label.display(),
            stderr(&end).trim()
        ));
    } else {
        match difference(&reference.outcome, &reference.outcome_of(dir)) {
            None => tally.identical += 1,
            Some(d) => tally.failures.push(format!(
                "{}: after {landed} kills the run ended silently different: {d}",
                label.display()
            )),
        }
    }
    std::fs::rename(dir, label).unwrap();
}

/// Flips one random byte of one random file of `snapshot` (a finished run or one a kill left),
/// then resumes it: it must end identical to the reference, or refuse naming the file and
/// leave the run as it was.
fn corrupted_run(
    snapshot: &Path,
    reference: &Reference,
    label: &Path,
    rng: &mut Rng,
    tally: &mut Tally,
) {
    let dir = &reference.at;
    copy_dir(snapshot, dir);
    let candidates: Vec<String> = files(dir)
        .into_iter()
        .filter(|f| f != "run.lock" && std::fs::metadata(dir.join(f)).unwrap().len() > 0)
        .collect();
    let file = &candidates[rng.below(candidates.len())];
    let path = dir.join(file);
    let mut bytes = std::fs::read(&path).unwrap();
    let at = rng.below(bytes.len());
    let old = bytes[at];
    bytes[at] ^= 1 + rng.below(255) as u8;
    std::fs::write(&path, &bytes).unwrap();
    tally.injected += 1;
    let what = format!(
        "{}: byte {at} of {file} ({old:#04x} → {:#04x})",
        label.display(),
        bytes[at]
    );
    let journal = std::fs::read(dir.join("journal.jsonl")).ok();
    let out = finish(&resume_args(dir));
    judge_corrupted(reference, dir, file, &what, journal, &out, tally);
    std::fs::rename(dir, label).unwrap();
}

/// Whether the resume (`out`) of a run whose `file` was corrupted ended identical to the
/// reference or refused naming the file, leaving the journal as it was.
fn judge_corrupted(
    reference: &Reference,
    dir: &Path,
    file: &str,
    what: &str,
    journal: Option<Vec<u8>>,
    out: &Output,
    tally: &mut Tally,
) {
    if out.status.success() {
        match difference(&reference.outcome, &reference.outcome_of(dir)) {
            None => tally.identical += 1,
            Some(d) => tally.failures.push(format!(
                "{what}: resume succeeded but the run is silently different: {d}"
            )),
        }
        return;
    }
    let e = stderr(out);
    let name = Path::new(file).file_name().unwrap().to_string_lossy();
    if !e.contains(&*name) {
        tally.failures.push(format!(
            "{what}: resume refused without naming the file: {}",
            e.trim()
        ));
    } else if std::fs::read(dir.join("journal.jsonl")).ok() != journal {
        tally.failures.push(format!(
            "{what}: resume refused ({}) but changed the journal",
            e.trim()
        ));
    } else {
        tally.refused += 1;
    }
}

/// A tmpfs of a given size mounted on a directory, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, bytes: u64) -> Option<Tmpfs> {
        std::fs::create_dir_all(dir).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
            .arg(dir)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Tmpfs(dir.to_path_buf()))
    }
    fn grow(&self, bytes: u64) {
        let ok = Command::new("mount")
            .args(["-o", &format!("remount,size={bytes}")])
            .arg(&self.0)
            .status()
            .unwrap();
        assert!(ok.success(), "remounting {}", self.0.display());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// Runs `arm` on a file system with room for a random part of its files; once the disk is
/// full the run must stop with a message saying so, and after room is made, `resume` must end
/// identical to the reference.
fn disk_full_run(reference: &Reference, rng: &mut Rng, tally: &mut Tally) -> bool {
    let size = 4096 + (rng.unit() * reference.bytes as f64) as u64;
    let dir = reference.at.clone();
    let Some(fs) = Tmpfs::mount(dir.parent().unwrap(), size) else {
        return false;
    };
    let out = finish(&reference.run_args(&dir));
    let what = format!("{} on {size} bytes", reference.arm.name);
    if out.status.success() {
        // Room enough after all (tmpfs rounds to pages): not a disk-full moment.
        return true;
    }
    tally.injected += 1;
    let e = stderr(&out);
    if e.matches("No space left on device").count() != 1 {
        tally.failures.push(format!(
            "{what}: the run did not say once that the disk is full: {}",
            e.trim()
        ));
        return true;
    }
    fs.grow(reference.bytes * 3 + (64 << 20));
    let out = if dir.join("run.json").exists() {
        finish(&resume_args(&dir))
    } else {
        // The disk filled before the run directory was whole: start again.
        std::fs::remove_dir_all(&dir).unwrap();
        finish(&reference.run_args(&dir))
    };
    if !out.status.success() {
        tally.failures.push(format!(
            "{what}: after the disk was freed, resume failed: {}",
            stderr(&out).trim()
        ));
        return true;
    }
    match difference(&reference.outcome, &reference.outcome_of(&dir)) {
        None => tally.identical += 1,
        Some(d) => tally.failures.push(format!(
            "{what}: after the disk was freed the run ended silently different: {d}"
        )),
    }
    true
}

/// The arms to torture: those named in `AUTODIDACT_TORTURE_ARMS` (a comma-separated list, or
/// `all`), or by default 3 of them drawn at random, so that CI stays short and its runs
/// together cover every recipe.
fn chosen_arms(rng: &mut Rng) -> Vec<&'static Arm> {
    match std::env::var("AUTODIDACT_TORTURE_ARMS") {
        Ok(v) if v == "all" => ARMS.iter().collect(),
        Ok(v) => v
            .split(',')
            .map(|name| {
                ARMS.iter().find(|a| a.name == name.trim()).unwrap_or_else(|| {
                    let names: Vec<&str> = ARMS.iter().map(|a| a.name).collect();
                    panic!("AUTODIDACT_TORTURE_ARMS: no arm {name:?}; the arms are {names:?} or all")
                })
            })
            .collect(),
        Err(_) => {
            let mut all: Vec<&Arm> = ARMS.iter().collect();
            let mut chosen = Vec::new();
            for _ in 0..3 {
                chosen.push(all.remove(rng.below(all.len())));
            }
            chosen
        }
    }
}

#[test]
fn issue17_torture_kills_corruptions_and_full_disks_never_end_silently_different() {
    let kills = env_count("AUTODIDACT_TORTURE_KILLS", 24);
    let corruptions = env_count("AUTODIDACT_TORTURE_CORRUPTIONS", 16);
    let disk_full = env_count("AUTODIDACT_TORTURE_DISK_FULL", 4);
    let seed = match std::env::var("AUTODIDACT_TORTURE_SEED") {
        Ok(s) => s.parse().expect("AUTODIDACT_TORTURE_SEED is a number"),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64,
    };
    eprintln!("torture: AUTODIDACT_TORTURE_SEED={seed}");
    let mut rng = Rng(autodidact_core::Rng::new(seed));
    let mut tmp = tempfile::tempdir().unwrap();
    // To look at the runs a failure names afterwards.
    if std::env::var_os("AUTODIDACT_TORTURE_KEEP").is_some() {
        tmp.disable_cleanup(true);
        eprintln!("torture: keeping {}", tmp.path().display());
    }
    let arms = chosen_arms(&mut rng);
    let names: Vec<&str> = arms.iter().map(|a| a.name).collect();
    eprintln!("torture: arms {}", names.join(", "));
    let families: Vec<usize> = arms.iter().map(|a| a.family).collect();
    let bases = bases(tmp.path(), &families);
    let references: Vec<Reference> = arms
        .iter()
        .map(|a| Reference::new(a, &bases[&a.family], tmp.path()))
        .collect();
    for r in &references {
        eprintln!(
            "torture: reference {}: {:.1} s, {} bytes",
            r.arm.name, r.seconds, r.bytes
        );
    }

    // Kills: runs of each arm in turn, each killed up to 4 times, until the budget is spent.
    let mut tally = Tally::default();
    let mut snapshots = Vec::new();
    let mut n = 0;
    while tally.injected < kills {
        let a = n % arms.len();
        let label = tmp.path().join(format!("kill{n}-{}", arms[a].name));
        let each = (kills - tally.injected).min(1 + rng.below(4));
        killed_run(
            &references[a],
            &label,
            each,
            &mut rng,
            &mut snapshots,
            a,
            &mut tally,
        );
        n += 1;
    }
    tally.print("kills");
    let mut failures = std::mem::take(&mut tally.failures);

    // Corruptions: of finished runs and of runs as a kill left them.
    let mut tally = Tally::default();
    for n in 0..corruptions {
        let (a, snapshot) = if snapshots.is_empty() || rng.below(2) == 0 {
            let a = rng.below(arms.len());
            (a, references[a].dir.clone())
        } else {
            snapshots[rng.below(snapshots.len())].clone()
        };
        let label = tmp.path().join(format!("corrupt{n}-{}", arms[a].name));
        corrupted_run(&snapshot, &references[a], &label, &mut rng, &mut tally);
    }
    tally.print("corruptions");
    failures.append(&mut tally.failures);

    // Full disks.
    let mut tally = Tally::default();
    for _ in 0..disk_full {
        let a = rng.below(arms.len());
        if !disk_full_run(&references[a], &mut rng, &mut tally) {
            eprintln!(
                "torture: cannot mount a tmpfs here (needs root): the disk-full part is skipped"
            );
            break;
        }
    }
    tally.print("full disks");
    failures.append(&mut tally.failures);

    assert!(
        failures.is_empty(),
        "{} failures (AUTODIDACT_TORTURE_SEED={seed}):\n{}",
        failures.len(),
        failures.join("\n")
    );
}
