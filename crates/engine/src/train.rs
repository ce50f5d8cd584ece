//! Fitting a [`TrainablePolicy`] to a set of demonstrations with the SFT objective.

use crate::config::{OptimizerConfig, TrainConfig};
use crate::progress::Observer;
use crate::{Error, Result};
use autodidact_core::{Example, OptimizerSettings, Rng, TokenScores, TrainablePolicy};
use autodidact_objectives::{sft, BatchShape};
use serde::{Deserialize, Serialize};

/// What a training stage did.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TrainStats {
    pub examples: usize,
    pub steps: u64,
    pub tokens: u64,
    /// Mean loss over the first and the last tenth of the steps.
    pub first_loss: f64,
    pub last_loss: f64,
}

/// Optimizer steps for `examples` demonstrations.
pub fn steps_for(cfg: &TrainConfig, examples: usize) -> u64 {
    match (cfg.steps, cfg.epochs) {
        (Some(s), _) => s,
        (None, e) => ((e.unwrap_or(1.0) * examples as f64) / cfg.batch_size as f64)
            .ceil()
            .max(1.0) as u64,
    }
}

/// Example indices in training order: a fresh permutation per epoch, seeded by (seed, epoch).
pub(crate) struct Order {
    n: usize,
    seed: u64,
    epoch: u64,
    perm: Vec<usize>,
    pos: usize,
}

impl Order {
    pub(crate) fn new(n: usize, seed: u64) -> Self {
        Self {
            n,
            seed,
            epoch: 0,
            perm: Vec::new(),
            pos: 0,
        }
    }
    pub(crate) fn next_batch(&mut self, size: usize) -> Vec<usize> {
        (0..size)
            .map(|_| {
                if self.pos == self.perm.len() {
                    let mut rng = Rng::derived(self.seed, self.epoch);
                    self.perm = (0..self.n).collect();
                    rng.shuffle(&mut self.perm);
                    self.epoch += 1;
                    self.pos = 0;
                }
                self.pos += 1;
                self.perm[self.pos - 1]
            })
            .collect()
    }
}

/// Linear warm-up from 0 to `peak_lr` over `warmup_steps`, then cosine decay to
/// `peak_lr · min_lr_ratio` at `total_steps` (constant after).
#[derive(Clone, Debug, PartialEq)]
pub struct LrSchedule {
    /// Learning rate at the end of warm-up.
    pub peak_lr: f32,
    /// Steps of linear warm-up (0 for none).
    pub warmup_steps: u64,
    /// Step at which the cosine reaches its floor.
    pub total_steps: u64,
    /// Floor of the decay as a fraction of `peak_lr` (0 decays to zero, 1 keeps the rate constant).
    pub min_lr_ratio: f32,
}

impl LrSchedule {
    /// `optimizer`'s schedule over `total_steps` updates (warm-up capped at the total).
    pub fn of(optimizer: &OptimizerConfig, total_steps: u64) -> Self {
        Self {
            peak_lr: optimizer.lr,
            warmup_steps: optimizer.warmup_steps.min(total_steps),
            total_steps,
            min_lr_ratio: optimizer.min_lr_ratio,
        }
    }

    /// Checks the schedule of training section `key` (`star.train`), naming the bad key.
    pub fn validate(&self, key: &str) -> Result<()> {
        if !(self.peak_lr.is_finite() && self.peak_lr > 0.0) {
            return Err(Error::config(
                format!("{key}.lr"),
                format!("{} must be a finite number above 0", self.peak_lr),
            ));
        }
        if !(0.0..=1.0).contains(&self.min_lr_ratio) {
            return Err(Error::config(
                format!("{key}.min_lr_ratio"),
                format!("{} must be in [0, 1]", self.min_lr_ratio),
            ));
        }
        if self.total_steps < self.warmup_steps {
            return Err(Error::config(
                format!("{key}.warmup_steps"),
                format!(
                    "{} is more than the {} steps of the schedule",
                    self.warmup_steps, self.total_steps
                ),
            ));
        }
        Ok(())
    }

    /// Learning rate for update number `step` (0-based).
    pub fn lr_at(&self, step: u64) -> f32 {
        if step < self.warmup_steps {
            return self.peak_lr * (step + 1) as f32 / self.warmup_steps as f32;
        }
        let min = self.peak_lr * self.min_lr_ratio;
        let span = self.total_steps.saturating_sub(self.warmup_steps);
        if span == 0 || step >= self.total_steps {
            return min;
        }
        let progress = (step - self.warmup_steps) as f64 / span as f64;
        let cos = 0.5 * (1.0 + (std::f64::consts::PI * progress).cos());
        min + (self.peak_lr - min) * cos as f32
    }
}

/// AdamW settings of a training stage (betas and eps are PyTorch's defaults).
pub fn adamw_settings(weight_decay: f32) -> OptimizerSettings {
    OptimizerSettings {
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay,
    }
}

/// The update loop every trainer shares (SFT, the DPO family, policy gradient): the policy
/// with its optimizer state, the learning-rate schedule and gradient clipping. An update
/// accumulates gradients over one or more forward/backward passes ([`Updater::accumulate`]:
/// micro-batches, auxiliary losses) and ends with one optimizer step ([`Updater::step`]).
pub(crate) struct Updater<'a> {
    pub(crate) policy: &'a mut dyn TrainablePolicy,
    schedule: LrSchedule,
    max_grad_norm: f32,
    /// Updates taken so far: the schedule's position.
    updates: u64,
}

