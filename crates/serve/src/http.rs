//! The HTTP side: routes, the API key, body limits, and answers as JSON or server-sent
//! events.

use crate::api::{self, ChatRequest, CompletionRequest, Endpoint, Plan};
use crate::batcher::{Batcher, Event};
use crate::error::ApiError;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, HeaderMap};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::stream::{self, Stream};
use serde::de::DeserializeOwned;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// What every handler shares.
pub struct AppState {
    pub batcher: Batcher,
    /// The name clients address the model by (`model` in requests).
    pub model_name: String,
    pub api_key: Option<String>,
    pub max_body_bytes: usize,
    /// Bytes of request bodies that may still be buffered, all requests together (a permit
    /// per byte, held until the request is answered).
    pub buffered: Arc<tokio::sync::Semaphore>,
    /// The permits `buffered` started with.
    pub max_buffered_bytes: usize,
    /// Time a client has to send a request body.
    pub read_timeout: std::time::Duration,
    pub started: u64,
    pub next_id: AtomicU64,
}

pub fn router(state: Arc<AppState>) -> Router {
    let limit = state.max_body_bytes;
    Router::new()
        .route("/v1/models", get(models))
        .route("/v1/completions", post(sampling::<CompletionRequest>))
        .route("/v1/chat/completions", post(sampling::<ChatRequest>))
        .route("/get_model_info", get(model_info))
        .route("/update_weights_from_disk", post(update_weights))
        // The key is checked before the body is read (the later layer runs first), so a
        // client without it cannot make the server buffer a body.
        .route_layer(middleware::from_fn_with_state(state.clone(), read_body))
        .route_layer(middleware::from_fn_with_state(state.clone(), authorize))
        .route("/health", get(|| async { "ok" }))
        .fallback(|req: Request| async move { ApiError::not_found(req.uri().path()) })
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

/// Reads the whole request body before any handler runs, within the size limit, the read
/// timeout and the server's budget of buffered bytes: a client that sends its body slowly,
/// more than the limit, or while other requests' bodies fill the budget, is answered (408,
/// 413 or 503) instead of holding a handler or growing the server.
async fn read_body(State(s): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let (parts, body) = req.into_parts();
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    let read = buffer_body(&s, declared, body);
    let (bytes, _held) = match tokio::time::timeout(s.read_timeout, read).await {
        Err(_) => return ApiError::timeout(s.read_timeout).into_response(),
        Ok(Err(e)) => return e.into_response(),
        Ok(Ok(read)) => read,
    };
    // The budget's permits are held until the request is answered.
    next.run(Request::from_parts(parts, axum::body::Body::from(bytes)))
        .await
}

/// Bodies up to this size (a prompt of some thousands of tokens) are read without the shared
/// budget, so that large bodies filling it do not turn ordinary requests away; at most
/// `max_connections` of them are read at once.
pub const UNBUDGETED_BODY_BYTES: usize = 64 << 10;

/// The body, its buffer's bytes taken from the server's budget before they are allocated
/// (all at once when the client declared its length, else as the buffer grows); with the
/// permits that hold them.
async fn buffer_body(
    s: &AppState,
    declared: Option<u64>,
    mut body: axum::body::Body,
) -> Result<(Bytes, Option<tokio::sync::OwnedSemaphorePermit>), ApiError> {
    use http_body_util::BodyExt;
    let limit = s.max_body_bytes;
    let mut held: Option<tokio::sync::OwnedSemaphorePermit> = None;
    // Takes `n` more bytes from the budget (at most max_body_bytes, which fits a u32: checked
    // when the server starts).
    let mut take = |n: usize| -> Result<(), ApiError> {
        let permit = s
            .buffered
            .clone()
            .try_acquire_many_owned(n as u32)
            .map_err(|_| ApiError::bodies_over_budget(s.max_buffered_bytes))?;
        match &mut held {
            Some(h) => h.merge(permit),
            None => held = Some(permit),
        }
        Ok(())
    };
    let mut bytes: Vec<u8> = Vec::new();
    // Bytes of `bytes`' capacity paid for from the budget (or exempt).
    let mut paid = 0;
    if let Some(n) = declared {
        if n > limit as u64 {
            return Err(ApiError::too_large(limit));
        }
        let n = n as usize;
        if n > UNBUDGETED_BODY_BYTES {
            take(n)?;
        }
        bytes.reserve_exact(n);
        paid = n;
    }
    while let Some(frame) = body.frame().await {
        let frame =
            frame.map_err(|e| ApiError::invalid(None, format!("could not read the body: {e}")))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        let need = bytes.len() + data.len();
        if need > limit {
            return Err(ApiError::too_large(limit));
        }
        if need > paid {
            // Grown by doubling, so that a body of many small frames is copied a few times.
            let floor = UNBUDGETED_BODY_BYTES.min(limit);
            let grown = need.max(2 * paid).max(floor).min(limit);
            if grown > UNBUDGETED_BODY_BYTES {
                take(grown - paid.max(UNBUDGETED_BODY_BYTES))?;
            }
            bytes.reserve_exact(grown - bytes.len());
            paid = grown;
        }
        bytes.extend_from_slice(&data);
    }
    Ok((Bytes::from(bytes), held))
}

/// Answers a connection beyond the server's limit with a 503 and closes it, without reading
/// its request.
pub async fn refuse_connection(mut stream: tokio::net::TcpStream, limit: usize) {
    use tokio::io::AsyncWriteExt;
    let body = ApiError::too_many_connections(limit).body().to_string();
    let head = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n",
        body.len()
    );
    let reply = async {
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(body.as_bytes()).await?;
        stream.shutdown().await
    };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), reply).await;
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

