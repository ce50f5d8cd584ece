//! Issue 18: reward models end to end. `rm data` labels a checkpoint's samples with the
//! verifier; `rm train` trains an ensemble into a directory transformers can read member by
//! member; `rm score` and `rm bon` read it; and runs of grpo, raft, star and dpo-verified take
//! their reward from it, logging the proxy beside the gold verifier, while the recipes that
//! pair by votes, demonstrations or a judge refuse it.

mod common;

use common::{autodidact, ok};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::OnceLock;

fn fails(args: &[&str]) -> String {
    let out = autodidact(args);
    assert!(!out.status.success(), "{args:?} succeeded");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `rm train --base base --data data --out out` with `--set` of each of `sets`.
fn rm_train<'a>(base: &'a Path, data: &'a Path, out: &'a Path, sets: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "rm",
        "train",
        "--base",
        s(base),
        "--data",
        s(data),
        "--out",
        s(out),
    ];
    for x in sets {
        args.extend(["--set", x]);
    }
    args
}

/// `rm data` of 4 samples of 40 problems (seed 1) of `base` into `out`, with `extra` flags.
fn rm_data(base: &Path, out: &Path, extra: &[&str]) -> String {
    let mut args = vec![
        "rm",
        "data",
        "--checkpoint",
        s(base),
        "--problems",
        "40",
        "--samples",
        "4",
        "--seed",
        "1",
        "--out",
        s(out),
    ];
    args.extend(extra);
    ok(&args)
}

/// A tiny model that solves some sums, and a two-member ensemble trained on its labeled
/// samples; built once for every test of this file.
fn fixture() -> &'static (tempfile::TempDir, PathBuf, PathBuf) {
    static F: OnceLock<(tempfile::TempDir, PathBuf, PathBuf)> = OnceLock::new();
    F.get_or_init(|| {
        let tmp = tempfile::tempdir().unwrap();
        let base = common::base_checkpoint(tmp.path(), 400);
        let labels = tmp.path().join("labels.jsonl");
        let said = rm_data(&base, &labels, &[]);
        assert!(said.starts_with("160 labels from 160 samples"), "{said}");
        let rm = tmp.path().join("rm");
        ok(&rm_train(
            &base,
            &labels,
            &rm,
            &[
                "members=2",
                "subset=0.8",
                "eval_fraction=0.25",
                "batch_size=16",
                "optimizer.warmup_steps=1",
            ],
        ));
        (tmp, base, rm)
    })
}

