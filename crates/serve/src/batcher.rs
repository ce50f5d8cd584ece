//! The batcher: one thread that owns the policy and turns queued requests into decode
//! batches.
//!
//! Requests wait in a queue. The thread takes the first, gathers more until the batch is
//! full, a short window ends or the queue stays empty for a millisecond, then runs the
//! waiting requests as one call of [`Policy::sample_each`], each row with its request's
//! settings, so concurrent clients share a decode batch whatever they ask for. (Continuous
//! batching, where rows join a batch between decode steps, is the next step; today a
//! request that arrives while a batch runs waits for it.)
//!
//! Streaming rows report their text through the watch as the sampler extends them; a row
//! whose client went away is ended at its next token.

use crate::api::{Plan, Prompts, Sampled};
use crate::error::ApiError;
use autodidact_core::{Policy, SampleWatch, SamplingParams};
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
    /// How long the first queued request waits for others to share its batch.
    pub window: Duration,
    /// Most rows (completions) in one sampling call.
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
                Worker {
                    policy,
                    loader,
                    cfg,
                    queued: q,
                    info,
                    next_seed: std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_nanos() as u64),
                }
                .run(rx);
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
    cfg: BatchConfig,
    queued: Arc<AtomicUsize>,
    info: Arc<Mutex<ModelInfo>>,
    next_seed: u64,
}

/// A request's rows, rendered and tokenized: ready to sample.
struct Rows {
    prompts: Vec<String>,
    seeds: Vec<u64>,
    params: SamplingParams,
    prompt_tokens: usize,
}

/// A job with its rows.
struct Ready {
    job: Job,
    rows: Rows,
}

