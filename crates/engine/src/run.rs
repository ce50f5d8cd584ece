//! A run: its stages in order, each journaled, resumable after a crash.
//!
//! Stages read their inputs from the run directory (the parent checkpoint, the curated set)
//! and write their outputs there before the journal records them, so an interrupted run
//! replays the stage it was in from the same inputs and, for a fixed seed and thread count,
//! ends with the same numbers as an uninterrupted one.

use crate::config::{Recipe, Reference, RestartFrom, RunConfig, RunPlan};
use crate::controller::{alarm_value, decide, AlarmKind, Decision};
use crate::eval::{evaluate_with_samples, first_accuracy, greedy_groups, EvalReport, EvalSettings};
use crate::judge::{judge_scores, round_judge_examples, seed_judge_examples, JudgeStats};
use crate::monitor::{balance_score, kl_k3, round_monitors, RoundSignal};
use crate::pairs::{majority_index, truth_metrics, vote_shares, Pair};
use crate::pref::{build_pairs, fit_dpo, reference_logps};
use crate::progress::{Observer, Silent};
use crate::rl::{rl_round, RlContext};
use crate::sampling::{derive_seed, sample_groups, sample_prompts};
use crate::star::{curate, kept_mask, rationalized, Counts};
use crate::store::{
    sha256_file, JournalEntry, RunDir, RunInfo, RunStatus, CONFIG_FILE, RUN_FORMAT_VERSION,
};
use crate::train::{fit_sft, steps_for, TrainStats};
use crate::{Error, Result};
use autodidact_core::{Example, Group, Policy, Problem, Split, TrainablePolicy};
use autodidact_nn::NativePolicy;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

/// One stage of a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// Supervised warm start of M0 (round 0).
    Seed,
    /// Sample, verify and curate (round ≥ 1).
    Sample(u32),
    /// Fine-tune on the curated set (round ≥ 1).
    Train(u32),
    /// Policy-gradient steps on fresh rollouts (round ≥ 1, recipes grpo / rloo / reinforce).
    Rl(u32),
    /// Evaluate the round's model on the held-out split.
    Eval(u32),
}

impl Stage {
    pub fn name(&self) -> &'static str {
        match self {
            Stage::Seed => "seed",
            Stage::Sample(_) => "sample",
            Stage::Train(_) => "train",
            Stage::Rl(_) => "rl",
            Stage::Eval(_) => "eval",
        }
    }
    pub fn round(&self) -> u32 {
        match *self {
            Stage::Seed => 0,
            Stage::Sample(r) | Stage::Train(r) | Stage::Rl(r) | Stage::Eval(r) => r,
        }
    }
}

/// Every stage of a run of `recipe` with `rounds` rounds, in order.
pub fn stages(recipe: Recipe, rounds: u32) -> Vec<Stage> {
    let mut s = vec![Stage::Seed, Stage::Eval(0)];
    for round in 1..=rounds {
        match recipe {
            r if r == Recipe::Star || r.is_preference() => s.extend([
                Stage::Sample(round),
                Stage::Train(round),
                Stage::Eval(round),
            ]),
            _ => s.extend([Stage::Rl(round), Stage::Eval(round)]),
        }
    }
    s
}

/// `rounds/rNNNN/manifest.json`: a round's lineage, settings, counts and file hashes. Each
/// stage adds its part.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub round: u32,
    pub recipe: String,
    /// The checkpoint that sampled this round's data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_checkpoint: Option<String>,
    /// The checkpoint this round's training started from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_checkpoint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub settings: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counts: Option<Counts>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train: Option<TrainStats>,
    /// Round metrics of the training stage (policy-gradient recipes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<BTreeMap<String, f64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval: Option<Value>,
    /// What the controller chose for this round (temperature) and decided after it (alarms,
    /// stop, rollback).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub controller: Option<Decision>,
    /// SHA-256 of each file the round wrote, by path relative to the run directory.
    #[serde(default)]
    pub files: BTreeMap<String, String>,
}

/// A line of `samples.jsonl`.
#[derive(Serialize, Deserialize)]
struct SampleRecord<'a> {
    problem_id: &'a str,
    prompt: &'a str,
    completion: &'a str,
    grade: autodidact_core::Grade,
    #[serde(skip_serializing_if = "Option::is_none")]
    answer: Option<&'a str>,
    reward: f32,
    finish: autodidact_core::FinishReason,
    /// Sampled from the hinted prompt (rationalization).
    hinted: bool,
}

/// The problems of a run, drawn from the task by the run seed.
struct Problems {
    labeled: Vec<Problem>,
    unlabeled: Vec<Problem>,
    eval: Vec<Problem>,
}

/// A run in progress.
pub struct Run {
    dir: RunDir,
    info: RunInfo,
    plan: RunPlan,
    problems: Problems,
}

/// One row of the end-of-run table.
#[derive(Clone, Debug, PartialEq)]
pub struct RoundRow {
    pub round: u32,
    pub pass_at_1: f64,
    pub pass_at_k: f64,
    pub maj_at_k: f64,
    pub kept: Option<u64>,
    pub distinct: Option<u64>,
    /// Mean training reward of the round (policy-gradient recipes).
    pub reward: Option<f64>,
    /// Preference pairs built, and the gold accuracy of their chosen side (preference recipes).
    pub pairs: Option<u64>,
    pub chosen_correct: Option<f64>,
    /// The self-judge's accuracy against the verifier (`self-rewarding`).
    pub judge_accuracy: Option<f64>,
}

