//! A reward model on the native transformer: the policy's backbone with a scalar score head,
//! as Hugging Face's `LlamaForSequenceClassification` with one label (the head `score` has
//! no bias and reads the final-normed hidden state at the sequence's last token, which here
//! is the completion's stop token). It trains with any loss of the scores
//! (`autodidact_objectives::reward`: Bradley–Terry on pairs, BCE on outcome labels): the loss's
//! gradient in the scores flows back through the head and the backbone
//! ([`Transformer::backward_scores`]), and one AdamW step updates both, clipped together.
//!
//! How it differs from TRL's `RewardTrainer`: the backbone's LM head is kept (unused) so the
//! same checkpoint loads as a policy; a fresh head is drawn N(0, initializer_range²), as
//! transformers initializes `score`.

use crate::checkpoint::{self, ScoreHead};
use crate::optim::AdamW;
use crate::policy::{adamw, to_core, NativePolicy};
use crate::rng::Rng;
use crate::{Error, Result};
use autodidact_core::{Example, OptimizerSettings};
use std::path::Path;

pub struct NativeRewardModel {
    policy: NativePolicy,
    /// `score.weight`. (C)
    head: Vec<f32>,
    /// The head's accumulated gradient. (C)
    dhead: Vec<f32>,
    head_optimizer: Option<AdamW>,
    /// Whether a forward pass is cached for [`NativeRewardModel::backward`].
    ready: bool,
}

impl NativeRewardModel {
    /// A fresh head, seeded by `seed`, on `policy`'s backbone.
    pub fn new(policy: NativePolicy, seed: u64) -> Self {
        let cfg = policy.model().config();
        let mut rng = Rng::derived(seed, u64::MAX);
        let head = (0..cfg.hidden_size)
            .map(|_| rng.normal() * cfg.initializer_range)
            .collect();
        Self::with_head(policy, head)
    }

    /// `policy`'s backbone with the head `head` (`hidden_size` values).
    pub fn with_head(policy: NativePolicy, head: Vec<f32>) -> Self {
        let c = head.len();
        Self {
            policy,
            head,
            dhead: vec![0.0; c],
            head_optimizer: None,
            ready: false,
        }
    }

    /// The reward model saved in `dir` ([`NativeRewardModel::save`], or transformers'
    /// `LlamaForSequenceClassification` with one label). With `fresh_head`, a policy
    /// checkpoint without a score head loads too, its backbone under a head drawn from that
    /// seed (the start of a reward model's training); without, it is an error.
    pub fn load(dir: &Path, fresh_head: Option<u64>) -> Result<Self> {
        let mut ck = checkpoint::load(dir)?;
        let head = ck.score.take();
        let policy = NativePolicy::from_checkpoint(ck, dir)?;
        match (head, fresh_head) {
            (Some(h), _) => Ok(Self::with_head(policy, h)),
            (None, Some(seed)) => Ok(Self::new(policy, seed)),
            (None, None) => Err(Error::checkpoint(
                dir,
                format!(
                    "has no score head ({}): it is a policy checkpoint, not a reward model (a …ForSequenceClassification checkpoint, or a directory `autodidact rm train` wrote)",
                    checkpoint::SCORE_TENSOR
                ),
            )),
        }
    }

    /// Writes the model, its score head and (after training) their optimizer state to `dir`.
    pub fn save(&self, dir: &Path) -> Result<()> {
        checkpoint::save_with(
            dir,
            self.policy.model(),
            Some(self.policy.tokenizer()),
            self.policy.optimizer(),
            Some(ScoreHead {
                weight: &self.head,
                optimizer: self.head_optimizer.as_ref(),
            }),
        )
    }

    /// Continues the optimizer state saved in `dir` with `s`; false when there is none.
    pub fn restore_optimizer(&mut self, dir: &Path, s: &OptimizerSettings) -> Result<bool> {
        let model = self.policy.model();
        let loaded = checkpoint::load_optimizers(dir, model, &adamw(s), Some(self.head.len()))?;
        let Some((backbone, head)) = loaded else {
            return Ok(false);
        };
        self.policy.set_optimizer(backbone);
        self.head_optimizer = head;
        self.dhead.fill(0.0);
        Ok(true)
    }

