//! Helpers shared by the integration tests: runs driven through the engine's library API
//! with the native backend, and `autodidact serve` children with a bare HTTP client.
#![allow(dead_code)]

pub mod served;

use autodidact_engine::run::Manifest;
use autodidact_engine::store::RunDir;
use autodidact_engine::{Run, RunConfig, DEMO_CONFIG};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// Runs the `autodidact` binary under test on one thread with `args`.
pub fn autodidact(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_autodidact"))
        .arg("--threads")
        .arg("1")
        .args(args)
        .output()
        .unwrap()
}

/// [`autodidact`], which must succeed: its standard output.
pub fn ok(args: &[&str]) -> String {
    let out = autodidact(args);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// M0 of the demo trained for `steps` seed-stage steps (no rounds) by the binary in
/// `dir/base`: a tiny model that solves some sums. Returns its checkpoint.
pub fn base_checkpoint(dir: &Path, steps: u32) -> std::path::PathBuf {
    let run = dir.join("base");
    let steps = format!("seed_stage.train.steps={steps}");
    ok(&[
        "run",
        "-q",
        "--out",
        run.to_str().unwrap(),
        "--set",
        "star.rounds=0",
        "--set",
        &steps,
        "--set",
        "seed_stage.eval_every=0",
        "--set",
        "eval.problems=8",
    ]);
    run.join("checkpoints/r0000")
}

/// Creates a run in `out` from the demo configuration with `base` and then `extra` overrides.
pub fn start(out: &Path, base: &[&str], extra: &[&str]) -> Run {
    let sets: Vec<String> = base.iter().chain(extra).map(|s| s.to_string()).collect();
    let plan = RunConfig::parse(DEMO_CONFIG, "demo", &sets)
        .unwrap()
        .plan(&backends())
        .unwrap();
    Run::create(plan, out, rayon::current_num_threads()).unwrap()
}

/// The backend factory of the binary: the native model.
pub fn backends() -> autodidact_core::Backends {
    autodidact_core::Backends::new().with(autodidact_nn::NativeBackend)
}

/// Reopens the run in `out` to continue it, as `autodidact resume` does.
pub fn resume(out: &Path) -> Run {
    Run::open(
        out,
        rayon::current_num_threads(),
        false,
        &backends(),
        &mut autodidact_engine::Silent,
    )
    .unwrap()
}

/// Asserts that each of `files` has the same bytes in run directories `a` and `b`.
pub fn assert_same_files(a: &Path, b: &Path, files: &[&str]) {
    for f in files {
        let (x, y) = (
            std::fs::read(a.join(f)).unwrap(),
            std::fs::read(b.join(f)).unwrap(),
        );
        if x != y {
            panic!(
                "{f} differs:\n{}\n---\n{}",
                String::from_utf8_lossy(&x),
                String::from_utf8_lossy(&y)
            );
        }
    }
}

/// The manifest of `round` of the run in `out`.
pub fn manifest(out: &Path, round: u32) -> Manifest {
    RunDir::open(out)
        .unwrap()
        .0
        .read_json(&format!("{}/manifest.json", RunDir::round_dir(round)))
        .unwrap()
}

/// `autodidact serve` as a child process, killed when dropped.
pub struct Server {
    child: Child,
    pub addr: SocketAddr,
}

impl Server {
    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its base URL, up to `/v1`.
    pub fn url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn serve(checkpoint: &Path) -> Server {
    serve_with(checkpoint, &[], &[])
}

/// `autodidact serve` of `checkpoint` with `extra` flags and `env` variables.
pub fn serve_with(checkpoint: &Path, extra: &[&str], env: &[(&str, &str)]) -> Server {
    let mut child = Command::new(env!("CARGO_BIN_EXE_autodidact"))
        .args([
            "--threads",
            "1",
            "serve",
            "--port",
            "0",
            "--model-name",
            "tiny",
        ])
        .args(extra)
        .envs(env.iter().copied())
        .arg("--checkpoint")
        .arg(checkpoint)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = line
        .split("http://")
        .nth(1)
        .unwrap_or_else(|| panic!("serve printed {line:?}"));
    let addr = url.trim().trim_end_matches("/v1").parse().unwrap();
    Server { child, addr }
}

/// One HTTP/1.1 exchange on a fresh connection: (status, body), de-chunked.
pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    key: Option<&str>,
    body: &str,
) -> (u16, String) {
    let mut conn = TcpStream::connect(addr).unwrap();
    let auth = key.map_or(String::new(), |k| format!("authorization: Bearer {k}\r\n"));
    write!(
        conn,
        "{method} {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{auth}connection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut raw = Vec::new();
    conn.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8(raw).unwrap();
    let (head, rest) = text.split_once("\r\n\r\n").unwrap();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    if !chunked {
        return (status, rest.to_string());
    }
    let (mut body, mut rest) = (String::new(), rest);
    loop {
        let (size, tail) = rest.split_once("\r\n").unwrap();
        let n = usize::from_str_radix(size.trim(), 16).unwrap();
        if n == 0 {
            return (status, body);
        }
        body.push_str(&tail[..n]);
        rest = &tail[n + 2..];
    }
}

/// `s` as JSON, or a panic that shows it.
pub fn json_of(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("{e}: {s}"))
}

/// Every file under `dir`, relative to it, sorted (none when `dir` does not exist).
pub fn files(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                found.push(p.strip_prefix(dir).unwrap().display().to_string());
            }
        }
    }
    found.sort();
    found
}
