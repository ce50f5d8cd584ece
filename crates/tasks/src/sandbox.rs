//! Running untrusted Python in a sandbox: bubblewrap (Debian's `bubblewrap`) with no network,
//! a read-only root, a private `/tmp`, new PID/IPC/UTS/user namespaces, and limits on CPU
//! time, memory, processes, output and wall time.
//!
//! The program is written to a fresh directory that the sandbox sees read-only at
//! `/tmp/code`. When the engine runs as root, each run gets an unprivileged user of its own
//! ([`SANDBOX_UIDS`]: the process limit is counted per user, and root is exempt from it);
//! otherwise it runs as the engine's user. These limits are set before `bwrap` starts and
//! are inherited by everything inside:
//! - `RLIMIT_CPU` (`cpu_s`), `RLIMIT_AS` (`memory_mb`), `RLIMIT_NPROC` (`processes`),
//!   `RLIMIT_FSIZE` (`output_kb`, for files written in the private `/tmp`), no core dumps;
//! - wall time (`wall_s`) and combined stdout/stderr (`output_kb`) are enforced by the engine,
//!   which kills the whole process group; `--die-with-parent` takes the PID namespace down
//!   with it.
//!
//! Without bubblewrap the sandbox refuses to start, unless `unsafe_no_sandbox = true`, which
//! runs the program directly with the same resource limits (no isolation of files or network:
//! only for code you trust).

use autodidact_core::{Error, Result};
use serde::{Deserialize, Serialize};
use std::io::Read;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The users sandboxed programs run as when the engine runs as root: one per run, in turn, so
/// that each run's process limit (counted per user) is its own. No account needs to exist.
pub const SANDBOX_UIDS: std::ops::Range<u32> = 200_000..201_024;

/// Limits of the sandbox (`[task.sandbox]`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SandboxConfig {
    /// CPU seconds a program may use.
    pub cpu_s: u64,
    /// Seconds a program may run, waiting included.
    pub wall_s: f64,
    /// Address space, in MiB.
    pub memory_mb: u64,
    /// Processes (and threads) the sandbox user may have at once.
    pub processes: u64,
    /// Bytes of stdout and stderr together, and of any file written, in KiB.
    pub output_kb: u64,
    /// The Python interpreter: a path, or a name looked up on PATH (inside the sandbox:
    /// `/usr/local/bin:/usr/bin:/bin`; it runs as an unprivileged user when the engine runs as
    /// root, so it must be readable by everyone).
    pub python: String,
    /// Run programs without bubblewrap: no file or network isolation, only the limits. For
    /// code you trust; needed where bubblewrap is not installed.
    pub unsafe_no_sandbox: bool,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        Self {
            cpu_s: 5,
            wall_s: 10.0,
            memory_mb: 512,
            processes: 32,
            output_kb: 64,
            python: "python3".into(),
            unsafe_no_sandbox: false,
        }
    }
}

/// How a program ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// It exited with status 0.
    Passed,
    /// It exited with another status or was killed by a signal; `why` says how, with the end
    /// of its stderr.
    Failed { why: String },
    /// It reached a limit: `"wall time"`, `"cpu time"`, `"memory"` or `"output"`.
    Limit { which: &'static str },
}

/// Bytes of stderr kept for the reason a program failed.
const STDERR_KEPT: usize = 4096;

/// Appends `bytes` to `buf` up to [`STDERR_KEPT`] bytes in all.
fn keep_head(buf: &mut Vec<u8>, bytes: &[u8]) {
    let room = STDERR_KEPT.saturating_sub(buf.len());
    buf.extend_from_slice(&bytes[..bytes.len().min(room)]);
}

/// A checked sandbox (see the module's documentation).
#[derive(Clone, Debug)]
pub struct Sandbox {
    cfg: SandboxConfig,
    bwrap: Option<PathBuf>,
}

/// `program` on PATH, if it is there.
fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(program))
            .find(|p| p.is_file())
    })
}

