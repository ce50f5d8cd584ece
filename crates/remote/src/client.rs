//! One request to the pool, with retries: exponential backoff with full jitter, `Retry-After`
//! honoured, a timeout per try, and the accounting of every try.
//!
//! Retried: connection errors, timeouts, HTTP 408, 409, 429 and 5xx, and replies that do not
//! parse (a truncated body, a reply without its choices). Not retried: other 4xx, which say
//! the request itself is wrong (a wrong model name, a prompt too long): the run stops with
//! the server's message.

use crate::pool::{Health, Outcome, Pool};
use crate::RemoteError;
use std::io::Read;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Why one try failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum FailureKind {
    Connect,
    Timeout,
    RateLimited,
    ServerError,
    BadReply,
}

impl FailureKind {
    pub fn name(self) -> &'static str {
        match self {
            FailureKind::Connect => "connect",
            FailureKind::Timeout => "timeout",
            FailureKind::RateLimited => "429",
            FailureKind::ServerError => "5xx",
            FailureKind::BadReply => "bad_reply",
        }
    }
}

/// A failed try.
#[derive(Debug)]
pub enum Failure {
    /// The endpoint failed; another try may succeed.
    Retry {
        kind: FailureKind,
        message: String,
        retry_after: Option<Duration>,
    },
    /// The request is wrong: every endpoint would refuse it.
    Refused { status: u16, message: String },
}

/// What the requests cost, since the stats were last taken.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    pub requests: u64,
    pub retries: u64,
    pub failures: std::collections::BTreeMap<FailureKind, u64>,
    /// Seconds of each successful request, its retries included.
    pub latencies: Vec<f64>,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub health: Health,
}

pub struct Client {
    agent: ureq::Agent,
    pub pool: Pool,
    api_key: Option<String>,
    max_attempts: u32,
    pub stats: Mutex<Stats>,
    /// Backoff before the second try; it doubles each try up to `max_backoff`.
    base_backoff: Duration,
    max_backoff: Duration,
}

/// Longest reply read (a reply of 64 completions of a few thousand tokens with log-probs is
/// a few MB).
const MAX_REPLY_BYTES: u64 = 256 << 20;

impl Client {
    pub fn new(pool: Pool, api_key: Option<String>, timeout: Duration, max_attempts: u32) -> Self {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            .http_status_as_error(false)
            .max_idle_connections_per_host(pool.capacity().max(1))
            .build()
            .into();
        Self {
            agent,
            pool,
            api_key,
            max_attempts,
            stats: Mutex::new(Stats::default()),
            base_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
        }
    }

    /// The cap of the first retry's wait, and the most any wait may be.
    pub fn with_backoff(mut self, base: Duration, max: Duration) -> Self {
        self.base_backoff = base;
        self.max_backoff = max;
        self
    }

    /// POSTs `body` to `route` (under an endpoint's base URL) and reads the reply with
    /// `parse`, trying again as the module says; `seed` makes the jitter reproducible.
    pub fn post<T>(
        &self,
        route: &str,
        body: &serde_json::Value,
        seed: u64,
        parse: impl Fn(serde_json::Value) -> Result<T, String>,
    ) -> Result<T, RemoteError> {
        let body = body.to_string();
        let started = Instant::now();
        let mut last = String::new();
        let mut jitter = autodidact_core::Rng::new(seed);
        for attempt in 1..=self.max_attempts {
            let i = self.pool.acquire();
            let url = format!("{}{route}", self.pool.url(i).trim_end_matches('/'));
            let result = self
                .try_once(&url, &body)
                .and_then(|v| parse(v).map_err(|m| retry(FailureKind::BadReply, m)));
            let mut health = Health::default();
            let outcome = match &result {
                Ok(_) => Outcome::Ok,
                Err(Failure::Refused { .. }) => Outcome::Refused,
                Err(Failure::Retry { .. }) => Outcome::Failed,
            };
            self.pool.release(i, outcome, &mut health);
            let mut stats = self.stats.lock().unwrap_or_else(|e| e.into_inner());
            stats.health.ejections += health.ejections;
            stats.health.readmissions += health.readmissions;
            match result {
                Ok(v) => {
                    stats.requests += 1;
                    stats.latencies.push(started.elapsed().as_secs_f64());
                    return Ok(v);
                }
                Err(Failure::Refused { status, message }) => {
                    return Err(RemoteError::Refused {
                        url,
                        status,
                        message,
                    })
                }
                Err(Failure::Retry {
                    kind,
                    message,
                    retry_after,
                }) => {
                    *stats.failures.entry(kind).or_default() += 1;
                    last = format!("{url}: {message}");
                    if attempt == self.max_attempts {
                        break;
                    }
                    stats.retries += 1;
                    drop(stats);
                    // Full jitter: a uniform wait up to the exponential backoff.
                    let cap = self
                        .base_backoff
                        .saturating_mul(1 << (attempt - 1).min(16))
                        .min(self.max_backoff);
                    let wait = cap.mul_f64(jitter.uniform_f64());
                    std::thread::sleep(wait.max(retry_after.unwrap_or_default()));
                }
            }
        }
        Err(RemoteError::Unreachable {
            tries: self.max_attempts,
            all_down: self.pool.all_down(),
            last,
        })
    }

    fn try_once(&self, url: &str, body: &str) -> Result<serde_json::Value, Failure> {
        let mut req = self
            .agent
            .post(url)
            .header("content-type", "application/json");
        if let Some(key) = &self.api_key {
            req = req.header("authorization", &format!("Bearer {key}"));
        }
        let mut resp = req.send(body).map_err(transport)?;
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<f64>().ok())
            .filter(|s| s.is_finite() && *s >= 0.0)
            .map(|s| Duration::from_secs_f64(s.min(600.0)));
        let mut text = String::new();
        resp.body_mut()
            .as_reader()
            .take(MAX_REPLY_BYTES)
            .read_to_string(&mut text)
            .map_err(|e| retry(FailureKind::BadReply, format!("reading the reply: {e}")))?;
        if status != 200 {
            let message = error_message(&text);
            return Err(match status {
                429 => Failure::Retry {
                    kind: FailureKind::RateLimited,
                    message: format!("HTTP 429: {message}"),
                    retry_after,
                },
                408 | 409 | 500..=599 => Failure::Retry {
                    kind: FailureKind::ServerError,
                    message: format!("HTTP {status}: {message}"),
                    retry_after,
                },
                _ => Failure::Refused { status, message },
            });
        }
        serde_json::from_str(&text).map_err(|e| {
            retry(
                FailureKind::BadReply,
                format!(
                    "the reply is not JSON ({e}): {}",
                    autodidact_core::error::clip(&text, 200)
                ),
            )
        })
    }
}

fn retry(kind: FailureKind, message: String) -> Failure {
    Failure::Retry {
        kind,
        message,
        retry_after: None,
    }
}

fn transport(e: ureq::Error) -> Failure {
    let kind = match &e {
        ureq::Error::Timeout(_) => FailureKind::Timeout,
        ureq::Error::Io(io) if io.kind() == std::io::ErrorKind::TimedOut => FailureKind::Timeout,
        _ => FailureKind::Connect,
    };
    retry(kind, e.to_string())
}

/// The message of an OpenAI-shaped error body, or the body itself.
fn error_message(text: &str) -> String {
    serde_json::from_str::<serde_json::Value>(text)
        .ok()
        .and_then(|v| {
            v.pointer("/error/message")
                .or_else(|| v.get("message"))
                .and_then(|m| m.as_str())
                .map(String::from)
        })
        .unwrap_or_else(|| autodidact_core::error::clip(text.trim(), 300))
}
