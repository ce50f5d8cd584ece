//! The batcher: one thread that owns the policy and feeds it the queued requests as rows.
//!
//! The policy samples through [`Policy::sample_stream`]: the native model adds rows to its
//! running decode batch between steps (continuous batching) and hands each back the step
//! it ends, so a request that arrives while others decode starts at once instead of
//! waiting for them. A backend without that runs the rows waiting together as one call,
//! after gathering for a short window (until the batch is full, the window ends, or the
//! queue stays empty for a millisecond). Either way each row keeps its request's
//! settings, so clients share decode steps whatever they ask for.
//!
//! Streaming rows report their text through the feed as the sampler extends them; a row
//! whose client went away is ended at its next token. A reload ends the stream: rows
//! already taken finish on the old weights, the new checkpoint loads, and the stream
//! starts again.

use crate::api::{Plan, Prompts, Sampled};
use crate::error::ApiError;
use autodidact_core::{
    Completion, FeedRow, Policy, RowFeed, SampleWatch, SamplingParams, StreamModel, Wait,
};
use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc as tmpsc, oneshot};

/// Loads the policy of a checkpoint directory (at start and on reload).
pub type Loader = Box<dyn Fn(&std::path::Path) -> autodidact_core::Result<Box<dyn Policy>> + Send>;

/// What the batcher tells a request's handler.
#[derive(Debug)]
pub enum Event {
    /// More final text of choice `index`.
    Text { index: usize, text: String },
    /// The request is done: its samples, or why it failed.
    Done(Result<Sampled, ApiError>),
}

/// A request for the batcher.
pub struct Job {
    pub plan: Plan,
    pub events: tmpsc::UnboundedSender<Event>,
}

/// The checkpoint being served.
#[derive(Clone, Debug)]
pub struct ModelInfo {
    pub path: PathBuf,
    pub context_length: usize,
    /// Reloads so far.
    pub generation: u64,
}

pub enum Message {
    Job(Job),
    /// Load the checkpoint at `path` between batches (SGLang's `update_weights_from_disk`).
    Reload {
        path: PathBuf,
        reply: oneshot::Sender<Result<ModelInfo, String>>,
    },
}

/// Settings of the batcher.
#[derive(Clone, Debug)]
pub struct BatchConfig {
    /// How long the first queued request waits for others to share its batch, for a
    /// policy that cannot add rows to a running batch.
    pub window: Duration,
    /// Most rows (completions) sampled at once.
    pub max_rows: usize,
    /// Most completions waiting; more are refused with 503.
    pub max_queued: usize,
}

/// The handle the HTTP handlers use.
#[derive(Clone)]
pub struct Batcher {
    tx: mpsc::Sender<Message>,
    queued: Arc<AtomicUsize>,
    max_queued: usize,
    info: Arc<Mutex<ModelInfo>>,
}

