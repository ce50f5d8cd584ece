//! Issue 16: `[train] backend = "external"`. A run whose training stages run
//! `autodidact train --config {config}` as an external command ends with the native run's
//! metrics and byte-identical checkpoints (the seed stage, an SFT round, a DPO round, a
//! LoRA round, and GRPO rounds trained one rollout step per job); a trainer that exits 1,
//! one that hangs past its timeout and one that writes a checkpoint of another shape each
//! stop the run with a clear message, and `resume` finishes it with the native run's
//! numbers.

mod common;

use common::{autodidact, ok};

use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::OnceLock;

const BIN: &str = env!("CARGO_BIN_EXE_autodidact");

fn example(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples")
        .join(name);
    std::fs::read_to_string(path).unwrap()
}

/// A tiny model that solves some sums (so rounds keep samples and build pairs), trained once
/// for every test of this file.
fn base() -> &'static Path {
    static BASE: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    &BASE
        .get_or_init(|| {
            let tmp = tempfile::tempdir().unwrap();
            let base = common::base_checkpoint(tmp.path(), 700);
            (tmp, base)
        })
        .1
}

/// `example` (without its `[model]` preset) starting from the base checkpoint, with `extra`
/// appended; written to `dir/name.toml`.
fn config(dir: &Path, name: &str, example_file: &str, from_base: bool, extra: &str) -> PathBuf {
    let mut text: String = example(example_file)
        .lines()
        .filter(|l| !(from_base && (l.starts_with("preset") || *l == "[model]")))
        .map(|l| format!("{l}\n"))
        .collect();
    if from_base {
        text.push_str(&format!("[model]\ncheckpoint = {:?}\n", base()));
    }
    text.push_str(extra);
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

/// `[train]` running `command` (TOML array items) as the external trainer.
fn external(command: &str, timeout_s: u64) -> String {
    format!("[train]\nbackend = \"external\"\ncommand = [{command}]\ntimeout_s = {timeout_s}\n")
}

fn autodidact_train() -> String {
    format!("{BIN:?}, \"--threads\", \"{{threads}}\", \"train\", \"--config\", \"{{config}}\"")
}

fn run(dir: &Path, name: &str, config: &Path, sets: &[&str]) -> (PathBuf, Output) {
    let out_dir = dir.join(name);
    let mut args = vec!["run", "-q", "--out", out_dir.to_str().unwrap()];
    for s in sets {
        args.extend(["--set", s]);
    }
    args.push(config.to_str().unwrap());
    let out = autodidact(&args);
    (out_dir, out)
}

/// [`run`], which must succeed: the run directory.
fn run_ok(dir: &Path, name: &str, config: &Path, sets: &[&str]) -> PathBuf {
    let (out_dir, out) = run(dir, name, config, sets);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out_dir
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every checkpoint file of a run, by path, with its bytes.
fn checkpoints(run: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let dir = run.join("checkpoints");
    for round in std::fs::read_dir(&dir).unwrap() {
        let round = round.unwrap().path();
        let name = round.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            !name.starts_with('.'),
            "a leftover {name} in {}",
            dir.display()
        );
        for f in std::fs::read_dir(&round).unwrap() {
            let f = f.unwrap().path();
            let rel = format!("{name}/{}", f.file_name().unwrap().to_string_lossy());
            out.push((rel, std::fs::read(&f).unwrap()));
        }
    }
    out.sort();
    out
}

fn assert_same_run(native: &Path, external: &Path) {
    assert_eq!(
        read(&native.join("metrics.jsonl")),
        read(&external.join("metrics.jsonl")),
        "{} and {}",
        native.display(),
        external.display()
    );
    let (a, b) = (checkpoints(native), checkpoints(external));
    assert_eq!(a.len(), b.len());
    for ((na, ba), (nb, bb)) in a.iter().zip(&b) {
        assert_eq!(na, nb);
        assert!(
            ba == bb,
            "{na} differs between {} and {}",
            native.display(),
            external.display()
        );
    }
}

#[test]
fn issue16_runs_trained_by_autodidact_train_match_native_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let small = [
        "star.problems=60",
        "pref.problems=60",
        "step.problems=24",
        "step.sampling.samples=2",
        "step.rollouts=2",
        "step.epochs=1",
        "eval.problems=12",
        "seed_stage.eval_every=0",
    ];
    // The seed stage from scratch; an SFT round and a DPO round from the base checkpoint.
    // The seed stage from scratch; an SFT round, a DPO round and an SFT round of LoRA
    // adapters from the base checkpoint.
    let (none, lora) = ("", "[model.lora]\nrank = 4\n");
    let cases = [
        (
            "seed",
            "star-addition.toml",
            false,
            ["seed_stage.train.steps=60", "star.rounds=0"],
            none,
        ),
        (
            "star",
            "star-addition.toml",
            true,
            ["seed_stage.train.steps=0", "star.rounds=1"],
            none,
        ),
        (
            "dpo",
            "dpo-verified-addition.toml",
            true,
            ["seed_stage.train.steps=0", "pref.rounds=1"],
            none,
        ),
        (
            "step",
            "step-pg-addition.toml",
            true,
            ["seed_stage.train.steps=0", "step.rounds=1"],
            none,
        ),
        (
            "lora",
            "star-addition.toml",
            true,
            ["seed_stage.train.steps=0", "star.rounds=1"],
            lora,
        ),
    ];
    for (name, file, from_base, sets, extra) in cases {
        let sets: Vec<&str> = small.iter().copied().chain(sets).collect();
        let native_cfg = config(d, &format!("{name}-native"), file, from_base, extra);
        let ext_cfg = config(
            d,
            &format!("{name}-external"),
            file,
            from_base,
            &format!("{extra}{}", external(&autodidact_train(), 600)),
        );
        let native = run_ok(d, &format!("{name}-native"), &native_cfg, &sets);
        let ext = run_ok(d, &format!("{name}-external"), &ext_cfg, &sets);
        assert_same_run(&native, &ext);
        // The trained round records the job, the trainer's log and its report.
        let round = if name == "seed" { 0 } else { 1 };
        let manifest = read(&ext.join(format!("rounds/r{round:04}/manifest.json")));
        for f in ["trainer-job.json", "trainer.log", "trainer-stats.json"] {
            assert!(
                manifest.contains(&format!("rounds/r{round:04}/{f}")),
                "{name}: {f} in {manifest}"
            );
        }
        if name != "seed" {
            // Rounds trained something: the kept set or the pairs were not empty.
            let stats = read(&ext.join("rounds/r0001/trainer-stats.json"));
            assert!(!stats.contains("\"steps\": 0"), "{name}: {stats}");
        }
        // `export`: the round's data in TRL's and OpenRLHF's keys, line for line.
        let (kind, trl_keys, orlhf_keys): (&str, &[&str], &[&str]) = match name {
            "dpo" => (
                "preference",
                &["chosen", "prompt", "rejected"],
                &["chosen", "prompt", "rejected"],
            ),
            // Issue 20: step-pg's training set is rollouts with an advantage per token.
            "step" => (
                "rollouts",
                &[
                    "advantage",
                    "completion",
                    "completion_ids",
                    "old_logprobs",
                    "prompt",
                    "reward",
                    "token_advantages",
                ],
                &[
                    "advantage",
                    "completion_ids",
                    "input",
                    "old_logprobs",
                    "output",
                    "reward",
                    "token_advantages",
                ],
            ),
            _ => ("sft", &["completion", "prompt"], &["input", "output"]),
        };
        let train = read(&ext.join(format!("rounds/r{round:04}/train.jsonl")));
        for (format, keys) in [("trl", trl_keys), ("openrlhf", orlhf_keys)] {
            let out = d.join(format!("{name}-{format}"));
            ok(&[
                "export",
                ext.to_str().unwrap(),
                "--format",
                format,
                "--out",
                out.to_str().unwrap(),
            ]);
            let index: serde_json::Value =
                serde_json::from_str(&read(&out.join("index.json"))).unwrap();
            let rounds = index["rounds"].as_array().unwrap();
            assert!(
                rounds
                    .iter()
                    .any(|r| r["kind"] == kind && r["round"] == round),
                "{index}"
            );
            let lines = read(&out.join(format!("r{round:04}/{kind}.jsonl")));
            assert_eq!(
                lines.lines().count(),
                train.lines().count(),
                "{name} {format}"
            );
            for (line, source) in lines.lines().zip(train.lines()) {
                let v: serde_json::Value = serde_json::from_str(line).unwrap();
                let got: Vec<&String> = v.as_object().unwrap().keys().collect();
                let want: Vec<&str> = keys.iter().copied().filter(|k| !k.is_empty()).collect();
                assert_eq!(got, want, "{name} {format}");
                let s: serde_json::Value = serde_json::from_str(source).unwrap();
                let prompt = v.get("prompt").or(v.get("input")).unwrap();
                assert_eq!(prompt, &s["prompt"]);
            }
        }
    }
}

