//! The code sandbox under abuse: each program ends within its limits with a clear outcome,
//! the engine survives, and nothing outside the sandbox changes. Skipped, with a printed
//! reason, where bubblewrap or python3 is missing.

use autodidact_tasks::sandbox::{Outcome, Sandbox, SandboxConfig, SANDBOX_UIDS};
use std::time::Instant;

fn sandbox() -> Option<Sandbox> {
    let cfg = SandboxConfig {
        cpu_s: 1,
        wall_s: 4.0,
        memory_mb: 256,
        processes: 24,
        output_kb: 16,
        ..SandboxConfig::default()
    };
    match cfg.build() {
        Ok(s) => Some(s),
        Err(e) => {
            eprintln!("skipped: the sandbox cannot run here: {e}");
            None
        }
    }
}

/// Runs `program`, checking that it ended within the wall-time limit plus a margin.
fn run(s: &Sandbox, program: &str) -> Outcome {
    let start = Instant::now();
    let out = s.run_python(program).unwrap();
    assert!(
        start.elapsed().as_secs_f64() < 10.0,
        "{program}: took {:?}",
        start.elapsed()
    );
    out
}

/// Processes of the sandbox users still alive.
fn sandboxed_processes() -> usize {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .chars()
                .all(|c| c.is_ascii_digit())
        })
        .filter(|e| {
            std::fs::read_to_string(e.path().join("status")).is_ok_and(|s| {
                s.lines().any(|l| {
                    l.starts_with("Uid:")
                        && l.split_whitespace()
                            .nth(1)
                            .and_then(|u| u.parse().ok())
                            .is_some_and(|u: u32| SANDBOX_UIDS.contains(&u))
                })
            })
        })
        .count()
}

#[test]
fn programs_pass_and_fail_by_their_exit_status() {
    let Some(s) = sandbox() else { return };
    assert_eq!(
        run(&s, "assert sorted([3, 1, 2]) == [1, 2, 3]"),
        Outcome::Passed
    );
    match run(
        &s,
        "def f(x):\n    return x + 1\nassert f(1) == 3, 'f(1) should be 3'",
    ) {
        Outcome::Failed { why } => {
            assert!(why.contains("AssertionError: f(1) should be 3"), "{why}")
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn an_infinite_loop_and_a_sleeper_hit_their_time_limits() {
    let Some(s) = sandbox() else { return };
    assert_eq!(
        run(&s, "while True:\n    pass"),
        Outcome::Limit { which: "cpu time" }
    );
    assert_eq!(
        run(&s, "import time\ntime.sleep(100)"),
        Outcome::Limit { which: "wall time" }
    );
}

#[test]
fn a_fork_bomb_is_contained_and_leaves_nothing_running() {
    let Some(s) = sandbox() else { return };
    let bomb =
        "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass";
    let out = run(&s, bomb);
    assert!(matches!(out, Outcome::Limit { .. }), "{out:?}");
    // The namespace is torn down as its init dies; give the kernel a moment.
    let start = Instant::now();
    while sandboxed_processes() > 0 && start.elapsed().as_secs() < 5 {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(sandboxed_processes(), 0, "the bomb's processes are gone");
}

#[test]
fn a_memory_bomb_hits_the_memory_limit() {
    let Some(s) = sandbox() else { return };
    assert_eq!(
        run(&s, "x = bytearray(4 * 1024**3)"),
        Outcome::Limit { which: "memory" }
    );
    assert_eq!(
        run(&s, "a = []\nwhile True:\n    a.append(bytearray(10**6))"),
        Outcome::Limit { which: "memory" }
    );
}

#[test]
fn a_flood_of_output_hits_the_output_limit() {
    let Some(s) = sandbox() else { return };
    assert_eq!(
        run(&s, "while True:\n    print('x' * 1000)"),
        Outcome::Limit { which: "output" }
    );
}

#[test]
fn writes_outside_the_sandbox_fail_and_change_nothing() {
    let Some(s) = sandbox() else { return };
    let host = tempfile::tempdir().unwrap();
    let target = host.path().join("escaped");
    let leak = format!("/tmp/autodidact-leak-{}", std::process::id());
    let program = format!("open({:?}, 'w').write('x')\n", target.display().to_string());
    assert!(matches!(run(&s, &program), Outcome::Failed { .. }));
    assert!(!target.exists());
    // The sandbox's /tmp is its own.
    assert_eq!(
        run(&s, &format!("open({leak:?}, 'w').write('x')")),
        Outcome::Passed
    );
    assert!(!std::path::Path::new(&leak).exists());
}

#[test]
fn network_connections_fail() {
    let Some(s) = sandbox() else { return };
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let program =
        format!("import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1)");
    assert!(matches!(run(&s, &program), Outcome::Failed { .. }));
    assert!(listener.accept().is_err(), "nothing connected");
}

#[test]
fn the_parent_cannot_be_killed_from_inside() {
    let Some(s) = sandbox() else { return };
    let me = std::process::id();
    let program = format!(
        "import os, signal\nfor pid in (os.getppid(), {me}, -1):\n    try:\n        os.kill(pid, signal.SIGKILL)\n    except OSError:\n        pass"
    );
    // Its parent is the sandbox's init, which ignores the signal; this process is out of
    // its PID namespace; -1 reaches only its own processes. It ends normally, and this
    // process is still here to see it.
    assert_eq!(run(&s, &program), Outcome::Passed);
    assert_eq!(
        run(&s, "pass"),
        Outcome::Passed,
        "the sandbox still works afterwards"
    );
}
