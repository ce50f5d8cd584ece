//! Two-attempt episodes: the model answers a problem, is shown its own answer with a request
//! to review it, and answers again (the setting of SCoRe and S²R). The self-correction recipes
//! ([`crate::recipes::correct`]) sample, score and train on them; every round of those runs
//! also measures them on the held-out problems ([`review_held_out`]).
//!
//! The review comes in one of two formats ([`EpisodeFormat`]), chosen by the policy's
//! tokenizer as the judge's is:
//! - a model trained from scratch reads `<prompt><first attempt>↺` and writes its second
//!   attempt; `↺` joins its vocabulary, and the seed stage teaches the format
//!   ([`seed_episode_examples`]): after `↺` comes the problem's solution, whether the first
//!   attempt was the solution or a copy of it with one digit changed;
//! - a model with a chat template reads the conversation so far (the problem, its first
//!   attempt as the assistant's turn) and a user turn with the task's review instruction
//!   ([`autodidact_core::Task::review_instruction`]): a request it can follow before any
//!   training.
//!
//! Each attempt is a sequence of its own: the first is sampled from the problem's prompt and
//! ends with the stop token as any completion does; the second is sampled from the second
//! prompt, which holds the first attempt's text. Training rows follow the same split.

use crate::judge::{gold_and_slips, user_turn, user_turn_tokens, JudgeFormat};
use crate::progress::{Observer, Offset};
use crate::sampling::{add_graded, empty_groups, sample_rows, sample_rows_with, sample_seed, Row};
use crate::Result;
use autodidact_core::{
    ChatMessage, Completion, Example, Group, Policy, Problem, SamplingParams, Task, Tokenizer,
    Verdict,
};
use serde::Serialize;
use std::collections::BTreeMap;

/// The native review marker, added to the vocabulary of self-correction runs.
pub const REVIEW_CHARS: &str = "↺";
/// Tokens the native second prompt adds after the first attempt (the marker).
pub const REVIEW_TOKENS: usize = 1;
/// The native verification marker of `s2r` episodes: the model answers `Y` or `N` after it.
pub const VERIFY_MARK: &str = "¿";
/// The characters `s2r` adds to a native vocabulary: the markers and the verdicts.
pub const VERIFY_CHARS: &str = "¿YN↺";
/// Tokens a verification may take (a native one is a verdict and the stop token; a chat
/// reply is read by its first word).
pub const VERIFY_MAX_TOKENS: usize = 8;
/// Tokens a native second prompt of `s2r` adds after the first attempt: `¿`, `N` and `↺`.
pub const VERIFY_TOKENS: usize = 3;
/// What `s2r` asks a chat model after its first attempt.
pub const VERIFY_INSTRUCTION: &str =
    "Check your solution above. Is its final answer correct? Answer Yes or No.";
/// The round file of the held-out episodes of a self-correction run.
pub const EVAL_EPISODES_FILE: &str = "eval-episodes.jsonl";

/// How the second attempt is asked for, chosen by the policy's tokenizer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EpisodeFormat {
    /// `<prompt><first attempt>↺`.
    Native,
    /// The conversation with the first attempt as the assistant's turn, then the task's
    /// review instruction as the user's.
    Chat,
}

impl EpisodeFormat {
    /// The chat format when the tokenizer has a chat template, else the native one.
    pub fn of(tok: &dyn Tokenizer) -> Self {
        if tok.has_chat_template() {
            Self::Chat
        } else {
            Self::Native
        }
    }

    /// The prompt of the second attempt at `problem` after the first attempt `first`.
    pub fn second_prompt(
        self,
        tok: &dyn Tokenizer,
        task: &dyn Task,
        problem: &Problem,
        first: &str,
    ) -> Result<String> {
        Ok(match self {
            Self::Native => format!("{}{first}{REVIEW_CHARS}", problem.prompt),
            Self::Chat => tok.chat_prompt(&conversation(
                problem,
                &[(first, &task.review_instruction())],
            ))?,
        })
    }

    /// The prompt of `s2r`'s verification of the first attempt `first`: `<prompt><first>¿`,
    /// or the conversation with the first attempt and the request [`VERIFY_INSTRUCTION`].
    pub fn verify_prompt(
        self,
        tok: &dyn Tokenizer,
        problem: &Problem,
        first: &str,
    ) -> Result<String> {
        Ok(match self {
            Self::Native => format!("{}{first}{VERIFY_MARK}", problem.prompt),
            Self::Chat => {
                tok.chat_prompt(&conversation(problem, &[(first, VERIFY_INSTRUCTION)]))?
            }
        })
    }

