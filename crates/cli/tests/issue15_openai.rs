//! Issue 15: a run whose policy is `backend = "openai"`, pointed at a real `autodidact serve`
//! process on loopback, evaluates exactly as the native policy does; faults injected by a
//! misbehaving HTTP proxy between the two (500s, 429 with Retry-After, truncated bodies,
//! a hang, a proxy that dies mid-run) are retried and recorded, or stop the run cleanly so
//! that `resume` finishes it with the same result.

mod common;

use common::served::{
    eval_json, proxy, remote_config, run_config, run_config_ok, tiny, Fault, FAULTY,
};
use common::{http, json_of, serve, serve_with};
use serde_json::json;
use std::net::TcpListener;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_autodidact");

fn metrics(run: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    text.lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|l| l.get("round").is_some())
        .unwrap()
}

#[test]
fn issue15_a_served_policy_evaluates_as_the_native_one() {
    let tmp = tempfile::tempdir().unwrap();
    let native = tiny(tmp.path());
    let ck = native.join("checkpoints/r0000");
    let server = serve(&ck);
    let cfg = remote_config(tmp.path(), "remote", server.addr.port(), &ck, "");
    let remote = tmp.path().join("remote");
    run_config_ok(&cfg, &remote);
    // Greedy pass@1 and the seeded samples of pass@k and maj@k, problem by problem.
    assert_eq!(eval_json(&remote), eval_json(&native));
    let m = metrics(&remote);
    assert!(m["serving/requests"].as_f64().unwrap() >= 24.0, "{m}");
    assert!(
        m["serving/completion_tokens"].as_f64().unwrap() > 0.0,
        "{m}"
    );
    // A served model reads a judge's verdict: the next token's log-probs of candidates, from
    // the server's top alternatives, equal the native policy's.
    {
        use autodidact_core::{ModelTokenizer, OpenAiConfig, Policy, Tokenizer};
        let tok = ModelTokenizer::load(&ck).unwrap().unwrap();
        let candidates = [tok.encode("1").unwrap()[0], tok.encode("7").unwrap()[0]];
        let prompts: Vec<String> = ["12+34=", "5+5=", "99+1="].map(String::from).to_vec();
        let mut native = autodidact_nn::NativePolicy::load(&ck).unwrap();
        let want = native.next_token_logprobs(&prompts, &candidates).unwrap();
        let cfg = OpenAiConfig {
            base_urls: vec![format!("http://{}/v1", server.addr)],
            model: "tiny".into(),
            ..OpenAiConfig::default()
        };
        let mut served = autodidact_remote::RemotePolicy::connect(cfg, tok, 64).unwrap();
        let got = served.next_token_logprobs(&prompts, &candidates).unwrap();
        for (g, w) in got.iter().flatten().zip(want.iter().flatten()) {
            assert!((g - w).abs() < 1e-4, "{got:?} vs {want:?}");
        }
    }
    // The run's round-0 record of the served model loads for `autodidact eval`.
    let out = common::ok(&[
        "eval",
        "--checkpoint",
        remote.join("checkpoints/r0000").to_str().unwrap(),
    ]);
    let pass1 = eval_json(&native)["pass@1"].as_f64().unwrap();
    assert!(
        out.contains(&format!("pass@1 {:.1}%", 100.0 * pass1)),
        "{out}"
    );
    // Training a served model is refused at start-up, in one line.
    let out = Command::new(BIN)
        .args([
            "run",
            cfg.to_str().unwrap(),
            "--set",
            "star.rounds=1",
            "--out",
        ])
        .arg(tmp.path().join("never"))
        .output()
        .unwrap();
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(!out.status.success());
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains("does not train here"), "{err}");
    assert!(!tmp.path().join("never").exists());
}

/// The fault the proxy injects into request `k` in the issue-15 test: a fixed mix of each
/// kind, with one hang and one 429 asking for a second's wait.
fn schedule(k: usize) -> Fault {
    match k {
        7 => Fault::Hang,
        12 => Fault::RateLimited(1),
        _ => match k % 9 {
            1 => Fault::Status500,
            3 => Fault::RateLimited(0),
            5 => Fault::Truncated,
            _ => Fault::Pass,
        },
    }
}

