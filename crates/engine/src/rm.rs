//! Learned reward models and ensembles of them: `autodidact rm train|score`, and the proxy
//! reward a run can optimize instead of its verifier ([`crate::reward`]).
//!
//! A reward model is a policy checkpoint's backbone with a scalar score head
//! (`core::RewardModel`, built by the backend). It learns from a JSONL file in TRL's
//! conventions, one kind per file:
//! - **pairs** `{"prompt", "chosen", "rejected"}` (optional `"margin"`): Bradley–Terry, as
//!   TRL's `RewardTrainer` (`objectives::bradley_terry`, with its `center_rewards_coefficient`);
//! - **labels** `{"prompt", "completion", "label"}` (`label` true/false, or a probability in
//!   [0, 1]): an outcome classifier, BCE on `σ(score)` (`objectives::outcome_bce`);
//! - **steps** `{"prompt", "completions": [step, …], "labels": [label, …]}` (TRL's stepwise
//!   supervision): a process reward model (PRM). Each prefix through step i is a sequence
//!   labelled `labels[i]` (BCE as for labels), and a completion's score is the min or the
//!   product of its prefixes' ([`crate::steps::StepRule`]). `rm data --kind steps` estimates
//!   the labels from rollouts ([`crate::steps::step_values`]); the regex that splits a
//!   completion into steps is part of the model (`step_pattern`, kept in `rm.json`).
//!
//! Lines whose prompt hashes below `eval_fraction` (with the seed) are held out, so both sides
//! of a prompt's pairs fall on one side. An ensemble is `members` models trained one after
//! another, member m from the head seed `derive(seed, m)` on its own shuffled `subset` of the
//! training lines (all of them at 1.0, the order still differing).
//!
//! The directory `rm train` writes:
//! ```text
//! OUT/rm.json           format version, loss, data file and digest, settings, eval metrics
//! OUT/metrics.jsonl     one line per optimizer step of each member, and its eval line
//! OUT/members/m00/      member 0: model.safetensors with score.weight, config.json
//!                       (LlamaForSequenceClassification), tokenizer, optimizer state
//! ```
//! `rm.json` is written last: a directory without it is an unfinished training.
//!
//! How this differs from TRL's `RewardTrainer`: the learning-rate schedule is autodidact's
//! (linear warm-up, cosine to `min_lr_ratio`), and the head is drawn from a seed.

use crate::config::OptimizerConfig;
use crate::monitor::auroc;
use crate::sampling::derive_seed;
use crate::steps::{StepPattern, StepRule};
use crate::store::sha256_file;
use crate::train::{adamw_settings, LrSchedule};
use crate::{Error, Result};
use autodidact_core::fs::write_atomic;
use autodidact_core::rng::fnv1a;
use autodidact_core::{BackendKind, Backends, Example, Group, RewardModel, Rng};
pub use autodidact_objectives::{aggregate, disagreement, Aggregation};
use autodidact_objectives::{bradley_terry, calibration, outcome_bce};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

pub const RM_FILE: &str = "rm.json";
pub const RM_METRICS_FILE: &str = "metrics.jsonl";
pub const MEMBERS_DIR: &str = "members";
/// Version of `rm.json`. Bump on any incompatible change.
pub const RM_FORMAT_VERSION: u32 = 1;
/// Bins of the calibration error.
const CALIBRATION_BINS: usize = 10;

/// One preference pair.
#[derive(Clone, Debug, PartialEq)]
pub struct Pair {
    pub prompt: String,
    pub chosen: String,
    pub rejected: String,
    /// How far the chosen score should clear the rejected one (TRL's `margin`); 0 for none.
    pub margin: f32,
}

/// One completion with its outcome label.
#[derive(Clone, Debug, PartialEq)]
pub struct Labeled {
    pub prompt: String,
    pub completion: String,
    /// 1: right, 0: wrong, or the probability of right in between.
    pub label: f32,
}

/// One completion as steps, each labelled with the value of the prefix it ends.
#[derive(Clone, Debug, PartialEq)]
pub struct Stepped {
    pub prompt: String,
    /// The completion's steps, which concatenate to it.
    pub steps: Vec<String>,
    /// One label in [0, 1] per step; the last is the whole completion's.
    pub labels: Vec<f32>,
}

impl Stepped {
    /// The prefix through each step.
    fn prefixes(&self) -> impl Iterator<Item = String> + '_ {
        self.steps.iter().scan(String::new(), |acc, step| {
            acc.push_str(step);
            Some(acc.clone())
        })
    }
}

/// What a reward model learns from: one kind of line per file.
#[derive(Clone, Debug, PartialEq)]
pub enum RmData {
    Pairs(Vec<Pair>),
    Labels(Vec<Labeled>),
    Steps(Vec<Stepped>),
}

/// The loss a reward model trains with, given by its data.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RmLoss {
    BradleyTerry,
    Outcome,
    /// Outcome BCE on every step prefix: a process reward model.
    Process,
}