    /// The verification that says the first attempt is right (`true`) or wrong: the judge's
    /// verdicts (`Y`/`N` natively, `Yes`/`No` in chat).
    pub fn verdict(self, right: bool) -> &'static str {
        self.judge().verdict(right)
    }

    /// What a sampled verification says: the first attempt is right (`Some(true)`), wrong,
    /// or neither (`None`: a native verification other than exactly `Y` or `N`; a chat reply
    /// whose first word is neither yes nor no, in any case).
    pub fn read_verdict(self, text: &str) -> Option<bool> {
        let word = match self {
            Self::Native => text,
            Self::Chat => text
                .split(|c: char| !c.is_alphanumeric())
                .find(|w| !w.is_empty())
                .unwrap_or(""),
        };
        [true, false]
            .into_iter()
            .find(|&right| word.eq_ignore_ascii_case(self.verdict(right)))
    }

    /// The prompt of the second attempt after the first attempt `first` and the verification
    /// `check` that found it wrong: `<prompt><first>¿<check>↺`, or the conversation with the
    /// verification as the assistant's turn and the task's review instruction after it.
    pub fn corrected_prompt(
        self,
        tok: &dyn Tokenizer,
        task: &dyn Task,
        problem: &Problem,
        first: &str,
        check: &str,
    ) -> Result<String> {
        Ok(match self {
            Self::Native => format!(
                "{}{first}{VERIFY_MARK}{check}{REVIEW_CHARS}",
                problem.prompt
            ),
            Self::Chat => tok.chat_prompt(&conversation(
                problem,
                &[
                    (first, VERIFY_INSTRUCTION),
                    (check.trim(), &task.review_instruction()),
                ],
            ))?,
        })
    }

    /// Tokens a second prompt adds to the problem's prompt, with a first attempt of up to
    /// `max_new_tokens`: the marker natively; in chat, the turns' scaffolding and the review
    /// instruction. With `verified` (`s2r`), also the verification: `¿N` natively; in chat,
    /// its request and a reply of up to [`VERIFY_MAX_TOKENS`].
    pub fn added_tokens(
        self,
        tok: &dyn Tokenizer,
        task: &dyn Task,
        max_new_tokens: usize,
        verified: bool,
    ) -> Result<usize> {
        Ok(match (self, verified) {
            (Self::Native, false) => max_new_tokens + REVIEW_TOKENS,
            (Self::Native, true) => max_new_tokens + VERIFY_TOKENS,
            (Self::Chat, false) => max_new_tokens + turn_tokens(tok, &task.review_instruction())?,
            (Self::Chat, true) => {
                max_new_tokens
                    + turn_tokens(tok, VERIFY_INSTRUCTION)?
                    + VERIFY_MAX_TOKENS
                    + turn_tokens(tok, &task.review_instruction())?
            }
        })
    }

    fn judge(self) -> JudgeFormat {
        match self {
            Self::Native => JudgeFormat::Native,
            Self::Chat => JudgeFormat::Chat,
        }
    }
}

/// Tokens the chat template adds to a conversation when an (empty) assistant reply and the
/// user turn `ask` follow it: the reply's scaffolding, the turn and its own.
fn turn_tokens(tok: &dyn Tokenizer, ask: &str) -> Result<usize> {
    let after = tok.encode(&tok.chat_prompt(&[
        user_turn("?"),
        ChatMessage {
            role: "assistant".into(),
            content: String::new(),
        },
        user_turn(ask),
    ])?)?;
    Ok(after.len().saturating_sub(user_turn_tokens(tok, "?")?))
}

/// The task's conversation for `problem` (its raw prompt as the user's turn when it has
/// none), then each (assistant reply, user turn) of `turns`.
fn conversation(problem: &Problem, turns: &[(&str, &str)]) -> Vec<ChatMessage> {
    let mut messages = problem
        .messages
        .clone()
        .unwrap_or_else(|| vec![user_turn(&problem.prompt)]);
    for (reply, ask) in turns {
        messages.push(ChatMessage {
            role: "assistant".into(),
            content: reply.to_string(),
        });
        messages.push(user_turn(ask));
    }
    messages
}

/// Seed-stage episodes: for each labeled problem with a worked solution, the solution after
/// itself and after `negatives` copies of it with one digit changed ([`gold_and_slips`]), so that
/// M0 learns what follows the review: the solution, whatever the first attempt was.
pub fn seed_episode_examples(
    task: &dyn Task,
    tok: &dyn Tokenizer,
    labeled: &[Problem],
    negatives: usize,
    seed: u64,
) -> Result<Vec<Example>> {
    let format = EpisodeFormat::of(tok);
    gold_and_slips(labeled, negatives, seed)
        .map(|(p, gold, first)| {
            Ok(Example::new(
                format.second_prompt(tok, task, p, &first)?,
                gold,
            ))
        })
        .collect()
}