#[test]
fn issue15_faults_between_the_engine_and_serve_are_retried_recorded_and_resumed() {
    let tmp = tempfile::tempdir().unwrap();
    let native = tiny(tmp.path());
    let ck = native.join("checkpoints/r0000");
    let server = serve(&ck);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let cfg = remote_config(tmp.path(), "faulty", port, &ck, FAULTY);

    // Every fault is retried; the evaluation is the native one, and the faults are counted.
    let faulty = tmp.path().join("faulty");
    {
        let _p = proxy(listener, server.addr, schedule, None);
        run_config_ok(&cfg, &faulty);
    }
    assert_eq!(eval_json(&faulty), eval_json(&native));
    let m = metrics(&faulty);
    for kind in ["5xx", "429", "bad_reply", "timeout"] {
        assert!(
            m[format!("serving/errors_{kind}")].as_f64().unwrap_or(0.0) >= 1.0,
            "{kind} not recorded: {m}"
        );
    }
    assert!(m["serving/retries"].as_f64().unwrap() >= 4.0, "{m}");

    // The proxy dies mid-run: the run stops with one clear line, and `resume` against a
    // healthy proxy on the same port finishes it with the same evaluation.
    let dies = tmp.path().join("dies");
    let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
    let p = proxy(listener, server.addr, |_| Fault::Pass, Some(60));
    let out = run_config(&cfg, &dies);
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(!out.status.success(), "the run should stop");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains("failed 20 tries"), "{err}");
    assert!(err.contains("autodidact resume"), "{err}");
    assert!(p.seen.load(Ordering::SeqCst) >= 60);
    drop(p);
    let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
    let _p = proxy(listener, server.addr, |_| Fault::Pass, None);
    common::ok(&["resume", "-q", dies.to_str().unwrap()]);
    assert_eq!(eval_json(&dies), eval_json(&native));
}