impl RmData {
    pub fn loss(&self) -> RmLoss {
        match self {
            RmData::Pairs(_) => RmLoss::BradleyTerry,
            RmData::Labels(_) => RmLoss::Outcome,
            RmData::Steps(_) => RmLoss::Process,
        }
    }
    pub fn len(&self) -> usize {
        match self {
            RmData::Pairs(p) => p.len(),
            RmData::Labels(l) => l.len(),
            RmData::Steps(l) => l.len(),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    fn prompt(&self, i: usize) -> &str {
        match self {
            RmData::Pairs(p) => &p[i].prompt,
            RmData::Labels(l) => &l[i].prompt,
            RmData::Steps(l) => &l[i].prompt,
        }
    }
    /// The sequences lines `range` score: every pair's chosen completion, then every pair's
    /// rejected one (the layout [`eval_metrics`] reads), each labeled completion, or each
    /// stepped completion's prefixes in order.
    pub fn sequences(&self, range: std::ops::Range<usize>) -> Vec<Example> {
        let ex = |prompt: &str, completion: &str| Example::new(prompt, completion);
        match self {
            RmData::Pairs(p) => {
                let p = &p[range];
                let chosen = p.iter().map(|x| ex(&x.prompt, &x.chosen));
                chosen
                    .chain(p.iter().map(|x| ex(&x.prompt, &x.rejected)))
                    .collect()
            }
            RmData::Labels(l) => l[range]
                .iter()
                .map(|x| ex(&x.prompt, &x.completion))
                .collect(),
            RmData::Steps(l) => l[range]
                .iter()
                .flat_map(|x| x.prefixes().map(|p| ex(&x.prompt, &p)))
                .collect(),
        }
    }

    /// What a model trains on: stepped completions as one labeled line per prefix; other
    /// data as it is.
    fn prefix_labels(&self) -> RmData {
        match self {
            RmData::Steps(l) => RmData::Labels(
                l.iter()
                    .flat_map(|x| {
                        x.prefixes()
                            .zip(&x.labels)
                            .map(|(completion, &label)| Labeled {
                                prompt: x.prompt.clone(),
                                completion,
                                label,
                            })
                    })
                    .collect(),
            ),
            other => other.clone(),
        }
    }

    /// Lines `idx`, in that order.
    fn select(&self, idx: &[usize]) -> RmData {
        match self {
            RmData::Pairs(p) => RmData::Pairs(idx.iter().map(|&i| p[i].clone()).collect()),
            RmData::Labels(l) => RmData::Labels(idx.iter().map(|&i| l[i].clone()).collect()),
            RmData::Steps(l) => RmData::Steps(idx.iter().map(|&i| l[i].clone()).collect()),
        }
    }
}

/// Reads a pairs or labels file (see the module's notes); an error names the line and what a
/// valid line holds.
pub fn read_data(path: &Path) -> Result<RmData> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| autodidact_core::Error::io("reading", path, e))?;
    const VALID: &str = "each line is {\"prompt\", \"chosen\", \"rejected\"} (pairs, optional \"margin\"), {\"prompt\", \"completion\", \"label\"} (labels) or {\"prompt\", \"completions\": [steps], \"labels\": [one per step]} (steps), one kind per file; a label is true/false or a probability in [0, 1]";
    let mut data: Option<RmData> = None;
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = |why: String| Error::file(path, format!("line {}: {why}; {VALID}", n + 1));
        let v: serde_json::Value =
            serde_json::from_str(line).map_err(|e| bad(format!("not JSON ({e})")))?;
        let text_of = |key: &str| -> Result<String> {
            match v.get(key) {
                Some(serde_json::Value::String(s)) => Ok(s.clone()),
                Some(other) => Err(bad(format!("\"{key}\" is {other}, not a string"))),
                None => Err(bad(format!("no \"{key}\""))),
            }
        };
        let label_of = |key: &str, x: &serde_json::Value| -> Result<f32> {
            match x {
                serde_json::Value::Bool(b) => Ok(*b as u8 as f32),
                x => x
                    .as_f64()
                    .filter(|p| (0.0..=1.0).contains(p))
                    .map(|p| p as f32)
                    .ok_or_else(|| {
                        bad(format!(
                            "\"{key}\" holds {x}, not true/false or a probability in [0, 1]"
                        ))
                    }),
            }
        };
        let prompt = text_of("prompt")?;
        let one = if v.get("chosen").is_some() {
            let margin = match v.get("margin") {
                None => 0.0,
                Some(m) => m
                    .as_f64()
                    .filter(|m| m.is_finite())
                    .ok_or_else(|| bad(format!("\"margin\" is {m}, not a finite number")))?
                    as f32,
            };
            RmData::Pairs(vec![Pair {
                prompt,
                chosen: text_of("chosen")?,
                rejected: text_of("rejected")?,
                margin,
            }])
        } else if v.get("completions").is_some() {
            let strings = |key: &str| match v.get(key) {
                Some(serde_json::Value::Array(a)) if !a.is_empty() => Ok(a.as_slice()),
                _ => Err(bad(format!("\"{key}\" is not a non-empty list"))),
            };
            let steps = strings("completions")?
                .iter()
                .map(|s| match s {
                    serde_json::Value::String(s) => Ok(s.clone()),
                    other => Err(bad(format!("a step is {other}, not a string"))),
                })
                .collect::<Result<Vec<String>>>()?;
            let labels = strings("labels")?
                .iter()
                .map(|x| label_of("labels", x))
                .collect::<Result<Vec<f32>>>()?;
            if labels.len() != steps.len() {
                return Err(bad(format!(
                    "{} steps but {} labels",
                    steps.len(),
                    labels.len()
                )));
            }
            RmData::Steps(vec![Stepped {
                prompt,
                steps,
                labels,
            }])
        } else {
            let label = match v.get("label") {
                Some(x) => label_of("label", x)?,
                None => {
                    return Err(bad(
                        "none of \"chosen\", \"label\" or \"completions\"".into()
                    ))
                }
            };
            RmData::Labels(vec![Labeled {
                prompt,
                completion: text_of("completion")?,
                label,
            }])
        };
        match (&mut data, one) {
            (None, one) => data = Some(one),
            (Some(RmData::Pairs(a)), RmData::Pairs(b)) => a.extend(b),
            (Some(RmData::Labels(a)), RmData::Labels(b)) => a.extend(b),
            (Some(RmData::Steps(a)), RmData::Steps(b)) => a.extend(b),
            (Some(_), _) => return Err(bad("kinds of line are mixed".into())),
        }
    }
    let Some(data) = data else {
        return Err(Error::file(path, format!("holds no lines; {VALID}")));
    };
    Ok(data)
}