#[test]
fn issue18_rm_commands_label_train_score_and_sweep() {
    let (tmp, base, rm) = fixture();
    // rm.json records the members, each trained on its own 80% of the training lines.
    let info: Value =
        serde_json::from_str(&std::fs::read_to_string(rm.join("rm.json")).unwrap()).unwrap();
    assert_eq!(info["loss"], "outcome");
    let members = info["members"].as_array().unwrap();
    assert_eq!(members.len(), 2);
    let train = info["train_lines"].as_u64().unwrap();
    assert!(train > 80 && train < 160, "{info}");
    for m in members {
        assert_eq!(
            m["train_lines"].as_u64().unwrap(),
            (0.8 * train as f64).ceil() as u64
        );
        assert!(m["eval"]["eval/auroc"].is_number(), "{m}");
        let config: Value = serde_json::from_str(
            &std::fs::read_to_string(rm.join(m["dir"].as_str().unwrap()).join("config.json"))
                .unwrap(),
        )
        .unwrap();
        assert_eq!(config["architectures"][0], "LlamaForSequenceClassification");
    }
    assert_ne!(members[0]["seed"], members[1]["seed"]);
    assert!(info["eval"]["eval/disagreement"].as_f64().unwrap() > 0.0);
    // One metrics line per optimizer step of each member, and one eval line each.
    let lines = std::fs::read_to_string(rm.join("metrics.jsonl")).unwrap();
    let steps: u64 = members.iter().map(|m| m["steps"].as_u64().unwrap()).sum();
    assert_eq!(lines.lines().count() as u64, steps + 2);

    // Training again into the same directory is refused, and nothing there is touched.
    let before = std::fs::read(rm.join("rm.json")).unwrap();
    let labels = tmp.path().join("labels.jsonl");
    let e = fails(&rm_train(base, &labels, rm, &[]));
    assert!(e.contains("holds files"), "{e}");
    assert_eq!(std::fs::read(rm.join("rm.json")).unwrap(), before);

    // Scoring reads every member and each aggregation.
    let said = ok(&["rm", "score", "--model", s(rm), "--data", s(&labels)]);
    for want in [
        "member 0:",
        "member 1:",
        "mean:",
        "worst_case:",
        "uncertainty:",
        "disagreement",
    ] {
        assert!(said.contains(want), "{want} missing: {said}");
    }
    // A member alone is a reward-model checkpoint too.
    let said = ok(&[
        "rm",
        "score",
        "--model",
        s(&rm.join("members/m01")),
        "--data",
        s(&labels),
    ]);
    assert!(
        said.contains("mean:") && !said.contains("worst_case"),
        "{said}"
    );

    // The best-of-n sweep: n = 1, 2, 4, 8 per aggregation, KL in closed form.
    let out = tmp.path().join("bon.json");
    ok(&[
        "rm",
        "bon",
        "--checkpoint",
        s(base),
        "--model",
        s(rm),
        "--problems",
        "6",
        "--samples",
        "8",
        "--out",
        s(&out),
    ]);
    let bon: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    for name in ["member_0", "mean", "worst_case", "uncertainty"] {
        let points = bon["sweeps"][name]["points"].as_array().unwrap();
        let ns: Vec<u64> = points.iter().map(|p| p["n"].as_u64().unwrap()).collect();
        assert_eq!(ns, [1, 2, 4, 8], "{name}");
        let kl8 = points[3]["kl"].as_f64().unwrap();
        assert!((kl8 - (8f64.ln() - 7.0 / 8.0)).abs() < 1e-9);
        // The proxy of the best of n never falls as n grows.
        let proxy: Vec<f64> = points
            .iter()
            .map(|p| p["proxy"].as_f64().unwrap())
            .collect();
        assert!(
            proxy.windows(2).all(|w| w[1] >= w[0] - 1e-9),
            "{name}: {proxy:?}"
        );
    }
}

#[test]
fn issue18_rm_inputs_are_checked() {
    let (tmp, base, rm) = fixture();
    let bad = tmp.path().join("bad.jsonl");
    std::fs::write(
        &bad,
        "{\"prompt\":\"1+1=\",\"completion\":\"2\",\"label\":true}\n{\"prompt\":\"1+2=\",\"chosen\":\"3\",\"rejected\":\"4\"}\n",
    )
    .unwrap();
    let out = tmp.path().join("never");
    let e = fails(&rm_train(base, &bad, &out, &[]));
    assert!(e.contains("line 2: kinds of line are mixed"), "{e}");
    std::fs::write(
        &bad,
        "{\"prompt\":\"1+1=\",\"completion\":\"2\",\"label\":\"yes\"}\n",
    )
    .unwrap();
    let e = fails(&["rm", "score", "--model", s(rm), "--data", s(&bad)]);
    assert!(
        e.contains("line 1: \"label\" holds \"yes\", not true/false or a probability"),
        "{e}"
    );
    let good = tmp.path().join("labels.jsonl");
    let train_with = |set| fails(&rm_train(base, &good, &out, &[set]));
    let e = train_with("subset=0");
    assert!(e.contains("subset") && e.contains("(0, 1]"), "{e}");
    let e = train_with("member=2");
    assert!(e.contains("member"), "{e}");
    // A policy checkpoint is not a reward model: scoring with a fresh head would mean nothing.
    let e = fails(&["rm", "score", "--model", s(base), "--data", s(&good)]);
    assert!(e.contains("ForSequenceClassification"), "{e}");
    assert!(!out.exists());
}

