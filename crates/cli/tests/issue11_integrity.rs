//! Issue 11: nothing lost, nothing silently wrong. A run directory is used by one process at
//! a time; a file of a finished stage that changed is detected on resume and named; `--force`
//! is the explicit way past it and is recorded; `eval` of a run's checkpoint reproduces the
//! run's own numbers.

use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_autodidact");

/// A small star run: seed stage, one round (a few seconds).
const SETS: &[&str] = &[
    "task.digits=2",
    "seed_stage.labeled=48",
    "seed_stage.eval_every=0",
    "seed_stage.train.steps=120",
    "star.rounds=1",
    "star.problems=64",
    "star.sampling.samples=2",
    "star.train.epochs=1.0",
    "eval.problems=24",
    "eval.sampling.samples=3",
    "eval.k=2",
];

fn cmd(args: &[&str]) -> Command {
    let mut c = Command::new(BIN);
    c.args(["--threads", "2"]).args(args);
    c
}

fn output(args: &[&str]) -> Output {
    cmd(args).output().unwrap()
}

fn ok(args: &[&str]) -> Output {
    let out = output(args);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn err(args: &[&str]) -> String {
    let out = output(args);
    assert!(!out.status.success(), "{args:?} should fail");
    String::from_utf8(out.stderr).unwrap()
}

fn run_args(out: &Path, extra: &[&str]) -> Vec<String> {
    let mut a = vec!["run".to_string(), "--out".into(), out.display().to_string()];
    for s in SETS.iter().chain(extra) {
        a.push("--set".into());
        a.push(s.to_string());
    }
    a.push("--quiet".into());
    a
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// A finished small run in `dir`.
fn finished(dir: &Path) {
    ok(&strs(&run_args(dir, &[])));
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let p = e.unwrap().path();
        let dest = to.join(p.file_name().unwrap());
        if p.is_dir() {
            copy_dir(&p, &dest);
        } else {
            std::fs::copy(&p, &dest).unwrap();
        }
    }
}

/// Flips one bit of byte `at` (or of the last byte); an empty file gains a byte.
fn flip_byte(path: &Path, at: usize) {
    let mut b = std::fs::read(path).unwrap();
    match b.len() {
        0 => b.push(b'\n'),
        n => b[at.min(n - 1)] ^= 0x01,
    }
    std::fs::write(path, b).unwrap();
}

fn resume(dir: &Path, extra: &[&str]) -> Output {
    let mut a = vec!["resume", dir.to_str().unwrap(), "--quiet"];
    a.extend(extra);
    output(&a)
}

fn json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn issue11_a_byte_changed_in_any_file_of_a_finished_stage_is_named_on_resume() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("base");
    finished(&base);
    // Resuming an intact run changes nothing and succeeds.
    let metrics = std::fs::read(base.join("metrics.jsonl")).unwrap();
    assert!(resume(&base, &[]).status.success());
    assert_eq!(std::fs::read(base.join("metrics.jsonl")).unwrap(), metrics);

    let nan = f32::NAN.to_le_bytes();
    type Damage = fn(&Path);
    let cases: [(&str, Damage); 10] = [
        ("checkpoints/r0001/model.safetensors", |p| {
            flip_byte(p, 4000)
        }),
        ("checkpoints/r0000/config.json", |p| flip_byte(p, 20)),
        ("checkpoints/r0001/tokenizer.json", |p| flip_byte(p, 30)),
        ("rounds/r0001/manifest.json", |p| flip_byte(p, 40)),
        ("rounds/r0001/samples.jsonl", |p| flip_byte(p, 100)),
        ("rounds/r0001/train.jsonl", |p| flip_byte(p, 60)),
        ("rounds/r0000/eval.json", |p| flip_byte(p, 50)),
        ("metrics.jsonl", |p| flip_byte(p, 10)),
        ("config.toml", |p| {
            // The seed edited mid-run (before: half of a run with another seed).
            let text = std::fs::read_to_string(p).unwrap();
            std::fs::write(p, text.replacen("seed = 0\n", "seed = 1\n", 1)).unwrap();
        }),
        ("rounds/r0001/manifest.json", |p| {
            std::fs::remove_file(p).unwrap()
        }),
    ];
    for (i, (file, damage)) in cases.iter().enumerate() {
        let dir = tmp.path().join(format!("case{i}"));
        copy_dir(&base, &dir);
        let before = std::fs::read(dir.join("metrics.jsonl")).unwrap();
        damage(&dir.join(file));
        let out = resume(&dir, &[]);
        assert!(!out.status.success(), "{file}: resume should refuse");
        let e = String::from_utf8(out.stderr).unwrap();
        assert!(
            e.contains(&format!("{}: ", dir.join(file).display())) && e.contains("--force"),
            "{file}: {e}"
        );
        // Refusing changed nothing.
        if *file != "metrics.jsonl" {
            assert_eq!(
                std::fs::read(dir.join("metrics.jsonl")).unwrap(),
                before,
                "{file}"
            );
        }
    }

    // Weights overwritten with NaN (the hash names the file; loading them is refused too).
    let dir = tmp.path().join("nan");
    copy_dir(&base, &dir);
    let model = dir.join("checkpoints/r0001/model.safetensors");
    let mut b = std::fs::read(&model).unwrap();
    let n = b.len();
    for chunk in b[n - 4096..].chunks_exact_mut(4) {
        chunk.copy_from_slice(&nan);
    }
    std::fs::write(&model, b).unwrap();
    let e = String::from_utf8(resume(&dir, &[]).stderr).unwrap();
    assert!(
        e.contains("model.safetensors: differs from the SHA-256"),
        "{e}"
    );
    // `eval` checks a run's checkpoint as the run would; outside a run, the loader refuses NaN.
    let e = err(&[
        "eval",
        "--checkpoint",
        dir.join("checkpoints/r0001").to_str().unwrap(),
    ]);
    assert!(
        e.contains("model.safetensors: differs from the SHA-256"),
        "{e}"
    );
    let alone = tmp.path().join("alone");
    copy_dir(&dir.join("checkpoints/r0001"), &alone);
    let e = err(&[
        "eval",
        "--checkpoint",
        alone.to_str().unwrap(),
        "--task",
        "addition",
        "--set",
        "digits=2",
    ]);
    assert!(e.contains("NaN or infinite"), "{e}");
}