/// Seed-stage `s2r` episodes: for each labeled problem with a worked solution, the
/// verification of the solution and of `negatives` copies with one digit changed
/// ([`gold_and_slips`], each verdict from the task's verifier), and after each copy called
/// wrong, the solution as the second attempt.
pub fn seed_verified_examples(
    task: &dyn Task,
    tok: &dyn Tokenizer,
    labeled: &[Problem],
    negatives: usize,
    seed: u64,
) -> Result<Vec<Example>> {
    let format = EpisodeFormat::of(tok);
    let mut out = Vec::new();
    for (p, gold, first) in gold_and_slips(labeled, negatives, seed) {
        let right = task.verify(p, &first).is_correct();
        out.push(Example::new(
            format.verify_prompt(tok, p, &first)?,
            format.verdict(right).to_string(),
        ));
        if !right {
            let check = format.verdict(false);
            out.push(Example::new(
                format.corrected_prompt(tok, task, p, &first, check)?,
                gold.to_string(),
            ));
        }
    }
    Ok(out)
}

/// The second attempts after every first attempt of `firsts`: `groups[g].completions[j]`
/// follows `firsts[g].completions[j]` and was sampled from `prompts[g][j]`. The second attempt
/// after first attempt j of a problem is seeded by `(seed, problem id, j)`.
pub struct SecondAttempts {
    pub prompts: Vec<Vec<String>>,
    pub groups: Vec<Group>,
}

/// Samples one second attempt after each first attempt of `firsts` and grades it.
pub fn second_attempts(
    policy: &mut dyn Policy,
    task: &dyn Task,
    firsts: &[Group],
    params: &SamplingParams,
    seed: u64,
    obs: &mut dyn Observer,
) -> Result<SecondAttempts> {
    let format = EpisodeFormat::of(policy.tokenizer());
    let problems: Vec<Problem> = firsts.iter().map(|g| g.problem.clone()).collect();
    let mut prompts = Vec::with_capacity(firsts.len());
    let mut rows = Vec::new();
    for (i, g) in firsts.iter().enumerate() {
        let mut own = Vec::with_capacity(g.completions.len());
        for (j, c) in g.completions.iter().enumerate() {
            let prompt = format.second_prompt(policy.tokenizer(), task, &g.problem, &c.text)?;
            rows.push(Row {
                problem: i,
                prompt: prompt.clone(),
                prefix: String::new(),
                seed: sample_seed(seed, &g.problem, j as u64),
                max_new_tokens: params.max_new_tokens,
            });
            own.push(prompt);
        }
        prompts.push(own);
    }
    let per_unit = firsts.first().map_or(1, |g| g.completions.len().max(1)) as u64;
    let graded = sample_rows(policy, task, &problems, &rows, params, per_unit, obs)?;
    let mut groups = empty_groups(&problems);
    add_graded(&mut groups, &rows, graded);
    Ok(SecondAttempts { prompts, groups })
}

/// `s2r`'s episodes after the first attempts `firsts`: each first attempt's verification and,
/// where it says the attempt is wrong, a second attempt. `checks[g][j]` and `seconds[g][j]`
/// follow `firsts[g].completions[j]`.
pub struct Verified {
    pub checks: Vec<Vec<Check>>,
    pub seconds: Vec<Vec<Option<Attempt>>>,
}

/// A sampled verification: its prompt, its completion and what it says of the first attempt
/// ([`EpisodeFormat::read_verdict`]).
#[derive(Clone, Debug)]
pub struct Check {
    pub prompt: String,
    pub completion: Completion,
    pub says_right: Option<bool>,
}

/// A graded attempt sampled from `prompt`.
#[derive(Clone, Debug)]
pub struct Attempt {
    pub prompt: String,
    pub completion: Completion,
    pub verdict: Verdict,
}

impl Verified {
    /// The verdict of episode (g, j)'s final answer: the second attempt's where the
    /// verification asked for one, else the first's.
    pub fn final_verdict<'a>(&'a self, firsts: &'a [Group], g: usize, j: usize) -> &'a Verdict {
        self.seconds[g][j]
            .as_ref()
            .map_or(&firsts[g].verdicts[j], |a| &a.verdict)
    }

    /// SCoRe's measures with the final answer as the second attempt: accuracy@t2 is the
    /// accuracy after verification and correction.
    pub fn deltas(&self, firsts: &[Group]) -> Deltas {
        Deltas::of(firsts.iter().enumerate().flat_map(|(g, a)| {
            a.verdicts
                .iter()
                .enumerate()
                .map(move |(j, v)| (v, self.final_verdict(firsts, g, j)))
        }))
    }

    /// Tokens sampled after the first attempts: the verifications' and the second attempts'.
    pub fn tokens(&self) -> u64 {
        check_tokens(&self.checks)
            + self
                .seconds
                .iter()
                .flatten()
                .flatten()
                .map(|a| a.completion.tokens.len() as u64)
                .sum::<u64>()
    }

