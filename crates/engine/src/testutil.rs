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
            meta: None,
            messages: None,
        },
        completions: items
            .iter()
            .map(|(t, _, _)| Completion {
                text: t.to_string(),
                tokens: vec![],
                logprobs: vec![],
                finish: FinishReason::Stop,
                top_logprobs: Vec::new(),
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

/// A backend that plans models without building them: what the configuration tests need
/// (the native backend's own checks are tested in `autodidact-nn`).
pub struct MockBackend;

/// The model [`MockBackend`] plans: a context of `model.context_length` (default 64) and a
/// few bytes of state.
pub struct MockSpec {
    context_length: usize,
    tokenizer: autodidact_core::CharTokenizer,
}

impl autodidact_core::Backend for MockBackend {
    fn kind(&self) -> autodidact_core::BackendKind {
        autodidact_core::BackendKind::Native
    }
    fn plan(
        &self,
        config: &autodidact_core::ModelConfig,
        alphabet: &str,
    ) -> autodidact_core::Result<Box<dyn autodidact_core::ModelSpec>> {
        Ok(Box::new(MockSpec {
            context_length: config.context_length.unwrap_or(64),
            tokenizer: autodidact_core::CharTokenizer::new(alphabet)?,
        }))
    }
    fn load(
        &self,
        dir: &std::path::Path,
    ) -> autodidact_core::Result<Box<dyn autodidact_core::TrainablePolicy>> {
        Err(no_weights(dir))
    }
}

/// [`MockBackend`] as the backend factory.
pub fn mock_backends() -> autodidact_core::Backends {
    autodidact_core::Backends::new().with(MockBackend)
}

fn no_weights(dir: &std::path::Path) -> autodidact_core::Error {
    autodidact_core::Error::invalid(
        format!("mock backend ({})", dir.display()),
        "plans models but builds none; use the native backend to run",
    )
}

impl autodidact_core::ModelSpec for MockSpec {
    fn context_length(&self) -> usize {
        self.context_length
    }
    fn tokenizer(&self) -> &dyn autodidact_core::Tokenizer {
        &self.tokenizer
    }
    fn describe(&self) -> serde_json::Value {
        serde_json::json!({"context_length": self.context_length})
    }
    fn num_params(&self) -> u64 {
        0
    }
    fn state_bytes(&self, _threads: usize) -> u64 {
        1 << 20
    }
    fn train_activation_bytes(&self, rows: usize, len: usize) -> u64 {
        (rows * len * 1024) as u64
    }
    fn sample_workspace_bytes(&self) -> u64 {
        1 << 20
    }
    fn init(
        &self,
        _seed: u64,
    ) -> autodidact_core::Result<Box<dyn autodidact_core::TrainablePolicy>> {
        Err(no_weights(std::path::Path::new("new model")))
    }
    fn load(
        &self,
        dir: &std::path::Path,
    ) -> autodidact_core::Result<Box<dyn autodidact_core::TrainablePolicy>> {
        Err(no_weights(dir))
    }
}

/// What a test run directory records about its run.
pub fn run_info() -> crate::store::RunInfo {
    use crate::store::{RunInfo, RunStatus, RUN_FORMAT_VERSION};
    RunInfo {
        format_version: RUN_FORMAT_VERSION,
        autodidact_version: "test".into(),
        seed: 1,
        threads: 1,
        status: RunStatus::Running,
        config_sha256: None,
        problems_sha256: None,
        reward_sha256: None,
        accepted: Default::default(),
    }
}

/// A fresh run directory `name` under `parent` with an empty configuration (its lock
/// released).
pub fn run_dir(parent: &std::path::Path, name: &str) -> crate::store::RunDir {
    crate::store::RunDir::create(&parent.join(name), "", &run_info())
        .unwrap()
        .0
}

/// A tokenizer with a chat template (`<role>content</role>` per turn, then `<assistant>`):
/// one token per word of its vocabulary.
pub struct ChatTok;
impl autodidact_core::Tokenizer for ChatTok {
    fn encode(&self, text: &str) -> autodidact_core::Result<Vec<u32>> {
        Ok(text
            .split_whitespace()
            .flat_map(|w| match w {
                "Yes" => vec![1],
                "No" => vec![2],
                _ => w.bytes().map(|b| 3 + b as u32).collect(),
            })
            .collect())
    }
    fn decode(&self, _: &[u32]) -> autodidact_core::Result<String> {
        unreachable!()
    }
    fn vocab_size(&self) -> usize {
        259
    }
    fn stop_tokens(&self) -> Vec<u32> {
        vec![0]
    }
    fn has_chat_template(&self) -> bool {
        true
    }
    fn chat_prompt(&self, m: &[autodidact_core::ChatMessage]) -> autodidact_core::Result<String> {
        let turns: String = m
            .iter()
            .map(|m| format!("<{}>{}</{}>", m.role, m.content, m.role))
            .collect();
        Ok(format!("{turns}<assistant>"))
    }
}