/// A trainer (`sh` script) that misbehaves once, in round 1, as `mode` says, then trains.
const FLAKY: &str = r#"mode=$1; round=$2; config=$3; output=$4; mark=$5; bin=$6
if [ "$round" = 1 ] && [ ! -e "$mark" ]; then
  : > "$mark"
  case $mode in
    exit) echo "trainer: CUDA out of memory (simulated)" >&2; exit 1 ;;
    hang) echo "trainer: waiting for a GPU that never frees" >&2; sleep 600 ;;
    shapes) "$bin" --threads 1 train --config "$config" || exit 1
            sed -i 's/"hidden_size": [0-9]*/"hidden_size": 8/' "$output/config.json"; exit 0 ;;
  esac
fi
exec "$bin" --threads 1 train --config "$config"
"#;

#[test]
fn issue16_a_failing_trainer_stops_the_run_cleanly_and_resume_finishes_it() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let sets = [
        "star.problems=60",
        "eval.problems=12",
        "seed_stage.train.steps=0",
        "star.rounds=2",
    ];
    let script = d.join("flaky.sh");
    std::fs::write(&script, FLAKY).unwrap();
    let native_cfg = config(d, "native", "star-addition.toml", true, "");
    let native = run_ok(d, "native", &native_cfg, &sets);
    for (mode, timeout, says) in [
        (
            "exit",
            600,
            vec!["exit status: 1", "CUDA out of memory (simulated)"],
        ),
        (
            "hang",
            3,
            vec!["ran past train.timeout_s = 3 s", "never frees"],
        ),
        (
            "shapes",
            600,
            vec!["another architecture", "hidden_size = 8"],
        ),
    ] {
        let mark = d.join(format!("{mode}.mark"));
        let command = format!(
            "\"sh\", {:?}, {mode:?}, \"{{round}}\", \"{{config}}\", \"{{output}}\", {:?}, {BIN:?}",
            script, mark
        );
        let cfg = config(
            d,
            mode,
            "star-addition.toml",
            true,
            &external(&command, timeout),
        );
        let (dir, out) = run(d, mode, &cfg, &sets);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{mode}: the run should stop");
        assert!(
            err.contains("round 1: the external trainer"),
            "{mode}: {err}"
        );
        for s in &says {
            assert!(err.contains(s), "{mode}: {s:?} in {err}");
        }
        assert!(err.contains("autodidact resume"), "{mode}: {err}");
        // The journal stops before round 1's training, and resume finishes the run as the
        // native one.
        let journal = read(&dir.join("journal.jsonl"));
        assert!(
            journal.contains(r#""stage":"sample","round":1"#),
            "{mode}: {journal}"
        );
        assert!(!journal.contains(r#""stage":"train""#), "{mode}: {journal}");
        ok(&["resume", dir.to_str().unwrap()]);
        assert_same_run(&native, &dir);
    }
}

/// `example_file` with its policy served by `server` (`weights`, reloaded from disk after
/// each training stage) and trained by `autodidact train`; written to `dir/name.toml`.
fn served_config(
    dir: &Path,
    name: &str,
    example_file: &str,
    server: &common::Server,
    weights: &Path,
) -> PathBuf {
    let text: String = example(example_file)
        .lines()
        .filter(|l| !(l.starts_with("preset") || *l == "[model]"))
        .map(|l| format!("{l}\n"))
        .collect();
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(
        &path,
        format!(
            "{text}[model]\nbackend = \"openai\"\n[model.openai]\nbase_urls = [{:?}]\nmodel = \"tiny\"\ntokenizer = {:?}\nweights = {:?}\nreload = \"update_weights_from_disk\"\n{}",
            server.url(),
            base(),
            weights,
            external(&autodidact_train(), 600)
        ),
    )
    .unwrap();
    path
}

/// Each line of a run's `metrics.jsonl`, with the keys `keep` accepts.
fn metrics_where(run: &Path, keep: impl Fn(&str) -> bool) -> Vec<Vec<(String, serde_json::Value)>> {
    read(&run.join("metrics.jsonl"))
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v.as_object()
                .unwrap()
                .iter()
                .filter(|(k, _)| keep(k))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        })
        .collect()
}

