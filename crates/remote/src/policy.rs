//! The served model as a policy: its plan, its requests, its record in a run directory.

use crate::client::{Client, Stats};
use crate::pool::Pool;
use crate::RemoteError;
use autodidact_core::{
    ChatMessage, Completion, Error, Example, FinishReason, ModelConfig, ModelSpec, ModelTokenizer,
    OpenAiApi, OpenAiConfig, OptimizerSettings, Policy, Result, SamplingParams, TokenScores,
    Tokenizer, TrainablePolicy,
};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The file a served model's "checkpoint" holds: which servers and model it is, beside the
/// tokenizer files.
pub const REMOTE_FILE: &str = "remote.json";
const FORMAT: u32 = 1;

/// A conversation prompt for the chat API: the messages as JSON after this marker, so that
/// they reach the server as messages instead of as text rendered here.
const CHAT_MARK: &str = "\u{1}messages:";

fn invalid(key: &str, message: impl Into<String>) -> Error {
    Error::invalid(format!("model.openai.{key}"), message)
}

/// Checks `[model.openai]` and the `[model]` keys that only a native model reads.
fn validate(config: &ModelConfig) -> Result<OpenAiConfig> {
    let Some(cfg) = config.openai.clone() else {
        return Err(Error::invalid(
            "model.openai",
            "is missing: backend = \"openai\" needs [model.openai] with base_urls, model and tokenizer",
        ));
    };
    for (key, set) in [
        ("checkpoint", config.checkpoint.is_some()),
        ("hidden_size", config.hidden_size.is_some()),
        ("num_layers", config.num_layers.is_some()),
        ("num_heads", config.num_heads.is_some()),
        ("intermediate_size", config.intermediate_size.is_some()),
        ("lora", config.lora.is_some()),
    ] {
        if set {
            return Err(Error::invalid(
                format!("model.{key}"),
                "shapes a native model; a served model (backend = \"openai\") takes none: remove it",
            ));
        }
    }
    if cfg.base_urls.is_empty() {
        return Err(invalid(
            "base_urls",
            "is empty: give the servers' URLs up to /v1, e.g. [\"http://127.0.0.1:8000/v1\"]",
        ));
    }
    for (i, u) in cfg.base_urls.iter().enumerate() {
        if !(u.starts_with("http://") || u.starts_with("https://")) {
            return Err(invalid(
                "base_urls",
                format!("entry {i} ({u:?}) must start with http:// or https://"),
            ));
        }
        if cfg.base_urls[..i].contains(u) {
            return Err(invalid("base_urls", format!("{u:?} is listed twice")));
        }
    }
    if cfg.model.is_empty() {
        return Err(invalid(
            "model",
            "is empty: give the model's name on the servers (GET /v1/models lists it)",
        ));
    }
    if cfg.tokenizer.is_none() {
        return Err(invalid(
            "tokenizer",
            "is missing: give a directory with the served model's tokenizer files (its checkpoint directory will do)",
        ));
    }
    for (key, ok) in [
        ("max_concurrency", (1..=1024).contains(&cfg.max_concurrency)),
        ("max_n", (1..=128).contains(&cfg.max_n)),
        ("max_attempts", (1..=100).contains(&cfg.max_attempts)),
        ("eject_after", cfg.eject_after >= 1),
    ] {
        if !ok {
            return Err(invalid(key, "is out of range (see docs/serving.md)"));
        }
    }
    for (key, v) in [
        ("timeout_secs", cfg.timeout_secs),
        ("probe_after_secs", cfg.probe_after_secs),
        ("backoff_secs", cfg.backoff_secs),
        ("max_backoff_secs", cfg.max_backoff_secs),
    ] {
        if !(v.is_finite() && v > 0.0 && v <= 86_400.0) {
            return Err(invalid(
                key,
                format!("{v} must be a number of seconds in (0, 86400]"),
            ));
        }
    }
    if let Some(var) = &cfg.api_key_env {
        api_key(var)?;
    }
    if let Some(w) = &cfg.weights {
        let adapters = cfg.reload == autodidact_core::Reload::LoadLoraAdapter;
        if adapters && !w.join(autodidact_core::ADAPTER_CONFIG).exists() {
            return Err(invalid(
                "weights",
                format!("{} holds no {}: with reload = \"load_lora_adapter\" give the directory of the LoRA adapters the servers serve as {:?} (PEFT's layout; an autodidact run with [model.lora] and seed_stage.train.steps = 0 writes fresh ones to checkpoints/r0000)", w.display(), autodidact_core::ADAPTER_CONFIG, cfg.model),
            ));
        }
        if !autodidact_core::holds_weights(w) {
            return Err(invalid(
                "weights",
                format!("{} holds neither config.json nor {}: give the directory of the served model's weights (Hugging Face layout) or adapters (PEFT's)", w.display(), autodidact_core::ADAPTER_CONFIG),
            ));
        }
    }
    if let autodidact_core::Reload::Command(args) = &cfg.reload {
        if args.is_empty() || args[0].is_empty() {
            return Err(invalid("reload", "command needs a program, e.g. { command = [\"./restart-fleet.sh\", \"{checkpoint}\"] }"));
        }
    }
    Ok(cfg)
}

