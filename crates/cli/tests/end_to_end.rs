//! A short run through the library API: every file of the run directory (docs/design.md) is there,
//! its manifest agrees with its files, and a second run with the same seed is identical.

use autodidact_engine::run::Manifest;
use autodidact_engine::store::{sha256_file, RunDir};
use autodidact_engine::{Run, Silent};
use std::path::Path;

mod common;

/// Settings that make the demo a few seconds long.
pub const SMALL: &[&str] = &[
    "task.digits=2",
    "seed_stage.labeled=48",
    "seed_stage.eval_every=20",
    "seed_stage.train.steps=60",
    "star.rounds=2",
    "star.problems=64",
    "star.sampling.samples=2",
    "star.train.epochs=1.0",
    "eval.problems=16",
    "eval.sampling.samples=3",
    "eval.k=2",
];

/// A short GRPO run on top of [`SMALL`]: 2 rounds of 2 steps of 8 prompts × 4 completions.
const SMALL_GRPO: &[&str] = &[
    "recipe=grpo",
    "rl.rounds=2",
    "rl.steps_per_round=2",
    "rl.problems=64",
    "rl.prompts_per_step=8",
    "rl.sampling.samples=4",
    "rl.minibatches=2",
];

/// A short step-pg run on top of [`SMALL`]: 1 round over 32 problems × 3 samples, 2
/// continuations per step prefix.
const SMALL_STEP: &[&str] = &[
    "recipe=step-pg",
    "step.rounds=1",
    "step.problems=32",
    "step.sampling.samples=3",
    "step.rollouts=2",
    "step.epochs=1",
    "step.batch_size=16",
];

/// A short score run on top of [`SMALL`]: a stage I round and a stage II round over 24
/// problems × 2 episodes.
const SMALL_SCORE: &[&str] = &[
    "recipe=score",
    "correct.rounds=2",
    "correct.problems=24",
    "correct.sampling.samples=2",
    "correct.score.epochs=1",
    "correct.score.batch_size=16",
    "correct.score.micro_batch_size=16",
];

fn small_grpo_run(out: &Path, extra: &[&str]) -> Run {
    let sets: Vec<&str> = SMALL_GRPO.iter().chain(extra).copied().collect();
    small_run(out, &sets)
}

fn small_run(out: &Path, extra: &[&str]) -> Run {
    common::start(out, SMALL, extra)
}

