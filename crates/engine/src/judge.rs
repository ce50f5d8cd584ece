//! The self-judge: the policy scores its own completions.
//!
//! The judge answers a two-way verdict, and its score is `p(yes) / (p(yes) + p(no))` at the
//! answer position, read from the policy's log-probs (the Self-Rewarding paper reads a 1–5
//! score from generated text; a two-way verdict read from the logits is its cheapest,
//! lowest-variance form). The question comes in one of two formats ([`JudgeFormat`]):
//! - a model trained from scratch reads `?<prompt><completion>>` and answers `Y` or `N`, a
//!   format it learns from the judge examples alone;
//! - a model with a chat template (a pretrained instruct model) is asked in its own chat
//!   format, as a user turn quoting the problem and the proposed solution, and answers `Yes`
//!   or `No` as the first token of its reply: a question it can read before any judge
//!   training.
//!
//! The model learns (or sharpens) the verdict from judge examples built from the labeled
//! set: in the seed stage, each labeled problem's gold solution (yes) and corrupted copies
//! (one digit changed, labeled by the verifier); in every `self-rewarding` round, the current
//! model's own samples of the labeled problems, labeled by the verifier (the role of the
//! seed "evaluation fine-tuning" data of the paper, renewed so the judge sees the errors the
//! policy makes now).

use crate::{Error, Result};
use autodidact_core::{ChatMessage, Example, Group, Policy, Problem, Rng, Task, Tokenizer};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;

/// Characters of the native judge format, added to the vocabulary of `self-rewarding` runs.
pub const JUDGE_CHARS: &str = "?>YN";
/// Tokens a native judge sequence reads beyond `<bos> prompt completion`: `?`, `>` and the
/// verdict.
pub const EXTRA_TOKENS: usize = 3;

/// How the judge is asked, chosen by the policy's tokenizer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JudgeFormat {
    /// `?<prompt><completion>>`, answered `Y` or `N`.
    Native,
    /// A user turn in the model's chat template, answered `Yes` or `No`.
    Chat,
}

impl JudgeFormat {
    /// The chat format when the tokenizer has a chat template, else the native one.
    pub fn of(tok: &dyn Tokenizer) -> Self {
        if tok.has_chat_template() {
            Self::Chat
        } else {
            Self::Native
        }
    }

    /// The completion that says "correct" (`true`) or "incorrect".
    pub fn verdict(self, correct: bool) -> &'static str {
        match (self, correct) {
            (Self::Native, true) => "Y",
            (Self::Native, false) => "N",
            (Self::Chat, true) => "Yes",
            (Self::Chat, false) => "No",
        }
    }

    /// The judge's prompt for `completion` of `problem`.
    pub fn prompt(
        self,
        tok: &dyn Tokenizer,
        problem: &Problem,
        completion: &str,
    ) -> Result<String> {
        Ok(match self {
            Self::Native => format!("?{}{completion}>", problem.prompt),
            Self::Chat => {
                // The question as the task's conversation asked it, else the raw prompt.
                let question = problem
                    .messages
                    .as_ref()
                    .and_then(|m| m.iter().rev().find(|m| m.role == "user"))
                    .map_or(problem.prompt.as_str(), |m| m.content.as_str());
                tok.chat_prompt(&[user_turn(&chat_request(question, completion))])?
            }
        })
    }

    /// Tokens a judge sequence adds to `<prompt><completion>`: natively `?`, `>` and the
    /// verdict; in chat, the request's scaffolding around the question and the completion,
    /// and the one-token verdict. (The chat request quotes the task's user turn alone, so a
    /// system prompt in the task's template makes this an over-count, the safe side.)
    pub fn added_tokens(self, tok: &dyn Tokenizer) -> Result<usize> {
        match self {
            Self::Native => Ok(EXTRA_TOKENS),
            Self::Chat => {
                let judged = user_turn_tokens(tok, &chat_request("?", ""))?;
                Ok(judged.saturating_sub(user_turn_tokens(tok, "?")?) + 1)
            }
        }
    }

    /// A judge training example: the verdict for `completion` of `problem`.
    pub fn example(
        self,
        tok: &dyn Tokenizer,
        problem: &Problem,
        completion: &str,
        correct: bool,
    ) -> Result<Example> {
        Ok(Example::new(
            self.prompt(tok, problem, completion)?,
            self.verdict(correct).to_string(),
        ))
    }

    /// The token ids of the two verdicts (yes, no); each must be a single token.
    pub fn verdict_ids(self, tok: &dyn Tokenizer) -> Result<[u32; 2]> {
        let id = |v: &str| -> Result<u32> {
            match tok.encode(v)?[..] {
                [id] => Ok(id),
                ref ids => Err(Error::config(
                    "recipe",
                    format!(
                        "the judge's verdict {v:?} is {} tokens for this policy's tokenizer; it must be one",
                        ids.len()
                    ),
                )),
            }
        };
        Ok([id(self.verdict(true))?, id(self.verdict(false))?])
    }
}