    /// How well the verifications judged the first attempts.
    pub fn stats(&self, firsts: &[Group]) -> VerifyStats {
        let (mut n, mut wrong, mut flagged, mut caught, mut false_alarms, mut unread, mut agree) =
            (0usize, 0usize, 0usize, 0usize, 0usize, 0usize, 0usize);
        for (a, checks) in firsts.iter().zip(&self.checks) {
            for (v, c) in a.verdicts.iter().zip(checks) {
                let right = v.is_correct();
                n += 1;
                wrong += !right as usize;
                match c.says_right {
                    None => unread += 1,
                    Some(says) => {
                        agree += (says == right) as usize;
                        flagged += !says as usize;
                        caught += (!says && !right) as usize;
                        false_alarms += (!says && right) as usize;
                    }
                }
            }
        }
        let share = |k: usize, of: usize| k as f64 / of.max(1) as f64;
        VerifyStats {
            accuracy: share(agree, n),
            flagged: share(flagged, n),
            error_recall: share(caught, wrong),
            false_alarm: share(false_alarms, n - wrong),
            unread: share(unread, n),
        }
    }

    /// The episodes as records, in `firsts`' order.
    pub fn records<'a>(&'a self, firsts: &'a [Group]) -> impl Iterator<Item = VerifiedRecord<'a>> {
        firsts.iter().enumerate().flat_map(move |(g, a)| {
            (0..a.completions.len()).map(move |j| {
                let check = &self.checks[g][j];
                let second = self.seconds[g][j].as_ref();
                VerifiedRecord {
                    first: FirstRecord::of(a, j),
                    check: &check.completion.text,
                    says_right: check.says_right,
                    second: second.map(|s| s.completion.text.as_str()),
                    second_grade: second.map(|s| s.verdict.grade),
                    second_answer: second.and_then(|s| s.verdict.answer.as_deref()),
                }
            })
        })
    }
}

/// Tokens sampled in `checks`.
fn check_tokens(checks: &[Vec<Check>]) -> u64 {
    checks
        .iter()
        .flatten()
        .map(|c| c.completion.tokens.len() as u64)
        .sum()
}

/// How well a set of verifications judged their first attempts.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct VerifyStats {
    /// Share of verifications that say what the verifier says (unreadable ones count as wrong).
    pub accuracy: f64,
    /// Share of first attempts the verification calls wrong.
    pub flagged: f64,
    /// Share of the wrong first attempts called wrong.
    pub error_recall: f64,
    /// Share of the right first attempts called wrong.
    pub false_alarm: f64,
    /// Share of verifications that say neither.
    pub unread: f64,
}

impl VerifyStats {
    /// The measures as metrics under `prefix` (`eval/verify_accuracy`, …).
    pub fn metrics(&self, prefix: &str) -> BTreeMap<String, f64> {
        prefixed(
            prefix,
            [
                ("verify_accuracy", self.accuracy),
                ("verify_flagged", self.flagged),
                ("verify_error_recall", self.error_recall),
                ("verify_false_alarm", self.false_alarm),
                ("verify_unread", self.unread),
            ],
        )
    }

    /// One line for the terminal.
    pub fn line(&self) -> String {
        format!(
            "verification accuracy {:.3} (calls {:.0}% wrong: {:.0}% of the wrong, {:.0}% of the right; {:.0}% unreadable)",
            self.accuracy,
            100.0 * self.flagged,
            100.0 * self.error_recall,
            100.0 * self.false_alarm,
            100.0 * self.unread
        )
    }
}

/// One `s2r` episode as a round file records it.
#[derive(Serialize)]
pub struct VerifiedRecord<'a> {
    #[serde(flatten)]
    pub first: FirstRecord<'a>,
    pub check: &'a str,
    pub says_right: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub second: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub second_grade: Option<autodidact_core::Grade>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub second_answer: Option<&'a str>,
}

