//! The autodidact engine: recipes, sampling orchestration, curation, training stages,
//! evaluation and the run directory.
//!
//! A run is a fixed sequence of stages ([`run::stages`]): the seed stage trains M0 on a
//! small labeled set; each round then runs the stages of its recipe ([`recipes`]), which
//! sample completions of unlabeled problems and learn from them — keeping what the verifier
//! accepts and fine-tuning (`recipes::star`), taking policy-gradient steps on verifier rewards
//! (`recipes::pg`), or building preference pairs from the verifier, a vote, the model's own
//! judgment or demonstrations and training the DPO family (`recipes::pref`, with [`pairs`]
//! and [`judge`]) — and evaluates on the held-out split. Every stage writes its outputs to
//! the run directory ([`store`]) before the journal records it. The engine knows no model:
//! it plans and loads policies through the backend factory (`autodidact_core::Backends`).

pub mod config;
pub mod controller;
pub mod episode;
pub mod error;
pub mod eval;
pub mod export;
pub mod judge;
pub mod monitor;
pub mod overopt;
pub mod pairs;
pub mod progress;
pub mod recipes;
pub mod report;
pub mod reward;
pub mod rm;
pub mod run;
pub mod sampling;
pub mod steps;
pub mod store;
pub mod tensorboard;
#[cfg(test)]
mod testutil;
pub mod train;
pub mod trainer;

pub use config::{RunConfig, RunPlan, DEMO_CONFIG};
pub use error::{Error, Result};
pub use progress::{Observer, Silent};
pub use run::{RoundRow, Run};
