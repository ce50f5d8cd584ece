//! The self-judge: the policy scores its own completions.
//!
//! The judge reads `?<prompt><completion>>` and answers `Y` (correct) or `N`; its score is
//! `p(Y) / (p(Y) + p(N))` at the answer position, read from the policy's log-probs (the
//! Self-Rewarding paper reads a 1–5 score from generated text; a two-way verdict read from
//! the logits is its cheapest, lowest-variance form for a model trained from scratch).
//! The model learns the format from judge examples built from the labeled set: in the seed
//! stage, each labeled problem's gold solution (`Y`) and corrupted copies (one digit changed,
//! labeled by the verifier); in every `self-rewarding` round, the current model's own
//! samples of the labeled problems, labeled by the verifier (the role of the seed
//! "evaluation fine-tuning" data of the paper, renewed so the judge sees the errors the
//! policy makes now).

use crate::{Error, Result};
use autodidact_core::{Example, Group, Policy, Problem, Rng, Task};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;

/// Characters of the judge format, added to the vocabulary of `self-rewarding` runs.
pub const JUDGE_CHARS: &str = "?>YN";
/// Tokens a judge sequence reads beyond `<bos> prompt completion`: `?`, `>` and the verdict.
pub const EXTRA_TOKENS: usize = 3;
const YES: char = 'Y';
const NO: char = 'N';

/// The judge's prompt for a (problem prompt, completion).
pub fn judge_prompt(prompt: &str, completion: &str) -> String {
    format!("?{prompt}{completion}>")
}

/// A judge training example: the verdict for `completion` of `prompt`.
pub fn judge_example(prompt: &str, completion: &str, correct: bool) -> Example {
    Example::new(
        judge_prompt(prompt, completion),
        if correct { YES } else { NO }.to_string(),
    )
}

/// The judge's scores p(Y)/(p(Y)+p(N)) of each (prompt, completion), read from the policy's
/// next-token log-probs after the judge prompt.
pub fn judge_scores(
    policy: &mut dyn Policy,
    items: &[(&str, &str)],
    rows: usize,
) -> Result<Vec<f32>> {
    let id = |c: char| -> Result<u32> {
        match policy.tokenizer().encode(&c.to_string())?[..] {
            [id] => Ok(id),
            ref ids => Err(Error::config(
                "recipe",
                format!(
                    "the judge's verdict {c:?} is {} tokens for this policy's tokenizer; it must be one",
                    ids.len()
                ),
            )),
        }
    };
    let candidates = [id(YES)?, id(NO)?];
    let mut scores = Vec::with_capacity(items.len());
    for chunk in items.chunks(rows.clamp(1, 512)) {
        let prompts: Vec<String> = chunk.iter().map(|(p, c)| judge_prompt(p, c)).collect();
        for yn in policy.next_token_logprobs(&prompts, &candidates)? {
            let (ly, ln) = (yn[0] as f64, yn[1] as f64);
            scores.push((1.0 / (1.0 + (ln - ly).exp())) as f32);
        }
    }
    Ok(scores)
}

/// `solution` with one digit changed at random, or `None` when it has no digit.
pub fn corrupt(solution: &str, rng: &mut Rng) -> Option<String> {
    let digits: Vec<usize> = solution
        .char_indices()
        .filter(|(_, c)| c.is_ascii_digit())
        .map(|(i, _)| i)
        .collect();
    if digits.is_empty() {
        return None;
    }
    let at = digits[rng.below(digits.len() as u64) as usize];
    let old = solution.as_bytes()[at] - b'0';
    let new = (old + 1 + rng.below(9) as u8) % 10;
    let mut s = solution.to_string();
    s.replace_range(at..at + 1, &new.to_string());
    Some(s)
}

/// Seed-stage judge examples: each labeled problem's gold solution and `negatives`
/// corrupted copies, every verdict from the task's verifier.
pub fn seed_judge_examples(
    task: &dyn Task,
    labeled: &[Problem],
    negatives: usize,
    seed: u64,
) -> Result<Vec<Example>> {
    let mut out = Vec::new();
    for (i, p) in labeled.iter().enumerate() {
        let gold = p.solution.as_deref().ok_or_else(|| {
            Error::config(
                "seed_stage.labeled",
                format!("problem {} has no reference solution to judge", p.id),
            )
        })?;
        out.push(judge_example(
            &p.prompt,
            gold,
            task.verify(p, gold).is_correct(),
        ));
        let mut rng = Rng::derived(seed, i as u64);
        for _ in 0..negatives {
            if let Some(bad) = corrupt(gold, &mut rng) {
                let ok = task.verify(p, &bad).is_correct();
                out.push(judge_example(&p.prompt, &bad, ok));
            }
        }
    }
    Ok(out)
}