impl Run {
    /// Creates the run directory `out` for `plan` (refusing one that holds anything).
    pub fn create(plan: RunPlan, out: &Path, threads: usize) -> Result<Self> {
        let info = RunInfo {
            format_version: RUN_FORMAT_VERSION,
            autodidact_version: env!("CARGO_PKG_VERSION").into(),
            seed: plan.config.seed,
            threads,
            status: RunStatus::Running,
        };
        let problems = draw(&plan)?;
        let dir = RunDir::create(out, &plan.config.to_toml(), &info)?;
        Ok(Self {
            dir,
            info,
            plan,
            problems,
        })
    }

    /// Opens the run in `root` to continue it from its last completed stage.
    pub fn open(root: &Path, threads: usize, obs: &mut dyn Observer) -> Result<Self> {
        let (dir, info) = RunDir::open(root)?;
        dir.remove_leftovers()?;
        let path = dir.path(CONFIG_FILE);
        let text = std::fs::read_to_string(&path)
            .map_err(|e| autodidact_core::Error::io("reading", &path, e))?;
        let plan = RunConfig::parse(&text, &path.display().to_string(), &[])?.plan()?;
        if info.threads != threads {
            obs.note(&format!(
                "this run started with {} threads and continues with {threads}: its numbers may differ slightly from an uninterrupted run (pass --threads {} to match)",
                info.threads, info.threads
            ));
        }
        let problems = draw(&plan)?;
        Ok(Self {
            dir,
            info,
            plan,
            problems,
        })
    }

    pub fn dir(&self) -> &RunDir {
        &self.dir
    }

    pub fn plan(&self) -> &RunPlan {
        &self.plan
    }

    /// Runs every stage not yet journaled; returns the per-round table.
    pub fn execute(&mut self, obs: &mut dyn Observer) -> Result<Vec<RoundRow>> {
        let all = stages(self.plan.config.recipe, self.plan.config.rounds());
        let done = self.dir.journal()?;
        if done.len() > all.len() {
            return Err(Error::run(
                self.dir.root(),
                format!(
                    "its journal records {} stages but its config has only {}",
                    done.len(),
                    all.len()
                ),
            ));
        }
        for (entry, stage) in done.iter().zip(&all) {
            if entry.stage != stage.name() || entry.round != stage.round() {
                return Err(Error::run(
                    self.dir.root(),
                    format!("its journal records stage {} of round {} where its config expects {} of round {}", entry.stage, entry.round, stage.name(), stage.round()),
                ));
            }
        }
        self.dir
            .truncate_metrics(done.last().map_or(0, |e| e.metrics_bytes))?;
        if !done.is_empty() && done.len() < all.len() {
            let last = &done[done.len() - 1];
            obs.note(&format!(
                "resuming after stage {} of round {}",
                last.stage, last.round
            ));
        }
        let mut status = RunStatus::Complete;
        for &stage in &all[done.len()..] {
            // A round starts only if the controller did not stop the run after the last one
            // (checked here rather than after the eval stage, so a resumed run stops too).
            if matches!(stage, Stage::Sample(_) | Stage::Rl(_)) {
                let before = stage.round() - 1;
                if let Some(reason) = self.decision(before)?.stop {
                    obs.note(&format!("stopped after round {before}: {reason}"));
                    status = RunStatus::Stopped;
                    break;
                }
            }
            let start = Instant::now();
            match stage {
                Stage::Seed => self.seed_stage(obs)?,
                Stage::Sample(r) => self.sample_stage(r, obs)?,
                Stage::Train(r) => self.train_stage(r, obs)?,
                Stage::Rl(r) => self.rl_stage(r, obs)?,
                Stage::Eval(r) => self.eval_stage(r, obs)?,
            }
            self.dir.append_journal(&JournalEntry {
                stage: stage.name().into(),
                round: stage.round(),
                seconds: start.elapsed().as_secs_f64(),
                metrics_bytes: self.dir.metrics_bytes()?,
            })?;
        }
        if self.info.status != status {
            self.dir.set_status(&mut self.info, status)?;
        }
        // The run is complete and journaled whatever happens here; `autodidact report`
        // rewrites the page.
        crate::report::write_report(self.dir.root())?;
        self.table()
    }

    /// The per-round table, read back from `metrics.jsonl`.
    pub fn table(&self) -> Result<Vec<RoundRow>> {
        Ok(self
            .dir
            .metrics()?
            .iter()
            .filter_map(|m| {
                Some(RoundRow {
                    round: m.get("round")?.as_u64()? as u32,
                    pass_at_1: m.get("eval/pass@1")?.as_f64()?,
                    pass_at_k: m.get("eval/pass@k")?.as_f64()?,
                    maj_at_k: m.get("eval/maj@k")?.as_f64()?,
                    kept: m.get("star/kept").and_then(Value::as_u64),
                    distinct: m.get("star/distinct").and_then(Value::as_u64),
                    reward: m.get("reward").and_then(Value::as_f64),
                    pairs: m
                        .get("pairs/count")
                        .and_then(Value::as_f64)
                        .map(|v| v as u64),
                    chosen_correct: m.get("pairs/chosen_gold_accuracy").and_then(Value::as_f64),
                    judge_accuracy: m.get("judge/accuracy").and_then(Value::as_f64),
                })
            })
            .collect())
    }

    fn seed(&self, round: u32, stage: &str) -> u64 {
        derive_seed(self.plan.config.seed, round, stage, 0)
    }

    fn load_policy(&self, round: u32) -> Result<NativePolicy> {
        Ok(NativePolicy::load(
            &self.dir.path(&RunDir::checkpoint_dir(round)),
        )?)
    }

