//! `[reward]`: where a round's rewards come from. By default the task's verifier; with
//! `model`, a learned reward model or an ensemble of them ([`crate::rm`]), aggregated as
//! `aggregate` says. The verifier still grades every sample, so a round logs the proxy beside
//! the gold truth: `proxy/reward` and `gold/reward` (means over the round's training samples,
//! which the `proxy_gold_divergence` alarm compares), `proxy/disagreement` (the members' mean
//! standard deviation), and on the held-out samples `proxy/eval_reward` and
//! `proxy/eval_disagreement`.
//!
//! Recipes that take their reward from it: the policy-gradient family (the proxy replaces
//! the verifier's score in the reward), `raft` (the best of n by proxy, kept when it reaches
//! `raft.threshold`), `star` (keeps the completions whose proxy reaches `reward.threshold`)
//! and `dpo-verified` (pairs the best and the worst distinct completion by proxy). `scpo`,
//! `spin` and `self-rewarding` build pairs from votes, gold demonstrations or a judge and
//! refuse it.

use crate::rm::{
    aggregate, check_aggregation, completions_of, digest, disagreement, Aggregation, Ensemble,
};
use crate::steps::StepRule;
use crate::{Error, Result};
use autodidact_core::{Backends, Group};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;

/// `[reward]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RewardConfig {
    /// A reward model or ensemble: a directory `autodidact rm train` wrote, or one
    /// reward-model checkpoint. Absent: the verifier's score is the reward.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<PathBuf>,
    /// How an ensemble's scores become one: `{ kind = "mean" }`, `{ kind = "worst_case" }`
    /// (WCO) or `{ kind = "uncertainty", lambda = 1.0 }` (UWO: mean − λ·variance).
    pub aggregate: Aggregation,
    /// `star` keeps a completion whose proxy reward is at least this (a logit: 0 is an
    /// outcome model's even odds).
    pub threshold: f32,
    /// A process reward model's completion score from its steps' scores: `"min"` (the
    /// weakest step) or `"product"` (`Σ log σ(step score)`). Only for process models.
    pub steps: StepRule,
}

impl Default for RewardConfig {
    fn default() -> Self {
        Self {
            model: None,
            aggregate: Aggregation::Mean,
            threshold: 0.0,
            steps: StepRule::Min,
        }
    }
}

impl RewardConfig {
    pub fn is_default(&self) -> bool {
        self == &Self::default()
    }

    /// The proxy reward, loaded, when `model` names one; errors name `reward.*`.
    pub fn build(&self, backends: &Backends) -> Result<Option<ProxyReward>> {
        check_aggregation("reward.aggregate.lambda", self.aggregate)?;
        if !self.threshold.is_finite() {
            return Err(Error::config(
                "reward.threshold",
                format!("{} must be a finite number", self.threshold),
            ));
        }
        let Some(path) = &self.model else {
            return Ok(None);
        };
        let ensemble = Ensemble::load(backends, path, self.steps)
            .map_err(|e| Error::config("reward.model", e.to_string()))?;
        if self.steps != StepRule::default() && !ensemble.is_process() {
            return Err(Error::config(
                "reward.steps",
                format!("{} is an outcome reward model; only a process reward model (trained on steps) combines step scores", path.display()),
            ));
        }
        let digest = digest(path).map_err(|e| Error::config("reward.model", e.to_string()))?;
        Ok(Some(ProxyReward {
            digest,
            ensemble: Mutex::new(ensemble),
            how: self.aggregate,
            threshold: self.threshold,
        }))
    }
}

/// A loaded proxy reward.
pub struct ProxyReward {
    /// [`crate::rm::digest`] of its files when loaded.
    pub digest: String,
    ensemble: Mutex<Ensemble>,
    how: Aggregation,
    pub threshold: f32,
}

impl ProxyReward {
    /// Bytes its models hold while the run scores with them.
    pub fn memory_bytes(&self) -> u64 {
        self.ensemble
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .memory_bytes()
    }

    /// Each member's scores of every completion of `groups`, in group order.
    fn member_scores(&self, groups: &[Group]) -> Result<Vec<Vec<f32>>> {
        let examples = completions_of(groups);
        let mut e = self.ensemble.lock().unwrap_or_else(|p| p.into_inner());
        e.scores(&examples)
    }

    /// Replaces every completion's reward with the proxy's; returns the round's
    /// `proxy/*` and `gold/*` metrics.
    pub fn rescore(&self, groups: &mut [Group]) -> Result<BTreeMap<String, f64>> {
        let scores = self.member_scores(groups)?;
        let agg = aggregate(&scores, self.how);
        let mut at = 0;
        let mut gold = 0.0;
        for g in groups.iter_mut() {
            let n = g.completions.len();
            gold += g.verdicts.iter().map(|v| v.score as f64).sum::<f64>();
            g.rewards = agg[at..at + n].to_vec();
            at += n;
        }
        let n = at.max(1) as f64;
        let mut m = BTreeMap::new();
        m.insert(
            "proxy/reward".into(),
            agg.iter().map(|&s| s as f64).sum::<f64>() / n,
        );
        m.insert("gold/reward".into(), gold / n);
        if scores.len() > 1 {
            m.insert("proxy/disagreement".into(), disagreement(&scores));
        }
        Ok(m)
    }

    /// The proxy's view of held-out samples: `proxy/eval_reward` (and, for an ensemble,
    /// `proxy/eval_disagreement`).
    pub fn eval_metrics(&self, groups: &[Group]) -> Result<BTreeMap<String, f64>> {
        let scores = self.member_scores(groups)?;
        let agg = aggregate(&scores, self.how);
        let mut m = BTreeMap::new();
        if agg.is_empty() {
            return Ok(m);
        }
        m.insert(
            "proxy/eval_reward".into(),
            agg.iter().map(|&s| s as f64).sum::<f64>() / agg.len() as f64,
        );
        if scores.len() > 1 {
            m.insert("proxy/eval_disagreement".into(), disagreement(&scores));
        }
        Ok(m)
    }
}