    pub fn policy(&self) -> &NativePolicy {
        &self.policy
    }

    pub fn head(&self) -> &[f32] {
        &self.head
    }

    /// The score of each example (prompt, completion and its stop token), cached for
    /// [`NativeRewardModel::backward`].
    pub fn scores(&mut self, batch: &[Example]) -> Result<Vec<f32>> {
        self.ready = false;
        let s = self.policy.forward_scores(&self.head, batch)?;
        self.ready = true;
        Ok(s)
    }

    /// Accumulates the gradient of `Σ_b dscores_b · score_b` for the last
    /// [`NativeRewardModel::scores`].
    pub fn backward(&mut self, dscores: &[f32]) -> Result<()> {
        if !self.ready {
            return Err(crate::Error::NoForwardCache);
        }
        let d = self.policy.backward_scores(&self.head, dscores)?;
        self.dhead.iter_mut().zip(&d).for_each(|(a, b)| *a += b);
        Ok(())
    }

    /// Fresh AdamW state for the backbone and the head (the head decays as a matrix).
    pub fn reset_optimizer(&mut self, s: &OptimizerSettings) -> Result<()> {
        use autodidact_core::TrainablePolicy;
        self.policy.reset_optimizer(s).map_err(crate::Error::Core)?;
        self.head_optimizer = Some(adamw(s).build_for(self.head.len(), true)?);
        self.dhead.fill(0.0);
        Ok(())
    }

    /// One AdamW step of the backbone and the head at `lr`, their gradients clipped together
    /// to `max_grad_norm` (0: none); returns the norm before clipping.
    pub fn step(&mut self, lr: f32, max_grad_norm: f32) -> Result<f32> {
        let opt = self.head_optimizer.as_mut().ok_or_else(|| {
            crate::Error::invalid(
                "training step",
                "no optimizer: call reset_optimizer before the first step",
            )
        })?;
        self.policy.step_with(
            lr,
            max_grad_norm,
            Some((&mut self.head, &mut self.dhead, opt)),
        )
    }
}

