//! Throughput of the external-verifier protocol: `cargo bench -p autodidact-tasks --bench verifier`.
//!
//! Grades N completions through a pool of `examples/verifiers/exact_match.py` workers (the
//! reference implementation, standard library Python) and, as the reference in the same
//! process, with the built-in grader (answer after `#`, math comparison). Prints
//! verifications per second for each and their ratio. Not a test: nothing here gates CI.
//!
//! Environment: N (default 100000), WORKERS (default 4), REPEAT (default 3; the median is
//! reported), PYTHON (default python3).

use autodidact_core::{Problem, Task};
use autodidact_tasks::extract::ExtractRule;
use autodidact_tasks::verifier::{Item, VerifierConfig};
use autodidact_tasks::JsonlConfig;
use std::io::Write;
use std::time::Instant;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let (n, workers, repeat) = (env("N", 100_000), env("WORKERS", 4), env("REPEAT", 3));
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/verifiers/exact_match.py"
    );
    let problems: Vec<Problem> = (0..n)
        .map(|i| Problem {
            id: format!("p{i}"),
            prompt: format!("{i}+{i}="),
            answer: Some((2 * i).to_string()),
            solution: None,
            meta: None,
            messages: None,
        })
        .collect();
    let completions: Vec<String> = (0..n)
        .map(|i| format!("{i}+{i}={}#{}", 2 * i, 2 * i + i % 2))
        .collect();
    let answers: Vec<serde_json::Value> = problems
        .iter()
        .map(|p| p.answer.clone().unwrap().into())
        .collect();
    let items: Vec<Item> = (0..n)
        .map(|i| Item {
            problem: &problems[i],
            answer: &answers[i],
            completion: &completions[i],
        })
        .collect();

    let mut cfg = VerifierConfig::new(&[&python, script]);
    cfg.workers = workers;
    cfg.max_inflight = 256;
    let pool = cfg.build().expect("verifier config");
    // Start the workers outside the timed runs.
    pool.verify_batch(&items[..workers.min(n)])
        .expect("verifier runs");

    // The built-in grader of a JSONL task, in this process.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("t.jsonl");
    let mut f = std::fs::File::create(&file).unwrap();
    for p in problems.iter().take(1000) {
        writeln!(
            f,
            "{}",
            serde_json::json!({"id": p.id, "prompt": p.prompt, "answer": p.answer})
        )
        .unwrap();
    }
    drop(f);
    let builtin = JsonlConfig {
        extract: vec![ExtractRule::Marker],
        ..JsonlConfig::new(file)
    }
    .build()
    .unwrap();
    let pairs: Vec<(&Problem, &str)> = problems
        .iter()
        .zip(&completions)
        .map(|(p, c)| (p, c.as_str()))
        .collect();

    let (mut ext, mut inproc) = (Vec::new(), Vec::new());
    for _ in 0..repeat {
        let t = Instant::now();
        let v = pool.verify_batch(&items).expect("verifier runs");
        ext.push(n as f64 / t.elapsed().as_secs_f64());
        assert_eq!(v.iter().filter(|v| v.is_correct()).count(), n.div_ceil(2));
        let t = Instant::now();
        let v = builtin.verify_batch(&pairs).unwrap();
        inproc.push(n as f64 / t.elapsed().as_secs_f64());
        assert_eq!(v.iter().filter(|v| v.is_correct()).count(), n.div_ceil(2));
    }
    let (e, b) = (median(ext), median(inproc));
    println!(
        "verifier protocol: {n} verifications, {workers} workers of exact_match.py ({python}), median of {repeat}"
    );
    println!("  external workers   {e:>12.0} verifications/s");
    println!("  built-in grader    {b:>12.0} verifications/s (in process, the reference)");
    println!("  ratio              {:>12.3}", e / b);
}