/// Samples a verification of each first attempt of `firsts` (at most [`VERIFY_MAX_TOKENS`])
/// and, after each that calls its attempt wrong, a second attempt, graded by the task. Check
/// j of a problem is seeded by `(seed, problem id, 2j)`, the second attempt after it by
/// `(…, 2j + 1)`. Progress counts the checks, then the second attempts after them.
pub fn verified_episodes(
    policy: &mut dyn Policy,
    task: &dyn Task,
    firsts: &[Group],
    params: &SamplingParams,
    seed: u64,
    obs: &mut dyn Observer,
) -> Result<Verified> {
    let format = EpisodeFormat::of(policy.tokenizer());
    let problems: Vec<Problem> = firsts.iter().map(|g| g.problem.clone()).collect();
    let mut rows = Vec::new();
    for (i, g) in firsts.iter().enumerate() {
        for (j, c) in g.completions.iter().enumerate() {
            rows.push(Row {
                problem: i,
                prompt: format.verify_prompt(policy.tokenizer(), &g.problem, &c.text)?,
                prefix: String::new(),
                seed: sample_seed(seed, &g.problem, 2 * j as u64),
                max_new_tokens: params.max_new_tokens.min(VERIFY_MAX_TOKENS),
            });
        }
    }
    let read = sample_rows_with(policy, &rows, params, 1, obs, |_, texts| {
        Ok(texts.iter().map(|t| format.read_verdict(t)).collect())
    })?;
    let mut checks: Vec<Vec<Check>> = firsts.iter().map(|_| Vec::new()).collect();
    for (row, (completion, says_right)) in rows.into_iter().zip(read) {
        checks[row.problem].push(Check {
            prompt: row.prompt,
            completion,
            says_right,
        });
    }
    let mut rows = Vec::new();
    let mut at = Vec::new();
    for (i, g) in firsts.iter().enumerate() {
        for (j, check) in checks[i].iter().enumerate() {
            if check.says_right == Some(false) {
                rows.push(Row {
                    problem: i,
                    prompt: format.corrected_prompt(
                        policy.tokenizer(),
                        task,
                        &g.problem,
                        &g.completions[j].text,
                        &check.completion.text,
                    )?,
                    prefix: String::new(),
                    seed: sample_seed(seed, &g.problem, 2 * j as u64 + 1),
                    max_new_tokens: params.max_new_tokens,
                });
                at.push(j);
            }
        }
    }
    let mut rest = Offset {
        inner: &mut *obs,
        done: checks.iter().map(Vec::len).sum::<usize>() as u64,
        tokens: check_tokens(&checks),
    };
    let graded = sample_rows(policy, task, &problems, &rows, params, 1, &mut rest)?;
    let mut seconds: Vec<Vec<Option<Attempt>>> = firsts
        .iter()
        .map(|g| vec![None; g.completions.len()])
        .collect();
    for ((row, j), (completion, verdict)) in rows.into_iter().zip(at).zip(graded) {
        seconds[row.problem][j] = Some(Attempt {
            prompt: row.prompt,
            completion,
            verdict,
        });
    }
    Ok(Verified { checks, seconds })
}

/// What a set of episodes shows (SCoRe's measures): accuracy at each attempt, its change,
/// and the share of episodes that go from incorrect to correct and back. Shares are of all
/// episodes, so `delta = i_to_c − c_to_i`.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Deltas {
    pub episodes: usize,
    /// Share of first attempts that are correct.
    pub t1: f64,
    /// Share of second attempts that are correct.
    pub t2: f64,
    /// Share of episodes whose first attempt is wrong and second right.
    pub i_to_c: f64,
    /// Share of episodes whose first attempt is right and second wrong.
    pub c_to_i: f64,
    /// Share of episodes whose second attempt's answer differs from the first's (an answer
    /// found against none counts as a change; none after none does not).
    pub changed: f64,
}

impl Deltas {
    /// The measures of the episodes `(first verdict, second verdict)`.
    pub fn of<'a>(pairs: impl IntoIterator<Item = (&'a Verdict, &'a Verdict)>) -> Self {
        let (mut n, mut c1, mut c2, mut up, mut down, mut changed) = (0usize, 0, 0, 0, 0, 0);
        for (a, b) in pairs {
            let (x, y) = (a.is_correct(), b.is_correct());
            n += 1;
            c1 += x as usize;
            c2 += y as usize;
            up += (!x && y) as usize;
            down += (x && !y) as usize;
            changed += (a.answer != b.answer) as usize;
        }
        let share = |k: usize| k as f64 / n.max(1) as f64;
        Self {
            episodes: n,
            t1: share(c1),
            t2: share(c2),
            i_to_c: share(up),
            c_to_i: share(down),
            changed: share(changed),
        }
    }

    /// The measures of `firsts` and the second attempts after them.
    pub fn of_groups(firsts: &[Group], seconds: &[Group]) -> Self {
        Self::of(
            firsts
                .iter()
                .zip(seconds)
                .flat_map(|(a, b)| a.verdicts.iter().zip(&b.verdicts)),
        )
    }

    /// Accuracy at the second attempt less at the first: Δ(t1, t2).
    pub fn delta(&self) -> f64 {
        self.t2 - self.t1
    }

    /// The measures as metrics under `prefix` (`eval/`, `correct/`).
    pub fn metrics(&self, prefix: &str) -> BTreeMap<String, f64> {
        prefixed(
            prefix,
            [
                ("accuracy@t1", self.t1),
                ("accuracy@t2", self.t2),
                ("delta", self.delta()),
                ("delta_i_to_c", self.i_to_c),
                ("delta_c_to_i", self.c_to_i),
                ("changed", self.changed),
            ],
        )
    }

    /// One line for the terminal.
    pub fn line(&self) -> String {
        format!(
            "accuracy@t1 {:.3} → @t2 {:.3} (Δ {:+.3}: i→c {:.3}, c→i {:.3}; {:.0}% of answers changed)",
            self.t1,
            self.t2,
            self.delta(),
            self.i_to_c,
            self.c_to_i,
            100.0 * self.changed
        )
    }
}

