//! The domain nouns of docs/design.md: problems, verdicts, completions, groups.

use serde::{Deserialize, Serialize};

/// One problem from a [`crate::Task`] split.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    /// Stable identifier, unique within its task (`"addition:347+285"`).
    pub id: String,
    /// What the policy is given.
    pub prompt: String,
    /// The reference answer, when the task knows it (hidden from self-training stages).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answer: Option<String>,
    /// A reference completion (worked trace and answer) for supervised stages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub solution: Option<String>,
    /// Data a task file carries with the problem, passed to verifiers untouched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meta: Option<serde_json::Value>,
    /// The conversation the prompt was rendered from, when the task gives one: a run renders
    /// it again with its model's chat template ([`crate::Tokenizer::chat_prompt`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub messages: Option<Vec<ChatMessage>>,
}

/// One turn of a conversation (TRL's conversational format).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

/// The built-in chat format, for models without a template of their own: `role: content`
/// per line, ending with `assistant:` (a model trained from scratch learns it from the data).
pub fn plain_chat_prompt(messages: &[ChatMessage]) -> String {
    let mut out = String::new();
    for m in messages {
        out.push_str(&m.role);
        out.push_str(": ");
        out.push_str(&m.content);
        out.push('\n');
    }
    out.push_str("assistant:");
    out
}

/// How a verifier judged a completion.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Grade {
    Correct,
    Incorrect,
    /// No answer could be parsed, or the verifier failed.
    Ungradable,
}

/// A verifier's judgement of one completion.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    pub grade: Grade,
    /// Score in [0, 1] (1 for correct, 0 otherwise for exact-match tasks).
    pub score: f32,
    /// The answer parsed from the completion, normalized (what votes compare).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answer: Option<String>,
    /// Why an `ungradable` verdict could not grade (no answer found, a verifier error).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl Verdict {
    pub fn correct(answer: String) -> Self {
        Self {
            grade: Grade::Correct,
            score: 1.0,
            answer: Some(answer),
            reason: None,
        }
    }
    pub fn incorrect(answer: String) -> Self {
        Self {
            grade: Grade::Incorrect,
            score: 0.0,
            answer: Some(answer),
            reason: None,
        }
    }
    pub fn ungradable() -> Self {
        Self {
            grade: Grade::Ungradable,
            score: 0.0,
            answer: None,
            reason: None,
        }
    }
    /// An `ungradable` verdict that records why.
    pub fn ungradable_because(reason: impl Into<String>) -> Self {
        Self {
            reason: Some(reason.into()),
            ..Self::ungradable()
        }
    }
    pub fn is_correct(&self) -> bool {
        self.grade == Grade::Correct
    }
}

/// Why a generation stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// It produced a stop token or a stop string.
    Stop,
    /// It reached `max_new_tokens`.
    Length,
    /// It filled the model's context window.
    ContextFull,
}

/// One sampled completion.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Completion {
    /// The generated text, without the stop token, and cut before the first stop string
    /// when one ended it.
    pub text: String,
    /// Generated token ids, including a final stop token, or every token up to the one that
    /// completed a stop string (whose text may reach past the cut).
    pub tokens: Vec<u32>,
    /// `log p(token)` under the sampling policy (temperature 1) for each generated token.
    pub logprobs: Vec<f32>,
    pub finish: FinishReason,
    /// With [`SamplingParams::top_logprobs`] = k: for each generated token, the k most
    /// likely tokens at its position and their log-probs, most likely first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub top_logprobs: Vec<Vec<(u32, f32)>>,
}

/// All completions sampled for one problem in one round, with their verdicts and rewards.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Group {
    pub problem: Problem,
    pub completions: Vec<Completion>,
    pub verdicts: Vec<Verdict>,
    pub rewards: Vec<f32>,
}

impl Group {
    /// Indices of the completions that pass `keep`, first occurrence of each text only, in
    /// sampling order.
    pub fn distinct(&self, keep: impl Fn(usize) -> bool) -> Vec<usize> {
        let mut seen = std::collections::HashSet::new();
        (0..self.completions.len())
            .filter(|&i| keep(i) && seen.insert(self.completions[i].text.as_str()))
            .collect()
    }

    /// [`Group::distinct`] of the verified-correct completions.
    pub fn distinct_correct(&self) -> Vec<usize> {
        self.distinct(|i| self.verdicts[i].is_correct())
    }
}

/// How tokens are drawn (backend-independent; each policy maps it onto its sampler).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SamplingParams {
    /// Softmax temperature; 0 is greedy.
    pub temperature: f32,
    /// Keep only the `top_k` most likely tokens; 0 keeps all.
    #[serde(default)]
    pub top_k: usize,
    /// Nucleus sampling mass; 1 keeps all.
    #[serde(default = "one")]
    pub top_p: f32,
    /// Most tokens generated per completion (including the stop token).
    pub max_new_tokens: usize,
    /// Generate `max_new_tokens` tokens whatever they are, stop tokens included (vLLM's
    /// `ignore_eos`): for throughput measurements.
    #[serde(default)]
    pub ignore_stop: bool,
    /// Strings that end a completion where they first appear in its text (OpenAI's `stop`);
    /// the text is cut before the string. Checked after every token, as well as the model's
    /// stop tokens.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stop: Vec<String>,
    /// Also return, for each generated token, this many most likely tokens at its position
    /// with their log-probs (0: none).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub top_logprobs: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

fn one() -> f32 {
    1.0
}

impl SamplingParams {
    pub fn greedy(max_new_tokens: usize) -> Self {
        Self {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            max_new_tokens,
            ignore_stop: false,
            stop: Vec::new(),
            top_logprobs: 0,
        }
    }

    /// These parameters with `stop` as the stop strings.
    pub fn with_stop(self, stop: Vec<String>) -> Self {
        Self { stop, ..self }
    }
}

/// Checks stop strings given as `key`: each must be non-empty (an empty one would end every
/// completion before its first token).
pub fn check_stop_strings(key: &str, stop: &[String]) -> crate::Result<()> {
    match stop.iter().position(String::is_empty) {
        Some(i) => Err(crate::Error::invalid(
            key,
            format!("stop string {i} is empty; give non-empty strings, or none"),
        )),
        None => Ok(()),
    }
}

/// Byte offset in `text` where the earliest occurrence of any of `stop` begins.
pub fn find_stop(text: &str, stop: &[String]) -> Option<usize> {
    stop.iter().filter_map(|s| text.find(s.as_str())).min()
}

/// A prompt and a completion to train on or score.
///
/// By default the completion is tokenized and followed by the stop token (a demonstration
/// should end). With `completion_tokens`, exactly those tokens are scored — a sampled
/// completion as it was generated, cut off or not (policy-gradient training).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Example {
    pub prompt: String,
    pub completion: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_tokens: Option<Vec<u32>>,
}

impl Example {
    /// A demonstration: `completion` followed by the stop token.
    pub fn new(prompt: impl Into<String>, completion: impl Into<String>) -> Self {
        Self {
            prompt: prompt.into(),
            completion: completion.into(),
            completion_tokens: None,
        }
    }
}