pub(crate) fn api_key(var: &str) -> Result<String> {
    match std::env::var(var) {
        Ok(k) if !k.is_empty() => Ok(k),
        _ => Err(invalid(
            "api_key_env",
            format!("the environment variable {var} is unset or empty; export the API key in it"),
        )),
    }
}

/// A served model planned for a run.
pub struct RemoteSpec {
    cfg: OpenAiConfig,
    tokenizer: RemoteTokenizer,
    context_length: usize,
}

impl RemoteSpec {
    /// Checks `[model]`, loads the tokenizer and finds the context length: `model.context_length`,
    /// or what `GET /v1/models` reports (`max_model_len`).
    pub fn plan(config: &ModelConfig) -> Result<Self> {
        let cfg = validate(config)?;
        let dir = cfg.tokenizer.clone().unwrap_or_default();
        let inner = ModelTokenizer::load(&dir)?.ok_or_else(|| {
            invalid(
                "tokenizer",
                format!("{} holds no tokenizer.json", dir.display()),
            )
        })?;
        let context_length = match config.context_length {
            Some(0) => return Err(Error::invalid("model.context_length", "must be at least 1")),
            Some(c) => c,
            None => served_context(&cfg)?,
        };
        Ok(Self {
            tokenizer: RemoteTokenizer {
                inner,
                api: cfg.api,
            },
            cfg,
            context_length,
        })
    }
}

/// `max_model_len` of the model in the first endpoint's `GET /v1/models` that answers.
fn served_context(cfg: &OpenAiConfig) -> Result<usize> {
    let admin = crate::sync::Admin::new(cfg, Duration::from_secs(10))?;
    let mut tried = Vec::new();
    for base in &cfg.base_urls {
        let url = format!("{}/models", base.trim_end_matches('/'));
        // Retried as sampling requests are (a lost connection, a 5xx or 429, a cut-off
        // body), so that one bad reply does not stop a run before it starts.
        let mut backoff = cfg.backoff_secs;
        let mut attempt = 1;
        let reply = loop {
            let (reply, transient) = match admin.call("GET", &url, None) {
                Ok((200, t)) => match serde_json::from_str::<serde_json::Value>(&t) {
                    Ok(v) => (Ok(v), false),
                    Err(e) => (Err(format!("GET {url}: not JSON: {e}")), true),
                },
                Ok((s, t)) => (
                    Err(format!(
                        "GET {url}: {s} {}",
                        autodidact_core::error::clip(&t, 200)
                    )),
                    matches!(s, 408 | 409 | 429 | 500..=599),
                ),
                Err(e) => (Err(e), true),
            };
            if reply.is_ok() || !transient || attempt >= cfg.max_attempts {
                break reply;
            }
            std::thread::sleep(Duration::from_secs_f64(backoff));
            backoff = (backoff * 2.0).min(cfg.max_backoff_secs);
            attempt += 1;
        };
        match reply {
            Ok(v) => {
                let entry = v.get("data").and_then(|d| d.as_array()).and_then(|d| {
                    d.iter()
                        .find(|m| m.get("id").and_then(|i| i.as_str()) == Some(&cfg.model))
                });
                let Some(entry) = entry else {
                    return Err(invalid(
                        "model",
                        format!(
                            "{url} does not serve {:?} (it lists {})",
                            cfg.model,
                            v.get("data").map_or("nothing".into(), |d| d.to_string())
                        ),
                    ));
                };
                return entry
                    .get("max_model_len")
                    .and_then(|l| l.as_u64())
                    .map(|l| l as usize)
                    .ok_or_else(|| {
                        Error::invalid(
                            "model.context_length",
                            format!("is not set and {url} does not report max_model_len; set it to the served model's context length"),
                        )
                    });
            }
            Err(e) => tried.push(format!("{url}: {e}")),
        }
    }
    Err(Error::invalid(
        "model.context_length",
        format!(
            "is not set and no endpoint answered GET /models to report it ({}); start the servers or set it",
            tried.join("; ")
        ),
    ))
}

impl ModelSpec for RemoteSpec {
    fn context_length(&self) -> usize {
        self.context_length
    }
    fn tokenizer(&self) -> &dyn Tokenizer {
        &self.tokenizer
    }
    fn describe(&self) -> serde_json::Value {
        json!({"backend": "openai", "openai": self.cfg, "context_length": self.context_length})
    }
    fn num_params(&self) -> u64 {
        0
    }
    fn state_bytes(&self, _threads: usize) -> u64 {
        0
    }
    fn train_activation_bytes(&self, _rows: usize, _len: usize) -> u64 {
        0
    }
    fn sample_workspace_bytes(&self) -> u64 {
        0
    }
    fn trains(&self) -> bool {
        false
    }
    fn served_weights(&self) -> Option<&Path> {
        self.cfg
            .weights
            .as_deref()
            .filter(|_| !self.cfg.reload.is_none())
    }
    fn sync(&self, dir: &Path) -> Result<()> {
        crate::sync::sync(&self.cfg, dir)
    }
    fn init(&self, _seed: u64) -> Result<Box<dyn TrainablePolicy>> {
        Ok(Box::new(RemotePolicy::connect(
            self.cfg.clone(),
            self.tokenizer.inner.clone(),
            self.context_length,
        )?))
    }
    fn load(&self, dir: &Path) -> Result<Box<dyn TrainablePolicy>> {
        Ok(Box::new(RemotePolicy::load(dir)?))
    }
}

