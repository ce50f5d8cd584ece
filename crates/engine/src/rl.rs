//! Online policy-gradient rounds (`grpo`, `rloo`, `reinforce`) against the task's verifier.
//!
//! Each step samples G completions for each of P prompts of the unlabeled pool, scores them
//! (verifier score, plus an optional format reward and length penalty), turns rewards into
//! advantages ([`autodidact_objectives::advantages()`]), and makes `num_iterations` passes of
//! updates on the clipped surrogate ([`autodidact_objectives::policy_gradient`]) with the
//! sampling log-probs as the old policy. How this differs from TRL's `GRPOTrainer`:
//! - each pass over a rollout batch is split into `minibatches` optimizer steps over a fresh
//!   shuffle (TRL's `steps_per_generation`); micro-batches only bound memory;
//! - log-probs are those of the untempered policy; with `temperature ≠ 1` the samples are
//!   off-policy for them (TRL scores under the tempered distribution);
//! - AdamW's state travels with each round's checkpoint (`keep_optimizer`, default), so a
//!   resumed run continues it; `keep_optimizer = false` restarts it every round;
//! - zero-spread groups can be dropped (`drop_zero_std`) but are not re-sampled (DAPO refills);
//! - the KL estimator is selectable (k1, k2, k3; TRL: k3 only) and can be folded into the
//!   reward instead (`kl_mode = "reward"`, OpenRLHF's placement).

use crate::config::{KlMode, RlConfig};
use crate::monitor::round_monitors;
use crate::progress::Observer;
use crate::sampling::{derive_seed, sample_groups};
use crate::train::{adamw_settings, LrSchedule, Order};
use crate::Result;
use autodidact_core::{
    Example, FinishReason, Grade, Group, Policy, Problem, SamplingParams, Task, TrainablePolicy,
};
use autodidact_objectives::{
    advantages, fold_kl, policy_gradient, sequence_kl, sft, AdvantageEstimator, BatchShape,
    PgInputs, PgSettings, PgStats, SftNormalization,
};
use serde::Serialize;
use std::collections::BTreeMap;

/// A line of an RL round's `samples.jsonl`.
#[derive(Serialize)]
pub struct RolloutRecord {
    pub step: u32,
    pub problem_id: String,
    pub prompt: String,
    pub completion: String,
    pub grade: Grade,
    pub reward: f32,
    pub advantage: f32,
    pub finish: FinishReason,
    /// Excluded from training (its group's rewards were all equal and `drop_zero_std` is on).
    pub dropped: bool,
}

/// What an RL round produced.
pub struct RlRound {
    pub records: Vec<RolloutRecord>,
    /// Round means of the per-step metrics (TRL's names where TRL has them).
    pub metrics: BTreeMap<String, f64>,
}

/// Settings an RL round needs beyond [`RlConfig`].
pub struct RlContext<'a> {
    pub task: &'a dyn Task,
    pub pool: &'a [Problem],
    pub estimator: AdvantageEstimator,
    /// Rollout sampling (temperature and top-p from `[rl]`, the task's length limit).
    pub sampling: SamplingParams,
    pub seed: u64,
    pub round: u32,
    /// n* of the balance-score monitor (`monitor.n_star`).
    pub n_star: usize,
    /// The checkpoint of the previous RL round, whose optimizer state `keep_optimizer`
    /// continues (`None` in round 1: M0's optimizer belongs to the seed stage).
    pub previous_checkpoint: Option<&'a std::path::Path>,
}

/// The reward of one completion.
fn reward(cfg: &RlConfig, grade: Grade, score: f32, tokens: usize, max_new: usize) -> f32 {
    let w = &cfg.rewards;
    w.correct * score + w.format * (grade != Grade::Ungradable) as u8 as f32
        - w.length_penalty * tokens as f32 / max_new.max(1) as f32
}

