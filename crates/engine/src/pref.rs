//! Preference rounds (`dpo-verified`, `scpo`, `spin`, `self-rewarding`): pairs from the
//! round's groups ([`crate::pairs`]) and DPO-family training against a reference model.
//!
//! How this differs from the papers' setups:
//! - Self-Rewarding LMs (Yuan et al., 2024) and ScPO (Prasad et al., 2024) start from a
//!   pretrained instruction model; here M0 is trained from scratch on a small labeled set
//!   (the seed stage), then every round samples unlabeled problems only.
//! - The reference is the previous round's model by default (iterative DPO, as both papers);
//!   `reference = "seed"` keeps M0.
//! - `self-rewarding` judges with a Y/N verdict read from the logits (see [`crate::judge`])
//!   and mixes a judge SFT loss into every DPO step, on the current model's own samples of
//!   the labeled problems labeled by the verifier, so the judge keeps up with the policy.

use crate::config::{PrefConfig, Recipe};
use crate::pairs::{
    judged_pairs, spin_pairs, verified_pairs, vote_pairs, vote_shares, Pair, PairCounts,
};
use crate::progress::Observer;
use crate::train::{start_training, Order, TrainStats};
use crate::Result;
use autodidact_core::{Example, Group, Policy, TrainablePolicy};
use autodidact_objectives::{
    dpo, sft, BatchShape, DpoInputs, DpoSettings, DpoStats, SftNormalization,
};
use std::collections::BTreeMap;

/// Pairs of a round for `recipe`, with the proxy reward of every sample (`None` where the
/// recipe has no proxy: `dpo-verified` uses the gold verifier, `spin` no reward).
/// `judge_scores` are the self-judge's scores (`self-rewarding` only).
pub fn build_pairs(
    recipe: Recipe,
    cfg: &PrefConfig,
    groups: &[Group],
    judge_scores: Option<&[Vec<f32>]>,
) -> (Vec<Pair>, PairCounts, Option<Vec<Vec<f32>>>) {
    let n = cfg.pairs_per_problem;
    match recipe {
        Recipe::Scpo => {
            let shares: Vec<Vec<f32>> = groups.iter().map(vote_shares).collect();
            let (p, c) = vote_pairs(groups, &shares, n, cfg.min_vote_share, cfg.weight_by_margin);
            (p, c, Some(shares))
        }
        Recipe::SelfRewarding => {
            let scores = judge_scores.expect("self-rewarding judges its samples");
            let (p, c) = judged_pairs(groups, scores, n, cfg.judge_margin);
            (p, c, Some(scores.to_vec()))
        }
        Recipe::Spin => {
            let (p, c) = spin_pairs(groups, n);
            (p, c, None)
        }
        _ => {
            let (p, c) = verified_pairs(groups, n);
            (p, c, None)
        }
    }
}

/// The (chosen, rejected) examples of `pairs`.
fn pair_examples(pairs: &[Pair]) -> (Vec<Example>, Vec<Example>) {
    pairs
        .iter()
        .map(|p| {
            (
                Example::new(p.prompt.clone(), p.chosen.clone()),
                Example::new(p.prompt.clone(), p.rejected.clone()),
            )
        })
        .unzip()
}

/// Summed log-probs of each pair's chosen and rejected completion under `reference`.
pub fn reference_logps(reference: &mut dyn Policy, pairs: &[Pair]) -> Result<Vec<(f32, f32)>> {
    let (c, r) = pair_examples(pairs);
    let mut out = Vec::with_capacity(pairs.len());
    for (cc, rr) in c.chunks(256).zip(r.chunks(256)) {
        let lc = reference.logprobs(cc)?;
        let lr = reference.logprobs(rr)?;
        for (a, b) in lc.iter().zip(&lr) {
            out.push((a.iter().sum(), b.iter().sum()));
        }
    }
    Ok(out)
}

/// What a DPO fit did: the usual training stats and the mean TRL metrics over its steps.
pub struct DpoFit {
    pub stats: TrainStats,
    pub metrics: BTreeMap<String, f64>,
}

