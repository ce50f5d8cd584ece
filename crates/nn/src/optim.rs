//! AdamW and the learning-rate schedule.
//!
//! AdamW follows `torch.optim.AdamW` exactly: decoupled weight decay
//! `θ ← θ·(1 − lr·λ)` applied before the Adam update, bias-corrected moments,
//! and `eps` added after the bias-corrected square root. Unlike a plain
//! `torch.optim.AdamW(model.parameters())`, weight decay is applied to matrices
//! and embeddings only, never to RMSNorm gains (the nanoGPT / Llama recipe);
//! `bench/torch_reference.py` builds the same two parameter groups.

use crate::model::Transformer;
use crate::params::TensorKind;
use crate::{Error, Result};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// AdamW hyper-parameters (defaults are PyTorch's).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdamWConfig {
    /// Decay of the first-moment average (β₁).
    pub beta1: f32,
    /// Decay of the second-moment average (β₂).
    pub beta2: f32,
    /// Added to the denominator for numerical stability.
    pub eps: f32,
    /// Decoupled weight decay λ (applied to matrices and embeddings, not to norm gains).
    pub weight_decay: f32,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
        }
    }
}

impl AdamWConfig {
    pub fn validate(&self) -> Result<()> {
        for (field, b) in [("beta1", self.beta1), ("beta2", self.beta2)] {
            if !(0.0..1.0).contains(&b) {
                return Err(Error::config(field, b, "must be in [0, 1)"));
            }
        }
        if !(self.eps > 0.0 && self.eps.is_finite()) {
            return Err(Error::config(
                "eps",
                self.eps,
                "must be a finite number above 0",
            ));
        }
        if !(self.weight_decay >= 0.0 && self.weight_decay.is_finite()) {
            return Err(Error::config(
                "weight_decay",
                self.weight_decay,
                "must be a finite number ≥ 0",
            ));
        }
        Ok(())
    }

    /// An optimizer for `n` values outside a model's layout (a score head), decayed when
    /// `decay`.
    pub fn build_for(&self, n: usize, decay: bool) -> Result<AdamW> {
        self.validate()?;
        Ok(AdamW {
            config: self.clone(),
            m: vec![0.0; n],
            v: vec![0.0; n],
            decay: vec![decay; n],
            step: 0,
        })
    }

    /// An optimizer for `model`'s trainable values (every parameter, or its LoRA adapters).
    pub fn build(&self, model: &Transformer) -> Result<AdamW> {
        self.validate()?;
        let n = model.num_trainable();
        let mut decay = vec![true; n];
        for t in model
            .trainable_tensors()
            .iter()
            .filter(|t| t.kind != TensorKind::Matrix)
        {
            decay[t.range()].fill(false);
        }
        Ok(AdamW {
            config: self.clone(),
            m: vec![0.0; n],
            v: vec![0.0; n],
            decay,
            step: 0,
        })
    }
}

/// AdamW state: first and second moments per parameter and the step count.
#[derive(Clone, Debug)]
pub struct AdamW {
    pub(crate) config: AdamWConfig,
    pub(crate) m: Vec<f32>,
    pub(crate) v: Vec<f32>,
    decay: Vec<bool>,
    pub(crate) step: u64,
}

impl AdamW {
    /// Number of updates taken so far.
    pub fn steps_taken(&self) -> u64 {
        self.step
    }
    pub fn config(&self) -> &AdamWConfig {
        &self.config
    }

    /// One update of `params` from `grads` at learning rate `lr`.
    pub fn step(&mut self, params: &mut [f32], grads: &[f32], lr: f32) -> Result<()> {
        if params.len() != self.m.len() || grads.len() != self.m.len() {
            return Err(Error::invalid(
                "optimizer step",
                format!(
                    "{} parameters and {} gradients for an optimizer built for {}",
                    params.len(),
                    grads.len(),
                    self.m.len()
                ),
            ));
        }
        if !(lr.is_finite() && lr >= 0.0) {
            return Err(Error::invalid(
                "learning rate",
                format!("{lr}: must be a finite number ≥ 0"),
            ));
        }
        self.step += 1;
        let c = &self.config;
        let t = self.step as i32;
        let bc1 = 1.0 - (c.beta1 as f64).powi(t);
        let bc2 = 1.0 - (c.beta2 as f64).powi(t);
        let step_size = (lr as f64 / bc1) as f32;
        let bc2_sqrt = bc2.sqrt() as f32;
        let (b1, b2, eps, shrink) = (c.beta1, c.beta2, c.eps, 1.0 - lr * c.weight_decay);
        const CHUNK: usize = 1 << 13;
        params
            .par_chunks_mut(CHUNK)
            .zip(grads.par_chunks(CHUNK))
            .zip(self.m.par_chunks_mut(CHUNK))
            .zip(self.v.par_chunks_mut(CHUNK))
            .zip(self.decay.par_chunks(CHUNK))
            .for_each(|((((p, g), m), v), dec)| {
                crate::kernels::adamw_update(
                    p, g, m, v, dec, b1, b2, eps, shrink, step_size, bc2_sqrt,
                )
            });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TransformerConfig;

    /// Reference values from torch.optim.AdamW(lr=0.1, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.5)
    /// on one parameter p=1.0 with gradients 0.5, −0.25, 2.0 (see tests/reference/make_reference.py, `adamw`).
    #[test]
    fn adamw_matches_torch_on_a_scalar() {
        let model = TransformerConfig::tiny(5).build(0).unwrap();
        let cfg = AdamWConfig {
            weight_decay: 0.5,
            ..Default::default()
        };
        let mut opt = cfg.build(&model).unwrap();
        // The first parameter is part of the embedding (decayed).
        let n = model.num_params();
        let mut p = vec![1.0f32; n];
        let expected = [0.85, 0.780_866_3, 0.674_758_2];
        for (g, want) in [0.5f32, -0.25, 2.0].iter().zip(expected) {
            let mut grads = vec![0.0f32; n];
            grads[0] = *g;
            opt.step(&mut p, &grads, 0.1).unwrap();
            assert!((p[0] - want).abs() < 1e-6, "{} vs {want}", p[0]);
        }
    }

    #[test]
    fn bad_hyperparameters_are_named() {
        let e = AdamWConfig {
            beta2: 1.0,
            ..Default::default()
        }
        .validate()
        .unwrap_err()
        .to_string();
        assert!(e.contains("beta2"), "{e}");
    }
}