    /// The controller's decision recorded with `round` (empty if none).
    fn decision(&self, round: u32) -> Result<Decision> {
        Ok(self.manifest(round)?.controller.unwrap_or_default())
    }

    /// The round whose model round `round` starts from: the previous one, unless the
    /// controller rolled back after it.
    fn parent(&self, round: u32) -> Result<u32> {
        let before = round - 1;
        Ok(self.decision(before)?.next_parent.unwrap_or(before))
    }

    fn manifest(&self, round: u32) -> Result<Manifest> {
        let rel = format!("{}/manifest.json", RunDir::round_dir(round));
        if self.dir.path(&rel).exists() {
            self.dir.read_json(&rel)
        } else {
            Ok(Manifest {
                round,
                recipe: self.plan.config.recipe.name().into(),
                ..Default::default()
            })
        }
    }

    /// Writes the round's manifest; a metric that is undefined for the round (NaN, which JSON
    /// cannot hold) is left out.
    fn write_manifest(&self, m: &Manifest) -> Result<()> {
        let mut m = m.clone();
        if let Some(metrics) = &mut m.metrics {
            metrics.retain(|_, v| v.is_finite());
        }
        self.dir
            .write_json(&format!("{}/manifest.json", RunDir::round_dir(m.round)), &m)
    }

    fn hash_into(&self, m: &mut Manifest, rel: &str) -> Result<()> {
        m.files
            .insert(rel.to_string(), sha256_file(&self.dir.path(rel))?);
        Ok(())
    }

    fn save_checkpoint(&self, policy: &NativePolicy, round: u32, m: &mut Manifest) -> Result<()> {
        let rel = RunDir::checkpoint_dir(round);
        policy.save(&self.dir.path(&rel))?;
        self.hash_into(
            m,
            &format!("{rel}/{}", autodidact_nn::checkpoint::MODEL_FILE),
        )
    }

    /// Round 0: M0 learns from the labeled set, logging the seed-only curve.
    fn seed_stage(&mut self, obs: &mut dyn Observer) -> Result<()> {
        let cfg = &self.plan.config;
        let model = self.plan.model.build(self.seed(0, "init"))?;
        let mut policy = NativePolicy::new(model, self.plan.tokenizer.clone())?;
        let mut examples: Vec<Example> = self.problems.labeled.iter().map(demonstration).collect();
        if cfg.recipe == Recipe::Star && cfg.star.rationalize {
            // Hinted copies teach the hint format that rationalization prompts with.
            let hinted: Vec<Example> = self
                .problems
                .labeled
                .iter()
                .filter_map(|p| {
                    Some(Example::new(
                        self.plan.task.hinted_prompt(p)?,
                        p.solution.clone()?,
                    ))
                })
                .collect();
            examples.extend(hinted);
        }
        if cfg.recipe == Recipe::SelfRewarding {
            examples.extend(seed_judge_examples(
                &*self.plan.task,
                &self.problems.labeled,
                cfg.judge.seed_negatives,
                self.seed(0, "judge"),
            )?);
        }
        let rd = RunDir::round_dir(0);
        let train_rel = format!("{rd}/train.jsonl");
        self.dir.write_jsonl(&train_rel, &examples)?;
        let train = &cfg.seed_stage.train;
        let steps = steps_for(train, examples.len());
        let every = cfg.seed_stage.eval_every;
        let (dir, task, eval, max_new) = (
            &self.dir,
            &*self.plan.task,
            &self.problems.eval,
            self.plan.max_new_tokens,
        );
        obs.stage_started("seed", steps);
        let stats = fit_sft(
            &mut policy,
            &examples,
            train,
            self.seed(0, "seed"),
            obs,
            &mut |step, loss, p| {
                if every > 0 && (step % every == 0 || step == steps) {
                    let acc = first_accuracy(&greedy_groups(p, task, eval, max_new, &mut Silent)?);
                    dir.append_metrics(
                        &json!({"seed/step": step, "seed/loss": loss, "seed/eval_pass@1": acc}),
                    )?;
                }
                Ok(())
            },
        )?;
        obs.stage_finished(&format!(
            "seed: {} labeled examples, {} steps, loss {:.3} → {:.3}",
            examples.len(),
            stats.steps,
            stats.first_loss,
            stats.last_loss
        ));
        let mut m = self.manifest(0)?;
        m.settings = Some(json!({"seed_stage": cfg.seed_stage, "model": self.plan.model}));
        m.train = Some(stats);
        self.hash_into(&mut m, &train_rel)?;
        self.save_checkpoint(&policy, 0, &mut m)?;
        self.write_manifest(&m)
    }

