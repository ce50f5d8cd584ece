//! Tasks and their verifiers: the built-in arithmetic tasks, tasks from JSONL files
//! ([`JsonlConfig`]) with answer extraction ([`extract`]), math answer equivalence ([`math`]),
//! external verifier processes ([`verifier`]) and sandboxed code ([`sandbox`]).
//!
//! Every built-in task writes a short worked trace (a scratchpad) before its answer, and the answer
//! follows the last `#` of a completion: `347+285=` → `7+5+0=12;4+8+1=13;3+2+1=06#632`.
//! Verifiers parse the answer out of arbitrary text and return
//! [`Grade::Ungradable`](autodidact_core::Grade) when there is none.
//!
//! Splits are fixed by a hash of the problem's canonical key ([`split_of`]): about one
//! problem in five is held out, whatever seed or count a caller asks for, so train and eval
//! problems can never overlap.

mod addition;
mod answer;
mod countdown;
pub mod extract;
mod jsonl;
pub mod math;
mod multiplication;
pub mod sandbox;
mod sum;
pub mod verifier;

pub use addition::{Addition, AdditionConfig};
pub use countdown::{Countdown, CountdownConfig};
pub use jsonl::{Compare, Jsonl, JsonlConfig};
pub use multiplication::{Multiplication, MultiplicationConfig};
pub use sum::{Sum, SumConfig};

use autodidact_core::{Error, Problem, Result, Rng, Split, Task};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;

/// Which built-in task, with its settings (`[task]` in a run configuration).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "name", rename_all = "snake_case")]
pub enum TaskConfig {
    Addition(AdditionConfig),
    Multiplication(MultiplicationConfig),
    Countdown(CountdownConfig),
    Sum(SumConfig),
    /// Problems from JSONL files, graded by answer extraction and comparison.
    Jsonl(JsonlConfig),
}

impl TaskConfig {
    /// Checks the settings and builds the task.
    pub fn build(&self) -> Result<Box<dyn Task>> {
        Ok(match self {
            TaskConfig::Addition(c) => Box::new(c.build()?),
            TaskConfig::Multiplication(c) => Box::new(c.build()?),
            TaskConfig::Countdown(c) => Box::new(c.build()?),
            TaskConfig::Sum(c) => Box::new(c.build()?),
            TaskConfig::Jsonl(c) => Box::new(c.build()?),
        })
    }

    /// Every built-in task with its default settings, for `autodidact tasks`.
    pub fn catalog() -> Vec<TaskConfig> {
        vec![
            TaskConfig::Addition(AdditionConfig::default()),
            TaskConfig::Multiplication(MultiplicationConfig::default()),
            TaskConfig::Countdown(CountdownConfig::default()),
            TaskConfig::Sum(SumConfig::default()),
        ]
    }

    pub fn name(&self) -> &'static str {
        match self {
            TaskConfig::Addition(_) => "addition",
            TaskConfig::Multiplication(_) => "multiplication",
            TaskConfig::Countdown(_) => "countdown",
            TaskConfig::Sum(_) => "sum",
            TaskConfig::Jsonl(_) => "jsonl",
        }
    }

    /// One-line description of the task and its difficulty knobs.
    pub fn describe(&self) -> String {
        match self {
            TaskConfig::Addition(c) => format!(
                "a + b with operands of up to `digits` = {} digits; the trace adds column by column from the right, writing each carry (`check_trace` = {}: {})",
                c.digits,
                c.check_trace,
                if c.check_trace {
                    "a right answer counts only with the correct trace"
                } else {
                    "only the final answer is checked; set it to true to also require the correct trace"
                }
            ),
            TaskConfig::Multiplication(c) => format!(
                "a × b, a of up to `digits` = {} digits, b of up to `multiplier_digits` = {}; the trace writes each partial product",
                c.digits, c.multiplier_digits
            ),
            TaskConfig::Countdown(c) => format!(
                "reach a target with + − × ÷ from `numbers` = {} numbers in 1..=`max_number` = {} (each at most once, targets up to `max_target` = {}); the trace writes each step, the answer is an expression checked in exact rationals",
                c.numbers, c.max_number, c.max_target
            ),
            TaskConfig::Sum(c) => format!(
                "the sum of `terms` = {} numbers of up to `digits` = {} digits; the trace writes running sums in an order of its choosing (many paths lead to one answer, so a vote among samples is informative)",
                c.terms, c.digits
            ),
            TaskConfig::Jsonl(c) => format!(
                "problems from {}{}, answers found by {:?} and compared as {:?}",
                c.train.display(),
                c.eval.as_ref().map_or(" (split by a hash of each id)".to_string(), |e| format!(" and {}", e.display())),
                c.extract,
                c.compare
            ),
        }
    }
}

