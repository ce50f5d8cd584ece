//! Learned reward models and ensembles of them: `autodidact rm train|score`, and the proxy
//! reward a run can optimize instead of its verifier ([`crate::reward`]).
//!
//! A reward model is a policy checkpoint's backbone with a scalar score head
//! (`core::RewardModel`, built by the backend). It learns from a JSONL file in TRL's
//! conventions, one kind per file:
//! - **pairs** `{"prompt", "chosen", "rejected"}` (optional `"margin"`): Bradley–Terry, as
//!   TRL's `RewardTrainer` (`objectives::bradley_terry`, with its `center_rewards_coefficient`);
//! - **labels** `{"prompt", "completion", "label"}` (`label` true/false or 1/0): an outcome
//!   classifier, BCE on `σ(score)` (`objectives::outcome_bce`).
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
    pub label: bool,
}

/// What a reward model learns from: one kind of line per file.
#[derive(Clone, Debug, PartialEq)]
pub enum RmData {
    Pairs(Vec<Pair>),
    Labels(Vec<Labeled>),
}

/// The loss a reward model trains with, given by its data.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RmLoss {
    BradleyTerry,
    Outcome,
}

impl RmData {
    pub fn loss(&self) -> RmLoss {
        match self {
            RmData::Pairs(_) => RmLoss::BradleyTerry,
            RmData::Labels(_) => RmLoss::Outcome,
        }
    }
    pub fn len(&self) -> usize {
        match self {
            RmData::Pairs(p) => p.len(),
            RmData::Labels(l) => l.len(),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    fn prompt(&self, i: usize) -> &str {
        match self {
            RmData::Pairs(p) => &p[i].prompt,
            RmData::Labels(l) => &l[i].prompt,
        }
    }
    /// The sequences lines `range` score: every pair's chosen completion, then every pair's
    /// rejected one (the layout [`eval_metrics`] reads), or each labeled completion.
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
        }
    }

    /// Lines `idx`, in that order.
    fn select(&self, idx: &[usize]) -> RmData {
        match self {
            RmData::Pairs(p) => RmData::Pairs(idx.iter().map(|&i| p[i].clone()).collect()),
            RmData::Labels(l) => RmData::Labels(idx.iter().map(|&i| l[i].clone()).collect()),
        }
    }
}

/// Reads a pairs or labels file (see the module's notes); an error names the line and what a
/// valid line holds.
pub fn read_data(path: &Path) -> Result<RmData> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| autodidact_core::Error::io("reading", path, e))?;
    const VALID: &str = "each line is {\"prompt\", \"chosen\", \"rejected\"} (pairs, optional \"margin\") or {\"prompt\", \"completion\", \"label\"} (labels), one kind per file";
    let mut pairs = Vec::new();
    let mut labels = Vec::new();
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
        let prompt = text_of("prompt")?;
        if v.get("chosen").is_some() {
            let margin = match v.get("margin") {
                None => 0.0,
                Some(m) => m
                    .as_f64()
                    .filter(|m| m.is_finite())
                    .ok_or_else(|| bad(format!("\"margin\" is {m}, not a finite number")))?
                    as f32,
            };
            pairs.push(Pair {
                prompt,
                chosen: text_of("chosen")?,
                rejected: text_of("rejected")?,
                margin,
            });
        } else {
            let label = match v.get("label") {
                Some(serde_json::Value::Bool(b)) => *b,
                Some(x) if x.as_f64() == Some(1.0) => true,
                Some(x) if x.as_f64() == Some(0.0) => false,
                Some(x) => return Err(bad(format!("\"label\" is {x}, not true/false or 1/0"))),
                None => return Err(bad("neither \"chosen\" nor \"label\"".into())),
            };
            labels.push(Labeled {
                prompt,
                completion: text_of("completion")?,
                label,
            });
        }
        if !pairs.is_empty() && !labels.is_empty() {
            return Err(bad("pairs and labels are mixed".into()));
        }
    }
    let data = if pairs.is_empty() {
        RmData::Labels(labels)
    } else {
        RmData::Pairs(pairs)
    };
    if data.is_empty() {
        return Err(Error::file(path, format!("holds no lines; {VALID}")));
    }
    Ok(data)
}