#[test]
fn short_run_writes_the_documented_layout() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("run");
    let rows = small_run(&root, &["star.rationalize=true"])
        .execute(&mut Silent)
        .unwrap();
    assert_eq!(rows.iter().map(|r| r.round).collect::<Vec<_>>(), [0, 1, 2]);
    for f in ["config.toml", "run.json", "journal.jsonl", "metrics.jsonl"] {
        assert!(root.join(f).is_file(), "{f}");
    }
    let dir = RunDir::open(&root).unwrap().0;
    for r in 0..=2u32 {
        let rd = RunDir::round_dir(r);
        let m: Manifest = dir.read_json(&format!("{rd}/manifest.json")).unwrap();
        assert_eq!(m.round, r);
        assert!(m.eval.is_some());
        for (rel, hash) in &m.files {
            assert_eq!(&sha256_file(&root.join(rel)).unwrap(), hash, "{rel}");
        }
        let ck = root.join(RunDir::checkpoint_dir(r));
        for f in ["model.safetensors", "config.json", "tokenizer.json"] {
            assert!(ck.join(f).is_file(), "round {r}: {f}");
        }
        if r > 0 {
            for f in ["samples.jsonl", "train.jsonl", "eval.json"] {
                assert!(root.join(&rd).join(f).is_file(), "round {r}: {f}");
            }
            let c: autodidact_engine::recipes::star::Counts =
                serde_json::from_value(m.counts.unwrap()).unwrap();
            assert_eq!(c.sampled, 64 * 2);
            assert!(c.correct >= c.distinct && c.kept == c.distinct + c.rationalized);
            assert_eq!(m.parent_checkpoint.unwrap(), RunDir::checkpoint_dir(r - 1));
            assert_eq!(m.init_checkpoint.unwrap(), RunDir::checkpoint_dir(r - 1));
            // train.jsonl holds TRL's prompt/completion fields.
            let first = std::fs::read_to_string(root.join(&rd).join("train.jsonl")).unwrap();
            if let Some(line) = first.lines().next() {
                let v: serde_json::Value = serde_json::from_str(line).unwrap();
                assert!(v["prompt"].is_string() && v["completion"].is_string());
            }
        }
    }
    let metrics = dir.metrics().unwrap();
    let curve: Vec<_> = metrics.iter().filter_map(|m| m.get("seed/step")).collect();
    assert_eq!(curve.len(), 3, "seed-only curve at steps 20, 40, 60");
    for m in metrics.iter().filter(|m| m.get("round").is_some()) {
        for key in ["eval/pass@1", "eval/pass@k", "eval/maj@k"] {
            let v = m[key].as_f64().unwrap();
            assert!((0.0..=1.0).contains(&v), "{key} = {v}");
        }
        // Monitors: drift on the held-out samples every round, the training-sample
        // monitors from round 1 (the seed stage samples nothing).
        let round = m["round"].as_u64().unwrap();
        let mut keys = vec![
            "drift/mean_length",
            "drift/token_entropy",
            "gap/maj_minus_pass1",
        ];
        if round > 0 {
            keys.extend([
                "drift/kl_to_seed",
                "drift/kl_to_previous",
                "explore/pass@1",
                "explore/pass@2",
                "explore/distinct_correct_traces",
                "explore/answer_entropy",
                "explore/distinct_3grams",
                "gap/best_of_n",
            ]);
        }
        for key in keys {
            let v = m.get(key).and_then(|v| v.as_f64());
            assert!(
                v.is_some_and(f64::is_finite),
                "round {round}: {key} = {v:?}"
            );
        }
        if round > 0 {
            assert!(m["drift/kl_to_seed"].as_f64().unwrap() >= 0.0);
            // Star selects verified-correct samples: its curation never picks a wrong one.
            if let Some(p) = m.get("exploit/precision") {
                assert_eq!(p.as_f64().unwrap(), 1.0);
            }
        }
    }
    // The run is complete; resuming it changes nothing.
    let before = std::fs::read(root.join("metrics.jsonl")).unwrap();
    let mut again = common::resume(&root);
    again.execute(&mut Silent).unwrap();
    assert_eq!(std::fs::read(root.join("metrics.jsonl")).unwrap(), before);
}

#[test]
fn same_seed_same_numbers_and_rest_em_restarts_from_m0() {
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("a");
    let b = tmp.path().join("b");
    let sets = ["star.rounds=2", "star.restart_from=seed"];
    small_run(&a, &sets).execute(&mut Silent).unwrap();
    small_run(&b, &sets).execute(&mut Silent).unwrap();
    let dir = RunDir::open(&a).unwrap().0;
    let m: Manifest = dir.read_json("rounds/r0002/manifest.json").unwrap();
    assert_eq!(m.parent_checkpoint.as_deref(), Some("checkpoints/r0001"));
    assert_eq!(m.init_checkpoint.as_deref(), Some("checkpoints/r0000"));
    let read = |p: &Path| std::fs::read(p.join("metrics.jsonl")).unwrap();
    assert_eq!(read(&a), read(&b));
    let ck = |p: &Path| sha256_file(&p.join("checkpoints/r0002/model.safetensors")).unwrap();
    assert_eq!(ck(&a), ck(&b));
}