impl SandboxConfig {
    /// Checks the limits and that bubblewrap is there and works.
    pub fn build(&self) -> Result<Sandbox> {
        let key = |k: &str| format!("task.sandbox.{k}");
        for (k, v, range) in [
            ("cpu_s", self.cpu_s, 1..=3600),
            ("memory_mb", self.memory_mb, 16..=1 << 20),
            ("processes", self.processes, 1..=100_000),
            ("output_kb", self.output_kb, 1..=1 << 20),
        ] {
            if !range.contains(&v) {
                return Err(Error::invalid(
                    key(k),
                    format!("{v} must be in {}..={}", range.start(), range.end()),
                ));
            }
        }
        if !(self.wall_s.is_finite() && self.wall_s > 0.0 && self.wall_s <= 3600.0) {
            return Err(Error::invalid(
                key("wall_s"),
                format!("{} must be in (0, 3600] seconds", self.wall_s),
            ));
        }
        if which(&self.python).is_none() && !PathBuf::from(&self.python).is_file() {
            return Err(Error::invalid(
                key("python"),
                format!(
                    "{:?} is not on PATH; install Python 3 or name the interpreter",
                    self.python
                ),
            ));
        }
        let bwrap = if self.unsafe_no_sandbox {
            None
        } else {
            let Some(path) = which("bwrap") else {
                return Err(Error::invalid(
                    "task.sandbox",
                    "bubblewrap (`bwrap`) is not installed, so code cannot be run sandboxed; install it (Debian: `apt-get install bubblewrap`), or set task.sandbox.unsafe_no_sandbox = true to run completions without isolation",
                ));
            };
            Some(path)
        };
        let sandbox = Sandbox {
            cfg: self.clone(),
            bwrap,
        };
        // bwrap may be installed but unable to create namespaces here.
        match sandbox.run_python("pass") {
            Ok(Outcome::Passed) => Ok(sandbox),
            Ok(other) => Err(Error::invalid(
                "task.sandbox",
                format!("a trivial program does not run in the sandbox: {other:?}"),
            )),
            Err(e) => Err(e),
        }
    }
}