/// The served model's tokenizer. With the chat API, a conversation stays messages: its
/// "prompt" is the messages as JSON behind a marker, which the policy sends as they are.
#[derive(Clone)]
struct RemoteTokenizer {
    inner: ModelTokenizer,
    api: OpenAiApi,
}

impl RemoteTokenizer {
    fn messages(prompt: &str) -> Option<Vec<ChatMessage>> {
        serde_json::from_str(prompt.strip_prefix(CHAT_MARK)?).ok()
    }
}

impl Tokenizer for RemoteTokenizer {
    fn encode(&self, text: &str) -> Result<Vec<u32>> {
        self.inner.encode(text)
    }
    fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner.decode(ids)
    }
    fn vocab_size(&self) -> usize {
        self.inner.vocab_size()
    }
    fn stop_tokens(&self) -> Vec<u32> {
        self.inner.stop_tokens()
    }
    fn encode_prompt(&self, text: &str) -> Result<Vec<u32>> {
        match Self::messages(text) {
            Some(m) => self.inner.encode_prompt(&self.inner.chat_prompt(&m)?),
            None => self.inner.encode_prompt(text),
        }
    }
    fn has_chat_template(&self) -> bool {
        self.api == OpenAiApi::Chat || self.inner.has_chat_template()
    }
    fn chat_prompt(&self, messages: &[ChatMessage]) -> Result<String> {
        match self.api {
            OpenAiApi::Chat => Ok(format!(
                "{CHAT_MARK}{}",
                serde_json::to_string(messages).expect("messages serialize")
            )),
            OpenAiApi::Completions => self.inner.chat_prompt(messages),
        }
    }
}

/// What a run directory keeps of a served model.
#[derive(Serialize, Deserialize)]
struct Record {
    format: u32,
    openai: OpenAiConfig,
    context_length: usize,
}

/// A model served behind the OpenAI API.
pub struct RemotePolicy {
    cfg: OpenAiConfig,
    client: Arc<Client>,
    tokenizer: RemoteTokenizer,
    context_length: usize,
}

/// One request: `n` completions of row `first`'s prompt, seeded from row `first`'s seed.
struct Request {
    first: usize,
    n: usize,
}

impl RemotePolicy {
    pub fn connect(
        cfg: OpenAiConfig,
        tokenizer: ModelTokenizer,
        context_length: usize,
    ) -> Result<Self> {
        let key = cfg.api_key_env.as_deref().map(api_key).transpose()?;
        let pool = Pool::new(
            cfg.base_urls.clone(),
            cfg.max_concurrency,
            cfg.eject_after,
            Duration::from_secs_f64(cfg.probe_after_secs),
        );
        let client = Client::new(
            pool,
            key,
            Duration::from_secs_f64(cfg.timeout_secs),
            cfg.max_attempts,
        )
        .with_backoff(
            Duration::from_secs_f64(cfg.backoff_secs),
            Duration::from_secs_f64(cfg.max_backoff_secs),
        );
        Ok(Self {
            tokenizer: RemoteTokenizer {
                inner: tokenizer,
                api: cfg.api,
            },
            cfg,
            client: Arc::new(client),
            context_length,
        })
    }