/// Named measures as metrics under `prefix`.
fn prefixed<const N: usize>(prefix: &str, measures: [(&str, f64); N]) -> BTreeMap<String, f64> {
    measures
        .into_iter()
        .map(|(k, v)| (format!("{prefix}{k}"), v))
        .collect()
}

/// An episode's problem and first attempt, as its round file records them.
#[derive(Serialize)]
pub struct FirstRecord<'a> {
    pub problem_id: &'a str,
    pub prompt: &'a str,
    pub first: &'a str,
    pub first_grade: autodidact_core::Grade,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_answer: Option<&'a str>,
}

impl<'a> FirstRecord<'a> {
    /// First attempt `j` of group `g`.
    fn of(g: &'a Group, j: usize) -> Self {
        let v = &g.verdicts[j];
        Self {
            problem_id: &g.problem.id,
            prompt: &g.problem.prompt,
            first: &g.completions[j].text,
            first_grade: v.grade,
            first_answer: v.answer.as_deref(),
        }
    }
}

/// One episode as a round file records it.
#[derive(Serialize)]
pub struct EpisodeRecord<'a> {
    #[serde(flatten)]
    pub first: FirstRecord<'a>,
    pub second: &'a str,
    pub second_grade: autodidact_core::Grade,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub second_answer: Option<&'a str>,
}

