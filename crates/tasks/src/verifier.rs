//! External verifier processes: graders in any language, run as a pool of long-lived workers
//! that speak JSON lines.
//!
//! For each completion the engine writes one line to a worker's stdin:
//!
//! ```json
//! {"id": "17", "prompt": "...", "completion": "...", "answer": <json|null>, "meta": <json|null>}
//! ```
//!
//! and the worker answers, in any order, with one line on stdout:
//!
//! ```json
//! {"id": "17", "score": 1.0, "correct": true, "answer": "42", "error": null}
//! ```
//!
//! `score` is in [0, 1] (required unless `error` is given); `correct` defaults to
//! `score >= 1`; `answer` is the answer the worker read (what votes compare); `error` marks
//! the completion as ungradable, with the worker's reason. A worker must flush stdout after
//! each reply. `examples/verifiers/exact_match.py` is the reference implementation.
//!
//! Requests are pipelined (up to `max_inflight` per worker) to the least-loaded worker. A
//! worker that exits, stops answering for `timeout_s`, or writes a line that is not a reply
//! is killed and restarted, and its unanswered requests are sent again. The oldest of them,
//! the one it was working on, is charged an attempt; a request charged `retries + 1` times is
//! recorded as a verifier error (an `ungradable` verdict with the reason), never as a wrong
//! answer. Workers that exit before answering anything, again and again, stop the batch with
//! an error quoting their stderr. Each worker's stderr goes to
//! `verifier-<n>.log` in the log directory (the run's `logs/`), and the pool's own notes
//! (restarts, timeouts, malformed lines) to `verifier.log` there.

use autodidact_core::{Error, Problem, Result, Verdict};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, VecDeque};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Settings of an external verifier (`[task.verifier]`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerifierConfig {
    /// The worker's command line as a list: `["python3", "verify.py", "--strict"]`.
    pub command: Vec<String>,
    /// Worker processes run side by side.
    #[serde(default = "default_workers")]
    pub workers: usize,
    /// Seconds a request may wait for its reply before its worker counts as hung.
    #[serde(default = "default_timeout")]
    pub timeout_s: f64,
    /// Times a request is retried after its worker crashed, hung or wrote garbage, before it
    /// is recorded as a verifier error.
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// Requests in flight per worker.
    #[serde(default = "default_inflight")]
    pub max_inflight: usize,
}

fn default_workers() -> usize {
    2
}
fn default_timeout() -> f64 {
    30.0
}
fn default_retries() -> u32 {
    2
}
fn default_inflight() -> usize {
    64
}

impl VerifierConfig {
    /// A config running `command` with the defaults.
    pub fn new(command: &[&str]) -> Self {
        Self {
            command: command.iter().map(|s| s.to_string()).collect(),
            workers: default_workers(),
            timeout_s: default_timeout(),
            retries: default_retries(),
            max_inflight: default_inflight(),
        }
    }

    /// Checks the settings; workers start on first use.
    pub fn build(&self) -> Result<VerifierPool> {
        let key = |k: &str| format!("task.verifier.{k}");
        if self.command.is_empty() || self.command[0].is_empty() {
            return Err(Error::invalid(
                key("command"),
                "is empty; give the program and its arguments as a list, e.g. [\"python3\", \"verify.py\"]",
            ));
        }
        if !(1..=256).contains(&self.workers) {
            return Err(Error::invalid(
                key("workers"),
                format!("{} must be in 1..=256", self.workers),
            ));
        }
        if !(self.timeout_s.is_finite() && self.timeout_s > 0.0 && self.timeout_s <= 86_400.0) {
            return Err(Error::invalid(
                key("timeout_s"),
                format!(
                    "{} must be a positive number of seconds, at most 86400 (a day)",
                    self.timeout_s
                ),
            ));
        }
        if !(1..=100_000).contains(&self.max_inflight) {
            return Err(Error::invalid(
                key("max_inflight"),
                format!("{} must be in 1..=100000", self.max_inflight),
            ));
        }
        let (tx, rx) = channel();
        Ok(VerifierPool {
            cfg: self.clone(),
            state: Mutex::new(State {
                workers: (0..self.workers).map(|_| None).collect(),
                tx,
                rx,
                log_dir: None,
                next_id: 0,
                next_gen: 0,
                startup_failures: 0,
                ever_answered: false,
            }),
        })
    }
}

/// A pool of verifier workers (see the module's documentation).
pub struct VerifierPool {
    cfg: VerifierConfig,
    state: Mutex<State>,
}

struct State {
    workers: Vec<Option<Worker>>,
    tx: Sender<Event>,
    rx: Receiver<Event>,
    log_dir: Option<PathBuf>,
    next_id: u64,
    next_gen: u64,
    /// Workers that exited before answering anything, in a row.
    startup_failures: u32,
    /// Whether any worker has answered yet.
    ever_answered: bool,
}

struct Worker {
    child: Child,
    /// Request lines for the writer thread, which owns the worker's stdin (so that a worker
    /// that stops reading never blocks the pool).
    requests: Sender<Vec<u8>>,
    /// Distinguishes this process from earlier ones in the same slot (events of a killed
    /// worker that arrive late are ignored).
    generation: u64,
    answered: bool,
    inflight: usize,
}

/// What a worker's stdout reader reports.
enum Event {
    Line(u64, String),
    Closed(u64),
}

/// One line of a worker's reply.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Reply {
    id: String,
    #[serde(default)]
    score: Option<f64>,
    #[serde(default)]
    correct: Option<bool>,
    #[serde(default)]
    answer: Option<String>,
    #[serde(default)]
    error: Option<String>,
}