    /// The served model recorded in `dir` by [`TrainablePolicy::save`].
    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join(REMOTE_FILE);
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io("reading", &path, e))?;
        let rec: Record = serde_json::from_str(&text).map_err(|e| {
            Error::invalid(
                path.display().to_string(),
                format!("is not a served model's record: {e}"),
            )
        })?;
        if rec.format != FORMAT {
            return Err(Error::invalid(
                path.display().to_string(),
                format!(
                    "has format {}; this autodidact reads format {FORMAT} (written by a different version)",
                    rec.format
                ),
            ));
        }
        let tokenizer = ModelTokenizer::load(dir)?.ok_or_else(|| {
            Error::invalid(
                dir.display().to_string(),
                "holds no tokenizer.json beside remote.json",
            )
        })?;
        Self::connect(rec.openai, tokenizer, rec.context_length)
    }

    /// Sends `count` requests (`request(k)` gives the k-th body, its jitter seed and its
    /// `n`) over the pool's workers and returns the replies in order; the first failure
    /// stops the others from starting and is returned. Usage goes into the stats.
    fn fan_out(
        &self,
        count: usize,
        request: impl Fn(usize) -> (serde_json::Value, u64, usize) + Sync,
    ) -> Result<Vec<Parsed>> {
        let results: Vec<Mutex<Option<Result<Parsed>>>> =
            (0..count).map(|_| Mutex::new(None)).collect();
        let next = AtomicUsize::new(0);
        let failed = AtomicBool::new(false);
        let workers = self.client.pool.capacity().min(count).max(1);
        let route = match self.cfg.api {
            OpenAiApi::Completions => "/completions",
            OpenAiApi::Chat => "/chat/completions",
        };
        std::thread::scope(|s| {
            for _ in 0..workers {
                s.spawn(|| loop {
                    let k = next.fetch_add(1, Ordering::SeqCst);
                    if k >= count || failed.load(Ordering::SeqCst) {
                        return;
                    }
                    let (body, seed, n) = request(k);
                    let reply = self
                        .client
                        .post(route, &body, seed, |v| parse_reply(v, self.cfg.api, n))
                        .map_err(Error::from);
                    if reply.is_err() {
                        failed.store(true, Ordering::SeqCst);
                    }
                    *results[k].lock().unwrap_or_else(|e| e.into_inner()) = Some(reply);
                });
            }
        });
        let mut out = Vec::with_capacity(count);
        let mut first_error = None;
        let mut usage = (0, 0);
        for cell in results {
            match cell.into_inner().unwrap_or_else(|e| e.into_inner()) {
                Some(Ok(p)) => {
                    // Counts a server reports: a wrong one saturates, it does not panic.
                    usage.0 = p.prompt_tokens.saturating_add(usage.0);
                    usage.1 = p.completion_tokens.saturating_add(usage.1);
                    out.push(p);
                }
                Some(Err(e)) => {
                    first_error.get_or_insert(e);
                }
                None => {}
            }
        }
        let mut st = self.client.stats.lock().unwrap_or_else(|e| e.into_inner());
        st.prompt_tokens = st.prompt_tokens.saturating_add(usage.0);
        st.completion_tokens = st.completion_tokens.saturating_add(usage.1);
        match first_error {
            Some(e) => Err(e),
            None => Ok(out),
        }
    }

    /// Rows of one prompt with consecutive seeds, up to `max_n`, as one request.
    fn requests(&self, prompts: &[String], seeds: &[u64]) -> Vec<Request> {
        let mut out: Vec<Request> = Vec::new();
        for i in 0..prompts.len() {
            if let Some(r) = out.last_mut() {
                let j = r.first;
                if r.n < self.cfg.max_n
                    && prompts[i] == prompts[j]
                    && seeds[i] == seeds[j].wrapping_add(r.n as u64)
                {
                    r.n += 1;
                    continue;
                }
            }
            out.push(Request { first: i, n: 1 });
        }
        out
    }

    fn body(
        &self,
        prompt: &str,
        n: usize,
        seed: u64,
        params: &SamplingParams,
    ) -> serde_json::Value {
        let mut b = json!({
            "model": self.cfg.model,
            "n": n,
            "max_tokens": params.max_new_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
            // The API's seed is a signed 64-bit integer: the same bits, read as one.
            "seed": seed as i64,
        });
        if !params.stop.is_empty() {
            b["stop"] = json!(params.stop);
        }
        if params.top_k > 0 {
            b["top_k"] = json!(params.top_k); // vLLM's, SGLang's and llama.cpp's extension
        }
        if params.ignore_stop {
            b["ignore_eos"] = json!(true); // vLLM's extension
        }
        // A model trained from its samples needs the ids the server sampled (re-encoding the
        // text need not give them back); a server of weights the run trains is self-hosted,
        // and vLLM, SGLang and `autodidact serve` take vLLM's extension for them.
        if self.cfg.weights.is_some() {
            b["return_tokens_as_token_ids"] = json!(true);
        }
        match (self.cfg.api, RemoteTokenizer::messages(prompt)) {
            (OpenAiApi::Chat, messages) => {
                let messages = messages.unwrap_or_else(|| {
                    vec![ChatMessage {
                        role: "user".into(),
                        content: prompt.to_string(),
                    }]
                });
                b["messages"] = json!(messages);
                b["logprobs"] = json!(true);
                if params.top_logprobs > 0 {
                    b["top_logprobs"] = json!(params.top_logprobs);
                }
            }
            (OpenAiApi::Completions, _) => {
                b["prompt"] = json!(prompt);
                b["logprobs"] = json!(params.top_logprobs);
            }
        }
        b
    }
}

