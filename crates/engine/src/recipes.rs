//! Recipes as units: each recipe family is one module holding its config sections, their
//! checks, its round stages, the extra fields of its eval line and its table columns, behind
//! the [`Recipe`] and [`Family`] traits. The run loop ([`crate::run`]) drives them and keeps
//! the journal, resumption, manifests, evaluation and the controller, written once.
//!
//! Adding a recipe: a module here implementing [`Family`] (its config type and checks) and
//! [`Recipe`] (its stages), and one line in [`FAMILIES`].

use crate::config::{Budget, RunConfig};
use crate::progress::Observer;
use crate::run::{Manifest, Run};
use crate::{Error, Result};
use autodidact_core::{Example, Task};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::sync::Arc;

pub mod correct;
pub mod pg;
pub mod pref;
pub mod raft;
pub mod s2r;
pub mod star;
pub mod step;
pub mod tree;

/// Every recipe family the engine knows (one line per family).
pub const FAMILIES: &[&dyn Family] = &[
    &star::ExpertIteration,
    &pg::PolicyGradient,
    &pref::Preference,
    &raft::BestOfN,
    &step::StepCredit,
    &correct::SelfCorrection,
    &tree::TreeSearch,
];

/// A recipe family: the recipes it runs and the config sections it owns.
pub trait Family: Sync {
    /// The `recipe` values it runs (`["grpo", "rloo", "reinforce"]`).
    fn recipes(&self) -> &'static [&'static str];

    /// The config sections it owns (`["rl"]`); each parses with [`resolve`].
    fn sections(&self) -> &'static [&'static str];

    /// Section `name` as the file gives it (an empty table when it has none), with every
    /// default filled in; an unknown or mistyped key is an error naming it.
    fn resolve(&self, name: &str, value: toml::Value) -> Result<toml::Value>;

    /// Recipe `recipe` from its resolved sections, after checking every setting.
    fn build(&self, recipe: &str, sections: &Sections) -> Result<Arc<dyn Recipe>>;
}

/// A run's recipe sections, resolved (every default filled in), by section name.
pub type Sections = BTreeMap<String, toml::Value>;

/// What a recipe gives the run loop.
pub trait Recipe: Send + Sync {
    /// The `recipe` value.
    fn name(&self) -> &'static str;

    /// Rounds after the seed stage.
    fn rounds(&self) -> u32;

    /// Unlabeled training problems its rounds draw from, and the key that sets the count.
    fn pool(&self) -> (usize, String);

    /// The stages of each round before its evaluation, in order (journal names: `sample`,
    /// `train`, `rl`, ...).
    fn round_stages(&self) -> &'static [&'static str];

    /// Runs `stage` of `round`: reads its inputs from the run directory, writes its outputs
    /// and its part of the round's manifest.
    fn run_stage(
        &self,
        stage: &str,
        round: u32,
        run: &mut Run,
        obs: &mut dyn Observer,
    ) -> Result<()>;

    /// Checks the settings that involve the rest of the configuration (the task, the
    /// controller) and the memory its stages need.
    fn check(&self, config: &RunConfig, task: &dyn Task, budget: &Budget) -> Result<()>;

    /// Whether its rewards can come from a learned reward model (`[reward] model`).
    fn takes_proxy_reward(&self) -> bool {
        false
    }

    /// Whether the controller's B-STaR balancing (`controller.balance`) can steer its sampling.
    fn balances(&self) -> bool {
        false
    }

    /// Characters its prompts or completions add to the task's (the judge format).
    fn extra_alphabet(&self) -> &'static str {
        ""
    }

    /// Tokens its sequences can add beyond `<bos> prompt solution <eos>`, when a completion
    /// has up to `max_new_tokens`, for the policy's tokenizer `tok` on `task`.
    fn extra_tokens(
        &self,
        _max_new_tokens: usize,
        _tok: &dyn autodidact_core::Tokenizer,
        _task: &dyn Task,
    ) -> Result<usize> {
        Ok(0)
    }

    /// A model of its own besides the policy (a judge), which the plan builds through the
    /// backends like `[model]`.
    fn judge_model(&self) -> Option<&autodidact_core::ModelConfig> {
        None
    }

    /// Examples the seed stage trains on besides each labeled problem's demonstration.
    fn seed_examples(&self, _run: &Run) -> Result<Vec<Example>> {
        Ok(Vec::new())
    }

    /// Upper bound on the seed-stage examples per labeled problem (memory checks).
    fn seed_examples_per_labeled(&self) -> usize {
        1
    }

    /// Rows of its fixed-size scoring passes (memory checks).
    fn scoring_rows(&self) -> usize {
        256
    }

    /// Measures of its own on the round's held-out evaluation, written into the round's
    /// manifest (its metrics and the files it hashes): `held_out` holds the evaluation's
    /// graded completions of the held-out problems, and `policy` is the round's model.
    fn evaluate(
        &self,
        _run: &Run,
        _round: u32,
        _policy: &mut dyn autodidact_core::TrainablePolicy,
        _held_out: &crate::eval::EvalSamples,
        _manifest: &mut Manifest,
        _obs: &mut dyn Observer,
    ) -> Result<()> {
        Ok(())
    }

    /// Adds what the round's manifest holds of this recipe to the round's metrics line.
    fn eval_line(&self, _manifest: &Manifest, _line: &mut Map<String, Value>) {}

    /// Its columns of the end-of-run table.
    fn columns(&self) -> &'static [Column];
}

