//! `autodidact bench --serve-abuse --checkpoint DIR`: `autodidact serve` under abuse, as a
//! measurement. One server (default settings but `--max-connections`) is first timed with a
//! well-behaved client alone, then while abusive clients run at once:
//!
//! - `--batch` slowloris connections, each sending a request's headers a few bytes at a time
//!   and never finishing them (the server's read timeout closes them; they reconnect);
//! - a slow body: headers whole, then the body trickling in (answered 408);
//! - bodies over the size limit (413), malformed JSON (400), and `n` / `max_tokens` beyond the
//!   guards (400), each in a loop;
//! - [`HOGS`] connections each sending a body of the largest size but its last byte, then
//!   stalling: 512 MiB offered at once, which the server's budget of buffered bytes (256 MiB
//!   by default) turns away with 503s, the rest cut off by the read timeout (408).
//!
//! It reports the connections the server held (its open descriptors), its peak resident
//! memory, whether it stayed up, what each abuser was answered, and the well-behaved
//! client's latency percentiles alone and under abuse.

use crate::bench_serve::{spawn_with, Server};
use anyhow::{bail, Context, Result};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Time between the well-behaved client's requests: with the default 200 requests, the
/// abuse lasts longer than the server's read timeout, so slow clients are cut off and
/// reconnect while the client is timed.
const PAUSE: Duration = Duration::from_millis(100);

/// The well-behaved client's request: a short completion.
const GOOD: &str = r#"{"model":"bench","prompt":"1","max_tokens":8,"temperature":0}"#;

/// Connections sending all but the last byte of a largest-size body at once.
const HOGS: usize = 128;

/// One body hog: `body`, the largest body but its last byte, then a wait for the answer; its
/// status (0 when the connection failed).
fn hog(addr: SocketAddr, body: &[u8]) -> u16 {
    let size = body.len() + 1;
    let attempt = || -> std::io::Result<u16> {
        let mut c = TcpStream::connect(addr)?;
        c.set_read_timeout(Some(Duration::from_secs(30)))?;
        write!(
            c,
            "POST /v1/completions HTTP/1.1\r\nhost: {addr}\r\ncontent-length: {size}\r\n\r\n"
        )?;
        // Refused mid-body, the server closes the connection: the answer may still be read.
        let _ = c.write_all(body);
        let mut head = [0u8; 12];
        c.read_exact(&mut head)?;
        Ok(String::from_utf8_lossy(&head[9..12]).parse().unwrap_or(0))
    };
    attempt().unwrap_or(0)
}

fn addr_of(s: &Server) -> Result<SocketAddr> {
    let host = s.url.trim_start_matches("http://").trim_end_matches("/v1");
    host.parse()
        .with_context(|| format!("the server's address {host:?}"))
}

/// One request on a fresh connection; its status (0 when the connection failed).
fn request(addr: SocketAddr, body: &[u8], timeout: Duration) -> u16 {
    let attempt = || -> std::io::Result<u16> {
        let mut c = TcpStream::connect_timeout(&addr, timeout)?;
        c.set_read_timeout(Some(timeout))?;
        c.set_write_timeout(Some(timeout))?;
        write!(
            c,
            "POST /v1/completions HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
            body.len()
        )?;
        // A server that answers before the whole body is sent may close the connection.
        let _ = c.write_all(body);
        let mut head = [0u8; 12];
        c.read_exact(&mut head)?;
        let mut rest = Vec::new();
        let _ = c.read_to_end(&mut rest);
        Ok(String::from_utf8_lossy(&head[9..12]).parse().unwrap_or(0))
    };
    attempt().unwrap_or(0)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// The well-behaved client: `n` requests one after another, `pause` apart; (latencies in ms
/// sorted, failures).
fn good_client(addr: SocketAddr, n: usize, pause: Duration) -> (Vec<f64>, usize) {
    let mut ms = Vec::new();
    let mut failed = 0;
    for _ in 0..n {
        std::thread::sleep(pause);
        let start = Instant::now();
        match request(addr, GOOD.as_bytes(), Duration::from_secs(60)) {
            200 => ms.push(start.elapsed().as_secs_f64() * 1e3),
            _ => failed += 1,
        }
    }
    ms.sort_by(f64::total_cmp);
    (ms, failed)
}

/// The server's open descriptors and peak resident memory (KiB), from /proc.
fn server_state(pid: u32) -> (Option<usize>, Option<u64>) {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .ok()
        .map(|d| d.count());
    let hwm = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        });
    (fds, hwm)
}