/// `recipe` from the base checkpoint for one short round, its reward from the ensemble.
fn proxy_run(name: &str, recipe_sets: &[&str]) -> (Output, PathBuf) {
    proxy_run_with(&fixture().2, name, recipe_sets)
}

/// [`proxy_run`] with its reward from `rm`.
fn proxy_run_with(rm: &Path, name: &str, recipe_sets: &[&str]) -> (Output, PathBuf) {
    let (tmp, base, _) = fixture();
    let out = tmp.path().join(name);
    let model = format!("model.checkpoint={:?}", s(base));
    let reward = format!("reward.model={:?}", s(rm));
    let mut args = vec![
        "run",
        "-q",
        "--out",
        s(&out),
        "--set",
        &model,
        "--set",
        "seed_stage.train.steps=0",
        "--set",
        &reward,
        "--set",
        "eval.problems=8",
        "--set",
        "monitor.drift_problems=4",
    ];
    for x in recipe_sets {
        args.extend(["--set", x]);
    }
    (autodidact(&args), out)
}

fn round_line(run: &Path, round: u64) -> Value {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|v| v["round"].as_u64() == Some(round))
        .unwrap()
}

#[test]
fn issue18_recipes_take_their_reward_from_the_ensemble() {
    for (name, sets) in [
        (
            "grpo",
            &[
                "recipe=\"grpo\"",
                "rl.rounds=1",
                "rl.steps_per_round=2",
                "rl.prompts_per_step=4",
                "rl.problems=16",
                "rl.minibatches=1",
                "reward.aggregate.kind=\"worst_case\"",
            ][..],
        ),
        (
            "raft",
            &[
                "recipe=\"raft\"",
                "raft.rounds=1",
                "raft.problems=8",
                "raft.threshold=-100.0",
            ][..],
        ),
        (
            "star",
            &[
                "star.rounds=1",
                "star.problems=8",
                "reward.threshold=-100.0",
            ][..],
        ),
        (
            "dpo",
            &[
                "recipe=\"dpo-verified\"",
                "pref.rounds=1",
                "pref.problems=8",
                "pref.train.steps=2",
            ][..],
        ),
    ] {
        let (out, run) = proxy_run(name, sets);
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let line = round_line(&run, 1);
        for key in [
            "proxy/reward",
            "gold/reward",
            "proxy/disagreement",
            "proxy/eval_reward",
            "proxy/eval_disagreement",
        ] {
            assert!(line[key].is_number(), "{name}: {key} missing in {line}");
        }
        // The samples' rewards are the proxy's logits, not the verifier's 0/1.
        let rd = std::fs::read_to_string(run.join("rounds/r0001/samples.jsonl")).unwrap();
        let rewards: Vec<f64> = rd
            .lines()
            .map(|l| {
                serde_json::from_str::<Value>(l).unwrap()["reward"]
                    .as_f64()
                    .unwrap()
            })
            .collect();
        assert!(
            rewards.iter().any(|r| *r != 0.0 && *r != 1.0),
            "{name}: {rewards:?}"
        );
        // A threshold below every score keeps something.
        if name != "grpo" {
            let kept = std::fs::read_to_string(run.join("rounds/r0001/train.jsonl")).unwrap();
            assert!(kept.lines().count() > 0, "{name}");
        }
    }
    let (out, _) = proxy_run("scpo", &["recipe=\"scpo\"", "pref.rounds=1"]);
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && e.contains("config key `reward.model`"),
        "{e}"
    );
    let (out, _) = proxy_run(
        "uwo",
        &[
            "reward.aggregate.kind=\"uncertainty\"",
            "reward.aggregate.lambda=-1.0",
        ],
    );
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && e.contains("reward.aggregate.lambda"),
        "{e}"
    );
}