impl autodidact_core::RewardModel for NativeRewardModel {
    fn scores(&mut self, batch: &[Example]) -> autodidact_core::Result<Vec<f32>> {
        NativeRewardModel::scores(self, batch).map_err(to_core)
    }
    fn backward(&mut self, dscores: &[f32]) -> autodidact_core::Result<()> {
        NativeRewardModel::backward(self, dscores).map_err(to_core)
    }
    fn reset_optimizer(&mut self, s: &OptimizerSettings) -> autodidact_core::Result<()> {
        NativeRewardModel::reset_optimizer(self, s).map_err(to_core)
    }
    fn step(&mut self, lr: f32, max_grad_norm: f32) -> autodidact_core::Result<f32> {
        NativeRewardModel::step(self, lr, max_grad_norm).map_err(to_core)
    }
    fn save(&self, dir: &Path) -> autodidact_core::Result<()> {
        NativeRewardModel::save(self, dir).map_err(to_core)
    }
    fn memory_bytes(&self, rows: usize) -> u64 {
        // Weights and gradient buffers, the head's two, and a pass's activations.
        let cfg = self.policy.model().config();
        8 * (cfg.num_params() + self.head.len()) as u64
            + cfg.train_activation_bytes(rows, cfg.context_length)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TransformerConfig;
    use autodidact_objectives::{bradley_terry, outcome_bce};

    fn reward_model(seed: u64) -> NativeRewardModel {
        let tok = autodidact_core::CharTokenizer::new("0123456789+=").unwrap();
        let mut cfg = TransformerConfig::tiny(autodidact_core::Tokenizer::vocab_size(&tok));
        cfg.context_length = 24;
        let policy = NativePolicy::new(cfg.build(seed).unwrap(), tok).unwrap();
        NativeRewardModel::new(policy, seed)
    }

    fn sums(n: usize, seed: u64) -> Vec<(Example, Example)> {
        let mut rng = Rng::derived(seed, 0);
        (0..n)
            .map(|_| {
                let (a, b) = (rng.below(50) as u32, rng.below(50) as u32);
                let wrong = a + b + 1 + rng.below(9) as u32;
                let p = format!("{a}+{b}=");
                (
                    Example::new(p.clone(), (a + b).to_string()),
                    Example::new(p, wrong.to_string()),
                )
            })
            .collect()
    }

    /// Bradley–Terry training on pairs (a right sum over a wrong one) learns to rank held-out
    /// pairs (0.48 → 0.83 here), and the outcome loss learns a label the completions show.
    #[test]
    fn issue18_a_reward_model_learns_to_rank_right_sums_over_wrong_ones() {
        let settings = OptimizerSettings {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        };
        let (train, held) = (sums(256, 1), sums(64, 2));
        let accuracy = |rm: &mut NativeRewardModel| {
            let c: Vec<Example> = held.iter().map(|p| p.0.clone()).collect();
            let r: Vec<Example> = held.iter().map(|p| p.1.clone()).collect();
            let (sc, sr) = (rm.scores(&c).unwrap(), rm.scores(&r).unwrap());
            bradley_terry(&sc, &sr, None, 0.0).accuracy
        };
        let mut rm = reward_model(3);
        rm.reset_optimizer(&settings).unwrap();
        let before = accuracy(&mut rm);
        for step in 0..150 {
            let batch = &train[(step * 32) % 256..(step * 32) % 256 + 32];
            let mut seqs: Vec<Example> = batch.iter().map(|p| p.0.clone()).collect();
            seqs.extend(batch.iter().map(|p| p.1.clone()));
            let s = rm.scores(&seqs).unwrap();
            let l = bradley_terry(&s[..32], &s[32..], None, 0.0);
            let d: Vec<f32> = l
                .grad_chosen
                .iter()
                .chain(&l.grad_rejected)
                .copied()
                .collect();
            rm.backward(&d).unwrap();
            let norm = rm.step(3e-3, 1.0).unwrap();
            assert!(norm.is_finite());
        }
        let after = accuracy(&mut rm);
        println!("held-out pair accuracy {before} → {after}");
        assert!(
            after >= 0.75 && after > before + 0.2,
            "held-out pair accuracy {before} → {after}"
        );

        // The outcome loss, on a label the completion shows (its last digit is even): judging
        // a sum right or wrong from scratch takes this tiny model longer than a test (150
        // such steps leave it at chance, 0.51), ranking two answers to one prompt does not.
        let even = |e: &Example| (e.completion.bytes().last().unwrap() - b'0').is_multiple_of(2);
        let mut rm = reward_model(4);
        rm.reset_optimizer(&settings).unwrap();
        let all: Vec<Example> = train
            .iter()
            .flat_map(|p| [p.0.clone(), p.1.clone()])
            .collect();
        for step in 0..150 {
            let batch = &all[(step * 64) % 512..(step * 64) % 512 + 64];
            let labels: Vec<f32> = batch.iter().map(|e| even(e) as u8 as f32).collect();
            let s = rm.scores(batch).unwrap();
            rm.backward(&outcome_bce(&s, &labels).grad).unwrap();
            rm.step(3e-3, 1.0).unwrap();
        }
        let test: Vec<Example> = held
            .iter()
            .flat_map(|p| [p.0.clone(), p.1.clone()])
            .collect();
        let labels: Vec<f32> = test.iter().map(|e| even(e) as u8 as f32).collect();
        let acc = outcome_bce(&rm.scores(&test).unwrap(), &labels).accuracy;
        println!("held-out outcome accuracy {acc}");
        assert!(acc >= 0.9, "held-out outcome accuracy {acc}");
        // Without a forward pass there is nothing to differentiate.
        let mut fresh = reward_model(5);
        assert!(fresh.backward(&[1.0]).is_err());
    }
}