/// The `n` completions of one reply of `api`, in choice order. Everything a server sends is
/// checked here: a reply that breaks the API's shape is an error naming what is wrong, never a
/// panic or a NaN passed on.
pub(crate) fn parse_reply(
    v: serde_json::Value,
    api: OpenAiApi,
    n: usize,
) -> std::result::Result<Parsed, String> {
    let choices = v
        .get("choices")
        .and_then(|c| c.as_array())
        .ok_or("the reply has no choices")?;
    if choices.len() != n {
        return Err(format!(
            "the reply has {} choices for n = {n}",
            choices.len()
        ));
    }
    let mut out: Vec<Option<Choice>> = vec![None; n];
    for c in choices {
        let index = c
            .get("index")
            .and_then(|i| i.as_u64())
            .map(|i| i as usize)
            .filter(|&i| i < n)
            .ok_or_else(|| format!("a choice has no index below {n}"))?;
        let text = match api {
            OpenAiApi::Completions => c.get("text").and_then(|t| t.as_str()),
            OpenAiApi::Chat => c.pointer("/message/content").and_then(|t| t.as_str()),
        }
        .ok_or_else(|| format!("choice {index} has no text"))?;
        let finish = match c.get("finish_reason").and_then(|f| f.as_str()) {
            Some("length") => FinishReason::Length,
            Some(_) => FinishReason::Stop,
            None => return Err(format!("choice {index} has no finish_reason")),
        };
        // Borrowed from the reply, not copied: each is read once, below.
        const NULL: serde_json::Value = serde_json::Value::Null;
        let logprobs: Vec<&serde_json::Value> = match api {
            OpenAiApi::Completions => c
                .pointer("/logprobs/token_logprobs")
                .and_then(|l| l.as_array())
                .map(|l| l.iter().collect()),
            OpenAiApi::Chat => c
                .pointer("/logprobs/content")
                .and_then(|l| l.as_array())
                .map(|l| {
                    l.iter()
                        .map(|x| x.get("logprob").unwrap_or(&NULL))
                        .collect()
                }),
        }
        .unwrap_or_default();
        let logprobs = logprobs
            .iter()
            .enumerate()
            .map(|(i, x)| match x.as_f64().map(|x| x as f32) {
                Some(x) if x.is_finite() => Ok(x),
                _ => Err(format!(
                    "choice {index}'s log-prob at position {i} is {x}, not a finite number"
                )),
            })
            .collect::<std::result::Result<Vec<f32>, String>>()?;
        let token_ids = sampled_ids(c, api, logprobs.len());
        let first_top: Vec<(String, f32)> = match api {
            // {"token text": log-prob, …} per position.
            OpenAiApi::Completions => c
                .pointer("/logprobs/top_logprobs/0")
                .and_then(|t| t.as_object())
                .map(|t| {
                    t.iter()
                        .filter_map(|(k, v)| Some((k.clone(), v.as_f64()? as f32)))
                        .collect()
                }),
            // [{"token", "logprob"}, …] per position.
            OpenAiApi::Chat => c
                .pointer("/logprobs/content/0/top_logprobs")
                .and_then(|t| t.as_array())
                .map(|t| {
                    t.iter()
                        .filter_map(|a| {
                            Some((
                                a.get("token")?.as_str()?.to_string(),
                                a.get("logprob")?.as_f64()? as f32,
                            ))
                        })
                        .collect()
                }),
        }
        .unwrap_or_default();
        let choice = Choice {
            text: text.to_string(),
            logprobs,
            token_ids,
            finish,
            first_top,
        };
        if out[index].replace(choice).is_some() {
            return Err(format!("choice {index} comes twice"));
        }
    }
    let usage = |k: &str| {
        v.pointer(&format!("/usage/{k}"))
            .and_then(|x| x.as_u64())
            .unwrap_or(0)
    };
    Ok(Parsed {
        choices: out
            .into_iter()
            .map(|c| c.expect("every index seen once"))
            .collect(),
        prompt_tokens: usage("prompt_tokens"),
        completion_tokens: usage("completion_tokens"),
    })
}

impl RemotePolicy {
    /// A completion of `text`: its tokens are the ids the server sampled when it gave them,
    /// else the text encoded again (then with the stop token after a stop), which can differ
    /// from what was sampled (a special token's text is dropped; a tokenizer has other
    /// encodings of the same text).
    fn completion(
        &self,
        text: String,
        logprobs: Vec<f32>,
        token_ids: Option<Vec<u32>>,
        finish: FinishReason,
    ) -> Result<Completion> {
        let tokens = match token_ids {
            Some(ids) => {
                let vocab = self.tokenizer.inner.vocab_size();
                if let Some(bad) = ids.iter().find(|&&id| id as usize >= vocab) {
                    return Err(invalid(
                        "model.openai",
                        format!("the server sampled token id {bad}, outside the tokenizer's vocabulary of {vocab}: is it serving the model whose tokenizer the run loaded?"),
                    ));
                }
                ids
            }
            None => {
                let mut tokens = self.tokenizer.inner.encode(&text).map_err(|e| {
                    invalid(
                        "tokenizer",
                        format!("cannot encode a reply of the served model ({e}): is it the served model's tokenizer?"),
                    )
                })?;
                if finish == FinishReason::Stop {
                    tokens.extend(self.tokenizer.inner.stop_tokens().first());
                }
                tokens
            }
        };
        Ok(Completion {
            text,
            tokens,
            logprobs,
            finish,
            top_logprobs: Vec::new(),
        })
    }
}

/// Alternatives a judge reads at its one generated position.
const TOP_ALTERNATIVES: usize = 20;