    /// B-STaR balancing: samples the first `controller.probe_problems` pool problems at each
    /// of `controller.temperatures` (the same seeds for each, so temperatures are compared on
    /// common random numbers) and returns the temperature with the highest balance score
    /// (the first of equals), with every probed score.
    fn balance_temperature(
        &self,
        policy: &mut NativePolicy,
        round: u32,
        obs: &mut dyn Observer,
    ) -> Result<Decision> {
        let (ctl, st) = (&self.plan.config.controller, &self.plan.config.star);
        let pool = &self.problems.unlabeled;
        let probe = &pool[..ctl.probe_problems.min(pool.len())];
        obs.stage_started(
            &format!("r{round} balance"),
            (probe.len() * ctl.temperatures.len()) as u64,
        );
        let mut scores = Vec::new();
        for (i, &t) in ctl.temperatures.iter().enumerate() {
            let groups = sample_groups(
                policy,
                &*self.plan.task,
                probe,
                st.samples,
                &self.plan.sampling(t, st.top_p),
                self.seed(round, "probe"),
                &mut Silent,
            )?;
            let selected: Vec<Vec<bool>> = groups
                .iter()
                .map(|g| kept_mask(g, st.max_per_problem))
                .collect();
            let score = balance_score(&groups, &selected, self.plan.config.monitor.n_star);
            scores.push((t, score.unwrap_or(0.0)));
            obs.stage_progress(((i + 1) * probe.len()) as u64, 0);
        }
        let best = scores
            .iter()
            .copied()
            .reduce(|a, b| if b.1 > a.1 { b } else { a })
            .map(|(t, _)| t);
        obs.stage_finished(&format!(
            "r{round} balance: temperature {} ({})",
            best.map_or("–".into(), |t| t.to_string()),
            scores
                .iter()
                .map(|(t, b)| format!("{t}: {b:.3}"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
        Ok(Decision {
            temperature: best,
            probe: scores,
            ..Decision::default()
        })
    }

    /// The round's `k` graded samples of every unlabeled problem.
    fn sample_pool(
        &self,
        policy: &mut NativePolicy,
        round: u32,
        k: usize,
        params: &autodidact_core::SamplingParams,
        obs: &mut dyn Observer,
    ) -> Result<Vec<Group>> {
        obs.stage_started(
            &format!("r{round} sample"),
            self.problems.unlabeled.len() as u64,
        );
        sample_groups(
            policy,
            &*self.plan.task,
            &self.problems.unlabeled,
            k,
            params,
            self.seed(round, "sample"),
            obs,
        )
    }

    /// Sample k completions per unlabeled problem, verify, keep the correct ones.
    fn sample_stage(&mut self, round: u32, obs: &mut dyn Observer) -> Result<()> {
        let parent = self.parent(round)?;
        if self.plan.config.recipe.is_preference() {
            return self.pairs_stage(round, obs);
        }
        let cfg = &self.plan.config.star;
        let mut policy = self.load_policy(parent)?;
        let task = &*self.plan.task;
        let balance = self
            .plan
            .config
            .controller
            .balance
            .then(|| self.balance_temperature(&mut policy, round, obs))
            .transpose()?;
        let temperature = balance
            .as_ref()
            .and_then(|d| d.temperature)
            .unwrap_or(cfg.temperature);
        let params = self.plan.sampling(temperature, cfg.top_p);
        let groups = self.sample_pool(&mut policy, round, cfg.samples, &params, obs)?;
        let (mut examples, mut counts) = curate(&groups, cfg.max_per_problem);
        let rewards: Vec<Vec<f32>> = groups.iter().map(|g| g.rewards.clone()).collect();
        let selected: Vec<Vec<bool>> = groups
            .iter()
            .map(|g| kept_mask(g, cfg.max_per_problem))
            .collect();
        let monitors = round_monitors(
            &groups,
            &RoundSignal {
                rewards: &rewards,
                selected: &selected,
            },
            self.plan.config.monitor.n_star,
        );
        let mut hinted_groups = Vec::new();
        if cfg.rationalize {
            let unsolved: Vec<Problem> = groups
                .iter()
                .filter(|g| !g.verdicts.iter().any(|v| v.is_correct()))
                .map(|g| g.problem.clone())
                .collect();
            let prompts: Vec<String> = unsolved
                .iter()
                .map(|p| task.hinted_prompt(p).unwrap_or_else(|| p.prompt.clone()))
                .collect();
            obs.stage_started(&format!("r{round} rationalize"), unsolved.len() as u64);
            hinted_groups = sample_prompts(
                &mut policy,
                task,
                &unsolved,
                &prompts,
                cfg.samples,
                &params,
                self.seed(round, "rationalize"),
                obs,
            )?;
            counts.sampled_tokens += hinted_groups
                .iter()
                .flat_map(|g| &g.completions)
                .map(|c| c.tokens.len())
                .sum::<usize>();
            let extra = rationalized(&hinted_groups);
            counts.rationalized = extra.len();
            counts.kept += extra.len();
            examples.extend(extra);
        }
        let rd = RunDir::round_dir(round);
        let records: Vec<SampleRecord> = records(&groups, false)
            .chain(records(&hinted_groups, true))
            .collect();
        self.dir
            .write_jsonl(&format!("{rd}/samples.jsonl"), &records)?;
        self.dir
            .write_jsonl(&format!("{rd}/train.jsonl"), &examples)?;
        obs.stage_finished(&format!(
            "r{round} sample: {} sampled, {} correct, {} problems solved, {} kept ({} distinct, {} rationalized)",
            counts.sampled, counts.correct, counts.solved, counts.kept, counts.distinct, counts.rationalized
        ));
        let mut m = self.manifest(round)?;
        m.parent_checkpoint = Some(RunDir::checkpoint_dir(parent));
        m.settings = Some(json!({"star": cfg}));
        m.counts = Some(counts);
        m.metrics = Some(monitors);
        m.controller = balance;
        self.hash_into(&mut m, &format!("{rd}/samples.jsonl"))?;
        self.hash_into(&mut m, &format!("{rd}/train.jsonl"))?;
        self.write_manifest(&m)
    }

    /// Sample k completions per problem, score them with the recipe's reward source, and
    /// build preference pairs; record the gold truth beside the proxy.
    fn pairs_stage(&mut self, round: u32, obs: &mut dyn Observer) -> Result<()> {
        let parent = self.parent(round)?;
        let c = &self.plan.config;
        let cfg = &c.pref;
        let mut policy = self.load_policy(parent)?;
        let task = &*self.plan.task;
        let params = self.plan.sampling(cfg.temperature, cfg.top_p);
        let mut groups = self.sample_pool(&mut policy, round, cfg.samples, &params, obs)?;
        let mut metrics = BTreeMap::new();
        let scores = if c.recipe == Recipe::SelfRewarding {
            let items: Vec<(&str, &str)> = groups
                .iter()
                .flat_map(|g| {
                    g.completions
                        .iter()
                        .map(|x| (g.problem.prompt.as_str(), x.text.as_str()))
                })
                .collect();
            obs.stage_started(&format!("r{round} judge"), items.len() as u64);
            let flat = judge_scores(&mut policy, &self.plan.tokenizer, &items)?;
            obs.stage_progress(items.len() as u64, 0);
            let truth: Vec<bool> = groups
                .iter()
                .flat_map(|g| g.verdicts.iter().map(|v| v.is_correct()))
                .collect();
            let js = JudgeStats::of(&flat, &truth);
            for (k, v) in [
                ("judge/accuracy", js.accuracy()),
                ("judge/precision", js.precision()),
                ("judge/recall", js.recall()),
                ("judge/mean_score", js.mean_score),
            ] {
                // Precision with nothing judged correct (or recall with nothing correct) is
                // undefined: left out rather than written as NaN.
                if v.is_finite() {
                    metrics.insert(k.to_string(), v);
                }
            }
            // The injected length bias (a diagnostic, `judge.length_weight`).
            let w = c.judge.length_weight;
            let max_len = self.plan.max_new_tokens.max(1) as f32;
            let lengths = groups
                .iter()
                .flat_map(|g| g.completions.iter().map(|x| x.tokens.len() as f32));
            let flat: Vec<f32> = flat
                .iter()
                .zip(lengths)
                .map(|(&s, len)| (1.0 - w) * s + w * len / max_len)
                .collect();
            let k = cfg.samples;
            Some(flat.chunks(k).map(|s| s.to_vec()).collect::<Vec<_>>())
        } else {
            None
        };
        let (pairs, counts, proxy) = build_pairs(c.recipe, cfg, &groups, scores.as_deref());
        if let Some(proxy) = &proxy {
            for (g, p) in groups.iter_mut().zip(proxy) {
                g.rewards = p.clone();
            }
        }
        metrics.extend(truth_metrics(&groups, proxy.as_deref(), &pairs, &counts));
        let chosen: std::collections::HashSet<(&str, &str)> = pairs
            .iter()
            .map(|p| (p.problem_id.as_str(), p.chosen.as_str()))
            .collect();
        let selected: Vec<Vec<bool>> = groups
            .iter()
            .map(|g| {
                g.completions
                    .iter()
                    .map(|x| chosen.contains(&(g.problem.id.as_str(), x.text.as_str())))
                    .collect()
            })
            .collect();
        let rewards: Vec<Vec<f32>> = groups.iter().map(|g| g.rewards.clone()).collect();
        metrics.extend(round_monitors(
            &groups,
            &RoundSignal {
                rewards: &rewards,
                selected: &selected,
            },
            c.monitor.n_star,
        ));
        if c.recipe == Recipe::Scpo {
            let (mut decided, mut right, mut share) = (0usize, 0usize, 0.0f64);
            for g in &groups {
                if let Some(i) = majority_index(g) {
                    decided += 1;
                    right += g.verdicts[i].is_correct() as usize;
                    share += vote_shares(g)[i] as f64;
                }
            }
            metrics.insert(
                "vote/majority_accuracy".into(),
                right as f64 / decided.max(1) as f64,
            );
            metrics.insert("vote/top_share".into(), share / decided.max(1) as f64);
            metrics.insert(
                "vote/decided_fraction".into(),
                decided as f64 / groups.len().max(1) as f64,
            );
        }
        let sampled_tokens: usize = groups
            .iter()
            .flat_map(|g| &g.completions)
            .map(|x| x.tokens.len())
            .sum();
        metrics.insert("rollout/sampled_tokens".into(), sampled_tokens as f64);
        let rd = RunDir::round_dir(round);
        // Judge examples for this round: the current model's samples of the labeled problems
        // and fresh corruptions of their solutions, labeled by the verifier, balanced.
        if c.recipe == Recipe::SelfRewarding && c.judge.samples_per_labeled > 0 {
            let labeled = sample_groups(
                &mut policy,
                task,
                &self.problems.labeled,
                c.judge.samples_per_labeled,
                &params,
                self.seed(round, "judge-samples"),
                &mut Silent,
            )?;
            let judge = round_judge_examples(
                task,
                &labeled,
                c.judge.seed_negatives,
                self.seed(round, "judge"),
            )?;
            metrics.insert("judge/train_examples".into(), judge.len() as f64);
            self.dir.write_jsonl(&format!("{rd}/judge.jsonl"), &judge)?;
        }
        self.dir.write_jsonl(
            &format!("{rd}/samples.jsonl"),
            &records(&groups, false).collect::<Vec<_>>(),
        )?;
        self.dir.write_jsonl(&format!("{rd}/train.jsonl"), &pairs)?;
        obs.stage_finished(&format!(
            "r{round} pairs: {} pairs from {} problems ({} without a pair), chosen correct {:.2}, rejected correct {:.2}",
            counts.pairs,
            counts.groups,
            counts.groups_without_pair(),
            metrics["pairs/chosen_gold_accuracy"],
            metrics["pairs/rejected_gold_accuracy"],
        ));
        let mut m = self.manifest(round)?;
        m.parent_checkpoint = Some(RunDir::checkpoint_dir(parent));
        m.settings = Some(
            json!({"pref": cfg, "judge": (c.recipe == Recipe::SelfRewarding).then_some(&c.judge)}),
        );
        m.metrics = Some(metrics);
        self.hash_into(&mut m, &format!("{rd}/samples.jsonl"))?;
        self.hash_into(&mut m, &format!("{rd}/train.jsonl"))?;
        if self.dir.path(&format!("{rd}/judge.jsonl")).exists() {
            self.hash_into(&mut m, &format!("{rd}/judge.jsonl"))?;
        }
        self.write_manifest(&m)
    }

    /// DPO-family training on the round's pairs, from the previous round's model.
    fn pref_train_stage(&mut self, round: u32, obs: &mut dyn Observer) -> Result<()> {
        let parent = self.parent(round)?;
        let c = &self.plan.config;
        let cfg = &c.pref;
        let rd = RunDir::round_dir(round);
        let pairs: Vec<Pair> = self.dir.read_jsonl(&format!("{rd}/train.jsonl"))?;
        let judge_rel = format!("{rd}/judge.jsonl");
        let judge: Vec<Example> = if self.dir.path(&judge_rel).exists() {
            self.dir.read_jsonl(&judge_rel)?
        } else {
            Vec::new()
        };
        let mut policy = self.load_policy(parent)?;
        let ref_round = match cfg.reference {
            Reference::Seed => 0,
            Reference::Previous => parent,
        };
        let mut m = self.manifest(round)?;
        let mut metrics = m.metrics.take().unwrap_or_default();
        let stats = if pairs.is_empty() {
            obs.note(&format!(
                "round {round}: no preference pairs to train on; its model is its initial checkpoint"
            ));
            TrainStats::default()
        } else {
            let refs = if ref_round == parent {
                reference_logps(&mut policy, &pairs)?
            } else {
                reference_logps(&mut self.load_policy(ref_round)?, &pairs)?
            };
            obs.stage_started(
                &format!("r{round} {}", cfg.loss.name()),
                steps_for(&cfg.train, pairs.len()),
            );
            let fit = fit_dpo(
                &mut policy,
                &pairs,
                &refs,
                &judge,
                c.judge.coef,
                cfg,
                self.seed(round, "train"),
                obs,
            )?;
            obs.stage_finished(&format!(
                "r{round} {}: {} pairs, {} steps, loss {:.3} → {:.3}, reward accuracy {:.2}",
                cfg.loss.name(),
                pairs.len(),
                fit.stats.steps,
                fit.stats.first_loss,
                fit.stats.last_loss,
                fit.metrics["rewards/accuracies"],
            ));
            metrics.extend(fit.metrics);
            fit.stats
        };
        m.init_checkpoint = Some(RunDir::checkpoint_dir(parent));
        m.settings
            .get_or_insert_with(|| json!({}))
            .as_object_mut()
            .expect("settings are an object")
            .insert(
                "reference_checkpoint".into(),
                json!(RunDir::checkpoint_dir(ref_round)),
            );
        m.metrics = Some(metrics);
        m.train = Some(stats);
        self.save_checkpoint(&policy, round, &mut m)?;
        self.write_manifest(&m)
    }

    /// Fine-tune on the round's curated set.
    fn train_stage(&mut self, round: u32, obs: &mut dyn Observer) -> Result<()> {
        let parent = self.parent(round)?;
        if self.plan.config.recipe.is_preference() {
            return self.pref_train_stage(round, obs);
        }
        let cfg = &self.plan.config.star;
        let init = match cfg.restart_from {
            RestartFrom::Seed => 0,
            RestartFrom::Previous => parent,
        };
        let mut policy = self.load_policy(init)?;
        let examples: Vec<Example> = self
            .dir
            .read_jsonl(&format!("{}/train.jsonl", RunDir::round_dir(round)))?;
        let stats = if examples.is_empty() {
            obs.note(&format!("round {round}: no correct samples to train on; its model is its initial checkpoint"));
            TrainStats::default()
        } else {
            obs.stage_started(
                &format!("r{round} train"),
                steps_for(&cfg.train, examples.len()),
            );
            let stats = fit_sft(
                &mut policy,
                &examples,
                &cfg.train,
                self.seed(round, "train"),
                obs,
                &mut |_, _, _| Ok(()),
            )?;
            obs.stage_finished(&format!(
                "r{round} train: {} examples, {} steps, loss {:.3} → {:.3}",
                stats.examples, stats.steps, stats.first_loss, stats.last_loss
            ));
            stats
        };
        let mut m = self.manifest(round)?;
        m.init_checkpoint = Some(RunDir::checkpoint_dir(init));
        m.train = Some(stats);
        self.save_checkpoint(&policy, round, &mut m)?;
        self.write_manifest(&m)
    }

    /// A round of policy-gradient steps on fresh rollouts.
    fn rl_stage(&mut self, round: u32, obs: &mut dyn Observer) -> Result<()> {
        let parent = self.parent(round)?;
        let cfg = &self.plan.config.rl;
        let mut policy = self.load_policy(parent)?;
        let ref_round = match cfg.reference {
            Reference::Seed => 0,
            Reference::Previous => parent,
        };
        let mut reference = if cfg.beta > 0.0 {
            Some(self.load_policy(ref_round)?)
        } else {
            None
        };
        let previous = self.dir.path(&RunDir::checkpoint_dir(parent));
        let cx = RlContext {
            previous_checkpoint: (parent > 0).then_some(previous.as_path()),
            task: &*self.plan.task,
            pool: &self.problems.unlabeled,
            estimator: self
                .plan
                .config
                .recipe
                .estimator(cfg)
                .expect("a policy-gradient recipe"),
            sampling: self.plan.sampling(cfg.temperature, cfg.top_p),
            seed: self.plan.config.seed,
            round,
            n_star: self.plan.config.monitor.n_star,
        };
        obs.stage_started(
            &format!("r{round} {}", self.plan.config.recipe.name()),
            cfg.steps_per_round as u64,
        );
        let out = rl_round(
            &mut policy,
            reference
                .as_mut()
                .map(|r| r as &mut dyn autodidact_core::Policy),
            cfg,
            &cx,
            obs,
        )?;
        let get = |k: &str| out.metrics.get(k).copied().unwrap_or(f64::NAN);
        obs.stage_finished(&format!(
            "r{round} {}: {} steps, reward {:.3}, zero-std groups {:.2}, entropy {:.3}, clip {:.3}",
            self.plan.config.recipe.name(),
            cfg.steps_per_round,
            get("reward"),
            get("frac_reward_zero_std"),
            get("entropy"),
            get("clip_ratio/region_mean"),
        ));
        let rd = RunDir::round_dir(round);
        self.dir
            .write_jsonl(&format!("{rd}/samples.jsonl"), &out.records)?;
        let mut m = self.manifest(round)?;
        m.parent_checkpoint = Some(RunDir::checkpoint_dir(parent));
        m.init_checkpoint = Some(RunDir::checkpoint_dir(parent));
        m.settings = Some(
            json!({"rl": cfg, "reference_checkpoint": (cfg.beta > 0.0).then(|| RunDir::checkpoint_dir(ref_round))}),
        );
        m.metrics = Some(out.metrics);
        self.hash_into(&mut m, &format!("{rd}/samples.jsonl"))?;
        self.save_checkpoint(&policy, round, &mut m)?;
        self.write_manifest(&m)
    }

    /// `drift/*` of the round's model on its evaluation samples of the first
    /// `monitor.drift_problems` held-out problems: KL to M0 and to the previous round (k3,
    /// summed over each completion's tokens, see [`crate::monitor::kl_k3`]), mean completion
    /// length and mean token entropy.
    fn drift(
        &self,
        round: u32,
        policy: &mut NativePolicy,
        sampled: &[Group],
    ) -> Result<BTreeMap<String, f64>> {
        let mut m = BTreeMap::new();
        let n = self.plan.config.monitor.drift_problems.min(sampled.len());
        if n == 0 {
            return Ok(m);
        }
        let examples: Vec<Example> = sampled[..n]
            .iter()
            .flat_map(|g| {
                g.completions.iter().map(|c| Example {
                    prompt: g.problem.prompt.clone(),
                    completion: c.text.clone(),
                    completion_tokens: Some(c.tokens.clone()),
                })
            })
            .collect();
        let (mut own, mut tokens, mut entropy) = (Vec::new(), 0usize, 0.0f64);
        for chunk in examples.chunks(256) {
            let scores = policy.forward(chunk, true)?;
            for row in scores.entropies.iter().flatten() {
                tokens += row.len();
                entropy += row.iter().map(|&h| h as f64).sum::<f64>();
            }
            own.extend(scores.logprobs);
        }
        m.insert(
            "drift/mean_length".into(),
            tokens as f64 / examples.len() as f64,
        );
        m.insert("drift/token_entropy".into(), entropy / tokens.max(1) as f64);
        let mut kl_to = |key: &str, r: u32| -> Result<()> {
            let mut reference = self.load_policy(r)?;
            let mut ratios = Vec::with_capacity(examples.len());
            for (chunk, mine) in examples.chunks(256).zip(own.chunks(256)) {
                for (theirs, mine) in reference.logprobs(chunk)?.iter().zip(mine) {
                    ratios.push(theirs.iter().zip(mine).map(|(a, b)| a - b).collect());
                }
            }
            m.insert(key.into(), kl_k3(&ratios));
            Ok(())
        };
        if round > 0 {
            kl_to("drift/kl_to_seed", 0)?;
            kl_to("drift/kl_to_previous", self.parent(round)?)?;
        }
        Ok(m)
    }

    /// Held-out evaluation of the round's model; appends the round's metrics line.
    fn eval_stage(&mut self, round: u32, obs: &mut dyn Observer) -> Result<()> {
        let e = &self.plan.config.eval;
        let mut policy = self.load_policy(round)?;
        let settings = EvalSettings {
            samples: e.samples,
            k: e.k,
            temperature: e.temperature,
            max_new_tokens: self.plan.max_new_tokens,
            // The same seed every round: rounds are compared on the same random draws.
            seed: self.seed(0, "eval"),
        };
        obs.stage_started(
            &format!("r{round} eval"),
            2 * self.problems.eval.len() as u64,
        );
        let (report, sampled) = evaluate_with_samples(
            &mut policy,
            &*self.plan.task,
            &self.problems.eval,
            &settings,
            obs,
        )?;
        let drift = self.drift(round, &mut policy, &sampled)?;
        obs.stage_finished(&format!(
            "r{round} eval: pass@1 {:.3}  pass@{k} {:.3}  maj@{k} {:.3}",
            report.pass_at_1,
            report.pass_at_k,
            report.maj_at_k,
            k = report.k
        ));
        let rel = format!("{}/eval.json", RunDir::round_dir(round));
        self.dir.write_json(&rel, &report)?;
        let mut m = self.manifest(round)?;
        m.eval = Some(summary(&report));
        let metrics = m.metrics.get_or_insert_with(BTreeMap::new);
        metrics.extend(drift);
        metrics.insert(
            "gap/maj_minus_pass1".into(),
            report.maj_at_k - report.pass_at_1,
        );
        self.hash_into(&mut m, &rel)?;
        let mut line = json!({
            "round": round,
            "eval/pass@1": report.pass_at_1,
            "eval/pass@k": report.pass_at_k,
            "eval/maj@k": report.maj_at_k,
            "eval/k": report.k,
            "eval/mean_sample_accuracy": report.mean_sample_accuracy,
        });
        let obj = line.as_object_mut().expect("an object");
        if let Some(c) = &m.counts {
            for (k, v) in [
                ("sampled", c.sampled),
                ("correct", c.correct),
                ("solved", c.solved),
                ("distinct", c.distinct),
                ("kept", c.kept),
                ("rationalized", c.rationalized),
            ] {
                obj.insert(format!("star/{k}"), json!(v));
            }
            obj.insert("rollout/sampled_tokens".into(), json!(c.sampled_tokens));
        }
        for (k, v) in m.metrics.iter().flatten().filter(|(_, v)| v.is_finite()) {
            obj.insert(k.clone(), json!(v));
        }
        if let Some(t) = &m.train {
            obj.insert("train/steps".into(), json!(t.steps));
            obj.insert("train/tokens".into(), json!(t.tokens));
            obj.insert("train/first_loss".into(), json!(t.first_loss));
            obj.insert("train/last_loss".into(), json!(t.last_loss));
        }
        if let Some(t) = m.controller.as_ref().and_then(|c| c.temperature) {
            obj.insert("controller/temperature".into(), json!(t));
        }
        // The controller reads every round so far, this one included, and decides.
        if round > 0 {
            let mut history: Vec<BTreeMap<String, f64>> = self
                .dir
                .metrics()?
                .iter()
                .filter(|l| l.get("round").is_some())
                .map(numbers)
                .collect();
            history.push(numbers(&line));
            if let Some(v) = alarm_value(AlarmKind::ProxyGoldDivergence, &history) {
                // The proxy–gold divergence as a series of its own.
                line.as_object_mut()
                    .expect("an object")
                    .insert("proxy/divergence".into(), json!(v));
            }
            let ctl = &self.plan.config.controller;
            let d = decide(&history, &ctl.alarms, ctl.patience);
            for a in &d.alarms {
                obs.note(&format!(
                    "round {round}: alarm {} (action: {:?})",
                    a.message, a.action
                ));
            }
            if let Some(p) = d.next_parent {
                obs.note(&format!(
                    "round {}: starts from round {p}, the best so far (rollback)",
                    round + 1
                ));
            }
            line.as_object_mut()
                .expect("an object")
                .insert("controller/alarms".into(), json!(d.alarms.len()));
            let c = m.controller.get_or_insert_with(Decision::default);
            c.alarms = d.alarms;
            c.stop = d.stop;
            c.next_parent = d.next_parent;
        }
        self.write_manifest(&m)?;
        self.dir.append_metrics(&line)
    }
}

/// The numeric fields of a metrics line.
fn numbers(line: &Value) -> BTreeMap<String, f64> {
    line.as_object()
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| Some((k.clone(), v.as_f64()?)))
        .collect()
}

fn summary(r: &EvalReport) -> Value {
    json!({
        "problems": r.problems, "samples": r.samples, "k": r.k, "temperature": r.temperature,
        "pass@1": r.pass_at_1, "pass@k": r.pass_at_k, "maj@k": r.maj_at_k,
    })
}

fn demonstration(p: &Problem) -> Example {
    Example::new(p.prompt.clone(), p.solution.clone().unwrap_or_default())
}

fn records(groups: &[Group], hinted: bool) -> impl Iterator<Item = SampleRecord<'_>> {
    groups.iter().flat_map(move |g| {
        g.completions
            .iter()
            .zip(&g.verdicts)
            .zip(&g.rewards)
            .map(move |((c, v), &r)| SampleRecord {
                problem_id: &g.problem.id,
                prompt: &g.problem.prompt,
                completion: &c.text,
                grade: v.grade,
                answer: v.answer.as_deref(),
                reward: r,
                finish: c.finish,
                hinted,
            })
    })
}

/// Labeled, unlabeled and held-out problems for the run's seed.
fn draw(plan: &RunPlan) -> Result<Problems> {
    let c = &plan.config;
    let seed = derive_seed(c.seed, 0, "problems", 0);
    let (pool, key) = match c.recipe {
        Recipe::Star => (c.star.problems, "star.problems"),
        r if r.is_preference() => (c.pref.problems, "pref.problems"),
        _ => (c.rl.problems, "rl.problems"),
    };
    // The labeled problems come first, so every recipe with the same seed stage gets the same
    // labeled set (and the same M0) whatever its pool size.
    let mut train = plan
        .task
        .problems(Split::Train, c.seed_stage.labeled + pool, seed)
        .map_err(|e| Error::config(key, format!("with seed_stage.labeled: {e}")))?;
    let unlabeled = train.split_off(c.seed_stage.labeled);
    let eval = plan
        .task
        .problems(Split::Eval, c.eval.problems, seed)
        .map_err(|e| Error::config("eval.problems", e.to_string()))?;
    if let Some(p) = train.iter().find(|p| p.solution.is_none()) {
        return Err(Error::config(
            "seed_stage.labeled",
            format!("problem {} has no reference solution to learn from", p.id),
        ));
    }
    Ok(Problems {
        labeled: train,
        unlabeled,
        eval,
    })
}