/// Trains `policy` on `pairs` (with their reference log-probs) for `cfg.train`'s steps, with a
/// fresh optimizer, plus `cfg.sft_coef` × the chosen side's token-mean NLL; when `judge` is non-empty, every step also takes a batch of judge
/// examples with SFT weight `judge_coef`.
#[allow(clippy::too_many_arguments)]
pub fn fit_dpo(
    policy: &mut dyn TrainablePolicy,
    pairs: &[Pair],
    refs: &[(f32, f32)],
    judge: &[Example],
    judge_coef: f32,
    cfg: &PrefConfig,
    seed: u64,
    obs: &mut dyn Observer,
) -> Result<DpoFit> {
    let t = &cfg.train;
    let (steps, schedule) = start_training(policy, t, pairs.len())?;
    let settings = DpoSettings {
        loss: cfg.loss,
        beta: cfg.beta,
        label_smoothing: cfg.label_smoothing,
    };
    let (chosen, rejected) = pair_examples(pairs);
    let mut order = Order::new(pairs.len(), seed);
    let mut judge_order = Order::new(judge.len(), seed ^ 0x9e37_79b9_7f4a_7c15);
    let batch = t.batch_size.min(pairs.len());
    let tenth = (steps / 10).max(1);
    let mut stats = TrainStats {
        examples: pairs.len(),
        steps,
        ..Default::default()
    };
    let mut dstats = DpoStats::default();
    let (mut judge_loss, mut sft_loss) = (0.0, 0.0);
    for step in 0..steps {
        let idx = order.next_batch(batch);
        let mut ex: Vec<Example> = idx.iter().map(|&i| chosen[i].clone()).collect();
        ex.extend(idx.iter().map(|&i| rejected[i].clone()));
        let lp = policy.forward(&ex, false)?.logprobs;
        let (lc, lr) = lp.split_at(idx.len());
        let rc: Vec<f32> = idx.iter().map(|&i| refs[i].0).collect();
        let rr: Vec<f32> = idx.iter().map(|&i| refs[i].1).collect();
        let w: Vec<f32> = idx.iter().map(|&i| pairs[i].weight).collect();
        let out = dpo(
            &settings,
            &DpoInputs {
                chosen: lc,
                rejected: lr,
                ref_chosen: &rc,
                ref_rejected: &rr,
                weights: Some(&w),
            },
            idx.len(),
        );
        let mut weights = out.chosen_weights;
        if cfg.sft_coef > 0.0 {
            let nll = sft(lc, BatchShape::of(lc), SftNormalization::Token);
            for (w, n) in weights.iter_mut().zip(&nll.weights) {
                for (a, b) in w.iter_mut().zip(n) {
                    *a += cfg.sft_coef * b;
                }
            }
            sft_loss += nll.loss / steps as f64;
        }
        weights.extend(out.rejected_weights);
        policy.backward(&weights, None)?;
        dstats.add(&out.stats);
        stats.tokens += lp.iter().map(|r| r.len() as u64).sum::<u64>();
        if !judge.is_empty() && judge_coef > 0.0 {
            let jb: Vec<Example> = judge_order
                .next_batch(t.batch_size.min(judge.len()))
                .into_iter()
                .map(|i| judge[i].clone())
                .collect();
            let jl = policy.forward(&jb, false)?.logprobs;
            let js = sft(&jl, BatchShape::of(&jl), t.normalization);
            let scaled: Vec<Vec<f32>> = js
                .weights
                .iter()
                .map(|r| r.iter().map(|w| w * judge_coef).collect())
                .collect();
            policy.backward(&scaled, None)?;
            judge_loss += js.loss / steps as f64;
            stats.tokens += jl.iter().map(|r| r.len() as u64).sum::<u64>();
        }
        policy.step(schedule.lr_at(step), t.max_grad_norm)?;
        if step < tenth {
            stats.first_loss += out.loss / tenth as f64;
        }
        if step >= steps - tenth {
            stats.last_loss += out.loss / tenth as f64;
        }
        obs.stage_progress(step + 1, stats.tokens);
    }
    let mut metrics = dstats.metrics();
    metrics.insert("dpo/first_loss".into(), stats.first_loss);
    metrics.insert("dpo/last_loss".into(), stats.last_loss);
    if cfg.sft_coef > 0.0 {
        metrics.insert("dpo/chosen_nll".into(), sft_loss);
    }
    if !judge.is_empty() && judge_coef > 0.0 {
        metrics.insert("judge/train_loss".into(), judge_loss);
    }
    Ok(DpoFit { stats, metrics })
}