/// Labeled data from sampled groups, the verifier's verdicts as labels: every completion
/// with its verdict (`Outcome`; an ungradable one is wrong), or per problem its distinct
/// correct completions paired in order with its distinct wrong ones (`BradleyTerry`).
pub fn data_from_groups(groups: &[Group], loss: RmLoss) -> RmData {
    match loss {
        RmLoss::Outcome => RmData::Labels(
            groups
                .iter()
                .flat_map(|g| {
                    g.completions.iter().zip(&g.verdicts).map(|(c, v)| Labeled {
                        prompt: g.problem.prompt.clone(),
                        completion: c.text.clone(),
                        label: v.is_correct(),
                    })
                })
                .collect(),
        ),
        RmLoss::BradleyTerry => RmData::Pairs(
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
        ),
    }
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
            push(serde_json::json!({"prompt": x.prompt, "completion": x.completion, "label": x.label}))
        }),
    }
    out
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
        self.optimizer.check("rm")
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
    let mut members = Vec::new();
    let mut eval_scores: Vec<Vec<f32>> = Vec::new();
    for m in 0..cfg.members {
        let seed = derive_seed(cfg.seed, 0, "rm-member", m as u64);
        let mut order = train_idx.clone();
        Rng::derived(seed, 1).shuffle(&mut order);
        order.truncate(((cfg.subset * order.len() as f64).ceil() as usize).max(1));
        let member_data = data.select(&order);
        let mut rm = backends.reward_model(BackendKind::Native, base, Some(seed))?;
        let steps = fit(&mut *rm, &member_data, cfg, seed, &mut |line| {
            let mut line = line;
            line.insert("member".into(), (m as u64).into());
            writeln!(metrics, "{}", serde_json::Value::Object(line))
                .map_err(|e| autodidact_core::Error::io("writing", &metrics_path, e).into())
        })?;
        let eval_seqs = eval_data.sequences(0..eval_data.len());
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
        RmData::Labels(_) => micro_batch,
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
                RmData::Labels(l) => {
                    let y: Vec<f32> = l[range].iter().map(|x| x.label as u8 as f32).collect();
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
/// in both orders, so that a preference the model is unsure of counts as such).
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
        RmData::Labels(l) => {
            let y: Vec<f32> = l.iter().map(|x| x.label as u8 as f32).collect();
            let bce = outcome_bce(scores, &y);
            m.insert("eval/loss".into(), bce.loss);
            m.insert("eval/accuracy".into(), bce.accuracy);
            let truth: Vec<bool> = l.iter().map(|x| x.label).collect();
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
}

/// Sequences per scoring pass of an [`Ensemble`].
const SCORE_ROWS: usize = 64;

impl Ensemble {
    /// The reward models at `path`: a directory `rm train` wrote (every member), or one
    /// checkpoint with a score head (transformers' `…ForSequenceClassification` layout).
    pub fn load(backends: &Backends, path: &Path) -> Result<Self> {
        let dirs = member_dirs(path)?;
        let members = dirs
            .iter()
            .map(|d| backends.reward_model(BackendKind::Native, d, None))
            .collect::<autodidact_core::Result<_>>()?;
        Ok(Self { members })
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Each member's score of each example: one row per member.
    pub fn scores(&mut self, examples: &[Example]) -> Result<Vec<Vec<f32>>> {
        self.members
            .iter_mut()
            .map(|m| score_all(&mut **m, examples, SCORE_ROWS))
            .collect()
    }
}

/// The checkpoint directories of the reward models at `path`.
pub fn member_dirs(path: &Path) -> Result<Vec<PathBuf>> {
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
        return Ok(info.members.iter().map(|m| path.join(&m.dir)).collect());
    }
    if path.join(MEMBERS_DIR).exists() {
        return Err(Error::file(
            path,
            format!("has members but no {RM_FILE}: its training did not finish; train it again"),
        ));
    }
    // One checkpoint; loading it checks that it has a score head.
    Ok(vec![path.to_path_buf()])
}
