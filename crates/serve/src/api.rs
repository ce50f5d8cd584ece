//! The OpenAI API's request and response bodies, as far as `serve` supports them, and the
//! validation that turns a request into a [`Plan`] the batcher runs.
//!
//! Requests are strict: a field this server does not know is refused by name (a typo would
//! otherwise be ignored silently), and a known field it cannot honour (`echo`, penalties,
//! `logit_bias`, top log-probs) is refused unless it has its neutral value.

use crate::error::ApiError;
use autodidact_core::{ChatMessage, Completion, FinishReason, SamplingParams};
use serde::{Deserialize, Serialize};

/// Most completions one request may ask for (`n` × prompts).
pub const MAX_CHOICES: usize = 128;
/// Most stop strings one request may give.
pub const MAX_STOP: usize = 16;
/// Most alternatives per token (`logprobs` of completions, `top_logprobs` of chat; the
/// OpenAI API allows 5 and 20).
pub const MAX_TOP_LOGPROBS: u32 = 20;
/// `max_tokens` of a `/v1/completions` request that gives none (the OpenAI API's default).
pub const DEFAULT_COMPLETION_TOKENS: usize = 16;

/// A string or a list of them (`prompt`, `stop`).
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

/// The body of `POST /v1/completions`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompletionRequest {
    pub model: String,
    pub prompt: serde_json::Value,
    pub max_tokens: Option<u32>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<u32>,
    /// vLLM's extension: generate `max_tokens` tokens whatever they are (benchmarks).
    #[serde(default)]
    pub ignore_eos: bool,
    pub n: Option<u32>,
    #[serde(default)]
    pub stream: bool,
    pub stream_options: Option<StreamOptions>,
    pub stop: Option<OneOrMany>,
    pub seed: Option<i64>,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    pub logit_bias: Option<serde_json::Map<String, serde_json::Value>>,
    pub user: Option<String>,
    /// Log-probs of the sampled tokens, with this many alternatives per token.
    pub logprobs: Option<u32>,
    /// vLLM's extension: tokens in log-probs as `token_id:N` (what a trainer needs).
    #[serde(default)]
    pub return_tokens_as_token_ids: bool,
    #[serde(default)]
    pub echo: bool,
    pub best_of: Option<u32>,
    pub suffix: Option<String>,
}

/// One message of a chat request; `content` is a string or a list of text parts.
#[derive(Clone, Debug, Deserialize)]
pub struct RequestMessage {
    pub role: String,
    pub content: Option<serde_json::Value>,
    /// A participant's name: accepted and ignored.
    #[allow(dead_code)]
    pub name: Option<String>,
}

/// The body of `POST /v1/chat/completions`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChatRequest {
    pub model: String,
    pub messages: Vec<RequestMessage>,
    pub max_tokens: Option<u32>,
    pub max_completion_tokens: Option<u32>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<u32>,
    /// vLLM's extension: generate `max_tokens` tokens whatever they are (benchmarks).
    #[serde(default)]
    pub ignore_eos: bool,
    pub n: Option<u32>,
    #[serde(default)]
    pub stream: bool,
    pub stream_options: Option<StreamOptions>,
    pub stop: Option<OneOrMany>,
    pub seed: Option<i64>,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    pub logit_bias: Option<serde_json::Map<String, serde_json::Value>>,
    pub user: Option<String>,
    /// Log-probs of the sampled tokens.
    #[serde(default)]
    pub logprobs: bool,
    /// Alternatives per token, with `logprobs`.
    pub top_logprobs: Option<u32>,
    /// vLLM's extension: tokens in log-probs as `token_id:N` (what a trainer needs).
    #[serde(default)]
    pub return_tokens_as_token_ids: bool,
    pub response_format: Option<serde_json::Value>,
}

/// Which endpoint a plan answers, which shapes its response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    Completions,
    Chat,
}

/// What the prompts are before the model's tokenizer renders them.
#[derive(Clone, Debug)]
pub enum Prompts {
    /// Raw prompts, used as written.
    Text(Vec<String>),
    /// One conversation, rendered by the model's chat template.
    Chat(Vec<ChatMessage>),
}