#[test]
fn short_grpo_run_logs_trl_metrics() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("grpo");
    let sets = [
        "rl.beta=0.05",
        "rl.entropy_coef=0.01",
        "rl.reference=previous",
        "rl.sft_coef=0.5",
    ];
    let rows = small_grpo_run(&root, &sets).execute(&mut Silent).unwrap();
    assert_eq!(rows.len(), 3);
    let dir = RunDir::open(&root).unwrap().0;
    let line = dir
        .metrics()
        .unwrap()
        .into_iter()
        .find(|m| m.get("round") == Some(&2.into()))
        .unwrap();
    for key in [
        "reward",
        "reward_std",
        "frac_reward_zero_std",
        "kl",
        "entropy",
        "clip_ratio/low_mean",
        "clip_ratio/high_mean",
        "clip_ratio/region_mean",
        "completions/mean_length",
        "completions/clipped_ratio",
        "pg/loss",
        "pg/grad_norm",
        "pg/advantage_mean",
        "eval/pass@1",
        "explore/pass@4",
        "pg/sft_loss",
        "gap/best_of_n",
        "drift/kl_to_previous",
    ] {
        let v = line
            .get(key)
            .and_then(|v| v.as_f64())
            .unwrap_or_else(|| panic!("{key} missing in {line}"));
        assert!(v.is_finite(), "{key} = {v}");
    }
    // Group advantages are centred, and with β > 0 the policy has moved away from the reference.
    assert!(line["pg/advantage_mean"].as_f64().unwrap().abs() < 1e-5);
    assert!(line["kl"].as_f64().unwrap() >= 0.0);
    let m: Manifest = dir.read_json("rounds/r0002/manifest.json").unwrap();
    assert_eq!(m.recipe, "grpo");
    assert_eq!(
        m.settings.unwrap()["reference_checkpoint"],
        "checkpoints/r0001"
    );
    // AdamW state travels with the checkpoints, for keep_optimizer.
    assert!(root
        .join("checkpoints/r0002/optimizer.safetensors")
        .is_file());
    let samples = std::fs::read_to_string(root.join("rounds/r0001/samples.jsonl")).unwrap();
    assert_eq!(samples.lines().count(), 2 * 8 * 4);
}

#[test]
fn a_grpo_run_resumed_mid_way_matches_an_uninterrupted_one() {
    // Round 2 continues round 1's AdamW state from its checkpoint; replaying round 2 after a
    // crash must give the same numbers as running straight through.
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("a");
    let b = tmp.path().join("b");
    small_grpo_run(&a, &[]).execute(&mut Silent).unwrap();
    // Crash of b during round 2: the journal ends after round 1's eval stage.
    small_grpo_run(&b, &[])
        .execute_until(4, &mut Silent)
        .unwrap();
    let mut resumed = common::resume(&b);
    resumed.execute(&mut Silent).unwrap();
    common::assert_same_files(
        &a,
        &b,
        &[
            "metrics.jsonl",
            "rounds/r0002/samples.jsonl",
            "checkpoints/r0002/model.safetensors",
            "checkpoints/r0002/optimizer.safetensors",
        ],
    );
}

/// RAFT through the recipe seam: each round keeps at most one completion per problem, every
/// kept one is verified correct (threshold 1 on the verifier's score), and the table's
/// columns come from the recipe.
#[test]
fn a_short_raft_run_keeps_one_correct_completion_per_problem() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("raft");
    let mut run = small_run(
        &root,
        &[
            "recipe=raft",
            "raft.rounds=1",
            "raft.problems=32",
            "raft.sampling.samples=3",
        ],
    );
    let rows = run.execute(&mut Silent).unwrap();
    assert_eq!(rows.len(), 2);
    let headers: Vec<&str> = run.columns().iter().map(|c| c.header).collect();
    assert_eq!(headers, ["kept", "best reward"]);
    let dir = RunDir::open(&root).unwrap().0;
    let kept: Vec<serde_json::Value> = dir
        .read_jsonl(&format!("{}/train.jsonl", RunDir::round_dir(1)))
        .unwrap();
    let samples: Vec<serde_json::Value> = dir
        .read_jsonl(&format!("{}/samples.jsonl", RunDir::round_dir(1)))
        .unwrap();
    assert_eq!(samples.len(), 32 * 3);
    let mut prompts = std::collections::HashSet::new();
    for k in &kept {
        assert!(
            prompts.insert(k["prompt"].as_str().unwrap().to_string()),
            "one per problem"
        );
        assert!(samples.iter().any(|s| s["prompt"] == k["prompt"]
            && s["completion"] == k["completion"]
            && s["grade"] == "correct"));
    }
    let line = dir.metrics().unwrap().last().unwrap().clone();
    assert_eq!(line["raft/kept"].as_f64().unwrap() as usize, kept.len());
}

