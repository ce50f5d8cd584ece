//! Issue 13: a task from a JSONL file, graded in process or by an external verifier process
//! (real python3 workers), through whole star runs with the native model. Skipped, with a
//! printed reason, where python3 is missing.

use autodidact_engine::store::RunDir;
use autodidact_engine::{Run, RunConfig, Silent};
use std::path::{Path, PathBuf};

mod common;

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(rel)
}

fn python() -> bool {
    let ok = std::process::Command::new("python3")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!("skipped: python3 is not installed (these runs grade with python3 workers)");
    }
    ok
}

/// examples/star-word-problems.toml made a few seconds long, with `extra` overrides.
fn start(out: &Path, extra: &[String]) -> Run {
    let text = std::fs::read_to_string(repo("examples/star-word-problems.toml")).unwrap();
    let mut sets: Vec<String> = [
        format!(
            "task.train={}",
            repo("examples/data/word-problems.jsonl").display()
        ),
        "seed_stage.labeled=48".into(),
        "seed_stage.eval_every=20".into(),
        "seed_stage.train.steps=60".into(),
        "star.rounds=1".into(),
        "star.problems=48".into(),
        "star.sampling.samples=2".into(),
        "star.train.epochs=1.0".into(),
        "eval.problems=16".into(),
        "eval.sampling.samples=3".into(),
        "eval.k=2".into(),
    ]
    .into();
    sets.extend(extra.iter().cloned());
    let plan = RunConfig::parse(&text, "star-word-problems.toml", &sets)
        .unwrap()
        .plan(&common::backends())
        .unwrap();
    Run::create(plan, out, rayon::current_num_threads()).unwrap()
}

fn verifier(args: &[&str]) -> Vec<String> {
    let list: Vec<String> = args.iter().map(|a| format!("{a:?}")).collect();
    vec![
        format!("task.verifier.command=[{}]", list.join(", ")),
        "task.verifier.workers=2".into(),
    ]
}

/// Asserts that two runs' metrics agree on every key but those that read the verifier's
/// `answer` field: exact_match.py reports the raw text after `#` (or the whole completion),
/// the built-in grader a normalized answer or none, so the answer entropy may differ.
fn assert_same_metrics(a: &Path, b: &Path) {
    let read = |p: &Path| -> Vec<serde_json::Value> {
        let mut lines: Vec<serde_json::Value> = RunDir::open(p).unwrap().0.metrics().unwrap();
        for l in &mut lines {
            l.as_object_mut().unwrap().remove("explore/answer_entropy");
        }
        lines
    };
    assert_eq!(read(a), read(b));
}

fn exact_match() -> String {
    repo("examples/verifiers/exact_match.py")
        .display()
        .to_string()
}

#[test]
fn issue13_a_jsonl_task_graded_by_an_external_python_verifier_runs_star_end_to_end() {
    if !python() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (builtin, external) = (tmp.path().join("builtin"), tmp.path().join("external"));
    let rows = start(&builtin, &[]).execute(&mut Silent).unwrap();
    assert_eq!(rows.len(), 2);
    start(&external, &verifier(&["python3", &exact_match()]))
        .execute(&mut Silent)
        .unwrap();
    // The reference verifier and the built-in grader agree on every grade: the same run.
    assert_same_metrics(&builtin, &external);
    let dir = RunDir::open(&external).unwrap().0;
    let samples: Vec<serde_json::Value> = dir
        .read_jsonl(&format!("{}/samples.jsonl", RunDir::round_dir(1)))
        .unwrap();
    assert_eq!(samples.len(), 48 * 2);
    assert!(samples
        .iter()
        .all(|s| s["grade"] != "ungradable" || s["reason"].is_string()));
    assert!(external.join("logs/verifier-0.log").is_file());
}

/// A worker that crashes, hangs or writes garbage once, mid-run: it is restarted, its
/// requests are retried, the run ends as if nothing happened, the pool's log says what
/// happened, and the run directory passes `resume`'s checks.
#[test]
fn issue13_a_verifier_that_crashes_hangs_or_writes_garbage_mid_run_leaves_the_run_unchanged() {
    if !python() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let builtin = tmp.path().join("builtin");
    start(&builtin, &[]).execute(&mut Silent).unwrap();
    let faulty = repo("crates/tasks/tests/verifiers/faulty.py")
        .display()
        .to_string();
    for (fault, note) in [
        ("--crash-after", "exited (exit status: 3)"),
        ("--hang-after", "did not answer within 2s"),
        (
            "--garbage-after",
            "sent a malformed reply \"this is not json\"",
        ),
    ] {
        let run = tmp.path().join(&fault[2..]);
        let state = tmp.path().join(format!("{fault}.state"));
        let cmd = [
            "python3",
            &faulty,
            fault,
            "30",
            "--state",
            state.to_str().unwrap(),
        ];
        let mut sets = verifier(&cmd);
        sets.push("task.verifier.timeout_s=2".into());
        start(&run, &sets).execute(&mut Silent).unwrap();
        assert!(state.exists(), "{fault}: the fault happened");
        assert_same_metrics(&builtin, &run);
        let notes = std::fs::read_to_string(run.join("logs/verifier.log")).unwrap();
        assert!(notes.contains(note), "{fault}: {notes}");
        // Intact: resume checks every recorded file and finds the run complete.
        let rows = common::resume(&run).execute(&mut Silent).unwrap();
        assert_eq!(rows.len(), 2, "{fault}");
    }
}

#[test]
fn issue13_a_verifier_that_never_starts_stops_the_run_and_resume_continues_once_it_is_fixed() {
    if !python() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (builtin, broken) = (tmp.path().join("builtin"), tmp.path().join("broken"));
    start(&builtin, &[]).execute(&mut Silent).unwrap();
    let later = tmp.path().join("verify.py");
    let mut run = start(&broken, &verifier(&["python3", later.to_str().unwrap()]));
    let err = format!(
        "{:#}",
        anyhow::Error::from(run.execute(&mut Silent).unwrap_err())
    );
    assert!(err.contains("before answering anything"), "{err}");
    assert!(
        err.contains("can't open file"),
        "the error quotes the worker's stderr: {err}"
    );
    drop(run);
    // Nothing half-written: the run resumes once the verifier exists.
    std::fs::copy(exact_match(), &later).unwrap();
    common::resume(&broken).execute(&mut Silent).unwrap();
    assert_same_metrics(&builtin, &broken);
}

#[test]
fn issue13_a_bad_task_file_fails_before_the_run_naming_the_file_line_and_field() {
    let tmp = tempfile::tempdir().unwrap();
    let bad = tmp.path().join("bad.jsonl");
    std::fs::write(
        &bad,
        "{\"id\": \"a\", \"prompt\": \"1+1=\", \"answer\": \"2\"}\n{\"id\": \"b\", \"promt\": \"x\", \"answer\": \"1\"}\n",
    )
    .unwrap();
    let text = std::fs::read_to_string(repo("examples/star-word-problems.toml")).unwrap();
    let sets = [format!("task.train={}", bad.display())];
    let err = match RunConfig::parse(&text, "x.toml", &sets)
        .unwrap()
        .plan(&common::backends())
    {
        Ok(_) => panic!("a bad task file was accepted"),
        Err(e) => e.to_string(),
    };
    let want = format!("{}:2, field `promt`: unknown field `promt`", bad.display());
    assert!(err.starts_with(&want), "{err}");
    assert!(err.ends_with("put extra data under `meta`"), "{err}");
}