impl Worker {
    fn run(mut self, rx: mpsc::Receiver<Message>) {
        let rows_of = |m: &Message| match m {
            Message::Job(j) => j.plan.choices(),
            Message::Reload { .. } => 0,
        };
        while let Ok(first) = rx.recv() {
            let mut rows = rows_of(&first);
            let mut messages = vec![first];
            let deadline = Instant::now() + self.cfg.window;
            // Gather until the batch is full, the window ends, or the queue stays quiet for
            // QUIET (clients that send together arrive within it).
            while rows < self.cfg.max_rows {
                let left = deadline.saturating_duration_since(Instant::now());
                match rx.recv_timeout(left.min(QUIET)) {
                    Ok(m) => {
                        rows += rows_of(&m);
                        messages.push(m);
                    }
                    Err(_) => break,
                }
            }
            let mut ready = Vec::new();
            for m in messages {
                match m {
                    Message::Job(job) => match self.prepare(&job.plan) {
                        Ok(rows) => ready.push(Ready { job, rows }),
                        Err(e) => self.finish(&job, Err(e)),
                    },
                    Message::Reload { path, reply } => {
                        // Requests queued before the reload run on the old weights.
                        self.run_batches(std::mem::take(&mut ready));
                        let _ = reply.send(self.reload(path));
                    }
                }
            }
            self.run_batches(ready);
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

    fn finish(&self, job: &Job, result: Result<Sampled, ApiError>) {
        self.queued.fetch_sub(job.plan.choices(), Ordering::SeqCst);
        let _ = job.events.send(Event::Done(result));
    }

    /// Renders and tokenizes a job's prompts and fixes its completion length.
    fn prepare(&mut self, plan: &Plan) -> Result<Rows, ApiError> {
        let tok = self.policy.tokenizer();
        let ctx = self.policy.context_length();
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
                    format!(
                        "the prompt has {longest} tokens and fills this model's context of {ctx}"
                    ),
                );
                return Err(e);
            }
            None => room,
        };
        let n = plan.n;
        let seed0 = plan.seed.unwrap_or_else(|| {
            self.next_seed = self
                .next_seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            self.next_seed
        });
        let prompts: Vec<String> = texts
            .iter()
            .flat_map(|t| std::iter::repeat_n(t.clone(), n))
            .collect();
        let seeds = (0..prompts.len() as u64)
            .map(|i| seed0.wrapping_add(i))
            .collect();
        let params = SamplingParams {
            max_new_tokens: max_new,
            ..plan.params.clone()
        };
        Ok(Rows {
            prompts,
            seeds,
            params,
            prompt_tokens,
        })
    }

    /// Runs the ready jobs in arrival order, as many as fit in `max_rows` a call (each row
    /// with its own request's settings).
    fn run_batches(&mut self, ready: Vec<Ready>) {
        let mut batch = Vec::new();
        let mut rows = 0;
        for r in ready {
            let n = r.rows.prompts.len();
            if !batch.is_empty() && rows + n > self.cfg.max_rows {
                self.run_batch(std::mem::take(&mut batch));
                rows = 0;
            }
            rows += n;
            batch.push(r);
        }
        if !batch.is_empty() {
            self.run_batch(batch);
        }
    }

    fn run_batch(&mut self, batch: Vec<Ready>) {
        let mut prompts = Vec::new();
        let mut seeds = Vec::new();
        let mut params = Vec::new();
        let mut owner = Vec::new(); // row → (job, choice)
        for (j, r) in batch.iter().enumerate() {
            for (c, (p, s)) in r.rows.prompts.iter().zip(&r.rows.seeds).enumerate() {
                prompts.push(p.clone());
                seeds.push(*s);
                params.push(r.rows.params.clone());
                owner.push((j, c));
            }
        }
        let watch = Watch {
            owner: &owner,
            jobs: &batch,
            sent: owner.iter().map(|_| AtomicUsize::new(0)).collect(),
        };
        let result = self.policy.sample_each(&prompts, &seeds, &params, &watch);
        let sent: Vec<usize> = watch
            .sent
            .iter()
            .map(|s| s.load(Ordering::SeqCst))
            .collect();
        match result {
            Ok(completions) => {
                let mut per_job: Vec<Vec<_>> = batch.iter().map(|_| Vec::new()).collect();
                for ((c, &(j, _)), &sent) in completions.into_iter().zip(&owner).zip(&sent) {
                    per_job[j].push((c, sent));
                }
                for (r, choices) in batch.iter().zip(per_job) {
                    let (token_texts, top_texts) = if r.job.plan.logprobs {
                        choices
                            .iter()
                            .map(|(c, _)| {
                                let tops = c
                                    .top_logprobs
                                    .iter()
                                    .map(|alts| {
                                        let ids: Vec<u32> = alts.iter().map(|a| a.0).collect();
                                        let texts = self.token_texts(&ids);
                                        texts.into_iter().zip(alts.iter().map(|a| a.1)).collect()
                                    })
                                    .collect();
                                (self.token_texts(&c.tokens), tops)
                            })
                            .unzip()
                    } else {
                        (Vec::new(), Vec::new())
                    };
                    if r.job.plan.stream {
                        // The text the watch held back (a possible stop string, the end).
                        for (index, (c, sent)) in choices.iter().enumerate() {
                            if let Some(rest) = c.text.get(*sent..).filter(|t| !t.is_empty()) {
                                let _ = r.job.events.send(Event::Text {
                                    index,
                                    text: rest.to_string(),
                                });
                            }
                        }
                    }
                    let sampled = Sampled {
                        choices: choices.into_iter().map(|(c, _)| c).collect(),
                        token_texts,
                        top_texts,
                        prompt_tokens: r.rows.prompt_tokens,
                    };
                    self.finish(&r.job, Ok(sampled));
                }
            }
            Err(e) => {
                for r in &batch {
                    self.finish(
                        &r.job,
                        Err(ApiError::internal(format!("sampling failed: {e}"))),
                    );
                }
            }
        }
    }

    /// The text of each token alone (a piece of a multi-byte character shows as U+FFFD).
    fn token_texts(&self, tokens: &[u32]) -> Vec<String> {
        let tok = self.policy.tokenizer();
        tokens
            .iter()
            .map(|&t| tok.decode(&[t]).unwrap_or_default())
            .collect()
    }
}

/// Forwards streaming rows' new text to their handlers, and ends rows whose client is gone.
struct Watch<'a> {
    owner: &'a [(usize, usize)],
    jobs: &'a [Ready],
    /// Bytes of each row's text sent so far.
    sent: Vec<AtomicUsize>,
}

impl SampleWatch for Watch<'_> {
    fn streams(&self, row: usize) -> bool {
        self.jobs[self.owner[row].0].job.plan.stream
    }

    fn cancelled(&self, row: usize) -> bool {
        self.jobs[self.owner[row].0].job.events.is_closed()
    }

    fn grew(&self, row: usize, _tokens: &[u32], text: &str) -> bool {
        let (j, index) = self.owner[row];
        let events = &self.jobs[j].job.events;
        let sent = self.sent[row].load(Ordering::SeqCst);
        // The shown text only grows; a decoder that rewrites earlier text (space clean-up)
        // is caught up with at the end from the final text.
        if text.len() > sent && text.is_char_boundary(sent) {
            let piece = text[sent..].to_string();
            self.sent[row].store(text.len(), Ordering::SeqCst);
            return events.send(Event::Text { index, text: piece }).is_err();
        }
        false
    }
}
