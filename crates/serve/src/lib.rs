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
/// Most permits a tokio semaphore holds: the largest [`ServeConfig::max_buffered_bytes`].
const MAX_PERMITS: usize = tokio::sync::Semaphore::MAX_PERMITS;
/// Default of [`ServeConfig::max_buffered_bytes`].
pub const DEFAULT_MAX_BUFFERED_BYTES: usize = 256 << 20;
/// Default of [`ServeConfig::max_connections`].
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;
/// Default of [`ServeConfig::read_timeout`], in seconds.
pub const DEFAULT_READ_TIMEOUT_S: u64 = 10;

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
    /// Most bytes of request bodies over 64 KiB held at once, all clients together: a
    /// request whose body would go over it gets a 503, so that many clients sending large
    /// bodies at once cannot grow the server past it (without it the bound is
    /// `max_connections` × `max_body_bytes`).
    pub max_buffered_bytes: usize,
    /// Most connections held open at once; a client beyond it gets a 503 and the connection
    /// closed, so a flood of idle or slow connections cannot grow the server without bound.
    pub max_connections: usize,
    /// Time a client has to send a request's headers, and again its body: a slow client
    /// (slowloris) is cut off after it instead of holding its connection forever.
    pub read_timeout: Duration,
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
            max_buffered_bytes: DEFAULT_MAX_BUFFERED_BYTES,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            read_timeout: Duration::from_secs(DEFAULT_READ_TIMEOUT_S),
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
    if cfg.max_connections == 0 {
        return Err(ServeError::Config(
            "max connections must be at least 1".into(),
        ));
    }
    if cfg.read_timeout.is_zero() || cfg.read_timeout > Duration::from_secs(3600) {
        return Err(ServeError::Config(format!(
            "the read timeout of {:?} must be more than 0 and at most an hour",
            cfg.read_timeout
        )));
    }
    if cfg.max_body_bytes == 0 || cfg.max_body_bytes > u32::MAX as usize {
        return Err(ServeError::Config(format!(
            "--max-body-bytes {} must be at least 1 and at most {} (4 GiB)",
            cfg.max_body_bytes,
            u32::MAX
        )));
    }
    if cfg.max_buffered_bytes < cfg.max_body_bytes || cfg.max_buffered_bytes > MAX_PERMITS {
        return Err(ServeError::Config(format!(
            "--max-buffered-bytes {} must be at least --max-body-bytes ({}) and at most {MAX_PERMITS}",
            cfg.max_buffered_bytes, cfg.max_body_bytes
        )));
    }
    let max_connections = open_files_for(cfg.max_connections)?;
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
            buffered: Arc::new(tokio::sync::Semaphore::new(cfg.max_buffered_bytes)),
            max_buffered_bytes: cfg.max_buffered_bytes,
            read_timeout: cfg.read_timeout,
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
        accept_loop(
            listener,
            http::router(state),
            max_connections,
            cfg.read_timeout,
        )
        .await;
        Ok(())
    })
}

/// Serves each accepted connection on its own task with hyper's HTTP/1, until Ctrl-C or
/// SIGTERM; then lets the open requests finish (for up to a minute).
///
/// axum's own `serve` is not used: it gives no way to set a header-read timeout (hyper's
/// needs a timer) or to cap the connections held open.
async fn accept_loop(
    listener: tokio::net::TcpListener,
    router: axum::Router,
    max_connections: usize,
    read_timeout: Duration,
) {
    use hyper_util::rt::{TokioIo, TokioTimer};
    let permits = Arc::new(tokio::sync::Semaphore::new(max_connections));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut stop = std::pin::pin!(shutdown());
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                // Out of file descriptors or a connection reset before it was accepted:
                // back off briefly instead of spinning, and keep serving.
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
            _ = &mut stop => break,
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            tokio::spawn(http::refuse_connection(stream, max_connections));
            continue;
        };
        let service = hyper_util::service::TowerToHyperService::new(router.clone());
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(read_timeout)
            .serve_connection(TokioIo::new(stream), service);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            let _ = conn.await;
            drop(permit);
        });
    }
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(Duration::from_secs(60)) => {}
    }
}

/// Raises this process's limit on open files so that `wanted` connections fit beside the
/// server's own files; returns the connections that fit (fewer, with a note, when the hard
/// limit is lower).
fn open_files_for(wanted: usize) -> Result<usize, ServeError> {
    // Files the server keeps besides connections: the listener, checkpoints, standard streams.
    const SPARE: u64 = 64;
    let Some(limit) = raise_open_files(wanted as u64 + SPARE) else {
        return Ok(wanted);
    };
    let fits = (limit.saturating_sub(SPARE) as usize).min(wanted);
    if fits == 0 {
        return Err(ServeError::Config(format!(
            "this process may open only {limit} files: raise `ulimit -n`"
        )));
    }
    if fits < wanted {
        eprintln!(
            "note: serving at most {fits} connections at once (the open-file limit is {limit}; raise `ulimit -n` for {wanted})"
        );
    }
    Ok(fits)
}

/// Raises this process's soft limit on open files towards `wanted` (at most its hard limit);
/// returns the limit now in force, or `None` where it cannot be read.
pub fn raise_open_files(wanted: u64) -> Option<u64> {
    #[cfg(unix)]
    {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit and setrlimit only read and write the struct passed.
        unsafe {
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
                return None;
            }
            if lim.rlim_cur < wanted {
                lim.rlim_cur = wanted.min(lim.rlim_max);
                libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
                libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
            }
        }
        Some(lim.rlim_cur)
    }
    #[cfg(not(unix))]
    {
        let _ = wanted;
        None
    }
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