/// A process reward model: `rm data --kind steps` labels each step of a sample from
/// continuations of its prefix, `rm train` needs the pattern the steps were split with and
/// keeps it, `rm score` ranks completions by their steps' min and product, and a run takes
/// its reward from the combined step scores.
#[test]
fn issue18_a_process_reward_model_learns_from_rollouts() {
    let (tmp, base, orm) = fixture();
    let steps = tmp.path().join("steps.jsonl");
    let said = rm_data(base, &steps, &["--kind", "steps", "--rollouts", "2"]);
    // The fixture's labeled samples, split into steps (an empty completion has none).
    assert!(
        said.contains(" stepped completions from 160 samples"),
        "{said}"
    );
    let lines: Vec<Value> = std::fs::read_to_string(&steps)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    for l in &lines {
        let (c, y) = (
            l["completions"].as_array().unwrap(),
            l["labels"].as_array().unwrap(),
        );
        assert_eq!(c.len(), y.len(), "{l}");
        // Every step but the last ends at a separator; hard labels are booleans.
        for step in &c[..c.len() - 1] {
            assert!(step.as_str().unwrap().ends_with([';', '#']), "{l}");
        }
        assert!(y.iter().all(|y| y.is_boolean()), "{l}");
    }
    let prm = tmp.path().join("prm");
    let e = fails(&rm_train(base, &steps, &prm, &[]));
    assert!(e.contains("step_pattern") && e.contains("[;#]"), "{e}");
    ok(&rm_train(
        base,
        &steps,
        &prm,
        &[
            "step_pattern=\"[;#]\"",
            "eval_fraction=0.25",
            "batch_size=16",
        ],
    ));
    let info: Value =
        serde_json::from_str(&std::fs::read_to_string(prm.join("rm.json")).unwrap()).unwrap();
    assert_eq!(info["loss"], "process");
    assert_eq!(info["config"]["step_pattern"], "[;#]");
    let said = ok(&["rm", "score", "--model", s(&prm), "--data", s(&steps)]);
    assert!(
        said.contains("outcome_auroc_min") && said.contains("outcome_auroc_product"),
        "{said}"
    );
    // Outcome labels are scored per completion, from its steps.
    let labels = tmp.path().join("labels.jsonl");
    ok(&[
        "rm",
        "score",
        "--model",
        s(&prm),
        "--data",
        s(&labels),
        "--steps",
        "product",
    ]);

    let (out, run) = proxy_run_with(
        &prm,
        "star-prm",
        &[
            "star.rounds=1",
            "star.problems=8",
            "reward.threshold=-100.0",
            "reward.steps=\"product\"",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = round_line(&run, 1);
    // Σ log σ: every proxy reward of the product is below 0.
    assert!(line["proxy/reward"].as_f64().unwrap() < 0.0, "{line}");
    // The run recorded its reward model: changed under it, resuming is refused until forced.
    let run_json = std::fs::read_to_string(run.join("run.json")).unwrap();
    assert!(run_json.contains("reward_sha256"), "{run_json}");
    let mut metrics = std::fs::read(prm.join("metrics.jsonl")).unwrap();
    metrics.extend(b"\n");
    std::fs::write(prm.join("metrics.jsonl"), metrics).unwrap();
    let e = fails(&["resume", s(&run)]);
    assert!(e.contains("reward model") && e.contains("--force"), "{e}");
    ok(&["resume", s(&run), "--force"]);
    // An outcome model has no steps to combine.
    let e = fails(&[
        "rm",
        "score",
        "--model",
        s(orm),
        "--data",
        s(&labels),
        "--steps",
        "min",
    ]);
    assert!(
        e.contains("--steps") && e.contains("outcome reward model"),
        "{e}"
    );
    let (out, _) = proxy_run_with(
        orm,
        "orm-steps",
        &["star.rounds=1", "reward.steps=\"product\""],
    );
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && e.contains("reward.steps"), "{e}");
}
