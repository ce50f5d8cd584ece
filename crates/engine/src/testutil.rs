//! Helpers for the engine's unit tests.

use autodidact_core::{Completion, FinishReason, Group, Problem, Verdict};

/// A group of problem `id` (prompt `id=`, gold solution `gold`) from (text, parsed answer,
/// correct) triples; every reward 0.
pub fn group(id: &str, items: &[(&str, Option<&str>, bool)]) -> Group {
    Group {
        problem: Problem {
            id: id.into(),
            prompt: format!("{id}="),
            answer: None,
            solution: Some("gold".into()),
        },
        completions: items
            .iter()
            .map(|(t, _, _)| Completion {
                text: t.to_string(),
                tokens: vec![],
                logprobs: vec![],
                finish: FinishReason::Stop,
            })
            .collect(),
        verdicts: items
            .iter()
            .map(|(_, a, ok)| match (a, ok) {
                (Some(a), true) => Verdict::correct(a.to_string()),
                (Some(a), false) => Verdict::incorrect(a.to_string()),
                (None, _) => Verdict::ungradable(),
            })
            .collect(),
        rewards: vec![0.0; items.len()],
    }
}
