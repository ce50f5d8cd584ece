//! `autodidact serve`: a checkpoint behind the OpenAI API (the server is `autodidact-serve`).

use anyhow::{bail, Result};
use autodidact_core::{BackendKind, Policy};
use autodidact_serve::{ServeConfig, ServeError};
use clap::Args;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Args)]
pub struct ServeArgs {
    /// Checkpoint directory to serve (a Hugging Face layout, a run's checkpoint, or LoRA
    /// adapters with their base model).
    #[arg(long)]
    checkpoint: PathBuf,
    /// Address to listen on; the default accepts local clients only.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port to listen on; 0 picks a free one (printed when the server is ready).
    #[arg(long, default_value_t = 8000)]
    port: u16,
    /// Name of an environment variable holding the API key clients must send
    /// (`Authorization: Bearer KEY`); without it, no key is asked for.
    #[arg(long, value_name = "VAR")]
    api_key_env: Option<String>,
    /// The model name clients send [default: the checkpoint path as given].
    #[arg(long)]
    model_name: Option<String>,
    /// Most completions sampled together in one decode batch.
    #[arg(long, default_value_t = autodidact_serve::DEFAULT_MAX_BATCH_ROWS)]
    max_batch_rows: usize,
    /// Most completions waiting for the model; further requests get 503.
    #[arg(long, default_value_t = autodidact_serve::DEFAULT_MAX_QUEUED)]
    max_queued: usize,
    /// Milliseconds the first waiting request waits for others to join its batch.
    #[arg(long, default_value_t = autodidact_serve::DEFAULT_BATCH_WINDOW_MS)]
    batch_window_ms: u64,
    /// Largest request body accepted, in bytes.
    #[arg(long, default_value_t = autodidact_serve::DEFAULT_MAX_BODY_BYTES)]
    max_body_bytes: usize,
    /// Most bytes of request bodies held at once, all clients together; a request whose body
    /// would go over it gets 503.
    #[arg(long, default_value_t = autodidact_serve::DEFAULT_MAX_BUFFERED_BYTES)]
    max_buffered_bytes: usize,
    /// Most client connections held open at once; further ones get 503 and are closed.
    #[arg(long, default_value_t = autodidact_serve::DEFAULT_MAX_CONNECTIONS)]
    max_connections: usize,
    /// Seconds a client has to send a request's headers, and again its body, before its
    /// connection is closed.
    #[arg(long, default_value_t = autodidact_serve::DEFAULT_READ_TIMEOUT_S)]
    read_timeout_s: u64,
}

pub fn serve(a: &ServeArgs) -> Result<()> {
    let api_key = match &a.api_key_env {
        None => None,
        Some(var) => match std::env::var(var) {
            Ok(k) if !k.is_empty() => Some(k),
            _ => bail!("--api-key-env {var}: the environment variable is unset or empty; export the key in it"),
        },
    };
    let mut cfg = ServeConfig::new(a.checkpoint.clone());
    cfg.host = a.host.clone();
    cfg.port = a.port;
    cfg.api_key = api_key;
    if let Some(name) = &a.model_name {
        cfg.model_name = name.clone();
    }
    cfg.max_body_bytes = a.max_body_bytes;
    cfg.max_buffered_bytes = a.max_buffered_bytes;
    cfg.max_connections = a.max_connections;
    cfg.read_timeout = Duration::from_secs(a.read_timeout_s);
    cfg.batch.max_rows = a.max_batch_rows;
    cfg.batch.max_queued = a.max_queued;
    cfg.batch.window = Duration::from_millis(a.batch_window_ms);
    let backends = crate::backends::linked();
    let loader = Box::new(
        move |dir: &std::path::Path| -> autodidact_core::Result<Box<dyn Policy>> {
            Ok(backends.load(BackendKind::default(), dir)?)
        },
    );
    autodidact_serve::serve(cfg, loader).map_err(|e| match e {
        ServeError::Load { path, source } => {
            anyhow::Error::new(source).context(format!("loading checkpoint {}", path.display()))
        }
        other => other.into(),
    })
}