/// Issue 20: step-level credit through the recipe seam. Every rollout line of a round carries
/// an advantage per token; within a step the tokens share one, and the steps' advantages add
/// up to the completion's outcome advantage (its reward less the group's mean), because
/// they are differences of consecutive step values. The round logs what it continued.
#[test]
fn issue20_a_short_step_pg_run_trains_on_per_token_advantages() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("step");
    let mut run = small_run(&root, SMALL_STEP);
    let rows = run.execute(&mut Silent).unwrap();
    assert_eq!(rows.len(), 2);
    let headers: Vec<&str> = run.columns().iter().map(|c| c.header).collect();
    assert_eq!(headers, ["trained", "prefixes continued"]);
    let dir = RunDir::open(&root).unwrap().0;
    let rd = RunDir::round_dir(1);
    let samples: Vec<serde_json::Value> = dir.read_jsonl(&format!("{rd}/samples.jsonl")).unwrap();
    assert_eq!(samples.len(), 32 * 3);
    let lines: Vec<serde_json::Value> = dir.read_jsonl(&format!("{rd}/train.jsonl")).unwrap();
    assert!(!lines.is_empty(), "some completion carries credit");
    for l in &lines {
        let ids = l["completion_ids"].as_array().unwrap();
        let adv: Vec<f64> = l["token_advantages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_f64().unwrap())
            .collect();
        assert_eq!(adv.len(), ids.len());
        assert!(adv.iter().any(|&a| a != 0.0));
        // The tiny model's tokens are characters (then the stop token); a step ends after
        // each `;` or `#`.
        let text = l["completion"].as_str().unwrap();
        let mut per_step = Vec::new();
        let mut start = true;
        for (i, ch) in text.chars().enumerate() {
            if start {
                per_step.push(adv[i]);
            }
            assert!((adv[i] - per_step.last().unwrap()).abs() < 1e-6, "{l}");
            start = ch == ';' || ch == '#';
        }
        let sum: f64 = per_step.iter().sum();
        assert!((sum - l["advantage"].as_f64().unwrap()).abs() < 1e-5, "{l}");
    }
    let line = dir.metrics().unwrap().last().unwrap().clone();
    assert_eq!(line["step/trained"].as_f64().unwrap() as usize, lines.len());
    assert!(line["step/prefixes"].as_f64().unwrap() > 0.0);
    let hit = line["step/cache_hit_rate"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&hit), "{hit}");
    assert!(common::manifest(&root, 1).train.is_some());
}

/// Issue 20: a step-pg run killed between its sample and train stages resumes to the same
/// training set, model and numbers as one that ran straight through.
#[test]
fn issue20_a_step_pg_run_resumed_after_its_sample_stage_matches() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    small_run(&a, SMALL_STEP).execute(&mut Silent).unwrap();
    // The journal ends after round 1's sample stage (seed, sample).
    small_run(&b, SMALL_STEP)
        .execute_until(2, &mut Silent)
        .unwrap();
    common::resume(&b).execute(&mut Silent).unwrap();
    common::assert_same_files(
        &a,
        &b,
        &[
            "metrics.jsonl",
            "rounds/r0001/train.jsonl",
            "checkpoints/r0001/model.safetensors",
        ],
    );
}