/// Parses a server's reply body as the openai backend does (for the fuzz targets): the error
/// it would report, if any.
#[doc(hidden)]
pub fn fuzz_reply(body: &[u8], api: OpenAiApi, n: usize) -> std::result::Result<(), String> {
    let v: serde_json::Value = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    parse_reply(v, api, n).map(|_| ())
}

/// One reply's completions.
pub(crate) struct Parsed {
    choices: Vec<Choice>,
    prompt_tokens: u64,
    completion_tokens: u64,
}

#[derive(Clone)]
struct Choice {
    text: String,
    logprobs: Vec<f32>,
    /// The ids of the sampled tokens, when the server gave them (one per log-prob).
    token_ids: Option<Vec<u32>>,
    finish: FinishReason,
    /// The alternatives at the first generated position, by their text.
    first_top: Vec<(String, f32)>,
}

/// The ids of a choice's sampled tokens, in the forms servers give them: vLLM's
/// `return_tokens_as_token_ids` (`"token_id:N"` as each token), llama.cpp's `id` and
/// Fireworks' `token_id` beside each token, or vLLM's `token_ids` list. `None` unless there
/// is one id per log-prob.
fn sampled_ids(c: &serde_json::Value, api: OpenAiApi, n: usize) -> Option<Vec<u32>> {
    let id = |t: &serde_json::Value| -> Option<u32> {
        let from_text = t
            .as_str()
            .and_then(|s| s.strip_prefix("token_id:"))
            .and_then(|s| s.parse().ok());
        from_text.or_else(|| t.as_u64().and_then(|i| u32::try_from(i).ok()))
    };
    let entries: Option<Vec<u32>> = match api {
        OpenAiApi::Completions => c
            .pointer("/logprobs/tokens")
            .and_then(|t| t.as_array())
            .and_then(|t| t.iter().map(id).collect()),
        OpenAiApi::Chat => c
            .pointer("/logprobs/content")
            .and_then(|t| t.as_array())
            .and_then(|t| {
                t.iter()
                    .map(|e| {
                        e.get("token")
                            .and_then(id)
                            .or_else(|| e.get("id").and_then(id))
                            .or_else(|| e.get("token_id").and_then(id))
                    })
                    .collect()
            }),
    };
    let listed =
        || -> Option<Vec<u32>> { c.get("token_ids")?.as_array()?.iter().map(id).collect() };
    entries
        .filter(|ids| !ids.is_empty())
        .or_else(listed)
        .filter(|ids| ids.len() == n)
}

/// Percentile `q` of sorted `v`, by nearest rank.
fn percentile(v: &[f64], q: f64) -> f64 {
    let i = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1;
    v[i]
}

impl Policy for RemotePolicy {
    fn sample(
        &mut self,
        prompts: &[String],
        seeds: &[u64],
        params: &SamplingParams,
    ) -> Result<Vec<Completion>> {
        if seeds.len() != prompts.len() {
            return Err(Error::invalid(
                "sampling request",
                format!("{} prompts but {} seeds", prompts.len(), seeds.len()),
            ));
        }
        autodidact_core::check_stop_strings("stop", &params.stop)?;
        let requests = self.requests(prompts, seeds);
        let replies = self.fan_out(requests.len(), |k| {
            let r = &requests[k];
            let body = self.body(&prompts[r.first], r.n, seeds[r.first], params);
            (body, seeds[r.first], r.n)
        })?;
        let mut out = Vec::with_capacity(prompts.len());
        for p in replies {
            for c in p.choices {
                out.push(self.completion(c.text, c.logprobs, c.token_ids, c.finish)?);
            }
        }
        Ok(out)
    }

    fn logprobs(&mut self, _examples: &[Example]) -> Result<Vec<Vec<f32>>> {
        Err(RemoteError::Unsupported(
            "scoring given text needs prompt log-probs, which the OpenAI API does not define: a served model samples and judges, but cannot give KL to itself or DPO's reference log-probs".into(),
        )
        .into())
    }

    /// One request per prompt for a single greedy token with its top alternatives; a
    /// candidate among them gets its log-prob, one that is not gets the smallest listed (an
    /// upper bound on its own).
    fn next_token_logprobs(
        &mut self,
        prompts: &[String],
        candidates: &[u32],
    ) -> Result<Vec<Vec<f32>>> {
        let tok = &self.tokenizer.inner;
        let names = candidates
            .iter()
            .map(|&c| tok.decode(&[c]))
            .collect::<Result<Vec<String>>>()?;
        let params = SamplingParams {
            top_logprobs: TOP_ALTERNATIVES,
            ..SamplingParams::greedy(1)
        };
        let replies = self.fan_out(prompts.len(), |k| {
            (self.body(&prompts[k], 1, 0, &params), 0, 1)
        })?;
        replies
            .into_iter()
            .zip(prompts)
            .map(|(p, prompt)| {
                let top = &p.choices[0].first_top;
                let floor = top.iter().map(|a| a.1).fold(f32::INFINITY, f32::min);
                if top.is_empty() {
                    return Err(RemoteError::Unsupported(format!(
                        "the server gave no alternatives for the next token of {:?}: it must support logprobs (completions) or top_logprobs (chat)",
                        autodidact_core::error::clip(prompt, 80)
                    ))
                    .into());
                }
                Ok(names
                    .iter()
                    .map(|n| top.iter().find(|a| &a.0 == n).map_or(floor, |a| a.1))
                    .collect())
            })
            .collect()
    }