#[derive(Serialize)]
struct Request<'a> {
    id: &'a str,
    prompt: &'a str,
    completion: &'a str,
    answer: &'a serde_json::Value,
    meta: &'a Option<serde_json::Value>,
}

/// One completion to grade: its problem, the reference answer as the task file gave it (any
/// JSON; `null` when there is none), and the completion.
#[derive(Clone, Copy)]
pub struct Item<'a> {
    pub problem: &'a Problem,
    pub answer: &'a serde_json::Value,
    pub completion: &'a str,
}

/// Longest reply line accepted.
const MAX_LINE: usize = 1 << 20;

impl Worker {
    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl State {
    fn note(&self, msg: &str) {
        match &self.log_dir {
            Some(dir) => {
                let path = dir.join("verifier.log");
                if let Ok(mut f) = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                {
                    let _ = writeln!(f, "{msg}");
                }
            }
            None => eprintln!("verifier: {msg}"),
        }
    }

    /// The last lines of worker `w`'s stderr log, if it has one.
    fn stderr_tail(&self, w: usize) -> String {
        let Some(dir) = &self.log_dir else {
            return "(its stderr went to the terminal)".into();
        };
        let text =
            std::fs::read_to_string(dir.join(format!("verifier-{w}.log"))).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(5)..].join("\n  ");
        if tail.is_empty() {
            "(its stderr is empty)".into()
        } else {
            format!("its stderr ends:\n  {tail}")
        }
    }

    fn start(&mut self, cfg: &VerifierConfig, w: usize) -> Result<()> {
        let stderr = match &self.log_dir {
            Some(dir) => {
                let path = dir.join(format!("verifier-{w}.log"));
                let f = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)
                    .map_err(|e| Error::io("opening verifier log", &path, e))?;
                Stdio::from(f)
            }
            None => Stdio::inherit(),
        };
        let mut child = Command::new(&cfg.command[0])
            .args(&cfg.command[1..])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .map_err(|e| {
                Error::invalid(
                    "task.verifier.command",
                    format!("{:?} could not start: {e}", cfg.command),
                )
            })?;
        let generation = self.next_gen;
        self.next_gen += 1;
        let stdout = child.stdout.take().expect("piped");
        let stdin = child.stdin.take().expect("piped");
        let (requests, lines) = channel::<Vec<u8>>();
        std::thread::spawn(move || write_requests(stdin, lines));
        let tx = self.tx.clone();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = Vec::new();
            loop {
                line.clear();
                match (&mut reader)
                    .take(MAX_LINE as u64 + 1)
                    .read_until(b'\n', &mut line)
                {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let text = String::from_utf8_lossy(&line).trim_end().to_string();
                        if tx.send(Event::Line(generation, text)).is_err() {
                            return;
                        }
                    }
                }
            }
            let _ = tx.send(Event::Closed(generation));
        });
        self.workers[w] = Some(Worker {
            child,
            requests,
            generation,
            answered: false,
            inflight: 0,
        });
        Ok(())
    }

    fn slot_of(&self, generation: u64) -> Option<usize> {
        self.workers
            .iter()
            .position(|w| w.as_ref().is_some_and(|w| w.generation == generation))
    }
}

