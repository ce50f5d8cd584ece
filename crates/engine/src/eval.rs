//! Held-out evaluation: greedy pass@1, sampled pass@k (unbiased estimator) and maj@k.

use crate::config::{EvalConfig, SamplingConfig};
use crate::progress::{Observer, Offset};
use crate::sampling::{derive_seed, sample_groups};
use crate::Result;
use autodidact_core::{Group, Policy, Problem, SamplingParams, Split, Task, Tokenizer};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// The unbiased pass@k estimator of Chen et al. (2021): the probability that at least one of
/// k completions drawn without replacement from n samples, c of them correct, is correct:
/// `1 − C(n−c, k) / C(n, k)`, computed as `1 − Π_{i=n−c+1}^{n} (1 − k/i)` for stability.
pub fn pass_at_k(n: usize, c: usize, k: usize) -> f64 {
    assert!(
        k <= n && c <= n,
        "pass@k needs k ≤ n and c ≤ n (n={n}, c={c}, k={k})"
    );
    if n - c < k {
        return 1.0;
    }
    1.0 - ((n - c + 1)..=n)
        .map(|i| 1.0 - k as f64 / i as f64)
        .product::<f64>()
}

/// The most frequent parsed answer among `answers` (unparsed ones do not vote); ties go to
/// the answer that appeared first. Returns its index of first appearance.
pub fn majority<'a>(answers: impl IntoIterator<Item = Option<&'a str>>) -> Option<usize> {
    let mut counts: HashMap<&str, (usize, usize)> = HashMap::new();
    for (i, a) in answers.into_iter().enumerate() {
        if let Some(a) = a {
            counts.entry(a).or_insert((0, i)).0 += 1;
        }
    }
    counts
        .into_values()
        .max_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)))
        .map(|(_, first)| first)
}

/// Per-problem outcome of an evaluation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProblemEval {
    pub id: String,
    pub greedy: String,
    pub greedy_correct: bool,
    /// Correct samples among `n`.
    pub correct: usize,
    pub majority_correct: bool,
}

/// An evaluation's summary and per-problem details (`eval.json`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvalReport {
    pub problems: usize,
    pub samples: usize,
    pub k: usize,
    pub temperature: f32,
    #[serde(rename = "pass@1")]
    pub pass_at_1: f64,
    #[serde(rename = "pass@k")]
    pub pass_at_k: f64,
    #[serde(rename = "maj@k")]
    pub maj_at_k: f64,
    pub mean_sample_accuracy: f64,
    pub details: Vec<ProblemEval>,
}

/// Settings of one evaluation.
#[derive(Clone, Debug)]
pub struct EvalSettings {
    /// How pass@k and maj@k sample (`samples` ≥ `k` per problem).
    pub sampling: SamplingConfig,
    pub k: usize,
    /// Greedy decoding with the run's completion length and stop strings; the sampled pass
    /// shares the length and stop strings.
    pub greedy: SamplingParams,
    pub seed: u64,
}

impl EvalSettings {
    /// The settings of a run's eval stage: `eval` from its config, the run's greedy decoding
    /// (completion length and stop strings), and a seed derived from the run seed (the same
    /// every round, so rounds are compared on the same draws). `autodidact eval` uses this
    /// too, so it reproduces a run.
    pub fn of_run(eval: &EvalConfig, run_seed: u64, greedy: SamplingParams) -> Self {
        Self {
            sampling: eval.sampling.clone(),
            k: eval.k,
            greedy,
            seed: derive_seed(run_seed, 0, "eval", 0),
        }
    }
}

/// The seed a run with `run_seed` draws its problems with (both splits).
pub fn problem_seed(run_seed: u64) -> u64 {
    derive_seed(run_seed, 0, "problems", 0)
}