#[test]
fn issue11_force_continues_past_a_changed_config_and_records_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    finished(&dir);
    // Extending a finished run by a round is a config edit: refused, then forced.
    let cfg = dir.join("config.toml");
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg, text.replacen("rounds = 1\n", "rounds = 2\n", 1)).unwrap();
    let e = String::from_utf8(resume(&dir, &[]).stderr).unwrap();
    assert!(
        e.contains("config.toml: changed since the run started"),
        "{e}"
    );
    let out = resume(&dir, &["--force"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let m = json(&dir.join("rounds/r0002/manifest.json"));
    assert_eq!(m["forced"][0]["file"], "config.toml", "{m}");
    let info = json(&dir.join("run.json"));
    assert!(info["accepted"]["config.toml"].is_string(), "{info}");
    // The new config is now the run's: a later resume is clean.
    assert!(resume(&dir, &[]).status.success());
}

/// Starts a run in the background and waits until its directory exists.
fn start_background(dir: &Path, extra: &[&str]) -> std::process::Child {
    let args = run_args(dir, extra);
    let child = cmd(&strs(&args))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !dir.join("run.json").exists() {
        assert!(Instant::now() < deadline, "the run did not start");
        std::thread::sleep(Duration::from_millis(5));
    }
    child
}

#[test]
fn issue11_a_second_process_on_a_run_directory_fails_at_once_naming_the_holder() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    // Long enough that it is still running while the others try.
    let mut first = start_background(&dir, &["seed_stage.train.steps=1500"]);
    let pid = first.id();
    for _ in 0..2 {
        let start = Instant::now();
        let e = err(&["resume", dir.to_str().unwrap()]);
        assert!(e.contains(&format!("is in use by process {pid}")), "{e}");
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "it must fail at once, not wait"
        );
    }
    let e = err(&strs(&run_args(&dir, &[])));
    assert!(e.contains("already holds a run"), "{e}");
    // kill -9 leaves the lock file behind with its PID; the next resume takes over.
    first.kill().unwrap();
    first.wait().unwrap();
    let out = cmd(&["resume", dir.to_str().unwrap()]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let e = String::from_utf8(out.stderr).unwrap();
    assert!(
        e.contains(&format!("process {pid} stopped without releasing this run")),
        "{e}"
    );
    // One journal line per stage: nothing was run twice.
    let journal = std::fs::read_to_string(dir.join("journal.jsonl")).unwrap();
    assert_eq!(journal.lines().count(), 2 + 3);
}