impl VerifierPool {
    /// Where worker stderr logs and the pool's notes go from now on (created if missing).
    pub fn set_log_dir(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io("creating", dir, e))?;
        let mut st = self.state.lock().expect("verifier pool lock");
        // Running workers keep their stderr; restart them so it goes to the new place.
        st.workers.iter_mut().for_each(|w| *w = None);
        st.log_dir = Some(dir.to_path_buf());
        Ok(())
    }

    /// Grades every (problem, completion) pair; verdicts come back in input order. Errors
    /// only when the verifier cannot run at all.
    pub fn verify_batch(&self, items: &[Item]) -> Result<Vec<Verdict>> {
        let cfg = &self.cfg;
        let mut st = self.state.lock().expect("verifier pool lock");
        let timeout = Duration::from_secs_f64(cfg.timeout_s);
        let mut results: Vec<Option<Verdict>> = vec![None; items.len()];
        let mut attempts = vec![0u32; items.len()];
        let mut pending: VecDeque<usize> = (0..items.len()).collect();
        // Request id → (item, worker slot, deadline).
        let mut inflight: HashMap<String, (usize, usize, Instant)> = HashMap::new();
        let mut done = 0;
        while done < items.len() {
            // Dispatch to the least-loaded workers, starting any that are not running.
            while let Some(&item) = pending.front() {
                let mut best = None;
                for w in 0..st.workers.len() {
                    if st.workers[w].is_none() {
                        st.start(cfg, w)?;
                    }
                    let load = st.workers[w].as_ref().map_or(usize::MAX, |x| x.inflight);
                    if load < cfg.max_inflight && best.is_none_or(|(_, l)| load < l) {
                        best = Some((w, load));
                    }
                }
                let Some((w, _)) = best else { break };
                pending.pop_front();
                let id = st.next_id.to_string();
                st.next_id += 1;
                let it = items[item];
                let request = Request {
                    id: &id,
                    prompt: &it.problem.prompt,
                    completion: it.completion,
                    answer: it.answer,
                    meta: &it.problem.meta,
                };
                let mut line = serde_json::to_vec(&request).expect("requests serialize");
                line.push(b'\n');
                let worker = st.workers[w].as_mut().expect("started");
                worker.inflight += 1;
                inflight.insert(id, (item, w, Instant::now() + timeout));
                // If it died, its reader reports the exit and the requests are retried.
                let _ = worker.requests.send(line);
            }
            // Wait for a reply or the earliest deadline.
            let now = Instant::now();
            let deadline = inflight
                .values()
                .map(|v| v.2)
                .min()
                .unwrap_or(now + timeout);
            let event = st.rx.recv_timeout(deadline.saturating_duration_since(now));
            let mut failed: Vec<(usize, String)> = Vec::new();
            match event {
                Ok(Event::Line(generation, text)) => {
                    let Some(w) = st.slot_of(generation) else {
                        continue;
                    };
                    let pid = st.workers[w].as_ref().map_or(0, Worker::pid);
                    let who = format!("verifier worker {w} (pid {pid})");
                    match parse_reply(&text) {
                        // A reply counts only from the worker its request went to.
                        Ok(reply) => {
                            match inflight.get(&reply.id).filter(|v| v.1 == w).map(|v| v.0) {
                                Some(item) => {
                                    inflight.remove(&reply.id);
                                    let worker = st.workers[w].as_mut().expect("running");
                                    worker.inflight -= 1;
                                    worker.answered = true;
                                    st.startup_failures = 0;
                                    st.ever_answered = true;
                                    results[item] = Some(verdict_of(reply).unwrap_or_else(|why| {
                                        Verdict::ungradable_because(format!(
                                            "{who} sent a malformed reply {text:?}: {why}"
                                        ))
                                    }));
                                    done += 1;
                                }
                                None => failed
                                    .push((w, format!("{who} answered an unknown id in {text:?}"))),
                            }
                        }
                        Err(why) => failed
                            .push((w, format!("{who} sent a malformed reply {text:?}: {why}"))),
                    }
                }
                Ok(Event::Closed(generation)) => {
                    let Some(w) = st.slot_of(generation) else {
                        continue;
                    };
                    let worker = st.workers[w].as_mut().expect("running");
                    let status = exit_status(&mut worker.child);
                    let pid = worker.pid();
                    if !worker.answered {
                        st.startup_failures += 1;
                        let limit = (cfg.workers as u32) * (cfg.retries + 1);
                        if st.startup_failures > limit {
                            let tail = st.stderr_tail(w);
                            st.workers[w] = None;
                            return Err(Error::invalid(
                                "task.verifier.command",
                                format!(
                                    "{:?} exited {} times in a row before answering anything (last: worker {w}, pid {pid}, {status}); {tail}",
                                    cfg.command, st.startup_failures
                                ),
                            ));
                        }
                    }
                    failed.push((
                        w,
                        format!("verifier worker {w} (pid {pid}) exited ({status})"),
                    ));
                }
                Err(RecvTimeoutError::Timeout) => {
                    let now = Instant::now();
                    let mut hung: Vec<usize> = inflight
                        .values()
                        .filter(|v| v.2 <= now)
                        .map(|v| v.1)
                        .collect();
                    hung.sort_unstable();
                    hung.dedup();
                    for w in hung {
                        let pid = st.workers[w].as_ref().map_or(0, Worker::pid);
                        failed.push((
                            w,
                            format!(
                                "verifier worker {w} (pid {pid}) did not answer within {}s",
                                cfg.timeout_s
                            ),
                        ));
                    }
                }
                Err(RecvTimeoutError::Disconnected) => unreachable!("the pool holds a sender"),
            }
            // Kill and forget failed workers and retry their requests. The blame (an attempt)
            // goes to the oldest request the worker held, the one it was working on; once the
            // verifier has answered anything, a request out of attempts is recorded as a
            // verifier error. (Before that, deaths count towards the start-up limit above.)
            for (w, why) in failed {
                st.note(&why);
                st.workers[w] = None;
                let mut lost: Vec<(u64, String, usize)> = inflight
                    .iter()
                    .filter(|(_, v)| v.1 == w)
                    .map(|(id, v)| (id.parse().unwrap_or(u64::MAX), id.clone(), v.0))
                    .collect();
                lost.sort_unstable();
                for (k, (_, id, item)) in lost.into_iter().enumerate().rev() {
                    inflight.remove(&id);
                    if k == 0 && st.ever_answered {
                        attempts[item] += 1;
                    }
                    if attempts[item] > cfg.retries {
                        results[item] = Some(Verdict::ungradable_because(format!(
                            "verifier error after {} attempts: {why}",
                            attempts[item]
                        )));
                        done += 1;
                    } else {
                        pending.push_front(item);
                    }
                }
            }
        }
        Ok(results
            .into_iter()
            .map(|v| v.expect("every item is done"))
            .collect())
    }
}