/// Where a step of the built-in traces (`a;b;c#answer`) ends: after each `;` and the `#`
/// that precedes the answer.
pub const TRACE_STEPS: &str = "[;#]";

/// Share of problem keys held out for evaluation, in thousandths.
pub const EVAL_PERMILLE: u64 = 200;

/// The split a problem belongs to, from a hash of its canonical key (FNV-1a, then a
/// SplitMix64 finalizer so neighbouring keys spread evenly).
pub fn split_of(key: &str) -> Split {
    let mut h = autodidact_core::rng::fnv1a(key.as_bytes());
    h = (h ^ (h >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    h ^= h >> 31;
    if h % 1000 < EVAL_PERMILLE {
        Split::Eval
    } else {
        Split::Train
    }
}

/// Draws `count` distinct problems of `split` from `draw` (which returns a canonical key and
/// the problem), deterministically for `seed`. `space` is how many distinct keys `draw` can
/// produce at most (both splits together). Fails at once when the split cannot hold `count`
/// problems, and otherwise after a bounded number of draws: never hangs, and allocates for
/// what it finds rather than for what was asked.
pub(crate) fn draw_problems(
    task: &str,
    split: Split,
    count: usize,
    seed: u64,
    space: f64,
    mut draw: impl FnMut(&mut Rng) -> (String, Problem),
) -> Result<Vec<Problem>> {
    let (stream, share) = match split {
        Split::Train => (0, 1.0 - EVAL_PERMILLE as f64 / 1000.0),
        Split::Eval => (1, EVAL_PERMILLE as f64 / 1000.0),
    };
    let split_name = match split {
        Split::Train => "train",
        Split::Eval => "held-out",
    };
    // The hash split puts each key in a split independently, so the split's size is within
    // a few standard deviations of its expectation.
    let expected = space * share;
    let most = expected + 4.0 * (expected * (1.0 - share)).sqrt() + 1.0;
    if count as f64 > most {
        return Err(Error::invalid(
            format!("{task} problems"),
            format!(
                "{count} distinct {split_name} problems were asked for, but these settings give at most {} distinct problems, about {} of them in the {split_name} split; ask for fewer or raise the difficulty",
                fmt_count(space),
                fmt_count(expected)
            ),
        ));
    }
    let mut rng = Rng::derived(seed, stream);
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(count.min(1 << 16));
    // 20 × space draws leave each key unseen with probability e^-20 for a uniform draw: past
    // that, the split holds no more.
    let max_attempts = (200.0 * count as f64 + 10_000.0).min(20.0 * space + 10_000.0) as u64;
    let (mut attempts, mut last_new) = (0u64, 0u64);
    while out.len() < count {
        attempts += 1;
        // A split that gives nothing new for 100 × (found + 100) draws is exhausted.
        let stalled = attempts - last_new > 100 * (out.len() as u64 + 100);
        if attempts > max_attempts || stalled {
            return Err(Error::invalid(
                format!("{task} problems"),
                format!(
                    "found only {} distinct {split_name} problems in {attempts} draws but {count} were asked for; ask for fewer or raise the difficulty",
                    out.len()
                ),
            ));
        }
        let (key, problem) = draw(&mut rng);
        if split_of(&key) == split && seen.insert(key) {
            out.push(problem);
            last_new = attempts;
        }
    }
    Ok(out)
}

/// `1234567` as `1,234,567`; numbers past 10^15 as `1.0e60`.
fn fmt_count(x: f64) -> String {
    if x >= 1e15 {
        return format!("{x:.1e}");
    }
    let digits = format!("{:.0}", x.floor());
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Fails, naming the task setting, unless `value` lies in `valid`.
pub(crate) fn check_range<T>(
    task: &str,
    key: &str,
    value: T,
    valid: std::ops::RangeInclusive<T>,
) -> Result<()>
where
    T: PartialOrd + std::fmt::Display,
{
    if valid.contains(&value) {
        return Ok(());
    }
    Err(Error::invalid(
        format!("task.{key}"),
        format!(
            "{value} is invalid for {task}: must be in {}..={}",
            valid.start(),
            valid.end()
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_are_disjoint_deterministic_and_about_one_in_five() {
        for cfg in TaskConfig::catalog() {
            let task = cfg.build().unwrap();
            let train = task.problems(Split::Train, 400, 7).unwrap();
            let eval = task.problems(Split::Eval, 100, 7).unwrap();
            let again = task.problems(Split::Train, 400, 7).unwrap();
            assert_eq!(train, again, "{}", task.name());
            let other_seed = task.problems(Split::Eval, 100, 8).unwrap();
            let ids: HashSet<_> = train.iter().map(|p| &p.id).collect();
            assert!(eval.iter().chain(&other_seed).all(|p| !ids.contains(&p.id)));
            assert_eq!(ids.len(), 400, "train problems are distinct");
            // Each problem's reference solution verifies, and so does its answer alone.
            for p in train.iter().chain(&eval) {
                let sol = p.solution.as_ref().unwrap();
                assert!(task.verify(p, sol).is_correct(), "{p:?}");
                let (max_prompt, max_sol) = task.max_chars();
                assert!(p.prompt.chars().count() <= max_prompt, "{p:?}");
                assert!(sol.chars().count() <= max_sol, "{p:?}");
                let hinted = task.hinted_prompt(p).unwrap();
                assert!(hinted.chars().count() <= max_prompt, "{hinted}");
                let alphabet = task.alphabet();
                for text in [&p.prompt, sol, &hinted] {
                    assert!(text.chars().all(|c| alphabet.contains(c)), "{text}");
                }
            }
        }
        let keys = (0..10_000).map(|i| format!("k{i}"));
        let held = keys.filter(|k| split_of(k) == Split::Eval).count();
        assert!((1800..2200).contains(&held), "{held}");
    }

    #[test]
    fn too_small_a_split_is_a_clear_error() {
        let task = AdditionConfig {
            digits: 1,
            ..Default::default()
        }
        .build()
        .unwrap();
        let err = task.problems(Split::Eval, 90, 0).unwrap_err().to_string();
        assert!(err.contains("ask for fewer"), "{err}");
    }

    #[test]
    fn issue11_an_impossible_count_fails_at_once_with_the_number_available() {
        // Before, 10^8 problems of a 10^6-problem task ran for hours (and reserved memory for
        // 10^8 problems up front).
        let start = std::time::Instant::now();
        for cfg in TaskConfig::catalog() {
            let task = cfg.build().unwrap();
            for split in [Split::Train, Split::Eval] {
                let err = task
                    .problems(split, 100_000_000, 0)
                    .unwrap_err()
                    .to_string();
                assert!(err.contains("ask for fewer"), "{}: {err}", task.name());
            }
        }
        let addition = AdditionConfig::default().build().unwrap();
        let err = addition
            .problems(Split::Train, 100_000_000, 0)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(
                "at most 1,000,000 distinct problems, about 800,000 of them in the train split"
            ),
            "{err}"
        );
        // Not a timing gate: a hang would not finish at all; this bound is generous.
        assert!(start.elapsed().as_secs() < 60);
        assert_eq!(fmt_count(1234567.0), "1,234,567");
        assert_eq!(fmt_count(999.0), "999");
    }

    #[test]
    fn config_parses_by_name_and_rejects_unknown_keys() {
        let ok: TaskConfig = toml::from_str("name = \"addition\"\ndigits = 4").unwrap();
        assert_eq!(
            ok,
            TaskConfig::Addition(AdditionConfig {
                digits: 4,
                check_trace: false
            })
        );
        let err = toml::from_str::<TaskConfig>("name = \"addition\"\ndigit = 4").unwrap_err();
        assert!(err.to_string().contains("unknown field `digit`"), "{err}");
        assert!(toml::from_str::<TaskConfig>("name = \"subtraction\"").is_err());
    }
}
