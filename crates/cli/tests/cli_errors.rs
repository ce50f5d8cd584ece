//! Bad input fails fast with one clear line naming the problem, and damages nothing.

use std::path::Path;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_autodidact");

/// Runs the binary, expects failure, returns stderr (which must be one line).
fn fails(args: &[&str]) -> String {
    let out = Command::new(BIN).args(args).output().unwrap();
    assert!(!out.status.success(), "{args:?} should fail");
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(
        err.trim_end().lines().count(),
        1,
        "{args:?}: not one line:\n{err}"
    );
    assert!(err.starts_with("error: "), "{err}");
    err
}

/// Runs the binary, expects success, returns stdout.
fn succeeds(args: &[&str]) -> String {
    let out = Command::new(BIN).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn bad_config_settings_name_the_key() {
    let cases = [
        (
            "star.sample=3",
            "config key `star.sample`: unknown field `sample`",
        ),
        (
            "star.sampling.samples=three",
            "config key `star.sampling.samples`: invalid type",
        ),
        (
            "star.sampling.samples=0",
            "config key `star.sampling.samples`: k must be at least 1",
        ),
        (
            "eval.sampling.temperature=-0.5",
            "config key `eval.sampling.temperature`",
        ),
        (
            "model.context_length=20",
            "config key `model.context_length`: 20 is too short",
        ),
    ];
    let tmp = tempfile::tempdir().unwrap();
    for (set, want) in cases {
        let out = tmp.path().join("never");
        let err = fails(&["run", "--out", out.to_str().unwrap(), "--set", set]);
        assert!(err.contains(want), "{set}: {err}");
        assert!(
            !out.exists(),
            "{set}: a failed start must not create the run directory"
        );
    }
    let cfg = tmp.path().join("bad.toml");
    std::fs::write(
        &cfg,
        "recipe = \"star\"\n[task]\nname = \"addition\"\ndigits = \"3\"\n",
    )
    .unwrap();
    let err = fails(&[
        "run",
        cfg.to_str().unwrap(),
        "--out",
        tmp.path().join("x").to_str().unwrap(),
    ]);
    assert!(
        err.contains("config key `task`") || err.contains("config key `task.digits`"),
        "{err}"
    );
    let err = fails(&["run", tmp.path().join("missing.toml").to_str().unwrap()]);
    assert!(err.contains("missing.toml"), "{err}");
}

fn tiny_run(out: &Path) {
    let mut args = vec!["run", "--quiet", "--out", out.to_str().unwrap()];
    for set in [
        "task.digits=1",
        "seed_stage.labeled=8",
        "seed_stage.train.steps=5",
        "seed_stage.eval_every=0",
        "star.rounds=0",
        "star.problems=4",
        "eval.problems=4",
        "eval.sampling.samples=2",
        "eval.k=2",
    ] {
        args.extend(["--set", set]);
    }
    succeeds(&args);
}

fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push((p.display().to_string(), std::fs::read(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn an_existing_run_is_never_overwritten() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    tiny_run(&run);
    let before = snapshot(&run);
    let err = fails(&["run", "--out", run.to_str().unwrap()]);
    assert!(err.contains("already holds a run"), "{err}");
    assert_eq!(snapshot(&run), before);
    let err = fails(&["resume", tmp.path().to_str().unwrap()]);
    assert!(err.contains("not an autodidact run"), "{err}");
}

#[test]
fn missing_or_corrupt_checkpoints_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    tiny_run(&run);
    let ck = run.join("checkpoints/r0000");
    let eval = |dir: &Path| {
        fails(&[
            "eval",
            "--checkpoint",
            dir.to_str().unwrap(),
            "--task",
            "addition",
            "--set",
            "digits=1",
            "--problems",
            "4",
        ])
    };
    let err = eval(&tmp.path().join("nope"));
    assert!(err.contains("nope") && err.contains("config.json"), "{err}");
    let bad = tmp.path().join("bad");
    std::fs::create_dir(&bad).unwrap();
    for f in ["config.json", "tokenizer.json"] {
        std::fs::copy(ck.join(f), bad.join(f)).unwrap();
    }
    std::fs::write(bad.join("model.safetensors"), b"not a safetensors file").unwrap();
    let err = eval(&bad);
    assert!(err.contains("model.safetensors"), "{err}");
    // A checkpoint cut short (a copy of the run's, half its bytes) fails and names the file.
    let bytes = std::fs::read(ck.join("model.safetensors")).unwrap();
    std::fs::write(bad.join("model.safetensors"), &bytes[..bytes.len() / 2]).unwrap();
    let err = eval(&bad);
    assert!(err.contains("model.safetensors"), "{err}");
    // The intact checkpoint evaluates and samples.
    let out = succeeds(&[
        "eval",
        "--checkpoint",
        ck.to_str().unwrap(),
        "--task",
        "addition",
        "--set",
        "digits=1",
        "--problems",
        "4",
        "--samples",
        "2",
        "--k",
        "2",
    ]);
    assert!(out.contains("pass@1"));
    succeeds(&[
        "sample",
        "--checkpoint",
        ck.to_str().unwrap(),
        "--prompt",
        "3+4=",
        "-n",
        "2",
    ]);
    let err = fails(&[
        "sample",
        "--checkpoint",
        ck.to_str().unwrap(),
        "--prompt",
        "3+x=",
    ]);
    assert!(err.contains("'x'"), "{err}");
}

#[test]
fn tasks_lists_every_builtin_task_with_an_example() {
    let text = succeeds(&["tasks"]);
    for name in ["addition", "multiplication", "countdown", "sum"] {
        assert!(text.contains(name), "{text}");
    }
    assert_eq!(text.matches("solution:").count(), 4);
    assert_eq!(text.matches("answer:").count(), 4);
}

#[test]
fn report_and_compare_write_self_contained_pages() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    tiny_run(&a);
    tiny_run(&b);
    // A run writes its report at the end; `report` rewrites it.
    let page = std::fs::read_to_string(a.join("report.html")).unwrap();
    assert!(page.starts_with("<!DOCTYPE html>") && page.contains("<svg"));
    assert!(
        !page.contains("<script") && !page.contains("http"),
        "self-contained"
    );
    // Issue 19: a headline with what ran and what it gained, and the held-out curves on one
    // chart.
    assert!(
        page.contains("<p class=\"head\"><b>star</b> on <b>addition</b>"),
        "headline"
    );
    assert!(page.contains("held-out pass@1 <b>"), "headline gain");
    assert!(page.contains("aria-label=\"held-out accuracy (%) by round\""));
    std::fs::remove_file(a.join("report.html")).unwrap();
    let out = succeeds(&["report", a.to_str().unwrap()]);
    assert!(out.trim_end().ends_with("report.html"), "{out}");
    assert!(a.join("report.html").is_file());
    let cmp = tmp.path().join("cmp.html");
    succeeds(&[
        "compare",
        a.to_str().unwrap(),
        b.to_str().unwrap(),
        "--out",
        cmp.to_str().unwrap(),
    ]);
    let page = std::fs::read_to_string(&cmp).unwrap();
    // Issue 19: the page opens with the runs ranked, a table of what each gained and spent,
    // and, beside the curves, what differs: the two runs share one configuration.
    assert!(
        page.contains("<h1>autodidact: 2 runs compared</h1>"),
        "{page}"
    );
    assert!(
        page.contains(" ends highest: held-out pass@1 <b>"),
        "{page}"
    );
    assert!(page.contains("<th>seconds after M0</th><th>sampled tokens</th>"));
    assert!(page.contains("<h3>What differs</h3><p>The runs' configurations are the same.</p>"));
    assert!(page.contains("<h3>Monitors in the last round</h3>"));
    // Bad input names what is wrong.
    let err = fails(&["report", tmp.path().to_str().unwrap()]);
    assert!(err.contains("not an autodidact run"), "{err}");
    let err = fails(&[
        "compare",
        a.to_str().unwrap(),
        b.to_str().unwrap(),
        "--out",
        tmp.path().to_str().unwrap(),
    ]);
    assert!(err.contains("is a directory"), "{err}");
}