    fn context_length(&self) -> usize {
        self.context_length
    }

    fn tokenizer(&self) -> &dyn Tokenizer {
        &self.tokenizer
    }

    fn take_serving_stats(&mut self) -> BTreeMap<String, f64> {
        let st = std::mem::take(&mut *self.client.stats.lock().unwrap_or_else(|e| e.into_inner()));
        stats_metrics(st)
    }
}

/// `serving/…` metrics of `st`.
fn stats_metrics(mut st: Stats) -> BTreeMap<String, f64> {
    let mut m = BTreeMap::new();
    if st.requests == 0 && st.failures.is_empty() {
        return m;
    }
    m.insert("serving/requests".into(), st.requests as f64);
    m.insert("serving/retries".into(), st.retries as f64);
    for (kind, n) in &st.failures {
        m.insert(format!("serving/errors_{}", kind.name()), *n as f64);
    }
    m.insert("serving/ejections".into(), st.health.ejections as f64);
    m.insert("serving/readmissions".into(), st.health.readmissions as f64);
    m.insert("serving/prompt_tokens".into(), st.prompt_tokens as f64);
    m.insert(
        "serving/completion_tokens".into(),
        st.completion_tokens as f64,
    );
    if !st.latencies.is_empty() {
        st.latencies.sort_by(f64::total_cmp);
        for (name, q) in [("p50", 0.5), ("p90", 0.9), ("p99", 0.99)] {
            m.insert(
                format!("serving/latency_{name}_s"),
                percentile(&st.latencies, q),
            );
        }
    }
    m
}

fn no_training() -> Error {
    Error::invalid(
        "model.backend",
        "\"openai\" samples from servers and does not train here (training a served model needs an external trainer)",
    )
}

impl TrainablePolicy for RemotePolicy {
    fn reset_optimizer(&mut self, _settings: &OptimizerSettings) -> Result<()> {
        Err(no_training())
    }
    fn forward(&mut self, _batch: &[Example], _entropy: bool) -> Result<TokenScores> {
        Err(no_training())
    }
    fn backward(
        &mut self,
        _weights: &[Vec<f32>],
        _entropy_coefs: Option<&[Vec<f32>]>,
    ) -> Result<()> {
        Err(no_training())
    }
    fn step(&mut self, _lr: f32, _max_grad_norm: f32) -> Result<f32> {
        Err(no_training())
    }