/// A validated request: what to sample and how to answer.
#[derive(Clone, Debug)]
pub struct Plan {
    pub endpoint: Endpoint,
    pub prompts: Prompts,
    /// Completions per prompt.
    pub n: usize,
    /// `max_tokens`; `None` fills the context (chat's default).
    pub max_tokens: Option<usize>,
    /// Sampling settings; `max_new_tokens` is set once the prompt is tokenized.
    pub params: SamplingParams,
    /// Seed of choice 0; choice i uses `seed + i`. `None`: drawn by the server.
    pub seed: Option<u64>,
    pub stream: bool,
    pub include_usage: bool,
    pub logprobs: bool,
    /// Tokens in log-probs as `token_id:N` (vLLM's `return_tokens_as_token_ids`).
    pub token_ids: bool,
}

impl Plan {
    /// Completions the request asks for: `n` per prompt.
    pub fn choices(&self) -> usize {
        self.n
            * match &self.prompts {
                Prompts::Text(p) => p.len(),
                Prompts::Chat(_) => 1,
            }
    }
}

fn invalid(param: &str, message: impl Into<String>) -> ApiError {
    ApiError::invalid(Some(param), message)
}

/// Checks the settings both endpoints share.
#[allow(clippy::too_many_arguments)]
fn common(
    temperature: Option<f32>,
    top_p: Option<f32>,
    top_k: Option<u32>,
    n: Option<u32>,
    stop: Option<OneOrMany>,
    seed: Option<i64>,
    penalties: [(&str, Option<f32>); 2],
    logit_bias: &Option<serde_json::Map<String, serde_json::Value>>,
) -> Result<(SamplingParams, usize, Option<u64>), ApiError> {
    let temperature = temperature.unwrap_or(1.0);
    if !(temperature.is_finite() && (0.0..=2.0).contains(&temperature)) {
        return Err(invalid(
            "temperature",
            format!("{temperature} is not between 0 and 2"),
        ));
    }
    let top_p = top_p.unwrap_or(1.0);
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(invalid(
            "top_p",
            format!("{top_p} is not in (0, 1] (1 keeps every token)"),
        ));
    }
    let n = n.unwrap_or(1) as usize;
    if !(1..=MAX_CHOICES).contains(&n) {
        return Err(invalid(
            "n",
            format!("{n} is not between 1 and {MAX_CHOICES}"),
        ));
    }
    let stop = stop.map(OneOrMany::into_vec).unwrap_or_default();
    if stop.len() > MAX_STOP {
        return Err(invalid(
            "stop",
            format!("{} stop strings; give at most {MAX_STOP}", stop.len()),
        ));
    }
    if stop.iter().any(String::is_empty) {
        return Err(invalid("stop", "a stop string is empty"));
    }
    for (name, value) in penalties {
        if value.is_some_and(|v| v != 0.0) {
            return Err(invalid(
                name,
                "is not supported by this server; leave it out or set it to 0",
            ));
        }
    }
    if logit_bias.as_ref().is_some_and(|b| !b.is_empty()) {
        return Err(invalid(
            "logit_bias",
            "is not supported by this server; leave it out",
        ));
    }
    // Any 64-bit seed: a negative one is read as the same bits unsigned.
    let seed = seed.map(|s| s as u64);
    let params = SamplingParams {
        temperature,
        top_k: top_k.unwrap_or(0) as usize,
        top_p,
        max_new_tokens: 0,
        ignore_stop: false,
        stop,
        top_logprobs: 0,
    };
    Ok((params, n, seed))
}

fn max_tokens(value: Option<u32>, param: &str) -> Result<Option<usize>, ApiError> {
    match value {
        Some(0) => Err(invalid(param, "must be at least 1")),
        v => Ok(v.map(|v| v as usize)),
    }
}