/// The `model_path` the server at `addr` reports.
fn served_path(server: &common::Server) -> String {
    let (_, body) = common::http(server.addr, "GET", "/get_model_info", None, "");
    common::json_of(&body)["model_path"]
        .as_str()
        .unwrap()
        .to_string()
}

/// A served policy trained by the external hook: `autodidact serve` holds the base model,
/// each round is trained by `autodidact train` and the server is pointed at the new
/// checkpoint (`reload = "update_weights_from_disk"`), so the next round samples from it.
/// The run ends with the native run's weights and evaluations, and the server serves its
/// last checkpoint.
#[test]
fn issue16_a_served_policy_is_trained_externally_and_reloaded_between_rounds() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let sets = [
        "star.problems=60",
        "eval.problems=12",
        "seed_stage.train.steps=0",
        "star.rounds=2",
    ];
    let server = common::serve(base());
    let cfg = served_config(d, "served", "star-addition.toml", &server, base());
    let run_dir = run_ok(d, "served", &cfg, &sets);
    let native_cfg = config(d, "native", "star-addition.toml", true, "");
    let native = run_ok(d, "native", &native_cfg, &sets);
    let last = std::path::absolute(run_dir.join("checkpoints/r0002")).unwrap();
    assert_eq!(served_path(&server), last.display().to_string());
    for r in ["r0001", "r0002"] {
        let w = |run: &Path| {
            std::fs::read(run.join(format!("checkpoints/{r}/model.safetensors"))).unwrap()
        };
        assert!(
            w(&run_dir) == w(&native),
            "{r}: the served run's weights differ from the native run's"
        );
        assert!(run_dir
            .join(format!("checkpoints/{r}/remote.json"))
            .exists());
    }
    // Every evaluation equals the native one (sampled through the server from each round's
    // weights); drift is not measured for a served model.
    let evals =
        |run: &Path| metrics_where(run, |k| k.starts_with("eval/") || k.starts_with("star/"));
    assert_eq!(evals(&run_dir), evals(&native));
}

