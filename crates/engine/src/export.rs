//! `autodidact export RUN --format trl|openrlhf --out DIR`: every round's training data of a
//! run, in the layout another trainer reads.
//!
//! Each completed round's data is read back after checking it against the hash its manifest
//! recorded, and written as `DIR/rNNNN/<kind>.jsonl`, with `DIR/index.json` listing the
//! rounds, their kind, recipe and line counts. The kinds:
//!
//! | kind | from | `trl` lines | `openrlhf` lines |
//! | --- | --- | --- | --- |
//! | `sft` | the seed stage's and `star`'s/`raft`'s `train.jsonl` | `prompt`, `completion` | `input`, `output` |
//! | `preference` | the DPO family's `train.jsonl` | `prompt`, `chosen`, `rejected` | `prompt`, `chosen`, `rejected` |
//! | `rollouts` | a policy-gradient round's `samples.jsonl` (dropped groups left out), or `step-pg`'s and `score`'s `train.jsonl` | `prompt`, `completion`, `reward`, `advantage`, `completion_ids`, `old_logprobs` (and `token_advantages` from `step-pg`, `kl_coef` from `score`) | `input`, `output`, and the same |
//!
//! OpenRLHF reads these with `--input_key input --output_key output` (SFT) and
//! `--prompt_key prompt --chosen_key chosen --rejected_key rejected` (DPO and reward models).

use crate::store::{RunDir, JOURNAL_FILE};
use crate::{Error, Result};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::path::Path;

/// The layout to write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Trl,
    OpenRlhf,
}