/// How a worker whose stdout closed ended: its exit status, waited for up to a second; one
/// that closed stdout but keeps running is killed.
fn exit_status(child: &mut Child) -> String {
    let until = Instant::now() + Duration::from_secs(1);
    while Instant::now() < until {
        if let Ok(Some(status)) = child.try_wait() {
            return status.to_string();
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    let _ = child.wait();
    "closed its stdout and was killed".into()
}

/// Writes request lines to a worker's stdin, flushing whenever no more are waiting; ends
/// when the pool drops the worker or the worker stops reading.
/// Writes a worker's requests to its stdin until the pool drops the worker or the worker
/// stops reading.
fn write_requests(stdin: ChildStdin, lines: Receiver<Vec<u8>>) {
    block_sigpipe();
    let mut out = std::io::BufWriter::new(stdin);
    while let Ok(line) = lines.recv() {
        if out.write_all(&line).is_err() {
            return;
        }
        while let Ok(more) = lines.try_recv() {
            if out.write_all(&more).is_err() {
                return;
            }
        }
        if out.flush().is_err() {
            return;
        }
    }
}

/// Blocks SIGPIPE on the calling thread, so that a write to a worker that stopped reading
/// fails with EPIPE (the pool then sees the worker's exit, or its silence) instead of killing
/// the process. A program may give SIGPIPE its default action (the `autodidact` binary does,
/// so that its output piped into `head` ends quietly), and the kernel sends it to the thread
/// that wrote; blocked there, it stays pending on this thread and goes with it.
fn block_sigpipe() {
    #[cfg(unix)]
    // SAFETY: builds a signal set on the stack and changes this thread's mask only.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGPIPE);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
}

/// Reads one reply line as the pool does (for the fuzz targets): its verdict, or why the line
/// is refused.
#[doc(hidden)]
pub fn fuzz_reply(text: &str) -> std::result::Result<Verdict, String> {
    verdict_of(parse_reply(text)?)
}

fn parse_reply(text: &str) -> std::result::Result<Reply, String> {
    if text.len() > MAX_LINE {
        return Err(format!("the line is longer than {MAX_LINE} bytes"));
    }
    serde_json::from_str(text).map_err(|e| e.to_string())
}

fn verdict_of(reply: Reply) -> std::result::Result<Verdict, String> {
    if let Some(error) = reply.error {
        return Ok(Verdict::ungradable_because(format!("verifier: {error}")));
    }
    let score = reply
        .score
        .ok_or("missing field `score` (required unless `error` is given)")?;
    if !(0.0..=1.0).contains(&score) {
        return Err(format!("score {score} is outside [0, 1]"));
    }
    let correct = reply.correct.unwrap_or(score >= 1.0);
    let mut v = if correct {
        Verdict::correct(String::new())
    } else {
        Verdict::incorrect(String::new())
    };
    v.score = score as f32;
    v.answer = reply.answer;
    Ok(v)
}
