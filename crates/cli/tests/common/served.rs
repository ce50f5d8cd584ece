//! A served evaluation and the faults between it and its server: a native reference run, a
//! config pointing the `openai` backend at a port, and an HTTP proxy in front of the server
//! that injects faults (5xx, 429, truncated bodies, hangs, a server that dies).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// A tiny model trained for a few hundred steps, and its run (the native reference).
pub fn tiny(dir: &Path) -> PathBuf {
    let out = dir.join("native");
    super::ok(&[
        "run",
        "-q",
        "--out",
        out.to_str().unwrap(),
        "--set",
        "star.rounds=0",
        "--set",
        "seed_stage.train.steps=400",
        "--set",
        "eval.problems=24",
    ]);
    out
}

/// A star config with no rounds that evaluates through the `openai` backend at `port`, with
/// `extra` lines under `[model.openai]`; written to `dir/name.toml`.
pub fn remote_config(dir: &Path, name: &str, port: u16, tokenizer: &Path, extra: &str) -> PathBuf {
    let path = dir.join(format!("{name}.toml"));
    let text = format!(
        r#"recipe = "star"
seed = 0
[task]
name = "addition"
[model]
backend = "openai"
[model.openai]
base_urls = ["http://127.0.0.1:{port}/v1"]
model = "tiny"
tokenizer = "{}"
{extra}
[seed_stage.train]
steps = 0
[star]
rounds = 0
[eval]
problems = 24
"#,
        tokenizer.display()
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// `autodidact run -q CONFIG --out OUT` on one thread.
pub fn run_config(config: &Path, out: &Path) -> std::process::Output {
    super::autodidact(&[
        "run",
        "-q",
        config.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ])
}

/// [`run_config`], which must succeed.
pub fn run_config_ok(config: &Path, out: &Path) {
    let o = run_config(config, out);
    assert!(
        o.status.success(),
        "{}: {}",
        config.display(),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Round 0's evaluation, problem by problem.
pub fn eval_json(run: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(run.join("rounds/r0000/eval.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// What the proxy does to request `k`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Fault {
    Pass,
    Status500,
    /// 429 with `Retry-After` seconds.
    RateLimited(u32),
    /// The reply with half its body, then the connection closes.
    Truncated,
    /// Never answers (the client times out).
    Hang,
}

/// What the proxy does to request `k`.
type Schedule = Arc<dyn Fn(usize) -> Fault + Send + Sync>;

/// An HTTP proxy in front of `upstream` that injects `fault(k)` into its k-th request and
/// stops listening (the server "dies") after `die_after` requests.
pub struct Proxy {
    handle: Option<std::thread::JoinHandle<()>>,
    stop: Arc<AtomicBool>,
    pub seen: Arc<AtomicUsize>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

pub fn proxy(
    listener: TcpListener,
    upstream: SocketAddr,
    fault: impl Fn(usize) -> Fault + Send + Sync + 'static,
    die_after: Option<usize>,
) -> Proxy {
    let fault: Schedule = Arc::new(fault);
    listener.set_nonblocking(true).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(AtomicUsize::new(0));
    let (st, sn) = (stop.clone(), seen.clone());
    let handle = std::thread::spawn(move || {
        while !st.load(Ordering::SeqCst) {
            if die_after.is_some_and(|d| sn.load(Ordering::SeqCst) >= d) {
                return; // drops the listener: connections are refused from now on
            }
            match listener.accept() {
                Ok((conn, _)) => {
                    let k = sn.fetch_add(1, Ordering::SeqCst);
                    let f = fault(k);
                    std::thread::spawn(move || handle(conn, upstream, f));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(2)),
            }
        }
    });
    Proxy {
        handle: Some(handle),
        stop,
        seen,
    }
}

/// Reads one request (head and body by Content-Length).
fn read_request(conn: &mut TcpStream) -> Option<(String, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        if conn.read(&mut byte).ok()? == 0 {
            return None;
        }
        buf.push(byte[0]);
    }
    let head = String::from_utf8(buf).ok()?;
    let len = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse::<usize>().ok())?
        })
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    conn.read_exact(&mut body).ok()?;
    Some((head, body))
}

fn reply(conn: &mut TcpStream, status: &str, extra: &str, body: &str) {
    let _ = write!(
        conn,
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n{extra}\r\n{body}",
        body.len()
    );
}

fn handle(mut conn: TcpStream, upstream: SocketAddr, fault: Fault) {
    let Some((head, body)) = read_request(&mut conn) else {
        return;
    };
    let error = r#"{"error":{"message":"injected fault","type":"server_error"}}"#;
    match fault {
        Fault::Status500 => return reply(&mut conn, "500 Internal Server Error", "", error),
        Fault::RateLimited(s) => {
            return reply(
                &mut conn,
                "429 Too Many Requests",
                &format!("retry-after: {s}\r\n"),
                error,
            )
        }
        Fault::Hang => {
            std::thread::sleep(Duration::from_secs(4));
            return;
        }
        Fault::Pass | Fault::Truncated => {}
    }
    let mut words = head.split_whitespace();
    let (method, path) = (words.next().unwrap_or("GET"), words.next().unwrap_or("/"));
    let mut up = TcpStream::connect(upstream).unwrap();
    write!(
        up,
        "{method} {path} HTTP/1.1\r\nhost: {upstream}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    )
    .unwrap();
    up.write_all(&body).unwrap();
    let mut answer = Vec::new();
    up.read_to_end(&mut answer).unwrap();
    if fault == Fault::Truncated {
        let at = answer
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .unwrap_or(0);
        let keep = at + 4 + (answer.len() - at - 4) / 2;
        answer.truncate(keep);
    }
    let _ = conn.write_all(&answer);
}

/// `[model.openai]` settings for a faulty server: short timeouts, many quick retries.
pub const FAULTY: &str = "max_concurrency = 4\ntimeout_secs = 1.5\nmax_attempts = 20\nbackoff_secs = 0.01\nmax_backoff_secs = 0.05\neject_after = 1000\n";