fn mean_std(x: &[f32]) -> (f64, f64) {
    let n = x.len().max(1) as f64;
    let m = x.iter().map(|&v| v as f64).sum::<f64>() / n;
    let v = x.iter().map(|&v| (v as f64 - m).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
    (m, v.sqrt())
}

/// Runs one round of `cfg.steps_per_round` steps on `policy`; `reference` scores completions
/// for the KL term when `beta > 0`.
pub fn rl_round(
    policy: &mut dyn TrainablePolicy,
    mut reference: Option<&mut dyn Policy>,
    cfg: &RlConfig,
    cx: &RlContext,
    obs: &mut dyn Observer,
) -> Result<RlRound> {
    let updates = cfg.steps_per_round as u64 * cfg.num_iterations as u64 * cfg.minibatches as u64;
    // With `keep_optimizer`, AdamW continues from the previous RL round (saved with its
    // checkpoint); otherwise it restarts. The learning-rate schedule always spans the run.
    let settings_opt = adamw_settings(cfg.weight_decay);
    let kept = cfg.keep_optimizer
        && match cx.previous_checkpoint {
            Some(dir) => policy.restore_optimizer(dir, &settings_opt)?,
            None => false,
        };
    if !kept {
        policy.reset_optimizer(&settings_opt)?;
    }
    // Warm-up at the run's start, cosine decay to `min_lr_ratio · lr` at its end.
    let mut update = (cx.round as u64 - 1) * updates;
    let total = cfg.rounds.max(cx.round) as u64 * updates;
    let schedule = LrSchedule {
        peak_lr: cfg.lr,
        warmup_steps: cfg.warmup_steps.min(total),
        total_steps: total.max(1),
        min_lr_ratio: cfg.min_lr_ratio,
    };
    let settings = PgSettings {
        epsilon_low: cfg.epsilon_low,
        epsilon_high: cfg.epsilon_high,
        aggregation: cfg.loss_aggregation,
        beta: if cfg.kl_mode == KlMode::Loss {
            cfg.beta
        } else {
            0.0
        },
        kl_estimator: cfg.kl_estimator,
        entropy_coef: cfg.entropy_coef,
    };
    // Prompts: consecutive batches of a per-epoch permutation of the pool, continued across
    // rounds (round r starts where round r − 1 ended).
    let mut order = Order::new(cx.pool.len(), derive_seed(cx.seed, 0, "rl-prompts", 0));
    let batch = cfg.prompts_per_step.min(cx.pool.len());
    for _ in 0..(cx.round - 1) as u64 * cfg.steps_per_round as u64 {
        order.next_batch(batch);
    }
    let mut records = Vec::new();
    let mut sums: BTreeMap<String, f64> = BTreeMap::new();
    let mut add = |k: &str, v: f64| *sums.entry(k.to_string()).or_insert(0.0) += v;
    let mut sampled_tokens = 0u64;
    let (mut seen_groups, mut seen_selected) = (Vec::new(), Vec::new());
    for step in 0..cfg.steps_per_round {
        let prompts: Vec<Problem> = order
            .next_batch(batch)
            .into_iter()
            .map(|i| cx.pool[i].clone())
            .collect();
        let seed = derive_seed(cx.seed, cx.round, "rollout", step as u64);
        let groups: Vec<Group> = sample_groups(
            policy,
            cx.task,
            &prompts,
            cfg.group_size,
            &cx.sampling,
            seed,
            &mut crate::Silent,
        )?;
        let g = cfg.group_size;
        let completions: Vec<_> = groups
            .iter()
            .flat_map(|gr| {
                gr.completions
                    .iter()
                    .zip(&gr.verdicts)
                    .map(move |(c, v)| (gr, c, v))
            })
            .collect();
        let mut rewards: Vec<f32> = completions
            .iter()
            .map(|(_, c, v)| {
                reward(
                    cfg,
                    v.grade,
                    v.score,
                    c.tokens.len(),
                    cx.sampling.max_new_tokens,
                )
            })
            .collect();
        let examples: Vec<Example> = completions
            .iter()
            .map(|(gr, c, _)| Example {
                prompt: gr.problem.prompt.clone(),
                completion: c.text.clone(),
                completion_tokens: Some(c.tokens.clone()),
            })
            .collect();
        let old: Vec<Vec<f32>> = completions
            .iter()
            .map(|(_, c, _)| c.logprobs.clone())
            .collect();
        let refs = match reference.as_deref_mut() {
            Some(r) if cfg.beta > 0.0 => Some(r.logprobs(&examples)?),
            _ => None,
        };
        // KL of each sampled completion to the reference, for the reward (kl_mode = reward) and
        // its metric; with kl_mode = loss the metric comes from the loss instead.
        let reward_kl = match &refs {
            Some(refs) if cfg.kl_mode == KlMode::Reward => {
                Some(sequence_kl(&old, refs, cfg.kl_estimator))
            }
            _ => None,
        };
        if let Some(kl) = &reward_kl {
            rewards = fold_kl(&rewards, kl, cfg.beta);
        }
        let adv = advantages(&rewards, g, cx.estimator, cfg.scale_rewards);
        let dropped: Vec<bool> = (0..completions.len())
            .map(|i| cfg.drop_zero_std && adv.zero_std[i / g])
            .collect();
        let keep: Vec<usize> = (0..completions.len()).filter(|&i| !dropped[i]).collect();
        // Metrics of the rollout.
        let (rm, _) = mean_std(&rewards);
        add("reward", rm);
        let group_std: f64 =
            rewards.chunks(g).map(|r| mean_std(r).1).sum::<f64>() / groups.len().max(1) as f64;
        add("reward_std", group_std);
        add(
            "frac_reward_zero_std",
            adv.zero_std.iter().filter(|&&z| z).count() as f64 / adv.zero_std.len().max(1) as f64,
        );
        let lens: Vec<f32> = completions
            .iter()
            .map(|(_, c, _)| c.tokens.len() as f32)
            .collect();
        add("completions/mean_length", mean_std(&lens).0);
        add(
            "completions/clipped_ratio",
            completions
                .iter()
                .filter(|(_, c, _)| c.finish != FinishReason::Stop)
                .count() as f64
                / completions.len().max(1) as f64,
        );
        add(
            "pg/advantage_mean",
            adv.values.iter().map(|&a| a as f64).sum::<f64>() / adv.values.len().max(1) as f64,
        );
        add(
            "pg/kept_fraction",
            keep.len() as f64 / completions.len().max(1) as f64,
        );
        sampled_tokens += lens.iter().map(|&l| l as u64).sum::<u64>();
        // The round's monitors see every rollout: whether the update pushed it up (a positive
        // advantage in a kept group); its reward joins its group below.
        for j in 0..groups.len() {
            seen_selected.push(
                (j * g..(j + 1) * g)
                    .map(|i| !dropped[i] && adv.values[i] > 0.0)
                    .collect(),
            );
        }
        for (i, (gr, c, v)) in completions.iter().enumerate() {
            records.push(RolloutRecord {
                step,
                problem_id: gr.problem.id.clone(),
                prompt: gr.problem.prompt.clone(),
                completion: c.text.clone(),
                grade: v.grade,
                reward: rewards[i],
                advantage: adv.values[i],
                finish: c.finish,
                dropped: dropped[i],
            });
        }
        // Optimizer updates on the kept completions: `num_iterations` passes, each split into
        // `minibatches` optimizer steps over a fresh shuffle (TRL's `steps_per_generation`).
        let mut stats = PgStats::default();
        let (mut loss, mut grad_norm, mut sft_loss) = (0.0, 0.0, 0.0);
        let updates_per_step = (cfg.num_iterations * cfg.minibatches) as f64;
        for it in 0..cfg.num_iterations {
            let mut perm = Order::new(
                keep.len(),
                derive_seed(
                    cx.seed,
                    cx.round,
                    "minibatch",
                    ((step as u64) << 16) | it as u64,
                ),
            );
            let shuffled: Vec<usize> = perm
                .next_batch(keep.len())
                .into_iter()
                .map(|j| keep[j])
                .collect();
            // With `sft_coef`, every verifier-correct completion of the rollout (its zero-spread
            // groups included) is also shuffled into the minibatches for an NLL term.
            let anchors: Vec<usize> = if cfg.sft_coef > 0.0 {
                let correct: Vec<usize> = (0..completions.len())
                    .filter(|&i| completions[i].2.is_correct())
                    .collect();
                let mut o = Order::new(
                    correct.len(),
                    derive_seed(
                        cx.seed,
                        cx.round,
                        "anchor",
                        ((step as u64) << 16) | it as u64,
                    ),
                );
                o.next_batch(correct.len())
                    .into_iter()
                    .map(|j| correct[j])
                    .collect()
            } else {
                Vec::new()
            };
            let parts = (cfg.minibatches as usize).min(shuffled.len().max(anchors.len()).max(1));
            for part in 0..parts {
                let slice = |v: &[usize]| -> Vec<usize> {
                    v[part * v.len() / parts..(part + 1) * v.len() / parts].to_vec()
                };
                let (idx, anchor) = (slice(&shuffled), slice(&anchors));
                if idx.is_empty() && anchor.is_empty() {
                    continue;
                }
                if !anchor.is_empty() {
                    let ex: Vec<Example> = anchor.iter().map(|&i| examples[i].clone()).collect();
                    let lp = policy.forward(&ex, false)?.logprobs;
                    let nll = sft(&lp, BatchShape::of(&lp), SftNormalization::Token);
                    let w: Vec<Vec<f32>> = nll
                        .weights
                        .iter()
                        .map(|r| r.iter().map(|w| w * cfg.sft_coef).collect())
                        .collect();
                    policy.backward(&w, None)?;
                    if it == 0 {
                        sft_loss += nll.loss / parts as f64;
                    }
                }
                let rows = |v: &[Vec<f32>]| -> Vec<Vec<f32>> {
                    idx.iter().map(|&i| v[i].clone()).collect()
                };
                let ex: Vec<Example> = idx.iter().map(|&i| examples[i].clone()).collect();
                let idx = &idx[..];
                let old_k = rows(&old);
                let ref_k = refs.as_deref().map(rows);
                let adv_k: Vec<f32> = idx.iter().map(|&i| adv.values[i]).collect();
                let mut shape = BatchShape::of(&old_k);
                shape.max_len = cx.sampling.max_new_tokens;
                for start in (0..ex.len()).step_by(cfg.micro_batch_size) {
                    let r = start..(start + cfg.micro_batch_size).min(ex.len());
                    let scores = policy.forward(&ex[r.clone()], true)?;
                    let out = policy_gradient(
                        &settings,
                        &PgInputs {
                            logprobs: &scores.logprobs,
                            old_logprobs: &old_k[r.clone()],
                            ref_logprobs: ref_k.as_ref().map(|v| &v[r.clone()]),
                            entropies: scores.entropies.as_deref(),
                            advantages: &adv_k[r],
                        },
                        shape,
                    );
                    policy.backward(&out.weights, out.entropy_coefs.as_deref())?;
                    if it == 0 {
                        // The first pass's statistics describe the rollout (later passes'
                        // ratios drift from 1 by construction).
                        stats.add(&out.stats);
                        loss += out.loss / parts as f64;
                    }
                }
                let norm = policy.step(schedule.lr_at(update), cfg.max_grad_norm)?;
                update += 1;
                grad_norm += norm as f64 / updates_per_step;
            }
        }
        let tokens = stats.tokens.max(1) as f64;
        add("pg/loss", loss);
        if cfg.sft_coef > 0.0 {
            add("pg/sft_loss", sft_loss);
        }
        add("pg/grad_norm", grad_norm);
        add("entropy", stats.entropy / tokens);
        if cfg.beta > 0.0 {
            let kl = match &reward_kl {
                Some(kl) => kl.iter().sum::<f64>() / lens.iter().sum::<f32>().max(1.0) as f64,
                None => stats.kl / tokens,
            };
            add("kl", kl);
        }
        add("clip_ratio/low_mean", stats.clipped_low as f64 / tokens);
        add("clip_ratio/high_mean", stats.clipped_high as f64 / tokens);
        add(
            "clip_ratio/region_mean",
            (stats.clipped_low + stats.clipped_high) as f64 / tokens,
        );
        obs.stage_progress(step as u64 + 1, sampled_tokens);
        seen_groups.extend(
            groups
                .into_iter()
                .zip(rewards.chunks(g))
                .map(|(mut gr, r)| {
                    gr.rewards = r.to_vec();
                    gr
                }),
        );
    }
    let n = cfg.steps_per_round.max(1) as f64;
    let mut metrics: BTreeMap<String, f64> = sums.into_iter().map(|(k, v)| (k, v / n)).collect();
    metrics.extend(round_monitors(&seen_groups, &seen_selected, cx.n_star));
    metrics.insert("rollout/sampled_tokens".into(), sampled_tokens as f64);
    Ok(RlRound { records, metrics })
}
