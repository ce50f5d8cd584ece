//! The controller in short runs: a `stop` alarm ends the run (and a resumed run stays
//! stopped), a `rollback` alarm restarts the next round from the best one, and B-STaR
//! balancing records the temperature it chose.

use autodidact_engine::store::{RunDir, RunStatus};
use autodidact_engine::{Run, RunConfig, Silent, DEMO_CONFIG};
use common::manifest;
use std::path::Path;

mod common;

const SMALL: &[&str] = &[
    "task.digits=2",
    "seed_stage.labeled=48",
    "seed_stage.train.steps=60",
    "star.rounds=3",
    "star.problems=32",
    "star.sampling.samples=2",
    "star.train.epochs=1.0",
    "eval.problems=16",
    "eval.sampling.samples=3",
    "eval.k=2",
];

fn run(out: &Path, extra: &[&str]) -> Run {
    common::start(out, SMALL, extra)
}

#[test]
fn a_stop_alarm_ends_the_run_and_it_stays_stopped() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("stop");
    let alarm = r#"controller.alarms=[{kind = "kl_budget", threshold = -1.0, action = "stop"}]"#;
    let rows = run(&out, &[alarm]).execute(&mut Silent).unwrap();
    assert_eq!(rows.iter().map(|r| r.round).collect::<Vec<_>>(), [0, 1]);
    let (_, info) = RunDir::open(&out).unwrap();
    assert_eq!(info.status, RunStatus::Stopped);
    let d = manifest(&out, 1).controller.unwrap();
    assert_eq!(d.alarms.len(), 1);
    assert!(d.stop.unwrap().contains("kl_budget"));
    assert!(!out.join(RunDir::round_dir(2)).exists());
    // Resuming a stopped run does not start round 2.
    let mut again = common::resume(&out);
    assert_eq!(again.execute(&mut Silent).unwrap().len(), 2);
    assert!(!out.join(RunDir::round_dir(2)).exists());
    assert!(out.join("report.html").is_file());
    // The end-of-run summary and the report say what the controller did.
    let data = autodidact_engine::report::RunData::load(&out).unwrap();
    let summary = autodidact_engine::report::text_summary(&data).join("\n");
    assert!(summary.starts_with("monitors by round"), "{summary}");
    // Rows for the rounds of the run's table, 0 and 1, with units in the headers.
    assert!(
        summary.contains("\n| 0 |") && summary.contains("\n| 1 |"),
        "{summary}"
    );
    assert!(summary.contains("KL to M0 (nats/completion)"), "{summary}");
    assert!(
        summary.contains("alarms: kl_budget (rounds 1)"),
        "{summary}"
    );
    assert!(
        summary.contains("stopped after round 1: alarm kl_budget"),
        "{summary}"
    );
    let page = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(page.contains("<h2>Controller</h2>") && page.contains("stop: alarm kl_budget"));
    // Issue 19: the headline's timeline marks round 1 red (stopped), with why on hover.
    assert!(page.contains("<svg class=\"timeline\""), "timeline");
    assert!(
        page.contains("<title>round 1: alarm kl_budget") && page.contains("fill=\"#D55E00\""),
        "the stop is on the timeline"
    );
}

#[test]
fn a_rollback_restarts_from_the_best_round() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("rollback");
    // Fires every round; with the held-out pass@1 of a 60-step M0 the best round so far is
    // whichever the metrics say, and the next round must start from it.
    let alarm =
        r#"controller.alarms=[{kind = "kl_budget", threshold = -1.0, action = "rollback"}]"#;
    run(&out, &[alarm]).execute(&mut Silent).unwrap();
    let dir = RunDir::open(&out).unwrap().0;
    let metrics = dir.metrics().unwrap();
    let pass = |r: u64| {
        metrics
            .iter()
            .find(|m| m.get("round").and_then(|v| v.as_u64()) == Some(r))
            .unwrap()["eval/pass@1"]
            .as_f64()
            .unwrap()
    };
    let best_after_1 = if pass(1) > pass(0) { 1 } else { 0 };
    let d = manifest(&out, 1).controller.unwrap();
    assert_eq!(d.next_parent, (best_after_1 != 1).then_some(best_after_1));
    assert_eq!(
        manifest(&out, 2).parent_checkpoint.unwrap(),
        RunDir::checkpoint_dir(best_after_1)
    );
}

#[test]
fn balancing_records_the_chosen_temperature() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("balance");
    run(
        &out,
        &[
            "controller.balance=true",
            "controller.temperatures=[0.5, 1.5]",
            "controller.probe_problems=8",
            "star.rounds=1",
        ],
    )
    .execute(&mut Silent)
    .unwrap();
    let d = manifest(&out, 1).controller.unwrap();
    assert_eq!(d.probe.len(), 2);
    assert_eq!(d.probe[0].0, 0.5);
    let t = d.temperature.unwrap();
    assert!(t == 0.5 || t == 1.5);
    let best = d.probe.iter().map(|p| p.1).fold(f64::MIN, f64::max);
    assert_eq!(d.probe.iter().find(|p| p.0 == t).unwrap().1, best);
}

#[test]
fn controller_settings_are_checked() {
    let bad = |sets: &[&str], want: &str| {
        let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
        let err = match RunConfig::parse(DEMO_CONFIG, "demo", &sets)
            .and_then(|c| c.plan(&common::backends()))
        {
            Ok(_) => panic!("{sets:?} should fail"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains(want), "{err}");
    };
    bad(
        &["recipe=grpo", "controller.balance=true"],
        "config key `controller.balance`: B-STaR balancing steers the star recipe",
    );
    bad(
        &["controller.balance=true", "controller.temperatures=[]"],
        "needs at least one temperature",
    );
    bad(
        &[r#"controller.alarms=[{kind = "kl", threshold = 1.0}]"#],
        "unknown variant `kl`",
    );
}