impl Batcher {
    /// Starts the batcher thread on the policy `loader` makes of `path`; fails if it cannot
    /// load it.
    pub fn start(
        loader: Loader,
        path: PathBuf,
        cfg: BatchConfig,
    ) -> Result<Self, crate::error::ServeError> {
        let (tx, rx) = mpsc::channel();
        let (ready_tx, ready_rx) = mpsc::channel();
        let queued = Arc::new(AtomicUsize::new(0));
        let q = queued.clone();
        let max_queued = cfg.max_queued;
        std::thread::Builder::new()
            .name("batcher".into())
            .spawn(move || {
                let policy = match loader(&path) {
                    Ok(p) => p,
                    Err(e) => {
                        let _ =
                            ready_tx.send(Err(crate::error::ServeError::Load { path, source: e }));
                        return;
                    }
                };
                let info = Arc::new(Mutex::new(ModelInfo {
                    path,
                    context_length: policy.context_length(),
                    generation: 0,
                }));
                let _ = ready_tx.send(Ok(info.clone()));
                let seed = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos() as u64);
                let feed = Feed::new(rx, cfg.window, q, seed);
                Worker {
                    policy,
                    loader,
                    max_rows: cfg.max_rows,
                    info,
                }
                .run(&feed);
            })?;
        let info = ready_rx.recv().map_err(|_| {
            crate::error::ServeError::Config("the batcher thread died while loading".into())
        })??;
        Ok(Self {
            tx,
            queued,
            max_queued,
            info,
        })
    }

    /// Queues `plan`; its events arrive on the returned receiver.
    pub fn submit(&self, plan: Plan) -> Result<tmpsc::UnboundedReceiver<Event>, ApiError> {
        let rows = plan.choices();
        let now = self.queued.fetch_add(rows, Ordering::SeqCst);
        if now + rows > self.max_queued {
            self.queued.fetch_sub(rows, Ordering::SeqCst);
            return Err(ApiError::overloaded(now));
        }
        let (events, rx) = tmpsc::unbounded_channel();
        self.tx
            .send(Message::Job(Job { plan, events }))
            .map_err(|_| ApiError::internal("the batcher has stopped"))?;
        Ok(rx)
    }

    /// Asks the batcher to load `path` between batches.
    pub fn reload(&self, path: PathBuf) -> oneshot::Receiver<Result<ModelInfo, String>> {
        let (reply, rx) = oneshot::channel();
        let _ = self.tx.send(Message::Reload { path, reply });
        rx
    }

    pub fn info(&self) -> ModelInfo {
        self.info.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// How long the queue must stay empty for a batch to stop gathering before its window ends.
const QUIET: Duration = Duration::from_millis(1);

struct Worker {
    policy: Box<dyn Policy>,
    loader: Loader,
    max_rows: usize,
    info: Arc<Mutex<ModelInfo>>,
}

impl Worker {
    fn run(mut self, feed: &Feed) {
        loop {
            if let Err(e) = self.policy.sample_stream(feed, self.max_rows) {
                feed.fail_open(&format!("sampling failed: {e}"));
            }
            // The stream ends for a reload, or when the server shuts down.
            let Some((path, reply)) = feed.reopen() else {
                return;
            };
            let _ = reply.send(self.reload(path));
        }
    }

    fn reload(&mut self, path: PathBuf) -> Result<ModelInfo, String> {
        let policy =
            (self.loader)(&path).map_err(|e| format!("loading {}: {e}", path.display()))?;
        self.policy = policy;
        let mut info = self.info.lock().unwrap_or_else(|e| e.into_inner());
        info.path = path;
        info.context_length = self.policy.context_length();
        info.generation += 1;
        Ok(info.clone())
    }
}

/// How [`Feed::receive`] waits.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Recv {
    Block,
    Until(Instant),
    Now,
}

/// A request being sampled.
struct Open {
    job: Job,
    prompt_tokens: usize,
    /// Per choice: its completion once it ends.
    done: Vec<Option<Completion>>,
    /// Per choice: bytes of its text streamed so far.
    sent: Vec<usize>,
    /// Choices still sampling.
    left: usize,
    /// Why a choice failed, if one did.
    failed: Option<String>,
}

/// What the feed knows, behind one lock.
struct State {
    open: HashMap<u64, Open>,
    /// Row id → (request, choice).
    rows: HashMap<usize, (u64, usize)>,
    next_row: usize,
    next_job: u64,
    /// Rows of a request that did not fit the last take.
    leftover: VecDeque<FeedRow>,
    /// No more rows until the stream starts again: a reload waits, or the queue closed.
    closing: bool,
    reload: Option<(PathBuf, oneshot::Sender<Result<ModelInfo, String>>)>,
    /// Draws the seeds of requests that give none.
    next_seed: u64,
}

/// The queue as the policy's [`RowFeed`]: requests become rows (one per choice) with ids,
/// and rows come back as completions, gathered per request.
struct Feed {
    rx: Mutex<mpsc::Receiver<Message>>,
    state: Mutex<State>,
    window: Duration,
    queued: Arc<AtomicUsize>,
}