/// A trainer (`sh` script) whose second job fails, then trains (`autodidact train`).
const SECOND_FAILS: &str = r#"config=$1; mark=$2; bin=$3
n=$(cat "$mark" 2>/dev/null || echo 0); echo $((n + 1)) > "$mark"
if [ "$n" = 1 ]; then echo "trainer: lost the node (simulated)" >&2; exit 1; fi
exec "$bin" --threads 1 train --config "$config"
"#;

/// Policy gradient through the external hook: each rollout step is one `pg` job (the step's
/// completions with their advantages and sampling log-probs, the plan of minibatches, the
/// schedule, the optimizer state and the reference), and the next step samples from the
/// weights it wrote. Run by `autodidact train`, two GRPO rounds end with the native run's
/// metrics and checkpoints, byte for byte, with every part of the update in play (two
/// passes of two minibatches, micro-batches, a KL term, an entropy bonus, an NLL anchor,
/// AdamW carried across steps and rounds). A trainer that fails mid-round stops the run
/// cleanly and `resume` ends it the same. A served policy samples each step from the last
/// step's weights. `autodidact train --objective pg` trains on the rollouts `export` writes.
#[test]
fn issue16_policy_gradient_trains_step_by_step_through_the_external_hook() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let sets = [
        "eval.problems=12",
        "seed_stage.train.steps=0",
        "rl.rounds=2",
        "rl.steps_per_round=2",
        "rl.problems=40",
        "rl.prompts_per_step=8",
        "rl.sampling.samples=4",
        "rl.num_iterations=2",
        "rl.minibatches=2",
        "rl.micro_batch_size=5",
        "rl.beta=0.05",
        "rl.entropy_coef=0.01",
        "rl.sft_coef=0.1",
        "rl.drop_zero_std=true",
    ];
    let native_cfg = config(d, "pg-native", "grpo-addition.toml", true, "");
    let native = run_ok(d, "pg-native", &native_cfg, &sets);
    let ext_cfg = config(
        d,
        "pg-external",
        "grpo-addition.toml",
        true,
        &external(&autodidact_train(), 600),
    );
    let ext = run_ok(d, "pg-external", &ext_cfg, &sets);
    assert_same_run(&native, &ext);
    // The round records the last step's job and dataset, and the log of every step's job.
    let manifest = read(&ext.join("rounds/r0002/manifest.json"));
    for f in [
        "trainer-job.json",
        "trainer.log",
        "trainer-stats.json",
        "rollout.jsonl",
    ] {
        assert!(
            manifest.contains(&format!("rounds/r0002/{f}")),
            "{f} in {manifest}"
        );
    }
    let log = read(&ext.join("rounds/r0002/trainer.log"));
    assert_eq!(log.matches("# autodidact: ").count(), 2, "{log}");
    let job: serde_json::Value =
        serde_json::from_str(&read(&ext.join("rounds/r0002/trainer-job.json"))).unwrap();
    assert_eq!(job["objective"], "pg");
    assert_eq!(job["plan"]["updates"].as_array().unwrap().len(), 4, "{job}");
    assert!(
        job["reference"].as_str().unwrap().ends_with("r0000"),
        "{job}"
    );
    assert!(
        job["optimizer_state"]
            .as_str()
            .unwrap()
            .contains(".r0002.step-0000"),
        "{job}"
    );

    // A trainer that fails at the second step stops the run; resume ends it as native.
    let script = d.join("second-fails.sh");
    std::fs::write(&script, SECOND_FAILS).unwrap();
    let mark = d.join("pg.mark");
    let command = format!("\"sh\", {:?}, \"{{config}}\", {:?}, {BIN:?}", script, mark);
    let cfg = config(
        d,
        "pg-flaky",
        "grpo-addition.toml",
        true,
        &external(&command, 600),
    );
    let (flaky, out) = run(d, "pg-flaky", &cfg, &sets);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the run should stop");
    for s in [
        "round 1: the external trainer",
        "lost the node (simulated)",
        "autodidact resume",
    ] {
        assert!(err.contains(s), "{s:?} in {err}");
    }
    assert!(!read(&flaky.join("journal.jsonl")).contains(r#""stage":"rl""#));
    ok(&["resume", flaky.to_str().unwrap()]);
    assert_same_run(&native, &flaky);

    // A served policy: `autodidact serve` holds the base model, each step is trained by
    // `autodidact train`, and the server is pointed at every step's weights. It answers with
    // the ids it sampled (vLLM's `return_tokens_as_token_ids`), which the steps train on.
    // The samples are the native run's (every reward and evaluation equal); the update's
    // own numbers differ in the last digits, as the sampling log-probs come from the
    // server's batches.
    let server = common::serve(base());
    let (status, body) = common::http(
        server.addr,
        "POST",
        "/v1/completions",
        None,
        r#"{"model": "tiny", "prompt": "12+30=", "max_tokens": 4, "logprobs": 0, "seed": 3, "return_tokens_as_token_ids": true}"#,
    );
    assert_eq!(status, 200, "{body}");
    let tokens = common::json_of(&body)["choices"][0]["logprobs"]["tokens"].clone();
    assert!(
        tokens.as_array().is_some_and(|t| !t.is_empty()
            && t.iter()
                .all(|x| x.as_str().unwrap().starts_with("token_id:"))),
        "{body}"
    );
    let served_cfg = served_config(d, "pg-served", "grpo-addition.toml", &server, base());
    let served = run_ok(d, "pg-served", &served_cfg, &sets);
    let last = std::path::absolute(served.join("checkpoints/r0002")).unwrap();
    assert_eq!(served_path(&server), last.display().to_string());
    let sampled = |run: &Path| {
        metrics_where(run, |k| {
            ["eval/", "reward", "completions/", "rollout/"]
                .iter()
                .any(|p| k.starts_with(p))
                || k == "pg/kept_fraction"
        })
    };
    assert_eq!(sampled(&served), sampled(&native));

    // A served policy that trains LoRA adapters: the servers hold the base model with the
    // adapters of a native LoRA run's M0, each step trains adapters, and the servers load
    // them; the samples are the native LoRA run's.
    let lora_sets: Vec<&str> = sets.iter().copied().chain(["model.lora.rank=4"]).collect();
    let lora_native = run_ok(d, "pg-lora-native", &native_cfg, &lora_sets);
    let adapters = lora_native.join("checkpoints/r0000");
    let lora_server = common::serve(&adapters);
    let cfg = served_config(
        d,
        "pg-lora-served",
        "grpo-addition.toml",
        &lora_server,
        &adapters,
    );
    let lora_served = run_ok(d, "pg-lora-served", &cfg, &sets);
    assert_eq!(sampled(&lora_served), sampled(&lora_native));
    let last = lora_served.join("checkpoints/r0002");
    assert!(last.join("adapter_config.json").exists() && !last.join("config.json").exists());
    assert_eq!(
        served_path(&lora_server),
        std::path::absolute(&last).unwrap().display().to_string()
    );

    // `autodidact train --objective pg` on the exported rollouts of round 1.
    let exported = d.join("pg-export");
    ok(&[
        "export",
        ext.to_str().unwrap(),
        "--format",
        "trl",
        "--out",
        exported.to_str().unwrap(),
    ]);
    let rollouts = exported.join("r0001/rollouts.jsonl");
    let (trained, stats) = (d.join("pg-trained"), d.join("pg-stats.json"));
    ok(&[
        "train",
        "--objective",
        "pg",
        "--data",
        rollouts.to_str().unwrap(),
        "--model",
        base().to_str().unwrap(),
        "--out",
        trained.to_str().unwrap(),
        "--steps",
        "2",
        "--stats",
        stats.to_str().unwrap(),
    ]);
    let report: serde_json::Value = serde_json::from_str(&read(&stats)).unwrap();
    assert_eq!(report["stats"]["steps"], 2, "{report}");
    assert!(
        report["metrics"]["pg/loss"].as_f64().unwrap().is_finite(),
        "{report}"
    );
    assert!(trained.join("model.safetensors").exists());
    // A line whose log-probs do not match its tokens is refused, naming the line.
    let text = read(&rollouts);
    let mut first: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    first["old_logprobs"].as_array_mut().unwrap().pop();
    let bad = d.join("bad.jsonl");
    std::fs::write(&bad, format!("{first}\n")).unwrap();
    let out = autodidact(&[
        "train",
        "--objective",
        "pg",
        "--data",
        bad.to_str().unwrap(),
        "--model",
        base().to_str().unwrap(),
        "--out",
        d.join("never").to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("bad.jsonl") && err.contains("line 1") && err.contains("old_logprobs"),
        "{err}"
    );
    assert!(!d.join("never").exists());
    // Issue 20: a line's own KL coefficient must be a number ≥ 0, on every line or on none,
    // and a KL term needs a reference checkpoint.
    let lines: Vec<serde_json::Value> = text
        .lines()
        .take(2)
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let with = |coefs: &[Option<f64>]| -> String {
        lines
            .iter()
            .zip(coefs)
            .map(|(l, c)| {
                let mut l = l.clone();
                if let Some(c) = c {
                    l["kl_coef"] = serde_json::json!(c);
                }
                format!("{l}\n")
            })
            .collect()
    };
    for (coefs, want) in [
        (vec![Some(0.1), None], "1 of 2 lines have a kl_coef"),
        (
            vec![Some(-0.1), Some(0.0)],
            "line 1: kl_coef -0.1 must be a finite number ≥ 0",
        ),
        (vec![Some(0.1), Some(0.0)], "names no reference checkpoint"),
    ] {
        std::fs::write(&bad, with(&coefs)).unwrap();
        let out = autodidact(&[
            "train",
            "--objective",
            "pg",
            "--data",
            bad.to_str().unwrap(),
            "--model",
            base().to_str().unwrap(),
            "--out",
            d.join("never").to_str().unwrap(),
        ]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains(want),
            "{coefs:?}: {err}"
        );
        assert!(!d.join("never").exists());
    }
}

/// Regression (issue 17's torture): a served policy trained by DPO through the external hook.
/// Its reference is round 0, whose checkpoint holds only the servers' record; the job named
/// that directory as the reference model, and the trainer failed to read its `config.json`.
/// The reference is the served weights, and the run ends with the native run's weights.
#[test]
fn issue17_a_served_policy_trained_by_dpo_finds_its_reference_weights() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let sets = [
        "pref.problems=32",
        "pref.sampling.samples=4",
        "eval.problems=8",
        "seed_stage.train.steps=0",
        "pref.rounds=1",
    ];
    let server = common::serve(base());
    let cfg = served_config(d, "served", "dpo-verified-addition.toml", &server, base());
    let run_dir = run_ok(d, "served", &cfg, &sets);
    let native_cfg = config(d, "native", "dpo-verified-addition.toml", true, "");
    let native = run_ok(d, "native", &native_cfg, &sets);
    let w = |run: &Path| std::fs::read(run.join("checkpoints/r0001/model.safetensors")).unwrap();
    assert!(
        w(&run_dir) == w(&native),
        "the served run's DPO weights differ from the native run's"
    );
}