impl CompletionRequest {
    pub fn plan(self) -> Result<Plan, ApiError> {
        let prompts: Vec<String> =
            match self.prompt {
                serde_json::Value::String(s) => vec![s],
                serde_json::Value::Array(items) if items.iter().all(|i| i.is_string()) => items
                    .into_iter()
                    .map(|i| i.as_str().unwrap_or_default().to_string())
                    .collect(),
                _ => return Err(invalid(
                    "prompt",
                    "must be a string or a list of strings (token-id prompts are not supported)",
                )),
            };
        if prompts.is_empty() {
            return Err(invalid("prompt", "is an empty list"));
        }
        if self.echo {
            return Err(invalid("echo", "is not supported by this server"));
        }
        if self.suffix.as_deref().is_some_and(|s| !s.is_empty()) {
            return Err(invalid("suffix", "is not supported by this server"));
        }
        if let Some(l) = self.logprobs.filter(|&l| l > MAX_TOP_LOGPROBS) {
            return Err(invalid(
                "logprobs",
                format!("{l} alternatives per token; ask for at most {MAX_TOP_LOGPROBS}"),
            ));
        }
        let (params, n, seed) = common(
            self.temperature,
            self.top_p,
            self.top_k,
            self.n,
            self.stop,
            self.seed,
            [
                ("presence_penalty", self.presence_penalty),
                ("frequency_penalty", self.frequency_penalty),
            ],
            &self.logit_bias,
        )?;
        let params = SamplingParams {
            ignore_stop: self.ignore_eos,
            top_logprobs: self.logprobs.unwrap_or(0) as usize,
            ..params
        };
        if self.best_of.is_some_and(|b| b as usize != n) {
            return Err(invalid("best_of", "is not supported unless it equals n"));
        }
        if prompts.len() * n > MAX_CHOICES {
            return Err(invalid(
                "n",
                format!(
                    "{} prompts × n = {n} is {} completions; ask for at most {MAX_CHOICES}",
                    prompts.len(),
                    prompts.len() * n
                ),
            ));
        }
        check_stream_logprobs(self.stream, self.logprobs.is_some())?;
        Ok(Plan {
            endpoint: Endpoint::Completions,
            prompts: Prompts::Text(prompts),
            n,
            max_tokens: Some(
                max_tokens(self.max_tokens, "max_tokens")?.unwrap_or(DEFAULT_COMPLETION_TOKENS),
            ),
            params,
            seed,
            stream: self.stream,
            include_usage: self.stream_options.is_some_and(|o| o.include_usage),
            logprobs: self.logprobs.is_some(),
            token_ids: self.return_tokens_as_token_ids,
        })
    }
}

fn check_stream_logprobs(stream: bool, logprobs: bool) -> Result<(), ApiError> {
    if stream && logprobs {
        return Err(invalid(
            "logprobs",
            "is not supported with stream; ask without stream for log-probs",
        ));
    }
    Ok(())
}

/// The text of a message's `content`: a string, or a list of `{"type": "text", "text": …}`
/// parts joined.
fn message_text(i: usize, content: Option<serde_json::Value>) -> Result<String, ApiError> {
    let param = format!("messages[{i}].content");
    match content {
        None | Some(serde_json::Value::Null) => Ok(String::new()),
        Some(serde_json::Value::String(s)) => Ok(s),
        Some(serde_json::Value::Array(parts)) => {
            let mut text = String::new();
            for part in parts {
                match (
                    part.get("type").and_then(|t| t.as_str()),
                    part.get("text").and_then(|t| t.as_str()),
                ) {
                    (Some("text"), Some(t)) => text.push_str(t),
                    _ => {
                        return Err(invalid(
                            &param,
                            "only text parts ({\"type\": \"text\", \"text\": …}) are supported",
                        ))
                    }
                }
            }
            Ok(text)
        }
        Some(_) => Err(invalid(&param, "must be a string or a list of text parts")),
    }
}

