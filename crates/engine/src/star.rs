//! Expert iteration (STaR, ReST-EM): curation of verified-correct samples.
//!
//! How this differs from the papers:
//! - STaR (Zelikman et al., 2022) fine-tunes a pretrained model with few-shot prompting; here
//!   a model trained from scratch is warm-started on a small labeled set (the seed stage),
//!   and every later round sees only unlabeled problems and the verifier.
//! - Completions are deduplicated per problem (ReST-EM keeps duplicates; on tiny tasks
//!   duplicates would over-weight the easiest problems), and optionally capped per problem.
//! - Rationalization gives the answer as a `[answer]` prefix of the prompt (STaR writes it as
//!   a hint inside the few-shot prompt); the seed stage trains on hinted copies of the
//!   labeled set so the model learns the hint format, and a rationalized trace is trained
//!   without the hint, as in the paper.
//! - `restart_from = "seed"` fine-tunes M0 on each round's data (ReST-EM, the original
//!   STaR); `"previous"` continues from the last round's model (STaR's later variant).

use autodidact_core::{Example, Group};
use serde::{Deserialize, Serialize};

/// What a round's curation found.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Counts {
    /// Completions sampled.
    pub sampled: usize,
    /// Of those, verified correct.
    pub correct: usize,
    /// Problems with at least one correct completion.
    pub solved: usize,
    /// Distinct correct completions (by text, per problem).
    pub distinct: usize,
    /// Examples kept for training (distinct, capped, plus rationalized).
    pub kept: usize,
    /// Problems without a correct sample that rationalization solved.
    pub rationalized: usize,
    /// Tokens generated (every completion, rationalization included).
    #[serde(default)]
    pub sampled_tokens: usize,
}

/// The completions of `g` curation keeps: the verified-correct ones, first occurrence of
/// each text, at most `max_per_problem` (0: all), in sampling order.
fn kept(g: &Group, max_per_problem: usize) -> Vec<usize> {
    let mut idx = g.distinct_correct();
    if max_per_problem > 0 {
        idx.truncate(max_per_problem);
    }
    idx
}

/// [`kept`] as one flag per completion of `g`.
pub fn kept_mask(g: &Group, max_per_problem: usize) -> Vec<bool> {
    let mut mask = vec![false; g.completions.len()];
    for i in kept(g, max_per_problem) {
        mask[i] = true;
    }
    mask
}

/// Keeps the distinct verified-correct completions of each group (at most `max_per_problem`
/// per problem, 0 for all), in sampling order. Returns the examples and the counts.
pub fn curate(groups: &[Group], max_per_problem: usize) -> (Vec<Example>, Counts) {
    let mut counts = Counts::default();
    let mut examples = Vec::new();
    for g in groups {
        counts.sampled += g.completions.len();
        counts.sampled_tokens += g.completions.iter().map(|c| c.tokens.len()).sum::<usize>();
        counts.correct += g.verdicts.iter().filter(|v| v.is_correct()).count();
        let distinct = g.distinct_correct().len();
        counts.distinct += distinct;
        counts.solved += (distinct > 0) as usize;
        for i in kept(g, max_per_problem) {
            examples.push(Example::new(
                g.problem.prompt.clone(),
                g.completions[i].text.clone(),
            ));
        }
    }
    counts.kept = examples.len();
    (examples, counts)
}

/// The first correct completion of each hinted group, trained under the problem's plain
/// prompt (the hint is dropped).
pub fn rationalized(groups: &[Group]) -> Vec<Example> {
    groups
        .iter()
        .filter_map(|g| {
            let i = g.verdicts.iter().position(|v| v.is_correct())?;
            Some(Example::new(
                g.problem.prompt.clone(),
                g.completions[i].text.clone(),
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use autodidact_core::{Completion, FinishReason, Problem, Verdict};

    fn group(id: &str, outs: &[(&str, bool)]) -> Group {
        Group {
            problem: Problem {
                id: id.into(),
                prompt: format!("{id}="),
                answer: None,
                solution: None,
            },
            completions: outs
                .iter()
                .map(|(t, _)| Completion {
                    text: t.to_string(),
                    tokens: vec![],
                    logprobs: vec![],
                    finish: FinishReason::Stop,
                })
                .collect(),
            verdicts: outs
                .iter()
                .map(|&(t, ok)| {
                    if ok {
                        Verdict::correct(t.into())
                    } else {
                        Verdict::incorrect(t.into())
                    }
                })
                .collect(),
            rewards: outs.iter().map(|&(_, ok)| ok as u8 as f32).collect(),
        }
    }

    #[test]
    fn keeps_distinct_correct_completions() {
        let groups = [
            group("a", &[("x", true), ("x", true), ("y", true), ("z", false)]),
            group("b", &[("u", false), ("v", false)]),
            group("c", &[("w", true)]),
        ];
        let (kept, c) = curate(&groups, 0);
        assert_eq!(
            c,
            Counts {
                sampled: 7,
                correct: 4,
                solved: 2,
                distinct: 3,
                kept: 3,
                rationalized: 0,
                sampled_tokens: 0,
            }
        );
        assert_eq!(kept[0], Example::new("a=", "x"));
        let (kept, c) = curate(&groups, 1);
        assert_eq!((kept.len(), c.distinct, c.kept), (2, 3, 2));
        let r = rationalized(&groups);
        assert_eq!(r.len(), 2);
    }
}