/// A round's judge examples: the current model's distinct samples of the labeled problems
/// (`groups`) and fresh corrupted copies of their gold solutions, every verdict from the
/// verifier, balanced between `Y` and `N` by keeping a seeded random subset of the larger
/// side (the model's samples of problems it was trained on are mostly correct, and a judge
/// trained on them alone learns to answer `Y`).
pub fn round_judge_examples(
    task: &dyn Task,
    groups: &[Group],
    negatives: usize,
    seed: u64,
) -> Result<Vec<Example>> {
    let labeled: Vec<Problem> = groups.iter().map(|g| g.problem.clone()).collect();
    let mut all = seed_judge_examples(task, &labeled, negatives, seed)?;
    for g in groups {
        for (c, v) in g.completions.iter().zip(&g.verdicts) {
            all.push(judge_example(&g.problem.prompt, &c.text, v.is_correct()));
        }
    }
    let mut seen = HashSet::new();
    all.retain(|e| seen.insert((e.prompt.clone(), e.completion.clone())));
    let (mut yes, mut no): (Vec<Example>, Vec<Example>) = all
        .into_iter()
        .partition(|e| e.completion == YES.to_string());
    let mut rng = Rng::derived(seed, u64::MAX);
    let n = yes.len().min(no.len());
    for side in [&mut yes, &mut no] {
        // Partial Fisher–Yates: a uniform subset of n, in a seeded order.
        for i in 0..n {
            let j = i + rng.below((side.len() - i) as u64) as usize;
            side.swap(i, j);
        }
        side.truncate(n);
    }
    yes.extend(no);
    Ok(yes)
}

/// The judge's agreement with the verifier at threshold 0.5 (`judge/*` metrics).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct JudgeStats {
    pub judged: usize,
    /// Judged correct (score ≥ 0.5) and correct.
    pub true_pos: usize,
    pub false_pos: usize,
    pub false_neg: usize,
    pub mean_score: f64,
}

impl JudgeStats {
    pub fn of(scores: &[f32], correct: &[bool]) -> Self {
        let mut s = JudgeStats {
            judged: scores.len(),
            ..Default::default()
        };
        for (&x, &ok) in scores.iter().zip(correct) {
            let yes = x >= 0.5;
            s.true_pos += (yes && ok) as usize;
            s.false_pos += (yes && !ok) as usize;
            s.false_neg += (!yes && ok) as usize;
            s.mean_score += x as f64 / scores.len().max(1) as f64;
        }
        s
    }
    pub fn accuracy(&self) -> f64 {
        let wrong = self.false_pos + self.false_neg;
        1.0 - wrong as f64 / self.judged.max(1) as f64
    }
    /// Of the completions judged correct, the fraction that are (NaN when none is judged so).
    pub fn precision(&self) -> f64 {
        self.true_pos as f64 / (self.true_pos + self.false_pos) as f64
    }
    /// Of the correct completions, the fraction judged correct (NaN when none is correct).
    pub fn recall(&self) -> f64 {
        self.true_pos as f64 / (self.true_pos + self.false_neg) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn corruption_changes_exactly_one_digit() {
        let mut rng = Rng::new(3);
        for _ in 0..50 {
            let c = corrupt("1+2+0=03;#42", &mut rng).unwrap();
            let diff: Vec<(char, char)> = "1+2+0=03;#42"
                .chars()
                .zip(c.chars())
                .filter(|(a, b)| a != b)
                .collect();
            assert_eq!(diff.len(), 1, "{c}");
            assert!(diff[0].1.is_ascii_digit());
        }
        assert_eq!(corrupt("+=;#", &mut rng), None);
    }

    #[test]
    fn round_examples_are_balanced() {
        let task = autodidact_tasks::TaskConfig::Addition(Default::default())
            .build()
            .unwrap();
        let problems = task.problems(autodidact_core::Split::Train, 6, 1).unwrap();
        // Groups whose samples are all the gold solution: many Y, N only from corruptions.
        let groups: Vec<Group> = problems
            .iter()
            .map(|p| {
                let gold = p.solution.clone().unwrap();
                Group {
                    problem: p.clone(),
                    completions: vec![autodidact_core::Completion {
                        text: gold.clone(),
                        tokens: vec![],
                        logprobs: vec![],
                        finish: autodidact_core::FinishReason::Stop,
                    }],
                    verdicts: vec![task.verify(p, &gold)],
                    rewards: vec![1.0],
                }
            })
            .collect();
        let ex = round_judge_examples(&*task, &groups, 3, 7).unwrap();
        let yes = ex.iter().filter(|e| e.completion == "Y").count();
        assert_eq!(2 * yes, ex.len());
        assert!((1..=6).contains(&yes), "{yes}");
        assert!(ex
            .iter()
            .all(|e| e.prompt.starts_with('?') && e.prompt.ends_with('>')));
    }

    #[test]
    fn judge_stats_in_closed_form() {
        // Scores vs truth: TP, FP, FN, TN.
        let s = JudgeStats::of(&[0.9, 0.6, 0.1, 0.2], &[true, false, true, false]);
        assert_eq!((s.true_pos, s.false_pos, s.false_neg), (1, 1, 1));
        assert_eq!(s.accuracy(), 0.5);
        assert_eq!(s.precision(), 0.5);
        assert_eq!(s.recall(), 0.5);
        assert!((s.mean_score - 0.45).abs() < 1e-6);
    }
}