impl ChatRequest {
    pub fn plan(self) -> Result<Plan, ApiError> {
        if self.messages.is_empty() {
            return Err(invalid("messages", "is empty"));
        }
        let mut messages = Vec::with_capacity(self.messages.len());
        for (i, m) in self.messages.into_iter().enumerate() {
            if !matches!(
                m.role.as_str(),
                "system" | "developer" | "user" | "assistant"
            ) {
                return Err(invalid(
                    &format!("messages[{i}].role"),
                    format!(
                        "{:?} is not supported; use system, developer, user or assistant",
                        m.role
                    ),
                ));
            }
            let role = if m.role == "developer" {
                "system".to_string()
            } else {
                m.role
            };
            messages.push(ChatMessage {
                role,
                content: message_text(i, m.content)?,
            });
        }
        match self.top_logprobs {
            Some(t) if t > MAX_TOP_LOGPROBS => {
                return Err(invalid(
                    "top_logprobs",
                    format!("{t} alternatives per token; ask for at most {MAX_TOP_LOGPROBS}"),
                ))
            }
            Some(t) if t > 0 && !self.logprobs => {
                return Err(invalid("top_logprobs", "needs logprobs: true"))
            }
            _ => {}
        }
        if let Some(f) = &self.response_format {
            if f.get("type").and_then(|t| t.as_str()) != Some("text") {
                return Err(invalid(
                    "response_format",
                    "only {\"type\": \"text\"} is supported",
                ));
            }
        }
        let (params, n, seed) = common(
            self.temperature,
            self.top_p,
            self.top_k,
            self.n,
            self.stop,
            self.seed,
            [
                ("presence_penalty", self.presence_penalty),
                ("frequency_penalty", self.frequency_penalty),
            ],
            &self.logit_bias,
        )?;
        let params = SamplingParams {
            ignore_stop: self.ignore_eos,
            top_logprobs: self.top_logprobs.unwrap_or(0) as usize,
            ..params
        };
        let max = match (self.max_completion_tokens, self.max_tokens) {
            (Some(m), _) => max_tokens(Some(m), "max_completion_tokens")?,
            (None, m) => max_tokens(m, "max_tokens")?,
        };
        check_stream_logprobs(self.stream, self.logprobs)?;
        Ok(Plan {
            endpoint: Endpoint::Chat,
            prompts: Prompts::Chat(messages),
            n,
            max_tokens: max,
            params,
            seed,
            stream: self.stream,
            include_usage: self.stream_options.is_some_and(|o| o.include_usage),
            logprobs: self.logprobs,
            token_ids: self.return_tokens_as_token_ids,
        })
    }
}

/// `finish_reason` as the API names it.
pub fn finish_reason(f: FinishReason) -> &'static str {
    match f {
        FinishReason::Stop => "stop",
        FinishReason::Length | FinishReason::ContextFull => "length",
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub total_tokens: usize,
}

/// What the batcher sampled for one request: its choices in order (prompt-major) with the
/// text of each token, and the prompts' token counts.
#[derive(Clone, Debug)]
pub struct Sampled {
    pub choices: Vec<Completion>,
    /// Per choice, the text of each of its tokens (for log-probs), when asked for.
    pub token_texts: Vec<Vec<String>>,
    /// Per choice and token, the alternatives' texts and log-probs, when asked for.
    pub top_texts: Vec<Vec<Vec<(String, f32)>>>,
    pub prompt_tokens: usize,
}

impl Sampled {
    pub fn usage(&self) -> Usage {
        let completion_tokens = self.choices.iter().map(|c| c.tokens.len()).sum();
        Usage {
            prompt_tokens: self.prompt_tokens,
            completion_tokens,
            total_tokens: self.prompt_tokens + completion_tokens,
        }
    }
}

/// What every answer to one request repeats: its id, time and the model's name.
pub struct Head<'a> {
    pub id: &'a str,
    pub created: u64,
    pub model: &'a str,
}

impl Head<'_> {
    fn object(&self, plan: &Plan, chunk: bool) -> &'static str {
        match (plan.endpoint, chunk) {
            (Endpoint::Completions, _) => "text_completion",
            (Endpoint::Chat, false) => "chat.completion",
            (Endpoint::Chat, true) => "chat.completion.chunk",
        }
    }
}