/// Issue 20: a short score run trains both attempts of its episodes (first attempts under the
/// problem's prompt, second attempts under the prompt, the first attempt and the review
/// marker), in stage I then stage II, and every round's evaluation measures the held-out
/// episodes: the greedy first attempt is the evaluation's greedy completion, so
/// accuracy@t1 is pass@1, and Δ(t1, t2) = Δ(i→c) − Δ(c→i).
#[test]
fn issue20_a_short_score_run_trains_both_attempts_and_measures_the_deltas() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("score");
    let mut run = small_run(&root, SMALL_SCORE);
    let rows = run.execute(&mut Silent).unwrap();
    assert_eq!(rows.len(), 3);
    let headers: Vec<&str> = run.columns().iter().map(|c| c.header).collect();
    assert_eq!(headers, ["acc@t2", "Δ(t1,t2)", "i→c", "c→i", "changed"]);
    let dir = RunDir::open(&root).unwrap().0;
    let lines = dir.metrics().unwrap();
    let rounds: Vec<&serde_json::Value> =
        lines.iter().filter(|l| l.get("round").is_some()).collect();
    assert_eq!(rounds.len(), 3);
    for (r, line) in rounds.iter().enumerate() {
        let f = |k: &str| {
            line[k]
                .as_f64()
                .unwrap_or_else(|| panic!("round {r}: {k} in {line}"))
        };
        assert_eq!(f("eval/accuracy@t1"), f("eval/pass@1"), "round {r}");
        assert!((f("eval/delta") - (f("eval/delta_i_to_c") - f("eval/delta_c_to_i"))).abs() < 1e-9);
        assert!((0.0..=1.0).contains(&f("eval/changed")));
        assert!((0.0..=1.0).contains(&f("eval_sampled/accuracy@t2")));
        let rd = RunDir::round_dir(r as u32);
        let episodes: Vec<serde_json::Value> = dir
            .read_jsonl(&format!("{rd}/eval-episodes.jsonl"))
            .unwrap();
        let eval: serde_json::Value = dir.read_json(&format!("{rd}/eval.json")).unwrap();
        assert_eq!(episodes.len(), 16);
        for (e, d) in episodes.iter().zip(eval["details"].as_array().unwrap()) {
            assert_eq!(e["first"], d["greedy"]);
        }
    }
    for (r, stage) in [(1u32, 1.0), (2, 2.0)] {
        assert_eq!(rounds[r as usize]["score/stage"].as_f64(), Some(stage));
        let rd = RunDir::round_dir(r);
        let train: Vec<serde_json::Value> = dir.read_jsonl(&format!("{rd}/train.jsonl")).unwrap();
        let episodes: Vec<serde_json::Value> =
            dir.read_jsonl(&format!("{rd}/episodes.jsonl")).unwrap();
        assert_eq!(episodes.len(), 24 * 2);
        assert!(!train.is_empty());
        let seconds = train
            .iter()
            .filter(|l| l["prompt"].as_str().unwrap().ends_with('↺'))
            .count();
        assert!(seconds > 0, "round {r} trains second attempts");
        for l in &train {
            // A line trains its advantage, its KL term or both; stage I holds first attempts
            // to M0 harder (0.1) than second attempts (0.01).
            let coef = l["kl_coef"].as_f64().unwrap();
            let second = l["prompt"].as_str().unwrap().ends_with('↺');
            let want = if r == 1 && !second { 0.1 } else { 0.01 };
            assert!((coef - want).abs() < 1e-6, "round {r}: {l}");
            assert!(l["advantage"].as_f64().unwrap() != 0.0 || coef > 0.0);
            assert_eq!(
                l["completion_ids"].as_array().unwrap().len(),
                l["old_logprobs"].as_array().unwrap().len()
            );
        }
        assert!(common::manifest(&root, r).train.is_some());
    }
}