/// Every completion of `groups` with its verdict as its label (an ungradable one is wrong).
pub fn labels_from_groups(groups: &[Group]) -> RmData {
    RmData::Labels(
        groups
            .iter()
            .flat_map(|g| {
                g.completions.iter().zip(&g.verdicts).map(|(c, v)| Labeled {
                    prompt: g.problem.prompt.clone(),
                    completion: c.text.clone(),
                    label: v.is_correct() as u8 as f32,
                })
            })
            .collect(),
    )
}

/// Per problem of `groups`, its distinct correct completions paired in order with its
/// distinct wrong ones.
pub fn pairs_from_groups(groups: &[Group]) -> RmData {
    RmData::Pairs(
        groups
            .iter()
            .flat_map(|g| {
                let right = g.distinct_correct();
                let wrong = g.distinct(|i| !g.verdicts[i].is_correct());
                right
                    .into_iter()
                    .zip(wrong)
                    .map(|(r, w)| Pair {
                        prompt: g.problem.prompt.clone(),
                        chosen: g.completions[r].text.clone(),
                        rejected: g.completions[w].text.clone(),
                        margin: 0.0,
                    })
                    .collect::<Vec<_>>()
            })
            .collect(),
    )
}

/// Every completion of `groups` as an example under its problem's prompt, in group order.
pub fn completions_of(groups: &[Group]) -> Vec<Example> {
    groups
        .iter()
        .flat_map(|g| {
            g.completions
                .iter()
                .map(|c| Example::new(g.problem.prompt.clone(), c.text.clone()))
        })
        .collect()
}

/// `data` as the JSONL lines [`read_data`] reads.
pub fn data_lines(data: &RmData) -> String {
    let mut out = String::new();
    let mut push = |v: serde_json::Value| {
        out.push_str(&v.to_string());
        out.push('\n');
    };
    match data {
        RmData::Pairs(p) => p.iter().for_each(|x| {
            push(serde_json::json!({"prompt": x.prompt, "chosen": x.chosen, "rejected": x.rejected}))
        }),
        RmData::Labels(l) => l.iter().for_each(|x| {
            push(serde_json::json!({"prompt": x.prompt, "completion": x.completion, "label": label_json(x.label)}))
        }),
        RmData::Steps(l) => l.iter().for_each(|x| {
            let labels: Vec<_> = x.labels.iter().map(|&y| label_json(y)).collect();
            push(serde_json::json!({"prompt": x.prompt, "completions": x.steps, "labels": labels}))
        }),
    }
    out
}

/// A label as TRL writes it: true/false when it is 1/0, else the probability.
fn label_json(y: f32) -> serde_json::Value {
    match y {
        1.0 => true.into(),
        0.0 => false.into(),
        p => (p as f64).into(),
    }
}

/// Stepped data from sampled groups and their steps' values ([`crate::steps::step_values`]):
/// each completion split by `pattern`, labelled with its values (`soft`) or with whether
/// each value is above 0 (Math-Shepherd's hard estimate; the last, the verdict, is 0 or 1).
pub fn steps_from_groups(
    groups: &[Group],
    values: &[Vec<Vec<f32>>],
    pattern: &crate::steps::StepPattern,
    soft: bool,
) -> RmData {
    RmData::Steps(
        groups
            .iter()
            .zip(values)
            .flat_map(|(g, v)| {
                g.completions.iter().zip(v).map(|(c, v)| Stepped {
                    prompt: g.problem.prompt.clone(),
                    steps: pattern
                        .split(&c.text)
                        .into_iter()
                        .map(String::from)
                        .collect(),
                    labels: v
                        .iter()
                        .map(|&y| if soft { y } else { (y > 0.0) as u8 as f32 })
                        .collect(),
                })
            })
            .filter(|x| !x.steps.is_empty())
            .collect(),
    )
}

/// How `rm train` trains (`--set` keys of the same names).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RmConfig {
    /// Reward models of the ensemble.
    pub members: usize,
    /// Fraction of the training lines each member sees (a random subset per member); 1: all.
    pub subset: f64,
    /// Fraction of prompts held out for evaluation.
    pub eval_fraction: f64,
    /// Passes over each member's training lines.
    pub epochs: f64,
    /// Pairs (or labeled completions) per optimizer step.
    pub batch_size: usize,
    /// Sequences per forward pass (a pair is two); gradients accumulate over a step's passes.
    pub micro_batch: usize,
    /// TRL's `center_rewards_coefficient`: pulls pair scores toward zero (0: off).
    pub center: f32,
    pub optimizer: OptimizerConfig,
    pub seed: u64,
    /// Steps data only: the regex after each match of which a step ends, as the data was
    /// split (`rm data --kind steps` prints it; the built-in tasks' is `[;#]`). It is part
    /// of the model: scoring splits completions with it.
    pub step_pattern: Option<String>,
}

impl Default for RmConfig {
    fn default() -> Self {
        Self {
            members: 1,
            subset: 1.0,
            eval_fraction: 0.1,
            epochs: 1.0,
            batch_size: 32,
            micro_batch: 64,
            center: 0.0,
            optimizer: OptimizerConfig::default(),
            seed: 0,
            step_pattern: None,
        }
    }
}