/// Renders the prompt of every problem that comes as a conversation with the model's chat
/// template (`tok`), and, when `check`, fails unless each prompt leaves `room` tokens for a
/// completion in a context of `ctx` tokens; the error names `key`, the setting to change.
pub fn render_prompts<'a>(
    problems: impl IntoIterator<Item = &'a mut Problem>,
    tok: &dyn Tokenizer,
    ctx: usize,
    room: usize,
    check: Option<&str>,
) -> Result<()> {
    for p in problems {
        if let Some(messages) = &p.messages {
            p.prompt = tok.chat_prompt(messages)?;
        }
        if let Some(key) = check {
            let len = tok.encode_prompt(&p.prompt)?.len();
            if len + room > ctx {
                return Err(crate::Error::config(
                    key,
                    format!(
                        "the context of {ctx} tokens is too short for problem {}: its prompt is {len} tokens and a completion may add {room}",
                        p.id
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// The held-out problems of a run with `run_seed`.
pub fn held_out_problems(task: &dyn Task, count: usize, run_seed: u64) -> Result<Vec<Problem>> {
    task.problems(Split::Eval, count, problem_seed(run_seed))
        .map_err(|e| crate::Error::config("eval.problems", e.to_string()))
}

/// Greedy pass@1 only (cheap: one completion per problem).
pub fn greedy_groups(
    policy: &mut dyn Policy,
    task: &dyn Task,
    problems: &[Problem],
    greedy: &SamplingParams,
    obs: &mut dyn Observer,
) -> Result<Vec<Group>> {
    sample_groups(policy, task, problems, 1, greedy, 0, obs)
}

/// Fraction of groups whose first completion is correct.
pub fn first_accuracy(groups: &[Group]) -> f64 {
    groups.iter().filter(|g| g.verdicts[0].is_correct()).count() as f64 / groups.len().max(1) as f64
}

/// Evaluates `policy` on `problems`: greedy pass@1, and pass@k / maj@k from `samples`
/// completions per problem (maj@k votes among the first k).
pub fn evaluate(
    policy: &mut dyn Policy,
    task: &dyn Task,
    problems: &[Problem],
    s: &EvalSettings,
    obs: &mut dyn Observer,
) -> Result<EvalReport> {
    Ok(evaluate_with_samples(policy, task, problems, s, obs)?.0)
}

/// The graded completions an evaluation drew: one greedy per problem, and
/// `sampling.samples` sampled.
pub struct EvalSamples {
    pub greedy: Vec<Group>,
    pub sampled: Vec<Group>,
}

/// [`evaluate`], also returning the completions it graded (for the drift monitors and a
/// recipe's own measures).
pub fn evaluate_with_samples(
    policy: &mut dyn Policy,
    task: &dyn Task,
    problems: &[Problem],
    s: &EvalSettings,
    obs: &mut dyn Observer,
) -> Result<(EvalReport, EvalSamples)> {
    let greedy = greedy_groups(policy, task, problems, &s.greedy, obs)?;
    let params = s.sampling.params(s.greedy.clone());
    // The sampled pass continues the stage's progress where the greedy pass ended.
    let mut rest = Offset {
        inner: obs,
        done: problems.len() as u64,
        tokens: greedy
            .iter()
            .map(|g| g.completions[0].tokens.len() as u64)
            .sum(),
    };
    let sampled = sample_groups(
        policy,
        task,
        problems,
        s.sampling.samples,
        &params,
        s.seed,
        &mut rest,
    )?;
    let mut details = Vec::with_capacity(problems.len());
    let (mut pass_k, mut maj, mut acc) = (0.0, 0.0, 0.0);
    for (g, smp) in greedy.iter().zip(&sampled) {
        let c = smp.verdicts.iter().filter(|v| v.is_correct()).count();
        pass_k += pass_at_k(s.sampling.samples, c, s.k);
        acc += c as f64 / s.sampling.samples as f64;
        let first_k = &smp.verdicts[..s.k];
        let majority_correct = majority(first_k.iter().map(|v| v.answer.as_deref()))
            .is_some_and(|i| first_k[i].is_correct());
        maj += majority_correct as u8 as f64;
        details.push(ProblemEval {
            id: g.problem.id.clone(),
            greedy: g.completions[0].text.clone(),
            greedy_correct: g.verdicts[0].is_correct(),
            correct: c,
            majority_correct,
        });
    }
    let n = problems.len().max(1) as f64;
    let report = EvalReport {
        problems: problems.len(),
        samples: s.sampling.samples,
        k: s.k,
        temperature: s.sampling.temperature,
        pass_at_1: first_accuracy(&greedy),
        pass_at_k: pass_k / n,
        maj_at_k: maj / n,
        mean_sample_accuracy: acc / n,
        details,
    };
    Ok((report, EvalSamples { greedy, sampled }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binom(n: u64, k: u64) -> f64 {
        if k > n {
            return 0.0;
        }
        (0..k).map(|i| (n - i) as f64 / (i + 1) as f64).product()
    }

    #[test]
    fn pass_at_k_matches_the_closed_form() {
        for n in 1..=20usize {
            for c in 0..=n {
                for k in 1..=n {
                    let closed = 1.0 - binom((n - c) as u64, k as u64) / binom(n as u64, k as u64);
                    let got = pass_at_k(n, c, k);
                    assert!(
                        (got - closed).abs() < 1e-12,
                        "n={n} c={c} k={k}: {got} vs {closed}"
                    );
                }
            }
        }
        assert_eq!(pass_at_k(10, 0, 5), 0.0);
        assert_eq!(pass_at_k(10, 6, 5), 1.0);
        assert!(
            (pass_at_k(10, 3, 1) - 0.3).abs() < 1e-12,
            "pass@1 is the fraction correct"
        );
        // Large n stays finite where the binomials overflow f64.
        let big = pass_at_k(2000, 3, 1000);
        assert!((big - (1.0 - 0.5f64.powi(3))).abs() < 1e-3, "{big}");
    }

    #[test]
    fn majority_counts_parsed_answers_and_breaks_ties_by_first_seen() {
        assert_eq!(majority([Some("1"), Some("2"), Some("2")]), Some(1));
        assert_eq!(
            majority([Some("1"), Some("2"), Some("2"), Some("1")]),
            Some(0)
        );
        assert_eq!(majority([None, None, Some("3")]), Some(2));
        assert_eq!(majority([None, None]), None);
        assert_eq!(majority(Vec::<Option<&str>>::new()), None);
    }
}