/// Issue 20: correction-sft trains the second attempt on M0's wrong first attempts, each
/// followed by a correct sample of the same problem; resumed after its sample stage, it ends
/// as a run straight through does.
#[test]
fn issue20_correction_sft_pairs_wrong_attempts_with_right_ones_and_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    // M0 trained long enough to solve some problems and miss others.
    let sets = [
        "seed_stage.train.steps=400",
        "recipe=correction-sft",
        "correct.rounds=1",
        "correct.problems=48",
        "correct.sampling.samples=4",
        "correct.sft.train.epochs=1.0",
    ];
    small_run(&a, &sets).execute(&mut Silent).unwrap();
    let dir = RunDir::open(&a).unwrap().0;
    let samples: Vec<serde_json::Value> = dir.read_jsonl("rounds/r0001/samples.jsonl").unwrap();
    let train: Vec<serde_json::Value> = dir.read_jsonl("rounds/r0001/train.jsonl").unwrap();
    assert!(!train.is_empty(), "M0 solves some problems and misses some");
    let grade = |prompt: &str, text: &str| {
        samples
            .iter()
            .find(|s| s["prompt"] == prompt && s["completion"] == text)
            .map(|s| s["grade"].as_str().unwrap().to_string())
    };
    for e in &train {
        let (prompt, fix) = (
            e["prompt"].as_str().unwrap(),
            e["completion"].as_str().unwrap(),
        );
        let body = prompt
            .strip_suffix('↺')
            .expect("a second prompt ends in the marker");
        let eq = body.find('=').unwrap();
        let (problem, wrong) = body.split_at(eq + 1);
        let first = grade(problem, wrong);
        assert!(
            matches!(first.as_deref(), Some("incorrect" | "ungradable")),
            "{prompt}: {first:?}"
        );
        assert_eq!(grade(problem, fix).as_deref(), Some("correct"), "{fix}");
    }
    let line = dir.metrics().unwrap().last().unwrap().clone();
    assert_eq!(
        line["correct/examples"].as_f64().unwrap() as usize,
        train.len()
    );
    small_run(&b, &sets).execute_until(2, &mut Silent).unwrap();
    common::resume(&b).execute(&mut Silent).unwrap();
    common::assert_same_files(
        &a,
        &b,
        &[
            "metrics.jsonl",
            "rounds/r0001/train.jsonl",
            "rounds/r0001/eval-episodes.jsonl",
            "checkpoints/r0001/model.safetensors",
        ],
    );
    // Its M0 knows the review marker, not s2r's verification: starting s2r from it fails
    // before any work, naming the checkpoint.
    let sets: Vec<String> = SMALL
        .iter()
        .map(|s| s.to_string())
        .chain([
            "recipe=s2r".into(),
            format!("model.checkpoint={}", a.join("checkpoints/r0000").display()),
            "seed_stage.train.steps=0".into(),
        ])
        .collect();
    let err = autodidact_engine::RunConfig::parse(autodidact_engine::DEMO_CONFIG, "demo", &sets)
        .unwrap()
        .plan(&common::backends())
        .err()
        .expect("a checkpoint without the verification's characters");
    let text = err.to_string();
    assert!(
        text.contains("model.checkpoint") && text.contains("¿"),
        "{text}"
    );
}