impl<'a> Updater<'a> {
    /// Starts `policy`'s optimizer: the state saved with checkpoint `resume` when given and
    /// present, else a fresh one. The schedule spans `total` updates and starts at update
    /// `first` (a run-long schedule continues across rounds).
    pub(crate) fn start(
        policy: &'a mut dyn TrainablePolicy,
        optimizer: &OptimizerConfig,
        total: u64,
        first: u64,
        resume: Option<&std::path::Path>,
    ) -> Result<Self> {
        let settings = adamw_settings(optimizer.weight_decay);
        let restored = match resume {
            Some(dir) => policy.restore_optimizer(dir, &settings)?,
            None => false,
        };
        if !restored {
            policy.reset_optimizer(&settings)?;
        }
        Ok(Self {
            policy,
            schedule: LrSchedule::of(optimizer, total),
            max_grad_norm: optimizer.max_grad_norm,
            updates: first,
        })
    }

    /// One forward pass over `batch` (with entropies when `entropy`), the objective
    /// `weights` turning its scores into per-token weights (and entropy coefficients) plus
    /// what the caller keeps, and the backward pass that accumulates the gradient.
    pub(crate) fn accumulate<T>(
        &mut self,
        batch: &[Example],
        entropy: bool,
        weights: impl FnOnce(TokenScores) -> (Vec<Vec<f32>>, Option<Vec<Vec<f32>>>, T),
    ) -> Result<T> {
        let scores = self.policy.forward(batch, entropy)?;
        let (w, coefs, kept) = weights(scores);
        self.policy.backward(&w, coefs.as_deref())?;
        Ok(kept)
    }

    /// Clips the accumulated gradient, steps at the schedule's rate and clears it; returns
    /// the gradient norm before clipping.
    pub(crate) fn step(&mut self) -> Result<f32> {
        let lr = self.schedule.lr_at(self.updates);
        self.updates += 1;
        Ok(self.policy.step(lr, self.max_grad_norm)?)
    }
}

impl TrainStats {
    /// Adds step `step`'s loss to the mean loss of the first or last tenth of the steps.
    pub(crate) fn record_loss(&mut self, step: u64, loss: f64) {
        let tenth = (self.steps / 10).max(1);
        if step < tenth {
            self.first_loss += loss / tenth as f64;
        }
        if step >= self.steps - tenth {
            self.last_loss += loss / tenth as f64;
        }
    }
}

/// Trains on `examples` with a fresh optimizer; `after_step(step, loss, policy)` runs after
/// every update (the seed stage evaluates there).
pub fn fit_sft(
    policy: &mut dyn TrainablePolicy,
    examples: &[Example],
    cfg: &TrainConfig,
    optimizer: &OptimizerConfig,
    seed: u64,
    obs: &mut dyn Observer,
    after_step: &mut dyn FnMut(u64, f64, &mut dyn TrainablePolicy) -> Result<()>,
) -> Result<TrainStats> {
    if examples.is_empty() {
        return Err(Error::config(
            "training set",
            "is empty: there is nothing to train on",
        ));
    }
    let steps = steps_for(cfg, examples.len());
    let mut up = Updater::start(policy, optimizer, steps, 0, None)?;
    let mut order = Order::new(examples.len(), seed);
    let batch = cfg.batch_size.min(examples.len());
    let mut stats = TrainStats {
        examples: examples.len(),
        steps,
        ..Default::default()
    };
    for step in 0..steps {
        let items: Vec<Example> = order
            .next_batch(batch)
            .into_iter()
            .map(|i| examples[i].clone())
            .collect();
        let (loss, tokens) = up.accumulate(&items, false, |s| {
            let out = sft(&s.logprobs, BatchShape::of(&s.logprobs), cfg.normalization);
            let tokens = s.logprobs.iter().map(|r| r.len() as u64).sum::<u64>();
            (out.weights, None, (out.loss, tokens))
        })?;
        up.step()?;
        stats.tokens += tokens;
        stats.record_loss(step, loss);
        obs.stage_progress(step + 1, stats.tokens);
        after_step(step + 1, loss, &mut *up.policy)?;
    }
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_shape() {
        let s = LrSchedule {
            peak_lr: 1e-3,
            warmup_steps: 10,
            total_steps: 110,
            min_lr_ratio: 0.1,
        };
        s.validate("test").unwrap();
        assert!((s.lr_at(0) - 1e-4).abs() < 1e-9);
        assert!((s.lr_at(9) - 1e-3).abs() < 1e-9);
        assert!((s.lr_at(10) - 1e-3).abs() < 1e-9);
        assert!((s.lr_at(60) - 0.55e-3).abs() < 1e-7);
        assert!((s.lr_at(110) - 1e-4).abs() < 1e-9);
        assert!((s.lr_at(500) - 1e-4).abs() < 1e-9);
    }

    #[test]
    fn order_visits_every_example_once_per_epoch() {
        let mut o = Order::new(10, 3);
        let first: Vec<usize> = (0..5).flat_map(|_| o.next_batch(2)).collect();
        let second: Vec<usize> = (0..5).flat_map(|_| o.next_batch(2)).collect();
        for epoch in [&first, &second] {
            let mut sorted = epoch.clone();
            sorted.sort();
            assert_eq!(sorted, (0..10).collect::<Vec<_>>());
        }
        assert_ne!(first, second, "each epoch is shuffled anew");
        // Batches cross epoch boundaries, and the order depends only on the seed.
        let mut again = Order::new(10, 3);
        let crossing: Vec<usize> = (0..3).flat_map(|_| again.next_batch(4)).collect();
        assert_eq!(crossing[..10], first[..]);
        assert_eq!(crossing[10..], second[..2]);
    }

    #[test]
    fn steps_follow_epochs() {
        let cfg = TrainConfig {
            epochs: Some(2.0),
            batch_size: 32,
            ..TrainConfig::default()
        };
        assert_eq!(steps_for(&cfg, 100), 7);
        assert_eq!(steps_for(&cfg, 1), 1);
    }
}