    /// Records which servers and model this is, with the tokenizer files: a run's round-0
    /// "checkpoint" of a served model.
    fn save(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io("creating", dir, e))?;
        self.tokenizer.inner.save(dir)?;
        let rec = Record {
            format: FORMAT,
            openai: self.cfg.clone(),
            context_length: self.context_length,
        };
        let text = serde_json::to_string_pretty(&rec).expect("the record serializes");
        autodidact_core::fs::write_atomic(&dir.join(REMOTE_FILE), text.as_bytes())
    }

    fn restore_optimizer(&mut self, _dir: &Path, _settings: &OptimizerSettings) -> Result<bool> {
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use autodidact_core::{BackendKind, Reload};

    /// Issue 16: the sampled ids come back in each server's form, and only when there is one
    /// per log-prob.
    #[test]
    fn issue16_sampled_token_ids_are_read_in_every_servers_form() {
        use serde_json::json;
        let (c, chat) = (OpenAiApi::Completions, OpenAiApi::Chat);
        // vLLM's `return_tokens_as_token_ids`, on both endpoints.
        let v = json!({"logprobs": {"tokens": ["token_id:5", "token_id:17"], "token_logprobs": [-0.1, -0.2]}});
        assert_eq!(sampled_ids(&v, c, 2), Some(vec![5, 17]));
        let v = json!({"logprobs": {"content": [{"token": "token_id:3", "logprob": -0.5}]}});
        assert_eq!(sampled_ids(&v, chat, 1), Some(vec![3]));
        // llama.cpp's `id`, Fireworks' `token_id`, vLLM's `token_ids` list.
        let v = json!({"logprobs": {"content": [{"id": 9, "token": "a"}, {"id": 2, "token": ""}]}});
        assert_eq!(sampled_ids(&v, chat, 2), Some(vec![9, 2]));
        let v = json!({"logprobs": {"content": [{"token_id": 4, "token": "b"}]}});
        assert_eq!(sampled_ids(&v, chat, 1), Some(vec![4]));
        let v = json!({"token_ids": [7, 8], "logprobs": {"tokens": ["x", "y"]}});
        assert_eq!(sampled_ids(&v, c, 2), Some(vec![7, 8]));
        // Texts only, or ids that do not match the log-probs: none.
        let v = json!({"logprobs": {"tokens": ["12", "+"]}});
        assert_eq!(sampled_ids(&v, c, 2), None);
        let v = json!({"logprobs": {"tokens": ["token_id:5"]}});
        assert_eq!(sampled_ids(&v, c, 2), None);
        assert_eq!(sampled_ids(&json!({}), chat, 0), None);
    }

    fn config(edit: impl FnOnce(&mut ModelConfig)) -> ModelConfig {
        let mut m = ModelConfig {
            backend: BackendKind::Openai,
            openai: Some(OpenAiConfig {
                base_urls: vec!["http://127.0.0.1:1/v1".into()],
                model: "m".into(),
                tokenizer: Some("/nonexistent".into()),
                ..OpenAiConfig::default()
            }),
            ..ModelConfig::default()
        };
        edit(&mut m);
        m
    }

    fn err(edit: impl FnOnce(&mut ModelConfig)) -> String {
        validate(&config(edit)).unwrap_err().to_string()
    }

    fn oa(m: &mut ModelConfig) -> &mut OpenAiConfig {
        m.openai.as_mut().unwrap()
    }

    #[test]
    fn bad_settings_name_their_key() {
        assert!(validate(&config(|_| {})).is_ok());
        let cases: Vec<(String, &str)> = vec![
            (err(|m| m.openai = None), "model.openai: is missing"),
            (
                err(|m| oa(m).base_urls.clear()),
                "model.openai.base_urls: is empty",
            ),
            (
                err(|m| oa(m).base_urls = vec!["localhost:8000/v1".into()]),
                "must start with http://",
            ),
            (
                err(|m| oa(m).base_urls = vec!["http://a/v1".into(), "http://a/v1".into()]),
                "is listed twice",
            ),
            (err(|m| oa(m).model.clear()), "model.openai.model: is empty"),
            (
                err(|m| oa(m).tokenizer = None),
                "model.openai.tokenizer: is missing",
            ),
            (
                err(|m| oa(m).max_concurrency = 0),
                "model.openai.max_concurrency",
            ),
            (
                err(|m| oa(m).timeout_secs = f64::NAN),
                "model.openai.timeout_secs",
            ),
            (
                err(|m| oa(m).backoff_secs = 0.0),
                "model.openai.backoff_secs",
            ),
            (
                err(|m| oa(m).api_key_env = Some("AUTODIDACT_TEST_UNSET_KEY".into())),
                "AUTODIDACT_TEST_UNSET_KEY is unset or empty",
            ),
            (
                err(|m| m.checkpoint = Some("x".into())),
                "model.checkpoint: shapes a native model",
            ),
            (err(|m| m.num_layers = Some(2)), "model.num_layers"),
        ];
        for (e, want) in cases {
            assert!(e.contains(want), "{e:?} should contain {want:?}");
        }
        // Served weights are a checkpoint, or with vLLM's LoRA loading the adapters.
        let full = tempfile::tempdir().unwrap();
        std::fs::write(full.path().join("config.json"), "{}").unwrap();
        let weights = |reload: Reload| {
            let w = full.path().to_path_buf();
            err(move |m| {
                oa(m).weights = Some(w);
                oa(m).reload = reload;
            })
        };
        let e = weights(Reload::LoadLoraAdapter);
        assert!(
            e.contains("model.openai.weights") && e.contains("holds no adapter_config.json"),
            "{e}"
        );
        std::fs::write(full.path().join("adapter_config.json"), "{}").unwrap();
        let w = full.path().to_path_buf();
        assert!(validate(&config(move |m| {
            oa(m).weights = Some(w);
            oa(m).reload = Reload::LoadLoraAdapter;
        }))
        .is_ok());
        // The tokenizer directory is read at plan time.
        let e = RemoteSpec::plan(&config(|m| m.context_length = Some(64)))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("/nonexistent"), "{e}");
    }

    #[test]
    fn rows_of_one_prompt_with_consecutive_seeds_share_a_request() {
        let dir = tempfile::tempdir().unwrap();
        let tok = ModelTokenizer::Char(Box::new(
            autodidact_core::CharTokenizer::new("0123456789+=").unwrap(),
        ));
        let cfg = OpenAiConfig {
            base_urls: vec!["http://127.0.0.1:1/v1".into()],
            model: "m".into(),
            max_n: 3,
            ..OpenAiConfig::default()
        };
        let p = RemotePolicy::connect(cfg, tok, 64).unwrap();
        let prompts: Vec<String> = ["a", "a", "a", "a", "b", "b", "a"]
            .map(String::from)
            .to_vec();
        let seeds = [5, 6, 7, 8, 9, 11, 12];
        let r: Vec<(usize, usize)> = p
            .requests(&prompts, &seeds)
            .iter()
            .map(|r| (r.first, r.n))
            .collect();
        // max_n splits the first run; a seed gap and a prompt change start new requests.
        assert_eq!(r, [(0, 3), (3, 1), (4, 1), (5, 1), (6, 1)]);
        // The record round-trips, without the key.
        p.save(dir.path()).unwrap();
        let back = RemotePolicy::load(dir.path()).unwrap();
        assert_eq!(back.cfg, p.cfg);
        assert_eq!(back.context_length, 64);
    }
}