/// The JSON answer of a non-streaming request.
pub fn response(plan: &Plan, head: &Head, s: &Sampled) -> serde_json::Value {
    use serde_json::json;
    let choices: Vec<serde_json::Value> = s
        .choices
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let texts = s.token_texts.get(i);
            match plan.endpoint {
                Endpoint::Completions => {
                    let logprobs = match (plan.logprobs, texts) {
                        (true, Some(t)) => {
                            let mut offset = 0;
                            let offsets: Vec<usize> = t
                                .iter()
                                .map(|x| {
                                    let o = offset;
                                    offset += x.len();
                                    o
                                })
                                .collect();
                            let top = match s.top_texts.get(i) {
                                Some(top) if plan.params.top_logprobs > 0 => json!(top
                                    .iter()
                                    .map(|alts| alts
                                        .iter()
                                        .map(|(t, lp)| (t.clone(), json!(lp)))
                                        .collect::<serde_json::Map<_, _>>())
                                    .collect::<Vec<_>>()),
                                _ => serde_json::Value::Null,
                            };
                            json!({
                                "tokens": t,
                                "token_logprobs": c.logprobs,
                                "top_logprobs": top,
                                "text_offset": offsets,
                            })
                        }
                        _ => serde_json::Value::Null,
                    };
                    json!({
                        "index": i,
                        "text": c.text,
                        "logprobs": logprobs,
                        "finish_reason": finish_reason(c.finish),
                    })
                }
                Endpoint::Chat => {
                    let logprobs = match (plan.logprobs, texts) {
                        (true, Some(t)) => {
                            let no_top = Vec::new();
                            let top = s.top_texts.get(i).unwrap_or(&no_top);
                            json!({
                                "content": t.iter().zip(&c.logprobs).enumerate().map(|(k, (tok, lp))| json!({
                                    "token": tok,
                                    "logprob": lp,
                                    "bytes": tok.as_bytes(),
                                    "top_logprobs": top.get(k).map_or(Vec::new(), |alts| alts.iter().map(|(t, l)| json!({
                                        "token": t, "logprob": l, "bytes": t.as_bytes(),
                                    })).collect::<Vec<_>>()),
                                })).collect::<Vec<_>>(),
                            })
                        }
                        _ => serde_json::Value::Null,
                    };
                    json!({
                        "index": i,
                        "message": {"role": "assistant", "content": c.text},
                        "logprobs": logprobs,
                        "finish_reason": finish_reason(c.finish),
                    })
                }
            }
        })
        .collect();
    json!({
        "id": head.id,
        "object": head.object(plan, false),
        "created": head.created,
        "model": head.model,
        "choices": choices,
        "usage": s.usage(),
    })
}

/// One streamed chunk: `text` for choice `index` (`first`: its first chunk, which names the
/// role in chat), with its finish reason when it is the last.
pub fn chunk(
    plan: &Plan,
    head: &Head,
    index: usize,
    text: &str,
    first: bool,
    finish: Option<FinishReason>,
) -> serde_json::Value {
    use serde_json::json;
    let finish = finish.map(finish_reason);
    let choice = match plan.endpoint {
        Endpoint::Completions => json!({
            "index": index, "text": text, "logprobs": null, "finish_reason": finish,
        }),
        Endpoint::Chat => {
            let delta = if first {
                json!({"role": "assistant", "content": text})
            } else if finish.is_some() && text.is_empty() {
                json!({})
            } else {
                json!({"content": text})
            };
            json!({"index": index, "delta": delta, "logprobs": null, "finish_reason": finish})
        }
    };
    json!({
        "id": head.id,
        "object": head.object(plan, true),
        "created": head.created,
        "model": head.model,
        "choices": [choice],
    })
}