/// The episodes of `firsts` and `seconds`, as records.
pub fn episode_records<'a>(
    firsts: &'a [Group],
    seconds: &'a [Group],
) -> impl Iterator<Item = EpisodeRecord<'a>> {
    firsts.iter().zip(seconds).flat_map(|(a, b)| {
        (0..a.completions.len()).map(move |j| EpisodeRecord {
            first: FirstRecord::of(a, j),
            second: &b.completions[j].text,
            second_grade: b.verdicts[j].grade,
            second_answer: b.verdicts[j].answer.as_deref(),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{group, ChatTok};
    use autodidact_core::{CharTokenizer, Grade};
    use autodidact_tasks::TaskConfig;

    /// Episode formatting for each built-in task: the native second prompt of every problem
    /// after its worked solution encodes in the run's vocabulary (the task's alphabet and
    /// the marker) and, with the second attempt, fits the context the plan asks for.
    #[test]
    fn issue20_native_episodes_of_every_task_encode_and_fit() {
        for cfg in TaskConfig::catalog() {
            let task = cfg.build().unwrap();
            let tok = CharTokenizer::new(&format!("{}{REVIEW_CHARS}", task.alphabet())).unwrap();
            assert_eq!(EpisodeFormat::of(&tok), EpisodeFormat::Native);
            let (max_prompt, max_solution) = task.max_chars();
            let max_new = max_solution + 1;
            for p in task.problems(autodidact_core::Split::Train, 50, 3).unwrap() {
                let gold = p.solution.clone().unwrap();
                let second = EpisodeFormat::Native
                    .second_prompt(&tok, &*task, &p, &gold)
                    .unwrap();
                assert_eq!(second, format!("{}{gold}↺", p.prompt), "{}", task.name());
                let ids = tok.encode(&second).unwrap();
                // <bos>, the second prompt and a second attempt of up to max_new tokens.
                assert!(
                    1 + ids.len() + max_new <= 1 + max_prompt + max_new + REVIEW_TOKENS + max_new,
                    "{}: {} tokens",
                    task.name(),
                    ids.len()
                );
                assert_eq!(ids.last(), tok.encode(REVIEW_CHARS).unwrap().last());
            }
        }
    }

    /// A chat model reads its first attempt as its own turn, then the task's review
    /// instruction; a task file with one extraction rule asks for its answer form.
    #[test]
    fn issue20_chat_episodes_quote_the_first_attempt_and_ask_for_the_answer_form() {
        let tok = ChatTok;
        assert_eq!(EpisodeFormat::of(&tok), EpisodeFormat::Chat);
        let dir = tempfile::tempdir().unwrap();
        let (file, held_out) = (dir.path().join("t.jsonl"), dir.path().join("e.jsonl"));
        let line = |id: &str| {
            format!("{{\"id\": \"{id}\", \"messages\": [{{\"role\": \"user\", \"content\": \"2+2?\"}}], \"answer\": \"4\"}}\n")
        };
        std::fs::write(&file, line("a")).unwrap();
        std::fs::write(&held_out, line("b")).unwrap();
        let task = autodidact_tasks::JsonlConfig {
            eval: Some(held_out),
            extract: vec![autodidact_tasks::extract::ExtractRule::Gsm8k],
            ..autodidact_tasks::JsonlConfig::new(&file)
        }
        .build()
        .unwrap();
        let p = &task.problems(autodidact_core::Split::Train, 1, 0).unwrap()[0];
        let second = EpisodeFormat::Chat
            .second_prompt(&tok, &task, p, "2+2=5\n#### 5")
            .unwrap();
        assert_eq!(
            second,
            format!(
                "<user>2+2?</user><assistant>2+2=5\n#### 5</assistant><user>{} Write the final answer on its own line after `####`.</user><assistant>",
                autodidact_core::REVIEW_INSTRUCTION
            )
        );
        // A built-in task asks in the generic words.
        let addition = autodidact_tasks::AdditionConfig::default().build().unwrap();
        assert_eq!(
            addition.review_instruction(),
            autodidact_core::REVIEW_INSTRUCTION
        );
    }

    /// The seed stage's episodes: the solution follows the review after the solution itself
    /// and after each corrupted copy.
    #[test]
    fn issue20_seed_episodes_end_in_the_solution() {
        let task = autodidact_tasks::AdditionConfig::default().build().unwrap();
        let tok = CharTokenizer::new(&format!("{}{REVIEW_CHARS}", task.alphabet())).unwrap();
        let labeled = task.problems(autodidact_core::Split::Train, 5, 1).unwrap();
        let ex = seed_episode_examples(&task, &tok, &labeled, 2, 9).unwrap();
        assert_eq!(ex.len(), 15);
        for (chunk, p) in ex.chunks(3).zip(&labeled) {
            let gold = p.solution.as_deref().unwrap();
            assert_eq!(chunk[0].prompt, format!("{}{gold}↺", p.prompt));
            for e in chunk {
                assert_eq!(e.completion, gold);
                let first = &e.prompt[p.prompt.len()..e.prompt.len() - "↺".len()];
                let differ = first
                    .chars()
                    .zip(gold.chars())
                    .filter(|(a, b)| a != b)
                    .count();
                assert!(differ <= 1 && first.len() == gold.len());
            }
            assert_ne!(chunk[1].prompt, chunk[0].prompt);
        }
    }

    /// `s2r`'s episode formatting for each built-in task: the verification after the first
    /// attempt and the second attempt after a `N` encode in the run's vocabulary (the task's
    /// alphabet and `s2r`'s characters) and fit the extra tokens the recipe declares.
    #[test]
    fn issue20_verified_episodes_of_every_task_encode_and_fit() {
        for cfg in TaskConfig::catalog() {
            let task = cfg.build().unwrap();
            let tok = CharTokenizer::new(&format!("{}{VERIFY_CHARS}", task.alphabet())).unwrap();
            let format = EpisodeFormat::of(&tok);
            for p in task.problems(autodidact_core::Split::Train, 20, 3).unwrap() {
                let gold = p.solution.clone().unwrap();
                let check = format.verify_prompt(&tok, &p, &gold).unwrap();
                assert_eq!(check, format!("{}{gold}¿", p.prompt), "{}", task.name());
                let second = format
                    .corrected_prompt(&tok, &*task, &p, &gold, format.verdict(false))
                    .unwrap();
                assert_eq!(second, format!("{}{gold}¿N↺", p.prompt));
                let ids = tok.encode(&second).unwrap();
                let prompt = tok.encode(&p.prompt).unwrap().len();
                // The first attempt's tokens, the marker, the verdict and the review marker:
                // the max_new_tokens + VERIFY_TOKENS the recipe declares.
                assert_eq!(ids.len() - prompt, gold.chars().count() + VERIFY_TOKENS);
                assert_eq!(format.read_verdict("N"), Some(false));
            }
        }
    }

    /// The verification's prompts and how a reply is read, in both formats.
    #[test]
    fn issue20_verification_prompts_and_verdicts() {
        let native = EpisodeFormat::Native;
        for (text, says) in [
            ("Y", Some(true)),
            ("N", Some(false)),
            (" N", None),
            ("YN", None),
            ("", None),
            ("5", None),
        ] {
            assert_eq!(native.read_verdict(text), says, "{text:?}");
        }
        let chat = EpisodeFormat::Chat;
        for (text, says) in [
            ("Yes", Some(true)),
            ("yes, it is correct.", Some(true)),
            ("**No**. The sum is 42.", Some(false)),
            ("NO", Some(false)),
            ("Not quite", None),
            ("The answer is correct", None),
            ("", None),
        ] {
            assert_eq!(chat.read_verdict(text), says, "{text:?}");
        }
        let tok = ChatTok;
        let task = autodidact_tasks::AdditionConfig::default().build().unwrap();
        let p = &task.problems(autodidact_core::Split::Train, 1, 0).unwrap()[0];
        let q = &p.prompt;
        assert_eq!(
            chat.verify_prompt(&tok, p, "x=5").unwrap(),
            format!("<user>{q}</user><assistant>x=5</assistant><user>{VERIFY_INSTRUCTION}</user><assistant>")
        );
        assert_eq!(
            chat.corrected_prompt(&tok, &task, p, "x=5", " No.\n").unwrap(),
            format!(
                "<user>{q}</user><assistant>x=5</assistant><user>{VERIFY_INSTRUCTION}</user><assistant>No.</assistant><user>{}</user><assistant>",
                autodidact_core::REVIEW_INSTRUCTION
            )
        );
        assert_eq!((chat.verdict(true), chat.verdict(false)), ("Yes", "No"));
        // The context a second prompt needs beyond the problem's prompt: the first attempt,
        // the scaffolding and the instructions, and in s2r a reply of up to
        // VERIFY_MAX_TOKENS.
        let count = |t: &str| tok.encode(t).unwrap().len();
        let first = "x=5 so the answer is 5";
        let n = count(first);
        let base = count(
            &tok.chat_prompt(&[ChatMessage {
                role: "user".into(),
                content: q.clone(),
            }])
            .unwrap(),
        );
        let reviewed = count(&chat.second_prompt(&tok, &task, p, first).unwrap());
        assert_eq!(
            reviewed - base,
            chat.added_tokens(&tok, &task, n, false).unwrap()
        );
        let no = "No, 2+3 is 5 and not 6";
        let verified = count(&chat.corrected_prompt(&tok, &task, p, first, no).unwrap());
        assert_eq!(
            verified - base,
            chat.added_tokens(&tok, &task, n, true).unwrap() - VERIFY_MAX_TOKENS + count(no)
        );
        assert_eq!(
            native.added_tokens(&tok, &task, 7, true).unwrap(),
            7 + VERIFY_TOKENS
        );
    }

    /// `s2r`'s seed episodes: the solution verified right; each slip verified wrong and
    /// followed by the solution.
    #[test]
    fn issue20_seed_verified_episodes() {
        let task = autodidact_tasks::AdditionConfig::default().build().unwrap();
        let tok = CharTokenizer::new(&format!("{}{VERIFY_CHARS}", task.alphabet())).unwrap();
        let labeled = task.problems(autodidact_core::Split::Train, 4, 1).unwrap();
        let ex = seed_verified_examples(&task, &tok, &labeled, 2, 9).unwrap();
        let (mut n, mut wrong) = (0, 0);
        for p in &labeled {
            let gold = p.solution.as_deref().unwrap();
            assert_eq!(ex[n].prompt, format!("{}{gold}¿", p.prompt));
            assert_eq!(ex[n].completion, "Y");
            n += 1;
            for _ in 0..2 {
                // A slip the verifier still accepts (a digit of the trace, not of the
                // answer) is verified right and not corrected; the others are verified
                // wrong, and the solution follows the verdict.
                let first = &ex[n].prompt[p.prompt.len()..ex[n].prompt.len() - "¿".len()];
                assert_ne!(first, gold);
                if task.verify(p, first).is_correct() {
                    assert_eq!(ex[n].completion, "Y");
                    n += 1;
                    continue;
                }
                assert_eq!(ex[n].completion, "N");
                assert_eq!(ex[n + 1].prompt, format!("{}{first}¿N↺", p.prompt));
                assert_eq!(ex[n + 1].completion, gold);
                n += 2;
                wrong += 1;
            }
        }
        assert!(wrong > 0, "no slip rejected");
        assert_eq!(n, ex.len());
    }

    /// The measures in closed form: Δ = i→c − c→i, and a change is a change of answer.
    #[test]
    fn issue20_deltas_in_closed_form() {
        let firsts = [group(
            "p",
            &[
                ("a", Some("1"), true),
                ("b", Some("2"), false),
                ("c", Some("2"), false),
                ("d", None, false),
                ("e", Some("1"), true),
            ],
        )];
        let seconds = [group(
            "p",
            &[
                ("a", Some("1"), true),  // c → c, same answer
                ("f", Some("1"), true),  // i → c
                ("g", Some("3"), false), // i → i, changed
                ("h", None, false),      // none after none: unchanged
                ("i", Some("2"), false), // c → i
            ],
        )];
        let d = Deltas::of_groups(&firsts, &seconds);
        assert_eq!(d.episodes, 5);
        assert_eq!((d.t1, d.t2), (0.4, 0.4));
        assert_eq!((d.i_to_c, d.c_to_i), (0.2, 0.2));
        assert_eq!(d.changed, 0.6);
        assert!((d.delta() - (d.i_to_c - d.c_to_i)).abs() < 1e-12);
        let m = d.metrics("eval/");
        assert_eq!(m["eval/delta_i_to_c"], 0.2);
        assert_eq!(m.len(), 6);
        let records: Vec<_> = episode_records(&firsts, &seconds).collect();
        assert_eq!(records[1].first.first_grade, Grade::Incorrect);
        assert_eq!(records[1].second_grade, Grade::Correct);
        assert_eq!(records[3].second_answer, None);
    }
}