#[test]
fn issue11_eval_of_a_runs_checkpoint_reproduces_its_last_round() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    // A seed other than 0, so a plain-seeded draw could not match by accident.
    finished_with(&dir, &["seed=3"]);
    let metrics = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap();
    let last: Value = metrics
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .rfind(|m| m.get("round").is_some())
        .unwrap();
    let pct = |k: &str| format!("{:.1}%", 100.0 * last[k].as_f64().unwrap());
    let want = format!(
        "24 problems of addition (held-out split): pass@1 {}  pass@2 {}  maj@2 {}",
        pct("eval/pass@1"),
        pct("eval/pass@k"),
        pct("eval/maj@k")
    );
    let out = ok(&[
        "eval",
        "--checkpoint",
        dir.join("checkpoints/r0001").to_str().unwrap(),
    ]);
    let got = String::from_utf8(out.stdout).unwrap();
    assert!(got.starts_with(&want), "want {want}\ngot  {got}");
}

fn finished_with(dir: &Path, extra: &[&str]) {
    ok(&strs(&run_args(dir, extra)));
}

fn checkpoint(tmp: &Path) -> PathBuf {
    let dir = tmp.join("ck-run");
    finished(&dir);
    dir.join("checkpoints/r0001")
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

#[test]
fn issue11_resource_guards_refuse_or_chunk_naming_the_setting() {
    let tmp = tempfile::tempdir().unwrap();
    // Settings that would need more memory than the machine has are refused before anything
    // runs, naming the setting to lower.
    for (sets, key) in [
        (
            &["star.sampling.samples=100000"][..],
            "star.sampling.samples",
        ),
        (&["star.problems=100000000"], "star.problems"),
        (&["eval.problems=100000000"], "eval.problems"),
        (
            &["recipe=grpo", "rl.micro_batch_size=10000000"],
            "rl.micro_batch_size",
        ),
        (
            &[
                "seed_stage.labeled=100000",
                "seed_stage.train.batch_size=100000",
            ],
            "seed_stage.train.batch_size",
        ),
    ] {
        let out = tmp.path().join("never");
        let start = Instant::now();
        let mut args = vec!["run", "--out", out.to_str().unwrap()];
        for s in sets {
            args.extend(["--set", s]);
        }
        let set = sets.join(" ");
        let e = err(&args);
        assert!(
            e.contains(&format!("config key `{key}`: needs about"))
                && e.contains(&format!("lower {key}")),
            "{set}: {e}"
        );
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{set}: not at once"
        );
        assert!(!out.exists());
    }
    let model = [
        "--set",
        "model.hidden_size=8192",
        "--set",
        "model.num_heads=64",
        "--set",
        "model.num_layers=16",
    ];
    let out = tmp.path().join("never");
    let mut args = vec!["run", "--out", out.to_str().unwrap()];
    args.extend(model);
    let e = err(&args);
    assert!(
        e.contains("config key `model`: needs about") && e.contains("choose a smaller model"),
        "{e}"
    );
    let e = err(&["bench", "--preset", "tiny", "--batch", "100000"]);
    assert!(
        e.contains("--batch: needs about") && e.contains("lower --batch"),
        "{e}"
    );
    let mut c = cmd(&["run", "--out", tmp.path().join("x").to_str().unwrap()]);
    let out = c.env("AUTODIDACT_MEMORY_LIMIT", "lots").output().unwrap();
    let e = String::from_utf8(out.stderr).unwrap();
    assert!(
        e.contains("AUTODIDACT_MEMORY_LIMIT: \"lots\" is not a size"),
        "{e}"
    );

    // An impossible count fails at once with the number available.
    let ck = checkpoint(tmp.path());
    let ck = ck.to_str().unwrap();
    let start = Instant::now();
    let e = err(&["eval", "--checkpoint", ck, "--problems", "100000000"]);
    assert!(e.contains("--problems: needs about"), "{e}");
    let e = err(&[
        "eval",
        "--checkpoint",
        ck,
        "--problems",
        "9000",
        "--samples",
        "1",
        "--k",
        "1",
    ]);
    assert!(
        e.contains("about 2,000 of them in the held-out split"),
        "{e}"
    );
    assert!(start.elapsed() < Duration::from_secs(30));

    // `sample -n` streams: lines come out while memory stays flat, for any n.
    let mut child = cmd(&[
        "sample",
        "--checkpoint",
        ck,
        "--prompt",
        "12+34=",
        "-n",
        "1000000000",
    ])
    .stdout(Stdio::piped())
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    let pid = child.id();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut peak = 0;
    for i in 0..3000 {
        let line = lines.next().unwrap().unwrap();
        assert!(line.starts_with(&format!("[{i}] 12+34=")), "{line}");
        if i % 500 == 0 {
            peak = peak.max(rss_kib(pid));
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(peak < 512 * 1024, "sample -n grew to {peak} KiB");
}

/// `--quiet` prints the table, the line saying what its columns are, and the run directory
/// (issue 19), nothing on stderr.
#[test]
fn issue11_quiet_prints_only_the_table() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("q");
    let out = ok(&strs(&run_args(&dir, &[])));
    let stdout = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2 + 2 + 2, "{stdout}");
    assert!(lines[..4].iter().all(|l| l.starts_with('|')), "{stdout}");
    assert!(lines[4].starts_with("held-out: greedy pass@1"), "{stdout}");
    assert_eq!(lines[5], format!("run directory: {}", dir.display()));
    assert_eq!(String::from_utf8(out.stderr).unwrap(), "");
}