/// What the chat judge asks about `completion` of `question`.
fn chat_request(question: &str, completion: &str) -> String {
    format!(
        "Here is a problem and a proposed solution.\n\nProblem:\n{question}\n\nProposed solution:\n{}\n\nIs the final answer of the proposed solution correct? Answer Yes or No.",
        completion.trim()
    )
}

/// A user turn saying `content`.
pub(crate) fn user_turn(content: &str) -> ChatMessage {
    ChatMessage {
        role: "user".into(),
        content: content.into(),
    }
}

/// Tokens of the chat prompt whose one turn is the user's `content`.
pub(crate) fn user_turn_tokens(tok: &dyn Tokenizer, content: &str) -> Result<usize> {
    Ok(tok.encode(&tok.chat_prompt(&[user_turn(content)])?)?.len())
}

/// The judge's scores p(yes)/(p(yes)+p(no)) of each (problem, completion), read from the
/// policy's next-token log-probs after the judge prompt.
pub fn judge_scores(
    policy: &mut dyn Policy,
    items: &[(&Problem, &str)],
    rows: usize,
) -> Result<Vec<f32>> {
    let format = JudgeFormat::of(policy.tokenizer());
    let candidates = format.verdict_ids(policy.tokenizer())?;
    let mut scores = Vec::with_capacity(items.len());
    for chunk in items.chunks(rows.clamp(1, 512)) {
        let prompts = chunk
            .iter()
            .map(|(p, c)| format.prompt(policy.tokenizer(), p, c))
            .collect::<Result<Vec<String>>>()?;
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
/// corrupted copies, every verdict from the task's verifier. Problems without a reference
/// solution (a task file that gives only answers) add none; the judge then learns from the
/// model's own samples of them, which the verifier labels by their answers
/// ([`round_judge_examples`]).
pub fn seed_judge_examples(
    task: &dyn Task,
    tok: &dyn Tokenizer,
    labeled: &[Problem],
    negatives: usize,
    seed: u64,
) -> Result<Vec<Example>> {
    let format = JudgeFormat::of(tok);
    gold_and_slips(labeled, negatives, seed)
        .map(|(p, _, text)| {
            let ok = task.verify(p, &text).is_correct();
            format.example(tok, p, &text, ok)
        })
        .collect()
}

/// For each labeled problem with a worked solution: (the problem, its solution, the solution
/// itself), then `negatives` × (…, a copy with one digit changed, [`corrupt`]), the copies
/// of problem i seeded by `(seed, i)`. The seed examples of the self-judge and of the
/// self-correction review are built from these.
pub fn gold_and_slips(
    labeled: &[Problem],
    negatives: usize,
    seed: u64,
) -> impl Iterator<Item = (&Problem, &str, String)> {
    labeled.iter().enumerate().flat_map(move |(i, p)| {
        let Some(gold) = p.solution.as_deref() else {
            return Vec::new();
        };
        let mut rng = Rng::derived(seed, i as u64);
        let slips = (0..negatives).filter_map(|_| corrupt(gold, &mut rng));
        std::iter::once(gold.to_string())
            .chain(slips)
            .map(|t| (p, gold, t))
            .collect::<Vec<_>>()
    })
}

/// A round's judge examples: the current model's distinct samples of the labeled problems
/// (`groups`) and fresh corrupted copies of their gold solutions, every verdict from the
/// verifier, balanced between `Y` and `N` by keeping a seeded random subset of the larger
/// side (the model's samples of problems it was trained on are mostly correct, and a judge
/// trained on them alone learns to answer `Y`).
pub fn round_judge_examples(
    task: &dyn Task,
    tok: &dyn Tokenizer,
    groups: &[Group],
    negatives: usize,
    seed: u64,
) -> Result<Vec<Example>> {
    let format = JudgeFormat::of(tok);
    let labeled: Vec<Problem> = groups.iter().map(|g| g.problem.clone()).collect();
    let mut all = seed_judge_examples(task, tok, &labeled, negatives, seed)?;
    for g in groups {
        for (c, v) in g.completions.iter().zip(&g.verdicts) {
            all.push(format.example(tok, &g.problem, &c.text, v.is_correct())?);
        }
    }
    let mut seen = HashSet::new();
    all.retain(|e| seen.insert((e.prompt.clone(), e.completion.clone())));
    let (mut yes, mut no): (Vec<Example>, Vec<Example>) = all
        .into_iter()
        .partition(|e| e.completion == format.verdict(true));
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
    use crate::testutil::ChatTok;

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
                        top_logprobs: Vec::new(),
                    }],
                    verdicts: vec![task.verify(p, &gold)],
                    rewards: vec![1.0],
                }
            })
            .collect();
        let tok = autodidact_core::CharTokenizer::new("0123456789").unwrap();
        let ex = round_judge_examples(&*task, &tok, &groups, 3, 7).unwrap();
        let yes = ex.iter().filter(|e| e.completion == "Y").count();
        assert_eq!(2 * yes, ex.len());
        assert!((1..=6).contains(&yes), "{yes}");
        assert!(ex
            .iter()
            .all(|e| e.prompt.starts_with('?') && e.prompt.ends_with('>')));
    }

    /// Issue 14: a model with a chat template is asked in it, about the task's question (not
    /// the prompt the template rendered from it), and answers `Yes` or `No`.
    #[test]
    fn issue14_chat_models_are_judged_in_their_chat_template() {
        let tok = ChatTok;
        let format = JudgeFormat::of(&tok);
        assert_eq!(format, JudgeFormat::Chat);
        assert_eq!(
            JudgeFormat::of(&autodidact_core::CharTokenizer::new("01").unwrap()),
            JudgeFormat::Native
        );
        let problem = Problem {
            id: "p".into(),
            prompt: "<user>What is 2+2?</user><assistant>".into(),
            answer: Some("4".into()),
            solution: None,
            meta: None,
            messages: Some(vec![autodidact_core::ChatMessage {
                role: "user".into(),
                content: "What is 2+2?".into(),
            }]),
        };
        let ex = format
            .example(&tok, &problem, " 2+2 = 5 \n", false)
            .unwrap();
        assert_eq!(ex.completion, "No");
        assert!(
            ex.prompt.starts_with("<user>Here is a problem"),
            "{}",
            ex.prompt
        );
        assert!(ex
            .prompt
            .contains("Problem:\nWhat is 2+2?\n\nProposed solution:\n2+2 = 5\n\n"));
        assert!(ex.prompt.ends_with("Answer Yes or No.</user><assistant>"));
        assert_eq!(format.verdict_ids(&tok).unwrap(), [1, 2]);
        // The judge sequence fits in the task's prompt, the completion and the added tokens.
        let len = |s: &str| tok.encode(s).unwrap().len();
        let added = format.added_tokens(&tok).unwrap();
        let budget = len(&problem.prompt) + len(" 2+2 = 5 \n") + added;
        let judged = len(&ex.prompt) + len(&ex.completion);
        assert!(judged <= budget, "{judged} > {budget}");
        assert!(judged + 3 > budget, "{judged} is far below {budget}");
        assert_eq!(
            JudgeFormat::Native.added_tokens(&tok).unwrap(),
            EXTRA_TOKENS
        );
        // A tokenizer that splits a verdict is refused, naming it.
        let char_tok = autodidact_core::CharTokenizer::new("YesNo").unwrap();
        let err = JudgeFormat::Chat
            .verdict_ids(&char_tok)
            .unwrap_err()
            .to_string();
        assert!(err.contains("\"Yes\" is 3 tokens"), "{err}");
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