impl RmConfig {
    /// Checks every setting, naming the bad one.
    pub fn check(&self) -> Result<()> {
        let fraction = |key: &str, v: f64, lo_open: bool| {
            let ok = v.is_finite() && v <= 1.0 && if lo_open { v > 0.0 } else { v >= 0.0 };
            if ok {
                Ok(())
            } else {
                Err(Error::config(
                    key,
                    format!("{v} must be in {}0, 1]", if lo_open { "(" } else { "[" }),
                ))
            }
        };
        if self.members == 0 {
            return Err(Error::config("members", "must be at least 1"));
        }
        fraction("subset", self.subset, true)?;
        fraction("eval_fraction", self.eval_fraction, false)?;
        if self.eval_fraction >= 1.0 {
            return Err(Error::config(
                "eval_fraction",
                "1 leaves nothing to train on",
            ));
        }
        if !(self.epochs.is_finite() && self.epochs > 0.0) {
            return Err(Error::config(
                "epochs",
                format!("{} must be above 0", self.epochs),
            ));
        }
        if self.batch_size == 0 {
            return Err(Error::config("batch_size", "must be at least 1"));
        }
        if self.micro_batch < 2 {
            return Err(Error::config(
                "micro_batch",
                "must be at least 2 (a pair is two sequences)",
            ));
        }
        if !(self.center.is_finite() && self.center >= 0.0) {
            return Err(Error::config(
                "center",
                format!("{} must be 0 or above", self.center),
            ));
        }
        if let Some(p) = &self.step_pattern {
            StepPattern::new("step_pattern", p)?;
        }
        self.optimizer.check("rm")
    }