/// What `export` wrote: per round, its kind and lines.
#[derive(Debug, PartialEq)]
pub struct Exported {
    pub rounds: Vec<(u32, &'static str, usize)>,
}

/// Writes the training data of every completed round of the run at `root` to `out` (a new
/// or empty directory).
pub fn export(root: &Path, format: Format, out: &Path) -> Result<Exported> {
    let (dir, info) = RunDir::open(root)?;
    if std::fs::read_dir(out).is_ok_and(|mut d| d.next().is_some()) {
        return Err(Error::run(
            out,
            "holds files; export into a new or empty directory",
        ));
    }
    let journal = dir.journal()?;
    let done =
        |stage: &str, round: u32| journal.iter().any(|e| e.stage == stage && e.round == round);
    let mut rounds = Vec::new();
    let last = journal.iter().map(|e| e.round).max().unwrap_or(0);
    for round in 0..=last {
        let rd = RunDir::round_dir(round);
        // A round's data is complete once the stage that wrote it is journaled.
        let train = format!("{rd}/train.jsonl");
        let rel = if dir.path(&train).exists() && (done("seed", round) || done("sample", round)) {
            train
        } else if done("rl", round) {
            format!("{rd}/samples.jsonl")
        } else {
            continue;
        };
        dir.check_recorded(round, &rel, &info.accepted)?;
        let lines: Vec<Value> = dir.read_jsonl(&rel)?;
        // `step-pg` and `score` write their training sets as rollout lines already.
        let kind = if rel.ends_with("samples.jsonl")
            || lines
                .first()
                .is_some_and(|v| v.get("old_logprobs").is_some())
        {
            "rollouts"
        } else if lines.first().is_some_and(|v| v.get("chosen").is_some()) {
            "preference"
        } else {
            "sft"
        };
        let converted: Vec<Value> = lines
            .iter()
            .filter(|v| !(kind == "rollouts" && v.get("dropped") == Some(&json!(true))))
            .map(|v| convert(v, kind, format, &dir.path(&rel)))
            .collect::<Result<_>>()?;
        let target = out.join(format!("r{round:04}"));
        std::fs::create_dir_all(&target)
            .map_err(|e| autodidact_core::Error::io("creating", &target, e))?;
        let path = target.join(format!("{kind}.jsonl"));
        let mut text = String::new();
        for v in &converted {
            text.push_str(&v.to_string());
            text.push('\n');
        }
        autodidact_core::fs::write_atomic(&path, text.as_bytes())?;
        rounds.push((round, kind, converted.len()));
    }
    if rounds.is_empty() {
        return Err(Error::run(
            root,
            format!("has no completed round with training data yet ({JOURNAL_FILE} lists none)"),
        ));
    }
    let index = json!({
        "run": std::path::absolute(root).unwrap_or_else(|_| root.to_path_buf()),
        "format": match format { Format::Trl => "trl", Format::OpenRlhf => "openrlhf" },
        "rounds": rounds.iter().map(|(r, k, n)| json!({
            "round": r, "kind": k, "file": format!("r{r:04}/{k}.jsonl"), "lines": n,
        })).collect::<Vec<_>>(),
    });
    let text = serde_json::to_string_pretty(&index).expect("the index serializes");
    autodidact_core::fs::write_atomic(&out.join("index.json"), text.as_bytes())?;
    Ok(Exported { rounds })
}

/// One line of `kind` in `format`'s keys.
fn convert(v: &Value, kind: &str, format: Format, path: &Path) -> Result<Value> {
    let keys: &[(&str, &str)] = match (kind, format) {
        ("sft", Format::Trl) => &[("prompt", "prompt"), ("completion", "completion")],
        ("sft", Format::OpenRlhf) => &[("prompt", "input"), ("completion", "output")],
        ("preference", _) => &[
            ("prompt", "prompt"),
            ("chosen", "chosen"),
            ("rejected", "rejected"),
        ],
        (_, Format::Trl) => &[
            ("prompt", "prompt"),
            ("completion", "completion"),
            ("reward", "reward"),
            ("advantage", "advantage"),
            ("completion_tokens", "completion_ids"),
            ("logprobs", "old_logprobs"),
        ],
        (_, Format::OpenRlhf) => &[
            ("prompt", "input"),
            ("completion", "output"),
            ("reward", "reward"),
            ("advantage", "advantage"),
            ("completion_tokens", "completion_ids"),
            ("logprobs", "old_logprobs"),
        ],
    };
    let mut out = Map::new();
    // A rollout line (`step-pg`'s or `score`'s `train.jsonl`) names its tokens as the output
    // does, and may carry an advantage per token or its own KL coefficient.
    let line = v.get("completion_ids").is_some();
    for (from, to) in keys {
        let from = match *from {
            "completion_tokens" if line => "completion_ids",
            "logprobs" if line => "old_logprobs",
            f => f,
        };
        let value = v.get(from).ok_or_else(|| {
            Error::file(
                path,
                format!(
                    "a line has no `{from}`: {}",
                    crate::config::one_line(&v.to_string())
                ),
            )
        })?;
        out.insert(to.to_string(), value.clone());
    }
    if kind == "rollouts" {
        for key in ["token_advantages", "kl_coef"] {
            if let Some(t) = v.get(key) {
                out.insert(key.into(), t.clone());
            }
        }
    }
    Ok(Value::Object(out))
}

/// Lines per kind over the exported rounds (for the summary line).
pub fn totals(e: &Exported) -> BTreeMap<&'static str, usize> {
    let mut t = BTreeMap::new();
    for (_, kind, n) in &e.rounds {
        *t.entry(*kind).or_insert(0) += n;
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issue16_lines_take_each_trainers_keys() {
        let p = Path::new("x.jsonl");
        let rollout = json!({"step": 0, "problem_id": "a", "prompt": "1+1=", "completion": "2",
            "grade": "correct", "reward": 1.0, "advantage": 0.5, "finish": "stop", "dropped": false,
            "completion_tokens": [5, 2], "logprobs": [-0.1, -0.2]});
        assert_eq!(
            convert(&rollout, "rollouts", Format::Trl, p).unwrap(),
            json!({"prompt": "1+1=", "completion": "2", "reward": 1.0, "advantage": 0.5,
                "completion_ids": [5, 2], "old_logprobs": [-0.1, -0.2]})
        );
        assert_eq!(
            convert(&rollout, "rollouts", Format::OpenRlhf, p).unwrap(),
            json!({"input": "1+1=", "output": "2", "reward": 1.0, "advantage": 0.5,
                "completion_ids": [5, 2], "old_logprobs": [-0.1, -0.2]})
        );
        // Issue 20: step-pg's rollout lines keep their advantage per token.
        let line = json!({"prompt": "1+1=", "completion": "2", "reward": 1.0, "advantage": 0.5,
            "completion_ids": [5, 2], "old_logprobs": [-0.1, -0.2], "token_advantages": [0.25, 0.25]});
        assert_eq!(
            convert(&line, "rollouts", Format::OpenRlhf, p).unwrap(),
            json!({"input": "1+1=", "output": "2", "reward": 1.0, "advantage": 0.5,
                "completion_ids": [5, 2], "old_logprobs": [-0.1, -0.2], "token_advantages": [0.25, 0.25]})
        );
        // score's keep each attempt's KL coefficient.
        let line = json!({"prompt": "1+1=", "completion": "2", "reward": 1.0, "advantage": 0.0,
            "completion_ids": [5, 2], "old_logprobs": [-0.1, -0.2], "kl_coef": 0.1});
        assert_eq!(
            convert(&line, "rollouts", Format::Trl, p).unwrap()["kl_coef"],
            json!(0.1)
        );
        let pair = json!({"problem_id": "a", "prompt": "q", "chosen": "c", "rejected": "r", "weight": 1.0});
        assert_eq!(
            convert(&pair, "preference", Format::OpenRlhf, p).unwrap(),
            json!({"prompt": "q", "chosen": "c", "rejected": "r"})
        );
        let e = convert(&json!({"prompt": "q"}), "sft", Format::Trl, p)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("x.jsonl") && e.contains("no `completion`"),
            "{e}"
        );
    }
}
