//! Issue 19: every run writes TensorBoard event files beside its metrics. Each journaled
//! metrics line (the seed stage's steps and every round) is one event of scalars, the config
//! one text event; every record's CRCs hold, and the file is rewritten, not appended to, so a
//! resume leaves it as it was. (TensorBoard's own reader is run by hand:
//! scripts/check-tensorboard.py, docs/monitors.md.)

mod common;

use autodidact_engine::tensorboard::{records, TENSORBOARD_DIR};
use common::ok;
use std::path::Path;

fn event_file(run: &Path) -> Vec<u8> {
    let dir = run.join(TENSORBOARD_DIR);
    let files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    let name = files[0].file_name().unwrap().to_string_lossy().into_owned();
    assert!(name.starts_with("events.out.tfevents."), "{name}");
    std::fs::read(&files[0]).unwrap()
}

#[test]
fn issue19_a_run_writes_every_metric_as_tensorboard_events() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let mut args = vec!["run", "--quiet", "--out", run.to_str().unwrap()];
    for set in [
        "task.digits=1",
        "seed_stage.labeled=8",
        "seed_stage.train.steps=10",
        "seed_stage.eval_every=5",
        "star.rounds=1",
        "star.problems=4",
        "eval.problems=4",
        "eval.sampling.samples=2",
        "eval.k=2",
    ] {
        args.extend(["--set", set]);
    }
    ok(&args);
    let bytes = event_file(&run);
    let events = records(&bytes).expect("every record's CRCs hold");
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = metrics
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|v: &serde_json::Value| v.get("round").is_some() || v.get("seed/step").is_some())
        .collect();
    // The version event, the config, then one event per line: seed steps 5 and 10, rounds 0 and 1.
    assert_eq!(lines.len(), 4, "{metrics}");
    assert_eq!(events.len(), 2 + lines.len());
    assert!(events[0].windows(13).any(|w| w == b"brain.Event:2"));
    let config = std::fs::read(run.join("config.toml")).unwrap();
    assert!(events[1].windows(config.len()).any(|w| w == config));
    for (event, line) in events[2..].iter().zip(&lines) {
        for key in line.as_object().unwrap().keys() {
            if key != "round" && key != "seed/step" {
                assert!(
                    event.windows(key.len()).any(|w| w == key.as_bytes()),
                    "{key} missing from its event"
                );
            }
        }
    }
    // A resume of the finished run rewrites the file, to the same bytes; one from before
    // event files existed gets its own.
    std::fs::remove_dir_all(run.join(TENSORBOARD_DIR)).unwrap();
    ok(&["resume", run.to_str().unwrap()]);
    assert_eq!(event_file(&run), bytes);
}
