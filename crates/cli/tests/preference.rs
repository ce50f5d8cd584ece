//! Short runs of the preference recipes through the library API: pairs and truth metrics are
//! written every round, a round without pairs does not crash, and the self-judge is scored.

use autodidact_engine::pairs::Pair;
use autodidact_engine::run::Manifest;
use autodidact_engine::store::RunDir;
use autodidact_engine::{Run, Silent};
use std::path::Path;

mod common;

/// A few seconds per recipe: 2-digit addition, 2 rounds of 48 problems × 4 samples.
const SMALL: &[&str] = &[
    "task.digits=2",
    "seed_stage.labeled=48",
    "seed_stage.train.steps=200",
    "pref.rounds=2",
    "pref.problems=48",
    "pref.sampling.samples=4",
    "pref.pairs_per_problem=2",
    "pref.sft_coef=1.0",
    "pref.train.epochs=1.0",
    "pref.train.batch_size=8",
    "eval.problems=16",
    "eval.sampling.samples=3",
    "eval.k=2",
];

fn run(out: &Path, recipe: &str, extra: &[&str]) -> (Run, Vec<Manifest>) {
    let recipe = format!("recipe={recipe}");
    let extra: Vec<&str> = extra.iter().copied().chain([recipe.as_str()]).collect();
    let mut run = common::start(out, SMALL, &extra);
    let rows = run.execute(&mut Silent).unwrap();
    assert_eq!(rows.len(), 3, "{recipe}");
    let manifests = (1..=2u32).map(|r| common::manifest(out, r)).collect();
    (run, manifests)
}

fn pairs(out: &Path, round: u32) -> Vec<Pair> {
    RunDir::open(out)
        .unwrap()
        .0
        .read_jsonl(&format!("{}/train.jsonl", RunDir::round_dir(round)))
        .unwrap()
}

#[test]
fn dpo_verified_pairs_correct_over_incorrect() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("dv");
    let (_, ms) = run(&out, "dpo-verified", &[]);
    let p = pairs(&out, 1);
    assert!(!p.is_empty());
    assert!(p.iter().all(|p| p.chosen_correct && !p.rejected_correct));
    let m = ms[0].metrics.as_ref().unwrap();
    assert_eq!(m["pairs/chosen_gold_accuracy"], 1.0);
    assert_eq!(m["pairs/count"], p.len() as f64);
    for k in [
        "rewards/chosen",
        "rewards/rejected",
        "rewards/accuracies",
        "rewards/margins",
        "logps/chosen",
        "logps/rejected",
        "dpo/chosen_nll",
    ] {
        assert!(m[k].is_finite(), "{k}");
    }
    assert!(
        !m.contains_key("proxy/reward"),
        "the gold verifier is no proxy"
    );
}

#[test]
fn scpo_records_vote_truth_and_survives_a_round_without_pairs() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("scpo");
    let (_, ms) = run(&out, "scpo", &[]);
    let m = ms[0].metrics.as_ref().unwrap();
    for k in [
        "vote/majority_accuracy",
        "proxy/reward",
        "gold/reward",
        "pairs/chosen_gold_accuracy",
    ] {
        assert!(m[k].is_finite(), "{k}");
    }
    // Groups are one sample each from the vote's point of view when every group is
    // unanimous: greedy sampling gives no pair anywhere, and the round still completes.
    let out = tmp.path().join("greedy");
    let (_, ms) = run(&out, "scpo", &["pref.sampling.temperature=0"]);
    for m in &ms {
        let m = m.metrics.as_ref().unwrap();
        assert_eq!(m["pairs/count"], 0.0);
        assert_eq!(m["pairs/groups_without_pair"], 48.0);
        assert!(m["pairs/no_pair/unanimous"] > 0.0);
    }
    assert!(pairs(&out, 2).is_empty());
}

#[test]
fn spin_pairs_gold_over_own_generation() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("spin");
    let (_, ms) = run(&out, "spin", &[]);
    let p = pairs(&out, 1);
    assert!(p.iter().all(|p| p.chosen != p.rejected && p.chosen_correct));
    assert!(ms[1].metrics.as_ref().unwrap()["pairs/rejected_gold_accuracy"].is_finite());
}

#[test]
fn self_rewarding_judges_and_reports_judge_accuracy() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("sr");
    let (_, ms) = run(&out, "self-rewarding", &["pref.judge_margin=0.1"]);
    for (r, m) in ms.iter().enumerate() {
        let m = m.metrics.as_ref().unwrap();
        let acc = m["judge/accuracy"];
        assert!((0.0..=1.0).contains(&acc), "round {}: {acc}", r + 1);
        assert!(m["judge/mean_score"] > 0.0 && m["judge/mean_score"] < 1.0);
        assert!(out
            .join(RunDir::round_dir(r as u32 + 1))
            .join("judge.jsonl")
            .is_file());
    }
    // The seed stage trained judge examples beside the demonstrations.
    let seed: Vec<serde_json::Value> = RunDir::open(&out)
        .unwrap()
        .0
        .read_jsonl(&format!("{}/train.jsonl", RunDir::round_dir(0)))
        .unwrap();
    assert!(seed
        .iter()
        .any(|e| e["prompt"].as_str().unwrap().starts_with('?')));
}

#[test]
fn a_self_rewarding_run_resumed_mid_round_matches_an_uninterrupted_one() {
    // Crashes inside round 2, after its pairs (and judge examples) were written but before it
    // trained: the resumed run must end with the same files as a run that never stopped.
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    let extra = ["pref.judge_margin=0.1"];
    run(&a, "self-rewarding", &extra);
    // seed, eval 0, sample 1, train 1, eval 1, sample 2 | train 2, eval 2
    let recipe = ["recipe=self-rewarding"];
    let sets: Vec<&str> = extra.iter().chain(&recipe).copied().collect();
    common::start(&b, SMALL, &sets)
        .execute_until(6, &mut Silent)
        .unwrap();
    assert!(!b.join("checkpoints/r0002").exists());
    let mut resumed = common::resume(&b);
    resumed.execute(&mut Silent).unwrap();
    common::assert_same_files(
        &a,
        &b,
        &[
            "metrics.jsonl",
            "rounds/r0002/train.jsonl",
            "rounds/r0002/judge.jsonl",
            "rounds/r0002/manifest.json",
            "checkpoints/r0002/model.safetensors",
        ],
    );
}