/// Issue 20: s2r verifies before it corrects. Round 1 initializes the behaviour on M0's own
/// first attempts (each verified as the verifier grades it, each wrong one corrected with a
/// right sample); round 2 trains every action with process rewards. Every round's held-out
/// episodes hold a second attempt exactly where the verification said `N`.
#[test]
fn issue20_a_short_s2r_run_verifies_then_corrects() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("s2r");
    let mut run = small_run(
        &root,
        &[
            // M0 right on some of its samples and wrong on others.
            "seed_stage.labeled=200",
            "seed_stage.eval_every=100",
            "seed_stage.train.steps=400",
            "recipe=s2r",
            "model.context_length=72",
            "correct.rounds=2",
            "correct.problems=40",
            "correct.sampling.samples=4",
            "correct.s2r.init_rounds=1",
            "correct.s2r.reward=process",
            "correct.sft.train.epochs=1.0",
            "correct.score.epochs=1",
            "correct.score.batch_size=16",
            "correct.score.micro_batch_size=16",
        ],
    );
    let rows = run.execute(&mut Silent).unwrap();
    assert_eq!(rows.len(), 3);
    let headers: Vec<&str> = run.columns().iter().map(|c| c.header).collect();
    assert_eq!(
        headers,
        ["acc@t2", "Δ(t1,t2)", "verify acc", "flagged", "changed"]
    );
    let dir = RunDir::open(&root).unwrap().0;
    let lines = dir.metrics().unwrap();
    let rounds: Vec<&serde_json::Value> =
        lines.iter().filter(|l| l.get("round").is_some()).collect();
    for (r, line) in rounds.iter().enumerate() {
        let f = |k: &str| line[k].as_f64().unwrap_or_else(|| panic!("round {r}: {k}"));
        assert_eq!(f("eval/accuracy@t1"), f("eval/pass@1"), "round {r}");
        assert!((0.0..=1.0).contains(&f("eval/verify_accuracy")));
        assert!((0.0..=1.0).contains(&f("eval_sampled/verify_flagged")));
        let episodes: Vec<serde_json::Value> = dir
            .read_jsonl(&format!(
                "{}/eval-episodes.jsonl",
                RunDir::round_dir(r as u32)
            ))
            .unwrap();
        assert_eq!(episodes.len(), 16);
        let flagged = episodes
            .iter()
            .filter(|e| e["says_right"] == serde_json::json!(false))
            .count();
        for e in &episodes {
            assert_eq!(
                e.get("second").is_some(),
                e["says_right"] == serde_json::json!(false),
                "{e}"
            );
        }
        assert!((f("eval/verify_flagged") - flagged as f64 / 16.0).abs() < 1e-9);
    }
    // Round 1: behaviour initialization from M0's graded samples.
    let samples: Vec<serde_json::Value> = dir.read_jsonl("rounds/r0001/samples.jsonl").unwrap();
    let grade = |prompt: &str, text: &str| {
        samples
            .iter()
            .find(|s| s["prompt"] == prompt && s["completion"] == text)
            .map(|s| s["grade"] == "correct")
    };
    let init: Vec<serde_json::Value> = dir.read_jsonl("rounds/r0001/train.jsonl").unwrap();
    let (mut checks, mut fixes) = (0, 0);
    for e in &init {
        let (prompt, completion) = (
            e["prompt"].as_str().unwrap(),
            e["completion"].as_str().unwrap(),
        );
        let eq = prompt.find('=').unwrap() + 1;
        if let Some(body) = prompt.strip_suffix('¿') {
            let right = grade(&body[..eq], &body[eq..]).expect("a sampled first attempt");
            assert_eq!(completion, if right { "Y" } else { "N" });
            checks += 1;
        } else {
            let body = prompt.strip_suffix("¿N↺").expect("a correction after N");
            assert_eq!(grade(&body[..eq], &body[eq..]), Some(false));
            assert_eq!(grade(&body[..eq], completion), Some(true));
            fixes += 1;
        }
    }
    assert!(
        checks > 0 && fixes > 0,
        "{checks} checks, {fixes} corrections"
    );
    // Round 2: every action a rollout line, at the KL coefficient β.
    let train: Vec<serde_json::Value> = dir.read_jsonl("rounds/r0002/train.jsonl").unwrap();
    assert!(train
        .iter()
        .any(|l| l["prompt"].as_str().unwrap().ends_with('¿')));
    for l in &train {
        assert!((l["kl_coef"].as_f64().unwrap() - 0.01).abs() < 1e-6);
        if l["prompt"].as_str().unwrap().ends_with('¿') {
            let reward = l["reward"].as_f64().unwrap();
            assert!(reward == 0.0 || reward == 1.0, "{l}");
        }
    }
    assert_eq!(
        rounds[2]["s2r/trained"].as_f64().unwrap() as usize,
        train.len()
    );
    assert!(common::manifest(&root, 2).train.is_some());
}