/// The last chunk of a stream that asked for usage: no choices, the request's usage.
pub fn usage_chunk(plan: &Plan, head: &Head, usage: &Usage) -> serde_json::Value {
    serde_json::json!({
        "id": head.id,
        "object": head.object(plan, true),
        "created": head.created,
        "model": head.model,
        "choices": [],
        "usage": usage,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn completion(v: serde_json::Value) -> Result<Plan, ApiError> {
        serde_json::from_value::<CompletionRequest>(v)
            .unwrap()
            .plan()
    }

    fn chat(v: serde_json::Value) -> Result<Plan, ApiError> {
        serde_json::from_value::<ChatRequest>(v).unwrap().plan()
    }

    #[test]
    fn completion_requests_become_plans() {
        let p = completion(
            json!({"model": "m", "prompt": ["a", "b"], "n": 3, "stop": "\n",
            "seed": -1, "temperature": 0, "logprobs": 0}),
        )
        .unwrap();
        assert!(matches!(&p.prompts, Prompts::Text(t) if t == &["a", "b"]));
        assert_eq!((p.n, p.max_tokens, p.seed), (3, Some(16), Some(u64::MAX)));
        assert_eq!(p.params.stop, ["\n"]);
        assert_eq!(p.params.temperature, 0.0);
        assert!(p.logprobs && !p.stream);
    }

    #[test]
    fn what_cannot_be_honoured_is_refused_by_name() {
        let cases = [
            (json!({"model": "m", "prompt": "x", "echo": true}), "echo"),
            (
                json!({"model": "m", "prompt": "x", "logprobs": 21}),
                "logprobs",
            ),
            (
                json!({"model": "m", "prompt": "x", "presence_penalty": 0.5}),
                "presence_penalty",
            ),
            (
                json!({"model": "m", "prompt": "x", "temperature": 3}),
                "temperature",
            ),
            (json!({"model": "m", "prompt": "x", "top_p": 0}), "top_p"),
            (json!({"model": "m", "prompt": "x", "n": 0}), "n"),
            (json!({"model": "m", "prompt": ["x", "y"], "n": 100}), "n"),
            (
                json!({"model": "m", "prompt": "x", "stop": ["", "a"]}),
                "stop",
            ),
            (json!({"model": "m", "prompt": [1, 2, 3]}), "prompt"),
            (
                json!({"model": "m", "prompt": "x", "max_tokens": 0}),
                "max_tokens",
            ),
            (
                json!({"model": "m", "prompt": "x", "stream": true, "logprobs": 0}),
                "logprobs",
            ),
            (
                json!({"model": "m", "prompt": "x", "logit_bias": {"5": 1}}),
                "logit_bias",
            ),
        ];
        for (body, param) in cases {
            let e = completion(body.clone()).unwrap_err();
            assert_eq!(e.param.as_deref(), Some(param), "{body}: {e:?}");
            assert_eq!(e.status, axum::http::StatusCode::BAD_REQUEST);
            assert!(e.message.starts_with(param), "{}", e.message);
        }
        let e = chat(json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "top_logprobs": 3, "logprobs": false}))
            .unwrap_err();
        assert_eq!(e.param.as_deref(), Some("top_logprobs"));
        let e = chat(json!({"model": "m", "messages": [{"role": "tool", "content": "x"}]}))
            .unwrap_err();
        assert_eq!(e.param.as_deref(), Some("messages[0].role"));
        let e = chat(json!({"model": "m", "messages": []})).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("messages"));
    }

    #[test]
    fn chat_messages_take_text_parts_and_developer_is_system() {
        let p = chat(json!({"model": "m", "max_completion_tokens": 5, "messages": [
            {"role": "developer", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "2+2"}, {"type": "text", "text": "?"}]},
        ]}))
        .unwrap();
        let Prompts::Chat(m) = &p.prompts else {
            panic!()
        };
        assert_eq!(
            (m[0].role.as_str(), m[1].content.as_str()),
            ("system", "2+2?")
        );
        assert_eq!(p.max_tokens, Some(5));
        let e = chat(json!({"model": "m", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]}))
            .unwrap_err();
        assert_eq!(e.param.as_deref(), Some("messages[0].content"));
    }

    #[test]
    fn responses_have_the_openai_shape() {
        let plan = completion(json!({"model": "m", "prompt": "x", "logprobs": 0})).unwrap();
        let s = Sampled {
            choices: vec![Completion {
                text: "ab c".into(),
                tokens: vec![1, 2, 3],
                logprobs: vec![-0.5, -1.0, -0.25],
                finish: FinishReason::Stop,
                top_logprobs: Vec::new(),
            }],
            token_texts: vec![vec!["ab".into(), " c".into(), "".into()]],
            top_texts: Vec::new(),
            prompt_tokens: 4,
        };
        let head = Head {
            id: "cmpl-1",
            created: 7,
            model: "m",
        };
        let r = response(&plan, &head, &s);
        assert_eq!(r["object"], "text_completion");
        assert_eq!(r["choices"][0]["finish_reason"], "stop");
        assert_eq!(r["choices"][0]["logprobs"]["text_offset"], json!([0, 2, 4]));
        assert_eq!(
            r["usage"],
            json!({"prompt_tokens": 4, "completion_tokens": 3, "total_tokens": 7})
        );
        let plan = chat(
            json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "stream": true}),
        )
        .unwrap();
        let first = chunk(&plan, &head, 0, "ab", true, None);
        assert_eq!(first["object"], "chat.completion.chunk");
        assert_eq!(
            first["choices"][0]["delta"],
            json!({"role": "assistant", "content": "ab"})
        );
        let last = chunk(&plan, &head, 0, "", false, Some(FinishReason::Length));
        assert_eq!(last["choices"][0]["delta"], json!({}));
        assert_eq!(last["choices"][0]["finish_reason"], "length");
    }
}
