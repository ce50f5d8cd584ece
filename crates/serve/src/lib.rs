//! `autodidact serve`: any policy the engine can load, behind the OpenAI API.
//!
//! Routes: `GET /v1/models`, `POST /v1/completions`, `POST /v1/chat/completions` (JSON or,
//! with `stream`, server-sent events), `GET /health`, and SGLang's
//! `POST /update_weights_from_disk` and `GET /get_model_info` so that a run can point a
//! served policy at its newest checkpoint.
//!
//! How it differs from vLLM's and SGLang's servers:
//! - Concurrent requests share one decode batch (each row with its own settings), formed
//!   when the batcher is free ([`batcher`]); rows do not yet join a batch mid-decode.
//! - Log-probs are those of the sampled tokens; alternatives per position (`logprobs` > 0,
//!   `top_logprobs` > 0) are refused, as are `echo`, penalties and `logit_bias`. Streaming
//!   sends text only (log-probs with `stream` are refused).
//! - Prompts are text; token-id prompts are refused.
//! - Unknown request fields are refused by name instead of being ignored.

pub mod api;
pub mod batcher;
pub mod error;
pub mod http;

pub use batcher::{BatchConfig, Loader};
pub use error::{ApiError, ServeError};

use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

/// Default of [`ServeConfig::max_body_bytes`].
pub const DEFAULT_MAX_BODY_BYTES: usize = 4 << 20;
/// Default of [`BatchConfig::window`], in milliseconds.
pub const DEFAULT_BATCH_WINDOW_MS: u64 = 5;
/// Default of [`BatchConfig::max_rows`].
pub const DEFAULT_MAX_BATCH_ROWS: usize = 256;
/// Default of [`BatchConfig::max_queued`].
pub const DEFAULT_MAX_QUEUED: usize = 4096;

/// Settings of [`serve`].
#[derive(Clone, Debug)]
pub struct ServeConfig {
    /// The checkpoint to serve first.
    pub checkpoint: PathBuf,
    /// Address to bind; loopback by default.
    pub host: String,
    /// Port to bind; 0 picks a free one (printed on start).
    pub port: u16,
    /// The name clients address the model by (`model` in requests).
    pub model_name: String,
    /// Clients must send `Authorization: Bearer <key>` when set.
    pub api_key: Option<String>,
    /// Largest request body accepted.
    pub max_body_bytes: usize,
    pub batch: BatchConfig,
}

impl ServeConfig {
    /// Defaults for serving `checkpoint` under its path as the model name.
    pub fn new(checkpoint: PathBuf) -> Self {
        Self {
            model_name: checkpoint.display().to_string(),
            checkpoint,
            host: "127.0.0.1".into(),
            port: 8000,
            api_key: None,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            batch: BatchConfig {
                window: Duration::from_millis(DEFAULT_BATCH_WINDOW_MS),
                max_rows: DEFAULT_MAX_BATCH_ROWS,
                max_queued: DEFAULT_MAX_QUEUED,
            },
        }
    }
}

/// Loads the checkpoint, binds, prints `listening on http://ADDR` on standard output when
/// ready, and serves until interrupted (Ctrl-C or SIGTERM).
pub fn serve(cfg: ServeConfig, loader: Loader) -> Result<(), ServeError> {
    if cfg.batch.max_rows == 0 || cfg.batch.max_queued < cfg.batch.max_rows {
        return Err(ServeError::Config(format!(
            "max batch rows {} must be at least 1 and at most the queue limit {}",
            cfg.batch.max_rows, cfg.batch.max_queued
        )));
    }
    let batcher = batcher::Batcher::start(loader, cfg.checkpoint.clone(), cfg.batch.clone())?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let addr = format!("{}:{}", cfg.host, cfg.port);
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .map_err(|source| ServeError::Bind {
                addr: addr.clone(),
                source,
            })?;
        let local = listener.local_addr()?;
        let state = Arc::new(http::AppState {
            batcher,
            model_name: cfg.model_name.clone(),
            api_key: cfg.api_key.clone(),
            max_body_bytes: cfg.max_body_bytes,
            started: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            next_id: AtomicU64::new(0),
        });
        println!(
            "serving {} as model {:?} on http://{local}/v1",
            cfg.checkpoint.display(),
            cfg.model_name
        );
        use std::io::Write;
        let _ = std::io::stdout().flush();
        axum::serve(listener, http::router(state))
            .with_graceful_shutdown(shutdown())
            .await?;
        Ok(())
    })
}

async fn shutdown() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(t) => t,
                Err(_) => return ctrl_c.await.unwrap_or(()),
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