/// Counts of what the abusers were answered, by status.
#[derive(Default)]
struct Answers {
    by_status: std::sync::Mutex<std::collections::BTreeMap<u16, usize>>,
}

impl Answers {
    fn add(&self, status: u16) {
        *self
            .by_status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(status)
            .or_default() += 1;
    }
    fn show(&self) -> String {
        let m = self.by_status.lock().unwrap_or_else(|e| e.into_inner());
        let parts: Vec<String> = m
            .iter()
            .map(|(s, n)| match s {
                0 => format!("{n} connection failures"),
                s => format!("{n} × {s}"),
            })
            .collect();
        parts.join(", ")
    }
}

/// What the slowloris connections met.
#[derive(Default)]
struct Loris {
    /// Closed by the server (its read timeout).
    closed: usize,
    /// Refused with a 503 (beyond its connection limit).
    refused: usize,
}

/// Keeps `count` slowloris connections open until `stop`: each sends a request line and then
/// a header byte per second, never ending its headers; a connection the server closes or
/// refuses is opened again.
fn slowloris(addr: SocketAddr, count: usize, stop: &AtomicBool, open: &AtomicUsize) -> Loris {
    let connect = || -> Option<TcpStream> {
        let mut c = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).ok()?;
        c.set_nonblocking(true).ok()?;
        c.write_all(b"POST /v1/completions HTTP/1.1\r\nhost: x\r\nx-slow: ")
            .ok()?;
        Some(c)
    };
    let mut conns: Vec<Option<TcpStream>> = (0..count).map(|_| connect()).collect();
    let mut met = Loris::default();
    while !stop.load(Ordering::Relaxed) {
        let mut alive = 0;
        for c in conns.iter_mut() {
            let ok = c.as_mut().is_some_and(|s| {
                let mut buf = [0u8; 512];
                match s.read(&mut buf) {
                    Ok(n) if n > 0 && buf.starts_with(b"HTTP/1.1 503") => {
                        met.refused += 1;
                        false
                    }
                    Ok(_) => {
                        met.closed += 1;
                        false
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        s.write_all(b"a").is_ok()
                    }
                    Err(_) => {
                        met.closed += 1;
                        false
                    }
                }
            });
            if !ok {
                *c = connect();
            }
            alive += c.is_some() as usize;
        }
        open.store(alive, Ordering::Relaxed);
        std::thread::sleep(Duration::from_secs(1));
    }
    met
}