#[test]
fn issue15_serve_answers_in_openai_shapes_under_its_guards() {
    let tmp = tempfile::tempdir().unwrap();
    let native = tiny(tmp.path());
    let ck = native.join("checkpoints/r0000");
    let server = serve_with(
        &ck,
        &["--api-key-env", "ISSUE15_KEY", "--max-body-bytes", "4000"],
        &[("ISSUE15_KEY", "sesame")],
    );
    let a = server.addr;
    let key = Some("sesame");
    assert_eq!(http(a, "GET", "/health", None, ""), (200, "ok".into()));
    let (s, b) = http(a, "GET", "/v1/models", None, "");
    assert_eq!(s, 401, "{b}");
    assert_eq!(json_of(&b)["error"]["code"], "invalid_api_key");
    let (s, b) = http(a, "GET", "/v1/models", key, "");
    assert_eq!(
        (s, json_of(&b)["data"][0]["id"].clone()),
        (200, "tiny".into())
    );
    let (s, b) = http(a, "POST", "/v1/nope", key, "{}");
    assert_eq!(s, 404, "{b}");
    let (s, b) = http(
        a,
        "POST",
        "/v1/completions",
        key,
        &format!(r#"{{"model":"tiny","prompt":"{}"}}"#, "1".repeat(5000)),
    );
    assert_eq!(s, 413, "{b}");
    assert_eq!(json_of(&b)["error"]["type"], "invalid_request_error");
    let (s, b) = http(
        a,
        "POST",
        "/v1/completions",
        key,
        r#"{"model":"big","prompt":"1+1="}"#,
    );
    assert_eq!(
        (s, json_of(&b)["error"]["code"].clone()),
        (404, "model_not_found".into())
    );
    let (s, b) = http(
        a,
        "POST",
        "/v1/completions",
        key,
        r#"{"model":"tiny","prompt":"1+1=","max_tokens":100000}"#,
    );
    assert_eq!(
        (s, json_of(&b)["error"]["param"].clone()),
        (400, "max_tokens".into())
    );
    let (s, b) = http(a, "POST", "/v1/completions", key, "{not json");
    assert_eq!(s, 400, "{b}");

    // Concurrent requests, batched together whatever their settings, get what each gets
    // alone.
    let body = |i: usize| {
        let stop = if i.is_multiple_of(3) {
            r##","stop":["#"]"##
        } else {
            ""
        };
        format!(
            r#"{{"model":"tiny","prompt":"{i}+{}=","max_tokens":{},"temperature":{},"top_p":{},"seed":{i},"n":2{stop}}}"#,
            3 * i,
            8 + 2 * i,
            0.5 + 0.1 * i as f64,
            if i.is_multiple_of(2) { 1.0 } else { 0.9 }
        )
    };
    let alone: Vec<String> = (0..12)
        .map(|i| {
            let (s, b) = http(a, "POST", "/v1/completions", key, &body(i));
            assert_eq!(s, 200, "{b}");
            json_of(&b)["choices"].to_string()
        })
        .collect();
    let together: Vec<String> = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..12)
            .map(|i| {
                sc.spawn(move || {
                    json_of(&http(a, "POST", "/v1/completions", key, &body(i)).1)["choices"]
                        .to_string()
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(alone, together);

    // Continuous batching: a short request sent while long ones decode joins their batch
    // and comes back first (a server that runs one batch at a time would make it wait).
    let long = r#"{"model":"tiny","prompt":"1+2=","n":64,"max_tokens":50,"ignore_eos":true,"temperature":1,"seed":5}"#;
    let short = r#"{"model":"tiny","prompt":"3+4=","max_tokens":1}"#;
    let order = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|sc| {
        let order = &order;
        for _ in 0..2 {
            sc.spawn(move || {
                let (s, b) = http(a, "POST", "/v1/completions", key, long);
                assert_eq!(s, 200, "{b}");
                order.lock().unwrap().push("long");
            });
        }
        std::thread::sleep(Duration::from_millis(20));
        sc.spawn(move || {
            let (s, b) = http(a, "POST", "/v1/completions", key, short);
            assert_eq!(s, 200, "{b}");
            order.lock().unwrap().push("short");
        });
    });
    assert_eq!(order.into_inner().unwrap(), ["short", "long", "long"]);

    // Streaming: data events whose text adds up to the whole answer, then [DONE].
    let req = r#"{"model":"tiny","prompt":"12+34=","max_tokens":30,"temperature":0STREAM}"#;
    let (_, whole) = http(
        a,
        "POST",
        "/v1/completions",
        key,
        &req.replace("STREAM", ""),
    );
    let whole = json_of(&whole);
    let (s, sse) = http(
        a,
        "POST",
        "/v1/completions",
        key,
        &req.replace(
            "STREAM",
            r#","stream":true,"stream_options":{"include_usage":true}"#,
        ),
    );
    assert_eq!(s, 200);
    let events: Vec<&str> = sse
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .collect();
    assert_eq!(events.last(), Some(&"[DONE]"));
    let chunks: Vec<serde_json::Value> = events[..events.len() - 1]
        .iter()
        .map(|e| json_of(e))
        .collect();
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["text"].as_str())
        .collect();
    assert_eq!(text, whole["choices"][0]["text"].as_str().unwrap());
    assert_eq!(chunks.last().unwrap()["usage"], whole["usage"]);

    // Hot reload: a bad path keeps the old model; a good one bumps the weight version.
    let (s, b) = http(
        a,
        "POST",
        "/update_weights_from_disk",
        key,
        r#"{"model_path":"/nonexistent"}"#,
    );
    assert_eq!((s, json_of(&b)["success"].clone()), (400, false.into()));
    let (s, b) = http(
        a,
        "POST",
        "/update_weights_from_disk",
        key,
        &json!({"model_path": ck}).to_string(),
    );
    assert_eq!(
        (s, json_of(&b)["success"].clone()),
        (200, true.into()),
        "{b}"
    );
    let (_, b) = http(a, "GET", "/get_model_info", key, "");
    assert_eq!(json_of(&b)["weight_version"], 1);
    let (_, again) = http(
        a,
        "POST",
        "/v1/completions",
        key,
        &req.replace("STREAM", ""),
    );
    assert_eq!(json_of(&again)["choices"], whole["choices"]);
}

/// `[judge.model]`: a self-rewarding run whose policy is native and whose judge is a model
/// served by `autodidact serve` (a tiny self-rewarding model that learned the judge format).
#[test]
fn issue15_a_served_judge_scores_a_native_policys_samples() {
    let tmp = tempfile::tempdir().unwrap();
    let example = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/self-rewarding-addition.toml"
    );
    let small = [
        "seed_stage.train.steps=300",
        "seed_stage.eval_every=0",
        "pref.problems=24",
        "pref.sampling.samples=4",
        "pref.train.epochs=1.0",
        "eval.problems=16",
    ];
    let run = |out: &Path, extra: &[String]| {
        let mut args = vec!["run".to_string(), "-q".into()];
        args.push(example.into());
        args.extend(["--out".to_string(), out.display().to_string()]);
        for s in small
            .iter()
            .map(|s| s.to_string())
            .chain(extra.iter().cloned())
        {
            args.extend(["--set".to_string(), s]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        common::ok(&args)
    };
    // The judge: a model that learned the verdict format in its seed stage.
    let judge = tmp.path().join("judge");
    run(&judge, &["pref.rounds=0".into()]);
    let ck = judge.join("checkpoints/r0000");
    let server = serve(&ck);
    let out = tmp.path().join("judged");
    run(
        &out,
        &[
            "pref.rounds=1".into(),
            "judge.model.backend=openai".into(),
            format!(
                "judge.model.openai.base_urls=[\"http://{}/v1\"]",
                server.addr
            ),
            "judge.model.openai.model=tiny".into(),
            format!(
                "judge.model.openai.tokenizer={:?}",
                ck.display().to_string()
            ),
        ],
    );
    let text = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    let r1 = text
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|l| l["round"] == 1)
        .unwrap();
    // Every sample was judged by the server (4 per problem), and the judge's agreement with
    // the verifier is measured.
    assert_eq!(
        r1["judge/serving/requests"].as_f64(),
        Some(24.0 * 4.0),
        "{r1}"
    );
    assert!(r1["judge/accuracy"].as_f64().is_some(), "{r1}");
    // The policy does not learn the judge format: no judge examples are written.
    assert!(!out.join("rounds/r0001/judge.jsonl").exists());
}