#[test]
fn issue11_bare_autodidact_prints_help_and_succeeds() {
    let out = ok(&[]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("Usage:") && text.contains("resume"), "{text}");
}

#[test]
fn issue11_every_flag_has_help_text() {
    for sub in [
        "run", "resume", "eval", "sample", "tasks", "bench", "report", "compare",
    ] {
        let help = String::from_utf8(ok(&[sub, "--help"]).stdout).unwrap();
        // Option lines look like `  -n, --n <N>  text` or `      --seed <SEED>  text`.
        for line in help.lines().filter(|l| l.trim_start().starts_with('-')) {
            let rest = line.trim_start();
            let described = rest
                .split_once("  ")
                .is_some_and(|(_, text)| !text.trim().is_empty());
            // clap puts a long description on the following line, indented further.
            let next_described = help
                .lines()
                .skip_while(|l| *l != line)
                .nth(1)
                .is_some_and(|n| n.starts_with("          ") && !n.trim().is_empty());
            assert!(described || next_described, "{sub}: {line:?} has no help");
        }
    }
}

#[test]
fn issue11_tasks_describes_check_trace_the_right_way_round() {
    let text = String::from_utf8(ok(&["tasks"]).stdout).unwrap();
    assert!(
        text.contains("`check_trace` = false: only the final answer is checked"),
        "{text}"
    );
}

#[test]
fn issue11_a_huge_value_is_not_echoed_whole() {
    let big = "x".repeat(1_000_000);
    let cfg = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(cfg.path(), format!("recipe = \"star\"\nseed = \"{big}\"\n")).unwrap();
    let e = err(&["run", cfg.path().to_str().unwrap()]);
    assert!(
        e.len() < 2000 && e.contains("characters left out"),
        "{} bytes",
        e.len()
    );
}

/// The README's sample errors are what the binary prints for the commands shown with them.
#[test]
fn issue11_readme_error_examples_match_the_binary() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md")).unwrap();
    let lines: Vec<&str> = readme.lines().collect();
    let mut checked = 0;
    for pair in lines.windows(2) {
        let (Some(command), true) = (
            pair[0].strip_prefix("$ autodidact "),
            pair[1].starts_with("error: "),
        ) else {
            continue;
        };
        let args: Vec<&str> = command.split_whitespace().collect();
        let e = err(&args);
        let want = pair[1].trim_end_matches("...");
        assert!(e.starts_with(want), "README: {}\nbinary: {e}", pair[1]);
        checked += 1;
    }
    assert!(
        checked >= 2,
        "the README shows its sample errors with their commands"
    );
}