async fn authorize(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    req: Request,
    next: Next,
) -> Response {
    if let Some(key) = &s.api_key {
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if given != Some(key.as_str()) {
            return ApiError::unauthorized().into_response();
        }
    }
    next.run(req).await
}

/// Parses a JSON body; errors name the field and what was wrong.
fn parse<T: DeserializeOwned>(
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
    limit: usize,
) -> Result<T, ApiError> {
    let body = body.map_err(|e| {
        if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::too_large(limit)
        } else {
            ApiError::invalid(None, format!("could not read the body: {e}"))
        }
    })?;
    let de = &mut serde_json::Deserializer::from_slice(&body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." || path.is_empty() {
            ApiError::invalid(None, format!("the body is not a valid request: {inner}"))
        } else {
            ApiError::invalid(Some(&path), inner.to_string())
        }
    })
}

async fn models(State(s): State<Arc<AppState>>) -> Json<serde_json::Value> {
    let info = s.batcher.info();
    Json(serde_json::json!({
        "object": "list",
        "data": [{
            "id": s.model_name,
            "object": "model",
            "created": s.started,
            "owned_by": "autodidact",
            "root": info.path.display().to_string(),
            "max_model_len": info.context_length,
        }],
    }))
}

async fn model_info(State(s): State<Arc<AppState>>) -> Json<serde_json::Value> {
    let info = s.batcher.info();
    Json(serde_json::json!({
        "model_path": info.path.display().to_string(),
        "tokenizer_path": info.path.display().to_string(),
        "is_generation": true,
        "served_model_name": s.model_name,
        "max_model_len": info.context_length,
        "weight_version": info.generation,
    }))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateWeights {
    model_path: String,
    /// SGLang's option; only `auto` (or absent) is supported.
    load_format: Option<String>,
}

/// SGLang's `POST /update_weights_from_disk`: loads another checkpoint between batches.
async fn update_weights(
    State(s): State<Arc<AppState>>,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Response {
    let req: UpdateWeights = match parse(body, s.max_body_bytes) {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    if req.load_format.as_deref().is_some_and(|f| f != "auto") {
        return ApiError::invalid(Some("load_format"), "only \"auto\" is supported")
            .into_response();
    }
    let answer = s.batcher.reload(req.model_path.into()).await;
    let (ok, message) = match answer {
        Ok(Ok(info)) => (
            true,
            format!(
                "serving {} (weight version {})",
                info.path.display(),
                info.generation
            ),
        ),
        Ok(Err(e)) => (false, e),
        Err(_) => (false, "the batcher has stopped".to_string()),
    };
    let status = if ok {
        axum::http::StatusCode::OK
    } else {
        axum::http::StatusCode::BAD_REQUEST
    };
    (
        status,
        Json(serde_json::json!({"success": ok, "message": message, "num_paused_requests": 0})),
    )
        .into_response()
}

/// A sampling request body: which model it names, and its plan.
trait SamplingRequest: DeserializeOwned {
    fn model(&self) -> &str;
    fn plan(self) -> Result<Plan, ApiError>;
}

impl SamplingRequest for CompletionRequest {
    fn model(&self) -> &str {
        &self.model
    }
    fn plan(self) -> Result<Plan, ApiError> {
        CompletionRequest::plan(self)
    }
}

impl SamplingRequest for ChatRequest {
    fn model(&self) -> &str {
        &self.model
    }
    fn plan(self) -> Result<Plan, ApiError> {
        ChatRequest::plan(self)
    }
}

/// `POST /v1/completions` and `POST /v1/chat/completions`.
async fn sampling<R: SamplingRequest>(
    State(s): State<Arc<AppState>>,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Response {
    let plan = parse::<R>(body, s.max_body_bytes).and_then(|r| {
        if r.model() != s.model_name {
            return Err(ApiError::model_not_found(r.model(), &s.model_name));
        }
        r.plan()
    });
    answer(s, plan).await
}

async fn answer(s: Arc<AppState>, plan: Result<Plan, ApiError>) -> Response {
    let plan = match plan {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    let mut events = match s.batcher.submit(plan.clone()) {
        Ok(rx) => rx,
        Err(e) => return e.into_response(),
    };
    let n = s.next_id.fetch_add(1, Ordering::Relaxed);
    let id = match plan.endpoint {
        Endpoint::Completions => format!("cmpl-{:x}-{n}", s.started),
        Endpoint::Chat => format!("chatcmpl-{:x}-{n}", s.started),
    };
    let created = now();
    if !plan.stream {
        // Dropping `events` (the client went away) ends the request's rows.
        loop {
            match events.recv().await {
                Some(Event::Text { .. }) => {}
                Some(Event::Done(Ok(sampled))) => {
                    let head = api::Head {
                        id: &id,
                        created,
                        model: &s.model_name,
                    };
                    return Json(api::response(&plan, &head, &sampled)).into_response();
                }
                Some(Event::Done(Err(e))) => return e.into_response(),
                None => {
                    return ApiError::internal("the batcher dropped the request").into_response()
                }
            }
        }
    }
    Sse::new(sse_stream(s, plan, id, created, events)).into_response()
}

/// The events of a streamed answer: a chunk per piece of text, one closing chunk per choice
/// with its finish reason, the usage when asked, then `[DONE]`.
fn sse_stream(
    s: Arc<AppState>,
    plan: Plan,
    id: String,
    created: u64,
    events: tokio::sync::mpsc::UnboundedReceiver<Event>,
) -> impl Stream<Item = Result<SseEvent, Infallible>> {
    let choices = plan.choices();
    let state = (events, vec![true; choices], Vec::<SseEvent>::new(), false);
    stream::unfold(
        state,
        move |(mut events, mut first, mut pending, mut done)| {
            let (s, plan, id) = (s.clone(), plan.clone(), id.clone());
            async move {
                loop {
                    if let Some(e) = pending.pop() {
                        return Some((Ok(e), (events, first, pending, done)));
                    }
                    if done {
                        return None;
                    }
                    let json = |v: serde_json::Value| SseEvent::default().data(v.to_string());
                    let head = api::Head {
                        id: &id,
                        created,
                        model: &s.model_name,
                    };
                    match events.recv().await {
                        Some(Event::Text { index, text }) => {
                            let c = api::chunk(&plan, &head, index, &text, first[index], None);
                            first[index] = false;
                            pending.push(json(c));
                        }
                        Some(Event::Done(Ok(sampled))) => {
                            // Reversed: `pending` pops from the end.
                            let mut out = Vec::new();
                            for (index, c) in sampled.choices.iter().enumerate() {
                                out.push(json(api::chunk(
                                    &plan,
                                    &head,
                                    index,
                                    "",
                                    first[index],
                                    Some(c.finish),
                                )));
                            }
                            if plan.include_usage {
                                out.push(json(api::usage_chunk(&plan, &head, &sampled.usage())));
                            }
                            out.push(SseEvent::default().data("[DONE]"));
                            out.reverse();
                            pending = out;
                            done = true;
                        }
                        Some(Event::Done(Err(e))) => {
                            pending = vec![SseEvent::default().data("[DONE]"), json(e.body())];
                            done = true;
                        }
                        None => return None,
                    }
                }
            }
        },
    )
}