pub fn run(dir: &Path, connections: usize, requests: usize, max_connections: usize) -> Result<()> {
    if connections == 0 || requests == 0 {
        bail!("--batch (slowloris connections) and --steps (requests) must be at least 1");
    }
    // The abusers hold many sockets: as many open files as the hard limit allows.
    let limit = autodidact_serve::raise_open_files(u64::MAX).unwrap_or(0);
    if (connections as u64) + 256 > limit {
        bail!(
            "--batch {connections} connections need more open files than this process may have ({limit}): raise `ulimit -n`"
        );
    }
    let cap = max_connections.to_string();
    let server = spawn_with(dir, 1, None, &["--max-connections", &cap])?;
    let addr = addr_of(&server)?;
    let pid = server.child.id();
    good_client(addr, 3, Duration::ZERO); // warm-up
    let (alone, alone_failed) = good_client(addr, requests, PAUSE);

    let stop = Arc::new(AtomicBool::new(false));
    let open = Arc::new(AtomicUsize::new(0));
    let answers = Arc::new(Answers::default());
    let mut abusers = Vec::new();
    let loris = {
        let (stop, open) = (stop.clone(), open.clone());
        std::thread::spawn(move || slowloris(addr, connections, &stop, &open))
    };
    let big = vec![b' '; 8 << 20];
    // An oversized body, malformed JSON, `n` beyond the guard, `max_tokens` beyond the context.
    let bodies: Vec<Vec<u8>> = vec![
        big,
        br#"{"model":"bench","prompt":"#.to_vec(),
        br#"{"model":"bench","prompt":"1","n":100000}"#.to_vec(),
        br#"{"model":"bench","prompt":"1","max_tokens":1000000000}"#.to_vec(),
    ];
    for body in bodies {
        let (stop, answers) = (stop.clone(), answers.clone());
        abusers.push(std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                answers.add(request(addr, &body, Duration::from_secs(30)));
            }
        }));
    }
    let hog_body: Arc<[u8]> = vec![b' '; autodidact_serve::DEFAULT_MAX_BODY_BYTES - 1].into();
    for _ in 0..HOGS {
        let (stop, answers, body) = (stop.clone(), answers.clone(), hog_body.clone());
        abusers.push(std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                answers.add(hog(addr, &body));
            }
        }));
    }
    {
        // A body promised and trickled in: the read timeout answers it.
        let (stop, answers) = (stop.clone(), answers.clone());
        abusers.push(std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let status = (|| -> std::io::Result<u16> {
                    let mut c = TcpStream::connect(addr)?;
                    c.set_read_timeout(Some(Duration::from_millis(500)))?;
                    c.write_all(b"POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-length: 100000\r\n\r\n{")?;
                    loop {
                        let mut head = [0u8; 12];
                        match c.read_exact(&mut head) {
                            Ok(()) => {
                                return Ok(String::from_utf8_lossy(&head[9..12])
                                    .parse()
                                    .unwrap_or(0))
                            }
                            Err(_) if stop.load(Ordering::Relaxed) => return Ok(0),
                            Err(_) => c.write_all(b" ")?,
                        }
                    }
                })()
                .unwrap_or(0);
                answers.add(status);
            }
        }));
    }
    // Let the slowloris connections build up, then time the well-behaved client among them.
    let ramp = Instant::now();
    while open.load(Ordering::Relaxed) < connections && ramp.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(200));
    }
    let (held, _) = server_state(pid);
    let (abused, abused_failed) = good_client(addr, requests, PAUSE);
    let (held_after, hwm) = server_state(pid);
    stop.store(true, Ordering::Relaxed);
    let loris = loris.join().unwrap_or_default();
    for a in abusers {
        let _ = a.join();
    }
    let up = request(addr, GOOD.as_bytes(), Duration::from_secs(60)) == 200;
    let ms = |v: &[f64]| {
        format!(
            "p50 {:.1} ms, p95 {:.1} ms, max {:.1} ms",
            percentile(v, 0.5),
            percentile(v, 0.95),
            percentile(v, 1.0)
        )
    };
    println!(
        "serve under abuse ({}, --max-connections {max_connections})",
        dir.display()
    );
    println!(
        "  well-behaved client alone:       {} ({} of {requests} failed)",
        ms(&alone),
        alone_failed
    );
    println!(
        "  well-behaved client under abuse: {} ({} of {requests} failed)",
        ms(&abused),
        abused_failed
    );
    println!(
        "  slowloris: {connections} connections kept open; the server held {} descriptors when the timed requests began and {} when they ended; it cut off {} slow connections and refused {} beyond its limit (each reconnected)",
        held.map_or("?".into(), |n| n.to_string()),
        held_after.map_or("?".into(), |n| n.to_string()),
        loris.closed,
        loris.refused,
    );
    println!(
        "  other abusers (oversized bodies, malformed JSON, guards, slow bodies, {HOGS} body hogs) were answered: {}",
        answers.show()
    );
    println!(
        "  server peak resident memory: {}; still answering afterwards: {}",
        hwm.map_or("?".into(), |k| format!("{:.1} MiB", k as f64 / 1024.0)),
        if up { "yes" } else { "NO" }
    );
    if !up {
        bail!("the server stopped answering");
    }
    Ok(())
}