/// A column of the end-of-run table: a key of the round's metrics line.
#[derive(Clone, Copy, Debug)]
pub struct Column {
    pub header: &'static str,
    pub key: &'static str,
    pub format: Format,
}

/// How a [`Column`] prints its value.
#[derive(Clone, Copy, Debug)]
pub enum Format {
    Count,
    Percent,
    Decimal,
}

impl Column {
    pub fn render(&self, v: f64) -> String {
        match self.format {
            Format::Count => format!("{}", v as u64),
            Format::Percent => format!("{:.1}%", 100.0 * v),
            Format::Decimal => format!("{v:.3}"),
        }
    }
}

/// The family that runs `recipe`, or an error listing every recipe.
pub fn family_of(recipe: &str) -> Result<&'static dyn Family> {
    FAMILIES
        .iter()
        .copied()
        .find(|f| f.recipes().contains(&recipe))
        .ok_or_else(|| {
            Error::config(
                "recipe",
                format!(
                    "unknown recipe `{recipe}`, expected one of {}",
                    names(FAMILIES.iter().flat_map(|f| f.recipes()))
                ),
            )
        })
}

/// The family that owns config section `name`.
pub fn owner_of(section: &str) -> Option<&'static dyn Family> {
    FAMILIES
        .iter()
        .copied()
        .find(|f| f.sections().contains(&section))
}

/// Every section a family owns.
pub fn all_sections() -> impl Iterator<Item = &'static str> {
    FAMILIES.iter().flat_map(|f| f.sections().iter().copied())
}

fn names<'a>(it: impl Iterator<Item = &'a &'static str>) -> String {
    it.map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ")
}

/// Section `name` laid over `T`'s defaults (table by table, so a partial
/// `[star.sampling]` keeps the section's own defaults for what it leaves out), parsed as `T`
/// with errors naming the key (`star.sampling.samples`), and written back with every default
/// filled in.
pub fn resolve<T: DeserializeOwned + Serialize + Default>(
    name: &str,
    value: toml::Value,
) -> Result<toml::Value> {
    let mut merged = toml::Value::try_from(T::default())
        .map_err(|e| Error::config(name, format!("defaults cannot be written: {e}")))?;
    lay_over(&mut merged, value);
    let parsed: T = parse(name, Some(merged))?;
    toml::Value::try_from(&parsed)
        .map_err(|e| Error::config(name, format!("cannot be written back: {e}")))
}

/// Lays `over` on `base`: tables merge key by key, any other value replaces.
fn lay_over(base: &mut toml::Value, over: toml::Value) {
    match (base, over) {
        (toml::Value::Table(b), toml::Value::Table(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(slot) if slot.is_table() && v.is_table() => lay_over(slot, v),
                    _ => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (b, o) => *b = o,
    }
}

/// Section `name` of `sections` as `T` (its defaults when absent).
pub fn section<T: DeserializeOwned + Default>(sections: &Sections, name: &str) -> Result<T> {
    parse(name, sections.get(name).cloned())
}

fn parse<T: DeserializeOwned + Default>(name: &str, value: Option<toml::Value>) -> Result<T> {
    match value {
        None => Ok(T::default()),
        Some(v) => serde_path_to_error::deserialize(v).map_err(|e| {
            let path = e.path().to_string();
            let key = if path == "." {
                name.to_string()
            } else {
                format!("{name}.{path}")
            };
            Error::config(key, crate::config::one_line(&e.inner().to_string()))
        }),
    }
}
