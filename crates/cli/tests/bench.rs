//! `autodidact bench` end to end: JSON output keys, and clear errors for bad arguments.

use std::process::Command;

fn autodidact() -> Command {
    Command::new(env!("CARGO_BIN_EXE_autodidact"))
}

#[test]
fn bench_json_has_the_documented_keys() {
    let out = autodidact()
        .args([
            "--threads",
            "2",
            "bench",
            "--preset",
            "tiny",
            "--json",
            "--steps",
            "2",
            "--batch",
            "8",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = String::from_utf8(out.stdout).unwrap();
    let v: serde_json::Value = serde_json::from_str(line.trim()).unwrap();
    assert_eq!(v["preset"], "tiny");
    assert_eq!(v["threads"], 2);
    for key in [
        "params",
        "train_tokens_per_s",
        "sample_tokens_per_s",
        "peak_rss_bytes",
        "train_flops_per_s",
        "gemm_peak_flops_per_s",
    ] {
        assert!(v[key].as_f64().is_some_and(|x| x > 0.0), "{key} in {v}");
    }
    assert_eq!(
        v["sample_new_tokens"],
        8 * 63,
        "one-token prompts fill the 64-token context"
    );
}

#[test]
fn unknown_preset_is_a_clear_error() {
    let out = autodidact()
        .args(["bench", "--preset", "huge"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("\"huge\"") && err.contains("tiny, small, base"),
        "{err}"
    );
}