    /// Checks that `data` fits the settings: steps data comes with the `step_pattern` that
    /// splits each of its completions into exactly its steps, and other data without one.
    fn check_data(&self, data: &RmData, path: &Path) -> Result<()> {
        let (RmData::Steps(lines), Some(src)) = (data, &self.step_pattern) else {
            return match (data, &self.step_pattern) {
                (RmData::Steps(_), None) => Err(Error::config(
                    "step_pattern",
                    format!("{} holds steps: set the regex that ends a step, as the data was split (e.g. `[;#]` for the built-in tasks; `rm data --kind steps` prints it)", path.display()),
                )),
                (_, Some(_)) => Err(Error::config(
                    "step_pattern",
                    format!("{} holds no steps (only steps data, `completions` and `labels`, takes a step pattern)", path.display()),
                )),
                _ => Ok(()),
            };
        };
        let pattern = StepPattern::new("step_pattern", src)?;
        for (n, x) in lines.iter().enumerate() {
            let whole: String = x.steps.concat();
            if pattern.split(&whole) != x.steps {
                return Err(Error::file(
                    path,
                    format!(
                        "steps line {}: step_pattern `{src}` splits its completion into {:?}, not its steps {:?}; set the pattern the data was split with",
                        n + 1,
                        pattern.split(&whole),
                        x.steps
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// What `rm.json` records.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RmInfo {
    pub format_version: u32,
    pub loss: RmLoss,
    /// The checkpoint whose backbone every member started from.
    pub base: PathBuf,
    pub data: PathBuf,
    pub data_sha256: String,
    pub train_lines: usize,
    pub eval_lines: usize,
    pub config: RmConfig,
    pub members: Vec<MemberInfo>,
    /// The ensemble's (the members' mean) held-out metrics, and `eval/disagreement`.
    pub eval: BTreeMap<String, f64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemberInfo {
    /// Relative to the directory (`members/m00`).
    pub dir: String,
    pub seed: u64,
    pub train_lines: usize,
    pub steps: u64,
    pub eval: BTreeMap<String, f64>,
}

/// Trains the reward models `cfg` describes on `data` from the backbone of `base`, into `out`
/// (a new or empty directory); `log` sees one line per member and step summary.
pub fn train(
    backends: &Backends,
    base: &Path,
    data_path: &Path,
    out: &Path,
    cfg: &RmConfig,
    log: &mut dyn FnMut(&str),
) -> Result<RmInfo> {
    cfg.check()?;
    if std::fs::read_dir(out).is_ok_and(|mut d| d.next().is_some()) {
        return Err(Error::run(
            out,
            "holds files; train reward models into a new or empty directory",
        ));
    }
    let data = read_data(data_path)?;
    cfg.check_data(&data, data_path)?;
    let (train_idx, eval_idx) = split(&data, cfg);
    if train_idx.is_empty() {
        return Err(Error::file(
            data_path,
            format!(
                "every one of its {} lines is held out; lower eval_fraction",
                data.len()
            ),
        ));
    }
    std::fs::create_dir_all(out.join(MEMBERS_DIR))
        .map_err(|e| autodidact_core::Error::io("creating", out, e))?;
    let metrics_path = out.join(RM_METRICS_FILE);
    let mut metrics = std::fs::File::create(&metrics_path)
        .map_err(|e| autodidact_core::Error::io("creating", &metrics_path, e))?;
    let eval_data = data.select(&eval_idx);
    let eval_seqs = eval_data.sequences(0..eval_data.len());
    let mut members = Vec::new();
    let mut eval_scores: Vec<Vec<f32>> = Vec::new();
    for m in 0..cfg.members {
        let seed = derive_seed(cfg.seed, 0, "rm-member", m as u64);
        let mut order = train_idx.clone();
        Rng::derived(seed, 1).shuffle(&mut order);
        order.truncate(((cfg.subset * order.len() as f64).ceil() as usize).max(1));
        let member_data = data.select(&order).prefix_labels();
        let mut rm = backends.reward_model(BackendKind::Native, base, Some(seed))?;
        let steps = fit(&mut *rm, &member_data, cfg, seed, &mut |line| {
            let mut line = line;
            line.insert("member".into(), (m as u64).into());
            writeln!(metrics, "{}", serde_json::Value::Object(line))
                .map_err(|e| autodidact_core::Error::io("writing", &metrics_path, e).into())
        })?;
        let scores = score_all(&mut *rm, &eval_seqs, cfg.micro_batch)?;
        let eval = eval_metrics(&eval_data, &scores);
        let dir = format!("{MEMBERS_DIR}/m{m:02}");
        rm.save(&out.join(&dir))?;
        let mut line = serde_json::Map::new();
        line.insert("member".into(), (m as u64).into());
        for (k, v) in &eval {
            line.insert(k.clone(), (*v).into());
        }
        writeln!(metrics, "{}", serde_json::Value::Object(line))
            .map_err(|e| autodidact_core::Error::io("writing", &metrics_path, e))?;
        log(&format!(
            "member {m}: {} lines, {steps} steps, held-out {}",
            order.len(),
            summary(&eval)
        ));
        eval_scores.push(scores);
        members.push(MemberInfo {
            dir,
            seed,
            train_lines: order.len(),
            steps,
            eval,
        });
    }
    metrics
        .sync_all()
        .map_err(|e| autodidact_core::Error::io("syncing", &metrics_path, e))?;
    let mut eval = BTreeMap::new();
    if !eval_idx.is_empty() {
        let mean = aggregate(&eval_scores, Aggregation::Mean);
        eval = eval_metrics(&eval_data, &mean);
        eval.insert("eval/disagreement".into(), disagreement(&eval_scores));
    }
    let info = RmInfo {
        format_version: RM_FORMAT_VERSION,
        loss: data.loss(),
        base: base.to_path_buf(),
        data: data_path.to_path_buf(),
        data_sha256: sha256_file(data_path)?,
        train_lines: train_idx.len(),
        eval_lines: eval_idx.len(),
        config: cfg.clone(),
        members,
        eval,
    };
    let json = serde_json::to_vec_pretty(&info).expect("an RmInfo serializes");
    write_atomic(&out.join(RM_FILE), &json)?;
    Ok(info)
}

/// `eval/accuracy 0.812 …`: the metrics of one line.
pub fn summary(m: &BTreeMap<String, f64>) -> String {
    m.iter()
        .map(|(k, v)| format!("{} {v:.3}", k.trim_start_matches("eval/")))
        .collect::<Vec<_>>()
        .join("  ")
}

/// Line indices (train, eval): a prompt is held out when its hash with the seed falls below
/// `eval_fraction`.
fn split(data: &RmData, cfg: &RmConfig) -> (Vec<usize>, Vec<usize>) {
    let salt = derive_seed(cfg.seed, 0, "rm-split", 0);
    (0..data.len()).partition(|&i| {
        let h = Rng::derived(salt, fnv1a(data.prompt(i).as_bytes())).uniform_f64();
        h >= cfg.eval_fraction
    })
}

/// Lines per forward pass: half the sequences for pairs.
fn lines_per_pass(data: &RmData, micro_batch: usize) -> usize {
    match data {
        RmData::Pairs(_) => micro_batch / 2,
        RmData::Labels(_) | RmData::Steps(_) => micro_batch,
    }
}

/// Trains `rm` on `data` (already its member's subset); `log` gets one metrics line per step.
/// Returns the steps taken.
fn fit(
    rm: &mut dyn RewardModel,
    data: &RmData,
    cfg: &RmConfig,
    seed: u64,
    log: &mut dyn FnMut(serde_json::Map<String, serde_json::Value>) -> Result<()>,
) -> Result<u64> {
    let o = &cfg.optimizer;
    rm.reset_optimizer(&adamw_settings(o.weight_decay))?;
    let n = data.len();
    let batch = cfg.batch_size.min(n);
    let steps = ((cfg.epochs * n as f64) / batch as f64).ceil().max(1.0) as u64;
    let schedule = LrSchedule::of(o, steps);
    let per_pass = lines_per_pass(data, cfg.micro_batch);
    let (mut order, mut at, mut epoch) = (Vec::new(), 0, 0u64);
    for step in 0..steps {
        // The step's lines: the next `batch` of a per-epoch permutation.
        let mut lines = Vec::with_capacity(batch);
        while lines.len() < batch {
            if at == order.len() {
                order = (0..n).collect();
                Rng::derived(seed, 2 + epoch).shuffle(&mut order);
                (at, epoch) = (0, epoch + 1);
            }
            lines.push(order[at]);
            at += 1;
        }
        let step_data = data.select(&lines);
        let (mut loss, mut accuracy) = (0.0, 0.0);
        for start in (0..batch).step_by(per_pass) {
            let range = start..(start + per_pass).min(batch);
            let share = range.len() as f64 / batch as f64;
            let seqs = step_data.sequences(range.clone());
            let s = rm.scores(&seqs)?;
            let (l, a, grad) = match &step_data {
                RmData::Pairs(p) => {
                    let k = range.len();
                    let margins: Vec<f32> = p[range].iter().map(|x| x.margin).collect();
                    let r = bradley_terry(&s[..k], &s[k..], Some(&margins), cfg.center);
                    let g = r.grad_chosen.iter().chain(&r.grad_rejected).copied();
                    (r.loss, r.accuracy, g.collect::<Vec<f32>>())
                }
                RmData::Steps(_) => unreachable!("steps train as their prefixes' labels"),
                RmData::Labels(l) => {
                    let y: Vec<f32> = l[range].iter().map(|x| x.label).collect();
                    let r = outcome_bce(&s, &y);
                    (r.loss, r.accuracy, r.grad)
                }
            };
            let grad: Vec<f32> = grad.iter().map(|g| g * share as f32).collect();
            rm.backward(&grad)?;
            loss += l * share;
            accuracy += a * share;
        }
        let lr = schedule.lr_at(step);
        let norm = rm.step(lr, o.max_grad_norm)?;
        let mut line = serde_json::Map::new();
        line.insert("step".into(), (step + 1).into());
        line.insert("train/loss".into(), loss.into());
        line.insert("train/accuracy".into(), accuracy.into());
        line.insert("train/grad_norm".into(), (norm as f64).into());
        line.insert("train/lr".into(), (lr as f64).into());
        log(line)?;
    }
    Ok(steps)
}

/// `rm`'s scores of `examples`, `rows` sequences per pass.
fn score_all(rm: &mut dyn RewardModel, examples: &[Example], rows: usize) -> Result<Vec<f32>> {
    let mut out = Vec::with_capacity(examples.len());
    for chunk in examples.chunks(rows) {
        out.extend(rm.scores(chunk)?);
    }
    Ok(out)
}

/// Held-out metrics of `scores` (of [`RmData::sequences`] of every line): loss and accuracy, and the
/// calibration of σ(score) for labels, or of σ(chosen − rejected) for pairs (each pair read
/// in both orders, so that a preference the model is unsure of counts as such). A label of
/// 0.5 or more counts as right for accuracy and AUROC. Steps are scored as labels, one per
/// prefix, and also per completion: `eval/outcome_auroc_{min,product}` ranks completions by
/// the combined score against their outcome (the last label).
pub fn eval_metrics(data: &RmData, scores: &[f32]) -> BTreeMap<String, f64> {
    let mut m = BTreeMap::new();
    if data.is_empty() {
        return m;
    }
    let sigmoid = |x: f32| 1.0 / (1.0 + (-x).exp());
    let (probs, labels): (Vec<f32>, Vec<f32>) = match data {
        RmData::Pairs(p) => {
            let n = p.len();
            let (c, r) = scores.split_at(n);
            let bt = bradley_terry(c, r, None, 0.0);
            m.insert("eval/loss".into(), bt.loss);
            m.insert("eval/accuracy".into(), bt.accuracy);
            m.insert("eval/margin".into(), bt.margin);
            let forward = (0..n).map(|i| (sigmoid(c[i] - r[i]), 1.0));
            let backward = (0..n).map(|i| (sigmoid(r[i] - c[i]), 0.0));
            forward.chain(backward).unzip()
        }
        RmData::Steps(l) => {
            // Per step as labels, and per completion: the combined score against the last
            // label (the completion's outcome).
            let mut m = eval_metrics(&data.prefix_labels(), scores);
            let truth: Vec<bool> = l
                .iter()
                .map(|x| x.labels[x.labels.len() - 1] >= 0.5)
                .collect();
            for rule in [StepRule::Min, StepRule::Product] {
                let combined = rule.combine_each(scores, l.iter().map(|x| x.steps.len()));
                if let Some(a) = auroc(&combined, &truth) {
                    m.insert(format!("eval/outcome_auroc_{}", rule.name()), a);
                }
            }
            return m;
        }
        RmData::Labels(l) => {
            let y: Vec<f32> = l.iter().map(|x| x.label).collect();
            let bce = outcome_bce(scores, &y);
            m.insert("eval/loss".into(), bce.loss);
            m.insert("eval/accuracy".into(), bce.accuracy);
            let truth: Vec<bool> = l.iter().map(|x| x.label >= 0.5).collect();
            if let Some(a) = auroc(scores, &truth) {
                m.insert("eval/auroc".into(), a);
            }
            (scores.iter().map(|&s| sigmoid(s)).collect(), y)
        }
    };
    let cal = calibration(&probs, &labels, CALIBRATION_BINS);
    m.insert("eval/ece".into(), cal.ece);
    m.insert("eval/brier".into(), cal.brier);
    m
}

/// Checks an aggregation's setting: UWO's λ is finite and not negative; `key` names it.
pub fn check_aggregation(key: &str, how: Aggregation) -> Result<()> {
    match how {
        Aggregation::Uncertainty { lambda } if !(lambda.is_finite() && lambda >= 0.0) => Err(
            Error::config(key, format!("{lambda} must be a finite number ≥ 0")),
        ),
        _ => Ok(()),
    }
}

/// Reward models loaded for scoring: one, or an ensemble's members.
pub struct Ensemble {
    members: Vec<Box<dyn RewardModel>>,
    /// Process reward models: how completions split into steps, and how the steps' scores
    /// combine into a completion's.
    steps: Option<(StepPattern, StepRule)>,
}

/// Sequences per scoring pass of an [`Ensemble`].
const SCORE_ROWS: usize = 64;

impl Ensemble {
    /// The reward models at `path`: a directory `rm train` wrote (every member), or one
    /// checkpoint with a score head (transformers' `…ForSequenceClassification` layout).
    /// Process reward models combine their steps' scores by `rule`.
    pub fn load(backends: &Backends, path: &Path, rule: StepRule) -> Result<Self> {
        let (dirs, pattern) = match read_info(path)? {
            Some(info) => (
                info.members.iter().map(|m| path.join(&m.dir)).collect(),
                info.config.step_pattern,
            ),
            None => (vec![path.to_path_buf()], None),
        };
        let members = dirs
            .iter()
            .map(|d| backends.reward_model(BackendKind::Native, d, None))
            .collect::<autodidact_core::Result<_>>()?;
        let steps = match pattern {
            Some(p) => Some((StepPattern::new("step_pattern", &p)?, rule)),
            None => None,
        };
        Ok(Self { members, steps })
    }

    /// Bytes the members hold while a run scores with them.
    pub fn memory_bytes(&self) -> u64 {
        self.members
            .iter()
            .map(|m| m.memory_bytes(SCORE_ROWS))
            .sum()
    }

    /// Whether these are process reward models (they score a completion by its steps).
    pub fn is_process(&self) -> bool {
        self.steps.is_some()
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Each member's score of each example as one sequence (a process model's of it as one
    /// prefix): one row per member.
    pub fn sequence_scores(&mut self, examples: &[Example]) -> Result<Vec<Vec<f32>>> {
        self.members
            .iter_mut()
            .map(|m| score_all(&mut **m, examples, SCORE_ROWS))
            .collect()
    }

    /// Each member's score of each completion: one row per member. A process reward model
    /// scores each prefix through a step and combines them.
    pub fn scores(&mut self, examples: &[Example]) -> Result<Vec<Vec<f32>>> {
        let Some((pattern, rule)) = &self.steps else {
            return self.sequence_scores(examples);
        };
        let mut prefixes = Vec::new();
        let mut counts = Vec::with_capacity(examples.len());
        for e in examples {
            // An empty completion is one empty step, scored as the model scores it (an
            // empty min would be a free 0, above most completions' scores).
            let mut ends = pattern.ends(&e.completion);
            if ends.is_empty() {
                ends.push(0);
            }
            counts.push(ends.len());
            prefixes.extend(
                ends.iter()
                    .map(|&end| Example::new(&*e.prompt, &e.completion[..end])),
            );
        }
        self.members
            .iter_mut()
            .map(|m| {
                let s = score_all(&mut **m, &prefixes, SCORE_ROWS)?;
                Ok(rule.combine_each(&s, counts.iter().copied()))
            })
            .collect()
    }
}

/// SHA-256 over every file under the reward model or ensemble at `path` (a directory, or
/// one checkpoint directory), each named by its path relative to `path`: what a run records
/// to notice, on resume, that its proxy reward changed under it.
pub fn digest(path: &Path) -> Result<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, PathBuf)>) -> Result<()> {
        let entries =
            std::fs::read_dir(dir).map_err(|e| autodidact_core::Error::io("listing", dir, e))?;
        for entry in entries {
            let p = entry
                .map_err(|e| autodidact_core::Error::io("listing", dir, e))?
                .path();
            if p.is_dir() {
                walk(root, &p, out)?;
            } else {
                let rel = p
                    .strip_prefix(root)
                    .unwrap_or(&p)
                    .to_string_lossy()
                    .into_owned();
                out.push((rel, p));
            }
        }
        Ok(())
    }
    let mut files = Vec::new();
    walk(path, path, &mut files)?;
    files.sort();
    let mut listing = String::new();
    for (rel, p) in &files {
        listing.push_str(&format!("{rel}\0{}\n", sha256_file(p)?));
    }
    Ok(crate::store::sha256_bytes(listing.as_bytes()))
}

/// The `rm.json` at `path` (a directory `rm train` wrote), or None for one checkpoint.
pub fn read_info(path: &Path) -> Result<Option<RmInfo>> {
    let info_path = path.join(RM_FILE);
    if info_path.exists() {
        let bytes = std::fs::read(&info_path)
            .map_err(|e| autodidact_core::Error::io("reading", &info_path, e))?;
        let v: serde_json::Value = serde_json::from_slice(&bytes)
            .map_err(|e| Error::file(&info_path, format!("not JSON: {e}")))?;
        if v.get("format_version").and_then(|v| v.as_u64()) != Some(RM_FORMAT_VERSION as u64) {
            return Err(Error::file(
                &info_path,
                format!(
                    "format_version {}, but this build reads version {RM_FORMAT_VERSION}; train the reward models again with this build",
                    v.get("format_version").unwrap_or(&serde_json::Value::Null)
                ),
            ));
        }
        let info: RmInfo = serde_json::from_value(v)
            .map_err(|e| Error::file(&info_path, format!("not an rm.json: {e}")))?;
        return Ok(Some(info));
    }
    if path.join(MEMBERS_DIR).exists() {
        return Err(Error::file(
            path,
            format!("has members but no {RM_FILE}: its training did not finish; train it again"),
        ));
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(text: &str) -> Result<RmData> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.jsonl");
        std::fs::write(&path, text).unwrap();
        read_data(&path)
    }

    /// Steps lines read and write back (TRL's stepwise format, soft labels as numbers), and
    /// train as one labeled line per prefix.
    #[test]
    fn issue18_steps_data_round_trips_and_trains_on_prefixes() {
        let text =
            "{\"prompt\":\"1+2=\",\"completions\":[\"1+2=3;\",\"#3\"],\"labels\":[0.5,true]}\n";
        let data = read(text).unwrap();
        assert_eq!(data.loss(), RmLoss::Process);
        let RmData::Steps(l) = &data else { panic!() };
        assert_eq!(l[0].labels, [0.5, 1.0]);
        assert_eq!(read(&data_lines(&data)).unwrap(), data);
        let seqs = data.sequences(0..1);
        assert_eq!(seqs[0].completion, "1+2=3;");
        assert_eq!(seqs[1].completion, "1+2=3;#3");
        let RmData::Labels(p) = data.prefix_labels() else {
            panic!()
        };
        assert_eq!(p.iter().map(|x| x.label).collect::<Vec<_>>(), [0.5, 1.0]);

        for (line, want) in [
            (
                "{\"prompt\":\"a\",\"completions\":[\"x\"],\"labels\":[]}",
                "\"labels\" is not a non-empty list",
            ),
            (
                "{\"prompt\":\"a\",\"completions\":[\"x\",\"y\"],\"labels\":[1]}",
                "2 steps but 1 labels",
            ),
            (
                "{\"prompt\":\"a\",\"completions\":[1],\"labels\":[1]}",
                "a step is 1, not a string",
            ),
            (
                "{\"prompt\":\"a\",\"completions\":[\"x\"],\"labels\":[1.5]}",
                "not true/false or a probability",
            ),
        ] {
            let e = read(line).unwrap_err().to_string();
            assert!(e.contains("line 1") && e.contains(want), "{e}");
        }
    }

    /// Steps data needs the pattern it was split with, and only steps data takes one.
    #[test]
    fn issue18_step_pattern_must_split_the_data_as_it_was_split() {
        let path = Path::new("d.jsonl");
        let data =
            read("{\"prompt\":\"p\",\"completions\":[\"1;\",\"2#\",\"3\"],\"labels\":[1,0,0]}\n")
                .unwrap();
        let with = |p: Option<&str>| RmConfig {
            step_pattern: p.map(String::from),
            ..RmConfig::default()
        };
        assert!(with(Some("[;#]")).check_data(&data, path).is_ok());
        let e = with(None).check_data(&data, path).unwrap_err().to_string();
        assert!(
            e.contains("step_pattern") && e.contains("holds steps"),
            "{e}"
        );
        let e = with(Some(";"))
            .check_data(&data, path)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("steps line 1") && e.contains("[\"1;\", \"2#3\"]"),
            "{e}"
        );
        let labels = read("{\"prompt\":\"p\",\"completion\":\"3\",\"label\":1}\n").unwrap();
        let e = with(Some(";"))
            .check_data(&labels, path)
            .unwrap_err()
            .to_string();
        assert!(e.contains("holds no steps"), "{e}");
        assert!(with(Some("a*")).check().is_err());
    }

    /// A process model's held-out metrics: per prefix as labels, and per completion the AUROC
    /// of the min and the product of its step scores against its last label.
    #[test]
    fn issue18_process_eval_ranks_completions_by_combined_step_scores() {
        let line = |labels: [u8; 2]| Stepped {
            prompt: "p".into(),
            steps: vec!["a;".into(), "b".into()],
            labels: labels.iter().map(|&y| y as f32).collect(),
        };
        let data = RmData::Steps(vec![line([1, 1]), line([1, 0]), line([0, 0])]);
        // Min ranks the first completion above both others; product too.
        let scores = [3.0, 2.0, 3.0, -1.0, -2.0, 4.0];
        let m = eval_metrics(&data, &scores);
        assert_eq!(m["eval/outcome_auroc_min"], 1.0);
        assert_eq!(m["eval/outcome_auroc_product"], 1.0);
        // Per prefix: labels 1 1 1 0 0 0 against those scores.
        assert!((m["eval/auroc"] - 6.0 / 9.0).abs() < 1e-9, "{m:?}");
        assert!(m.contains_key("eval/ece"));
    }

    /// Scores a sequence by its completion's length minus 2.
    struct Length;

    impl RewardModel for Length {
        fn scores(&mut self, batch: &[Example]) -> autodidact_core::Result<Vec<f32>> {
            Ok(batch
                .iter()
                .map(|e| e.completion.len() as f32 - 2.0)
                .collect())
        }
        fn backward(&mut self, _: &[f32]) -> autodidact_core::Result<()> {
            unreachable!()
        }
        fn reset_optimizer(
            &mut self,
            _: &autodidact_core::OptimizerSettings,
        ) -> autodidact_core::Result<()> {
            unreachable!()
        }
        fn step(&mut self, _: f32, _: f32) -> autodidact_core::Result<f32> {
            unreachable!()
        }
        fn save(&self, _: &Path) -> autodidact_core::Result<()> {
            unreachable!()
        }
        fn memory_bytes(&self, _: usize) -> u64 {
            0
        }
    }

    /// A process ensemble scores each prefix through a step and combines them; an empty
    /// completion is one empty step, scored by the model rather than given a free 0.
    #[test]
    fn issue18_a_process_ensemble_combines_prefix_scores_and_scores_empty_completions() {
        let pattern = StepPattern::new("step_pattern", "[;#]").unwrap();
        let examples = [Example::new("p", "ab;c#12"), Example::new("p", "")];
        for (rule, want) in [
            (StepRule::Min, vec![1.0, -2.0]),
            (
                StepRule::Product,
                vec![
                    StepRule::Product.combine(&[1.0, 3.0, 5.0]),
                    StepRule::Product.combine(&[-2.0]),
                ],
            ),
        ] {
            let mut e = Ensemble {
                members: vec![Box::new(Length)],
                steps: Some((pattern.clone(), rule)),
            };
            assert_eq!(e.scores(&examples).unwrap(), [want]);
            // As sequences, each example is one prefix.
            assert_eq!(e.sequence_scores(&examples).unwrap(), [vec![5.0, -2.0]]);
        }
    }
}