impl Feed {
    fn new(
        rx: mpsc::Receiver<Message>,
        window: Duration,
        queued: Arc<AtomicUsize>,
        seed: u64,
    ) -> Self {
        Self {
            rx: Mutex::new(rx),
            state: Mutex::new(State {
                open: HashMap::new(),
                rows: HashMap::new(),
                next_row: 0,
                next_job: 0,
                leftover: VecDeque::new(),
                closing: false,
                reload: None,
                next_seed: seed,
            }),
            window,
            queued,
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// After a stream: the reload that ended it (the feed opens again), or `None` when the
    /// queue has closed.
    fn reopen(&self) -> Option<(PathBuf, oneshot::Sender<Result<ModelInfo, String>>)> {
        let mut st = self.state();
        let reload = st.reload.take()?;
        st.closing = false;
        Some(reload)
    }

    /// Fails every request still open (the policy stopped without handing them back).
    fn fail_open(&self, why: &str) {
        let mut st = self.state();
        st.rows.clear();
        st.leftover.clear();
        for (_, o) in st.open.drain() {
            self.queued
                .fetch_sub(o.job.plan.choices(), Ordering::SeqCst);
            let _ = o.job.events.send(Event::Done(Err(ApiError::internal(why))));
        }
    }

    /// The requests waiting, as rows: at most `max` (the rest wait for the next take).
    fn take_rows(&self, max: usize, wait: Wait, model: &StreamModel) -> Option<Vec<FeedRow>> {
        let mut out = Vec::new();
        {
            let mut st = self.state();
            while out.len() < max {
                match st.leftover.pop_front() {
                    Some(r) => out.push(r),
                    None => break,
                }
            }
            if st.closing {
                return if out.is_empty() { None } else { Some(out) };
            }
        }
        if out.len() >= max {
            return Some(out);
        }
        // One taker reads the queue at a time; one that must not wait leaves it to a
        // waiting one.
        let rx = match wait {
            Wait::Never => match self.rx.try_lock() {
                Ok(rx) => rx,
                Err(_) => return Some(out),
            },
            _ => self.rx.lock().unwrap_or_else(|e| e.into_inner()),
        };
        let mut deadline: Option<Instant> = None;
        loop {
            let how = match (out.is_empty(), wait, deadline) {
                (_, Wait::Never, _) => Recv::Now,
                (true, _, _) => Recv::Block,
                // Gathering: until the window ends or the queue stays quiet for QUIET
                // (clients that send together arrive within it).
                (false, Wait::ForBatch, Some(d)) => Recv::Until(d.min(Instant::now() + QUIET)),
                (false, _, _) => Recv::Now,
            };
            let message = self.receive(&rx, how);
            if how == Recv::Block && message.is_some() {
                deadline = Some(Instant::now() + self.window);
            }
            let Some(message) = message else { break };
            match message {
                Message::Job(job) => self.open(job, model, max, &mut out),
                Message::Reload { path, reply } => {
                    // Requests queued before it run on the old weights.
                    let mut st = self.state();
                    st.closing = true;
                    st.reload = Some((path, reply));
                    break;
                }
            }
            if out.len() >= max {
                break;
            }
        }
        if out.is_empty() && self.state().closing {
            return None;
        }
        Some(out)
    }

    /// The next message, received as `how` says; a queue whose senders are gone closes the
    /// feed.
    fn receive(&self, rx: &mpsc::Receiver<Message>, how: Recv) -> Option<Message> {
        let got = match how {
            Recv::Block => rx.recv().map_err(|_| true),
            Recv::Until(t) => rx
                .recv_timeout(t.saturating_duration_since(Instant::now()))
                .map_err(|e| e == mpsc::RecvTimeoutError::Disconnected),
            Recv::Now => rx
                .try_recv()
                .map_err(|e| e == mpsc::TryRecvError::Disconnected),
        };
        match got {
            Ok(m) => Some(m),
            Err(gone) => {
                if gone {
                    self.state().closing = true;
                }
                None
            }
        }
    }

    /// Turns a request into rows (or answers it with why it cannot run).
    fn open(&self, job: Job, model: &StreamModel, max: usize, out: &mut Vec<FeedRow>) {
        let mut st = self.state();
        let seed0 = job.plan.seed.unwrap_or_else(|| {
            st.next_seed = st
                .next_seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            st.next_seed
        });
        let (prompts, params, prompt_tokens) = match prepare(&job.plan, model) {
            Ok(p) => p,
            Err(e) => {
                drop(st);
                self.answer(job, Err(e));
                return;
            }
        };
        let key = st.next_job;
        st.next_job += 1;
        let choices = prompts.len();
        for (c, prompt) in prompts.into_iter().enumerate() {
            let id = st.next_row;
            st.next_row += 1;
            st.rows.insert(id, (key, c));
            let row = FeedRow {
                id,
                prompt,
                seed: seed0.wrapping_add(c as u64),
                params: params.clone(),
            };
            if out.len() < max {
                out.push(row);
            } else {
                st.leftover.push_back(row);
            }
        }
        st.open.insert(
            key,
            Open {
                job,
                prompt_tokens,
                done: vec![None; choices],
                sent: vec![0; choices],
                left: choices,
                failed: None,
            },
        );
    }

    fn answer(&self, job: Job, result: Result<Sampled, ApiError>) {
        self.queued.fetch_sub(job.plan.choices(), Ordering::SeqCst);
        let _ = job.events.send(Event::Done(result));
    }

    /// Runs `f` on the request and choice of row `id`, if it is open.
    fn with_row<T>(&self, id: usize, f: impl FnOnce(&mut Open, usize) -> T) -> Option<T> {
        let mut st = self.state();
        let &(key, choice) = st.rows.get(&id)?;
        st.open.get_mut(&key).map(|o| f(o, choice))
    }
}

/// A request's rows, rendered and tokenized: their prompts (one per choice), settings with
/// the completion length fixed, and the prompt tokens counted for its usage.
fn prepare(
    plan: &Plan,
    model: &StreamModel,
) -> Result<(Vec<String>, SamplingParams, usize), ApiError> {
    let tok = model.tokenizer;
    let ctx = model.context_length;
    let texts = match &plan.prompts {
        Prompts::Text(p) => p.clone(),
        Prompts::Chat(m) => match tok.chat_prompt(m) {
            Ok(p) => vec![p],
            Err(e) => return Err(ApiError::invalid(Some("messages"), e.to_string())),
        },
    };
    let mut longest = 0;
    let mut prompt_tokens = 0;
    for (i, t) in texts.iter().enumerate() {
        match tok.encode_prompt(t) {
            Ok(ids) => {
                longest = longest.max(ids.len());
                prompt_tokens += ids.len();
            }
            Err(e) => {
                return Err(ApiError::invalid(
                    Some("prompt"),
                    format!("prompt {i}: {e}"),
                ))
            }
        }
    }
    let room = ctx.saturating_sub(longest);
    let max_new = match plan.max_tokens {
        Some(m) if longest + m > ctx => {
            let e = ApiError::invalid(
                Some("max_tokens"),
                format!(
                    "this model's context is {ctx} tokens; the prompt has {longest} and max_tokens asks for {m} more (at most {room})"
                ),
            );
            return Err(e);
        }
        Some(m) => m,
        None if room == 0 => {
            let e = ApiError::invalid(
                Some("messages"),
                format!("the prompt has {longest} tokens and fills this model's context of {ctx}"),
            );
            return Err(e);
        }
        None => room,
    };
    let prompts = texts
        .iter()
        .flat_map(|t| std::iter::repeat_n(t.clone(), plan.n))
        .collect();
    let params = SamplingParams {
        max_new_tokens: max_new,
        ..plan.params.clone()
    };
    Ok((prompts, params, prompt_tokens))
}

impl RowFeed for Feed {
    fn take(&self, max: usize, wait: Wait, model: &StreamModel) -> Option<Vec<FeedRow>> {
        self.take_rows(max, wait, model)
    }

    fn finished(&self, id: usize, result: Result<Completion, String>, model: &StreamModel) {
        let mut st = self.state();
        let Some((key, choice)) = st.rows.remove(&id) else {
            return;
        };
        let Some(o) = st.open.get_mut(&key) else {
            return;
        };
        match result {
            Ok(c) => {
                if o.job.plan.stream {
                    // The text the row held back (a possible stop string, the end).
                    if let Some(rest) = c.text.get(o.sent[choice]..).filter(|t| !t.is_empty()) {
                        let _ = o.job.events.send(Event::Text {
                            index: choice,
                            text: rest.to_string(),
                        });
                    }
                }
                o.done[choice] = Some(c);
            }
            Err(e) => o.failed = Some(e),
        }
        o.left -= 1;
        if o.left > 0 {
            return;
        }
        let o = st.open.remove(&key).expect("looked up above");
        drop(st);
        let result = match o.failed {
            Some(e) => Err(ApiError::internal(format!("sampling failed: {e}"))),
            None => Ok(sampled(&o.job.plan, o.done, o.prompt_tokens, model)),
        };
        self.answer(o.job, result);
    }
}

/// A request's completions with the texts its log-probs show.
fn sampled(
    plan: &Plan,
    done: Vec<Option<Completion>>,
    prompt_tokens: usize,
    model: &StreamModel,
) -> Sampled {
    let choices: Vec<Completion> = done.into_iter().flatten().collect();
    // The text of each token alone (a piece of a multi-byte character shows as U+FFFD), or
    // its id as vLLM writes it.
    let texts = |tokens: &[u32]| -> Vec<String> {
        tokens
            .iter()
            .map(|&t| match plan.token_ids {
                true => format!("token_id:{t}"),
                false => model.tokenizer.decode(&[t]).unwrap_or_default(),
            })
            .collect()
    };
    let (token_texts, top_texts) = if plan.logprobs {
        choices
            .iter()
            .map(|c| {
                let tops = c
                    .top_logprobs
                    .iter()
                    .map(|alts| {
                        let ids: Vec<u32> = alts.iter().map(|a| a.0).collect();
                        texts(&ids)
                            .into_iter()
                            .zip(alts.iter().map(|a| a.1))
                            .collect()
                    })
                    .collect();
                (texts(&c.tokens), tops)
            })
            .unzip()
    } else {
        (Vec::new(), Vec::new())
    };
    Sampled {
        choices,
        token_texts,
        top_texts,
        prompt_tokens,
    }
}

/// Rows are named by id; streaming rows' new text goes to their handlers, and a row whose
/// client is gone is ended.
impl SampleWatch for Feed {
    fn streams(&self, id: usize) -> bool {
        self.with_row(id, |o, _| o.job.plan.stream).unwrap_or(false)
    }

    fn cancelled(&self, id: usize) -> bool {
        self.with_row(id, |o, _| o.job.events.is_closed())
            .unwrap_or(true)
    }

    fn grew(&self, id: usize, _tokens: &[u32], text: &str) -> bool {
        self.with_row(id, |o, index| {
            // The shown text only grows; a decoder that rewrites earlier text (space
            // clean-up) is caught up with at the end from the final text.
            let sent = o.sent[index];
            if text.len() > sent && text.is_char_boundary(sent) {
                o.sent[index] = text.len();
                let piece = text[sent..].to_string();
                return o
                    .job
                    .events
                    .send(Event::Text { index, text: piece })
                    .is_err();
            }
            false
        })
        .unwrap_or(true)
    }
}