impl Sandbox {
    /// Runs `program` with the sandbox's interpreter. Errors only when the sandbox itself
    /// cannot run (the program's own failures are [`Outcome`]s).
    pub fn run_python(&self, program: &str) -> Result<Outcome> {
        let cfg = &self.cfg;
        let dir = tempfile::Builder::new()
            .prefix("autodidact-sandbox-")
            .tempdir()
            .map_err(|e| Error::io("creating a sandbox directory in", std::env::temp_dir(), e))?;
        let file = dir.path().join("main.py");
        std::fs::write(&file, program).map_err(|e| Error::io("writing", &file, e))?;
        // Readable by the sandbox user.
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755));
        let _ = std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644));

        let mut cmd = match &self.bwrap {
            Some(bwrap) => {
                let mut c = Command::new(bwrap);
                c.args(["--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc"])
                    .args(["--tmpfs", "/tmp", "--ro-bind"])
                    .arg(dir.path())
                    .args(["/tmp/code", "--chdir", "/tmp", "--unshare-all"])
                    .args(["--die-with-parent", "--new-session", "--clearenv"])
                    .args(["--setenv", "PATH", "/usr/local/bin:/usr/bin:/bin"])
                    .args(["--setenv", "PYTHONDONTWRITEBYTECODE", "1"])
                    .arg(&cfg.python)
                    .arg("/tmp/code/main.py");
                c
            }
            None => {
                let mut c = Command::new(&cfg.python);
                c.arg(&file).current_dir(dir.path());
                c
            }
        };
        let limits = [
            (libc::RLIMIT_CPU, cfg.cpu_s),
            (libc::RLIMIT_AS, cfg.memory_mb << 20),
            (libc::RLIMIT_NPROC, cfg.processes),
            (libc::RLIMIT_FSIZE, cfg.output_kb << 10),
            (libc::RLIMIT_CORE, 0),
        ];
        // As root, each run gets a user of its own, so that its process limit is its own.
        let uid = (unsafe { libc::geteuid() } == 0).then(|| {
            static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
            SANDBOX_UIDS.start
                + NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                    % (SANDBOX_UIDS.end - SANDBOX_UIDS.start)
        });
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        // SAFETY: only async-signal-safe calls (setgroups, setgid, setuid, setrlimit) run
        // between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                if let Some(uid) = uid {
                    if libc::setgroups(0, std::ptr::null()) != 0
                        || libc::setgid(uid) != 0
                        || libc::setuid(uid) != 0
                    {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                for (resource, value) in limits {
                    let lim = libc::rlimit {
                        rlim_cur: value as libc::rlim_t,
                        rlim_max: value as libc::rlim_t,
                    };
                    if libc::setrlimit(resource, &lim) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().map_err(|e| {
            Error::invalid(
                "task.sandbox",
                format!("could not start {:?}: {e}", cmd.get_program()),
            )
        })?;
        let pid = child.id() as i32;
        let cap = (cfg.output_kb << 10) as usize;
        let (tx, rx) = std::sync::mpsc::channel::<(bool, Vec<u8>)>();
        for (is_err, pipe) in [
            (
                false,
                Box::new(child.stdout.take().expect("piped")) as Box<dyn Read + Send>,
            ),
            (
                true,
                Box::new(child.stderr.take().expect("piped")) as Box<dyn Read + Send>,
            ),
        ] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                let mut pipe = pipe;
                let mut buf = [0u8; 8192];
                loop {
                    match pipe.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if tx.send((is_err, buf[..n].to_vec())).is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
        drop(tx);
        let deadline = Instant::now() + Duration::from_secs_f64(cfg.wall_s);
        let (mut total, mut stderr) = (0usize, Vec::new());
        let kill = || unsafe {
            libc::kill(-pid, libc::SIGKILL);
        };
        let mut limit = None;
        let status = loop {
            match rx.recv_timeout(Duration::from_millis(10)) {
                Ok((is_err, bytes)) => {
                    total += bytes.len();
                    if is_err {
                        keep_head(&mut stderr, &bytes);
                    }
                    if total > cap {
                        limit = Some("output");
                        kill();
                    }
                }
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {}
            }
            if limit.is_none() && Instant::now() >= deadline {
                limit = Some("wall time");
                kill();
            }
            if let Some(status) = child
                .try_wait()
                .map_err(|e| Error::io("waiting for", PathBuf::from("the sandbox"), e))?
            {
                // Whatever it left behind in its process group goes too.
                kill();
                break status;
            }
        };
        // The rest of stderr, until the pipes close (everything in the group was killed).
        let stop = Instant::now() + Duration::from_secs(1);
        while let Ok((is_err, bytes)) =
            rx.recv_timeout(stop.saturating_duration_since(Instant::now()))
        {
            if is_err {
                keep_head(&mut stderr, &bytes);
            }
        }
        if let Some(hit) = limit {
            return Ok(Outcome::Limit { which: hit });
        }
        let err = String::from_utf8_lossy(&stderr);
        let tail: Vec<&str> = err.lines().rev().take(3).collect();
        let tail = tail.into_iter().rev().collect::<Vec<_>>().join(" | ");
        // bwrap exits with 128 + the signal that killed the program.
        let signal = status.signal().or_else(|| {
            status
                .code()
                .filter(|c| *c > 128 && self.bwrap.is_some())
                .map(|c| c - 128)
        });
        Ok(match (status.code(), signal) {
            (Some(0), _) => Outcome::Passed,
            (_, Some(libc::SIGXCPU | libc::SIGKILL)) => Outcome::Limit { which: "cpu time" },
            _ if err.contains("MemoryError") => Outcome::Limit { which: "memory" },
            (_, Some(sig)) => Outcome::Failed {
                why: format!("killed by signal {sig}: {tail}"),
            },
            (Some(code), None) => Outcome::Failed {
                why: format!("exit status {code}: {tail}"),
            },
            (None, None) => Outcome::Failed { why: tail },
        })
    }
}