/// Issue 20: first-pit pairs extend the prompt by the steps of a sampled wrong completion
/// before its first pit, and reject that completion's own remainder.
#[test]
fn issue20_a_short_first_pit_run_pairs_at_the_pit() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("pit");
    let sets: Vec<&str> = SMALL_STEP
        .iter()
        .copied()
        .chain([
            "seed_stage.train.steps=400",
            "recipe=first-pit",
            "step.problems=48",
            "step.sampling.samples=4",
        ])
        .collect();
    let mut run = small_run(&root, &sets);
    run.execute(&mut Silent).unwrap();
    let headers: Vec<&str> = run.columns().iter().map(|c| c.header).collect();
    assert_eq!(headers, ["pairs", "prefixes continued"]);
    let dir = RunDir::open(&root).unwrap().0;
    let samples: Vec<serde_json::Value> = dir.read_jsonl("rounds/r0001/samples.jsonl").unwrap();
    let pairs: Vec<serde_json::Value> = dir.read_jsonl("rounds/r0001/train.jsonl").unwrap();
    assert!(
        !pairs.is_empty(),
        "some wrong sample has a pit with a right way on"
    );
    for p in &pairs {
        let (prompt, rejected) = (
            p["prompt"].as_str().unwrap(),
            p["rejected"].as_str().unwrap(),
        );
        let source = samples
            .iter()
            .find(|s| {
                s["grade"] != "correct"
                    && format!(
                        "{}{}",
                        s["prompt"].as_str().unwrap(),
                        s["completion"].as_str().unwrap()
                    ) == format!("{prompt}{rejected}")
            })
            .unwrap_or_else(|| panic!("no wrong sample is {prompt}{rejected}"));
        let prefix = &prompt[source["prompt"].as_str().unwrap().len()..];
        assert!(
            prefix.is_empty() || prefix.ends_with([';', '#']),
            "{prefix}"
        );
        assert_ne!(p["chosen"], p["rejected"]);
    }
    let line = dir.metrics().unwrap().last().unwrap().clone();
    assert_eq!(line["step/pairs"].as_f64().unwrap() as usize, pairs.len());
    assert!(
        line["rewards/accuracies"].as_f64().is_some(),
        "the pairs trained with DPO"
    );
}

/// Issue 20: a short tree search samples `expansions × rollouts` traces of every problem,
/// each a whole trace from the prompt, and trains on the distinct right ones.
#[test]
fn issue20_a_short_tree_search_trains_on_the_right_traces_it_found() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("tree");
    let sets = [
        "seed_stage.train.steps=400",
        "recipe=tree-search",
        "tree.rounds=1",
        "tree.problems=64",
        "tree.expansions=3",
        "tree.rollouts=2",
        "tree.train.epochs=1.0",
    ];
    let mut run = small_run(&root, &sets);
    run.execute(&mut Silent).unwrap();
    let headers: Vec<&str> = run.columns().iter().map(|c| c.header).collect();
    assert_eq!(headers, ["solved", "kept"]);
    let dir = RunDir::open(&root).unwrap().0;
    let samples: Vec<serde_json::Value> = dir.read_jsonl("rounds/r0001/samples.jsonl").unwrap();
    assert_eq!(samples.len(), 64 * 3 * 2);
    let train: Vec<serde_json::Value> = dir.read_jsonl("rounds/r0001/train.jsonl").unwrap();
    assert!(!train.is_empty());
    for e in &train {
        assert!(
            samples.iter().any(|s| s["prompt"] == e["prompt"]
                && s["completion"] == e["completion"]
                && s["grade"] == "correct"),
            "{e}"
        );
    }
    let line = dir.metrics().unwrap().last().unwrap().clone();
    assert_eq!(line["tree/kept"].as_f64().unwrap() as usize, train.len());
    assert_eq!(line["tree/expansions"].as_f64(), Some(3.0));
    assert!(common::manifest(&root, 1).train.is_some());
}
