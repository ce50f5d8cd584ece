//! Fuzz targets: each feeds arbitrary bytes to one parser of input that a user, a tool or a
//! peer controls. A target returns normally for every input: a panic, an abort or a stack
//! overflow is a bug, and so is a broken invariant that a target asserts (a planned config
//! whose stored form does not read back the same, a text that does not decode to itself).
//!
//! Two drivers run them:
//! - `fuzz/` at the repository root wraps each in libFuzzer for coverage-guided runs by hand
//!   (`cargo +nightly fuzz run config`); what it finds goes into `fuzz/corpus/<target>/`.
//! - this crate's test replays that committed corpus and a fixed number of mutations of it
//!   on every `cargo test`, so a crash once found stays fixed.
//!
//! Targets that read from a path write the bytes to a temporary directory of their own (one
//! per process, rewritten on every input).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// One fuzz target: its name (the corpus folder and the libFuzzer binary) and its body.
pub struct Target {
    pub name: &'static str,
    pub run: fn(&[u8]),
}

/// Every target, by name.
pub const TARGETS: &[Target] = &[
    Target {
        name: "config",
        run: config,
    },
    Target {
        name: "task_jsonl",
        run: task_jsonl,
    },
    Target {
        name: "checkpoint",
        run: checkpoint,
    },
    Target {
        name: "gguf",
        run: gguf,
    },
    Target {
        name: "tokenizer",
        run: tokenizer,
    },
    Target {
        name: "verifier_reply",
        run: verifier_reply,
    },
    Target {
        name: "serve_request",
        run: serve_request,
    },
    Target {
        name: "server_reply",
        run: server_reply,
    },
    Target {
        name: "math_answer",
        run: math_answer,
    },
    Target {
        name: "trainer_report",
        run: trainer_report,
    },
];

/// The target called `name`.
pub fn target(name: &str) -> Option<&'static Target> {
    TARGETS.iter().find(|t| t.name == name)
}

/// This process's scratch directory for targets that read files.
fn scratch() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().expect("a temporary directory"))
        .path()
}

/// A fresh, empty folder `name` in [`scratch`].
fn folder(name: &str) -> PathBuf {
    let dir = scratch().join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("the scratch folder");
    dir
}

/// `data` cut in two at its first `sep` (all of it and nothing when there is none).
fn split(data: &[u8], sep: u8) -> (&[u8], &[u8]) {
    match data.iter().position(|&b| b == sep) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[]),
    }
}

/// A run configuration as `autodidact run CONFIG --set …` reads it: the input's leading
/// `--set KEY=VALUE` lines are the overrides, the rest is the TOML (the demo's when empty). A config that parses is
/// planned with the native backend (unless it names files or servers, which the fuzzer must
/// not touch), and its stored form must parse back to the same config, as `resume` needs.
pub fn config(data: &[u8]) {
    use autodidact_engine::RunConfig;
    let text = String::from_utf8_lossy(data);
    let mut sets = Vec::new();
    let mut rest = text.as_ref();
    while let Some(line) = rest.strip_prefix("--set ") {
        let (set, tail) = line.split_once('\n').unwrap_or((line, ""));
        sets.push(set.to_string());
        rest = tail;
    }
    // No TOML: the built-in demo, as `autodidact run` without a config file.
    if rest.trim().is_empty() {
        rest = autodidact_engine::DEMO_CONFIG;
    }
    let Ok(cfg) = RunConfig::parse(rest, "fuzz", &sets) else {
        return;
    };
    let stored = cfg.to_toml();
    let again = RunConfig::parse_stored(&stored, "stored")
        .unwrap_or_else(|e| panic!("a parsed config's stored form does not parse: {e}\n{stored}"));
    assert_eq!(
        again.to_toml(),
        stored,
        "a config changed on its way through config.toml"
    );
    let outside = [
        "/",
        "\\",
        "openai",
        "http",
        "jsonl",
        "checkpoint",
        "reward",
        "command",
    ];
    if outside.iter().any(|w| text.contains(w)) {
        return;
    }
    let backends = autodidact_core::Backends::new().with(autodidact_nn::NativeBackend);
    let _ = cfg.plan(&backends);
}

/// A JSONL task file, read as `[task] name = "jsonl"` reads it (split into train and
/// held-out problems by id).
pub fn task_jsonl(data: &[u8]) {
    let dir = folder("task");
    let path = dir.join("task.jsonl");
    std::fs::write(&path, data).expect("writing the task file");
    let _ = autodidact_tasks::JsonlConfig::new(path).build();
}

/// A checkpoint directory: the input's first two bytes (little-endian) are the length of its
/// `config.json`, which follows; the rest is its `model.safetensors`.
pub fn checkpoint(data: &[u8]) {
    let Some((len, rest)) = data.split_first_chunk::<2>() else {
        return;
    };
    let len = (u16::from_le_bytes(*len) as usize).min(rest.len());
    let (config, weights) = rest.split_at(len);
    let dir = folder("checkpoint");
    std::fs::write(dir.join("config.json"), config).expect("writing config.json");
    std::fs::write(dir.join("model.safetensors"), weights).expect("writing the weights");
    let _ = autodidact_nn::checkpoint::load(&dir);
}

/// A GGUF file: parsed, each tensor (of the first 32) dequantized, and imported as
/// `autodidact import` would.
pub fn gguf(data: &[u8]) {
    use autodidact_nn::gguf::Gguf;
    let dir = folder("gguf");
    let src = dir.join("model.gguf");
    let Ok(g) = Gguf::parse(data.to_vec(), &src) else {
        return;
    };
    for t in g.tensors.iter().take(32) {
        let _ = g.dequantize(t);
    }
    std::fs::write(&src, data).expect("writing the GGUF file");
    let _ = autodidact_nn::import::import_gguf(
        &src,
        &dir.join("out"),
        autodidact_nn::import::WeightDtype::F32,
    );
}

/// Text through the character tokenizer (what encodes must decode to itself), arbitrary ids
/// through its decoder, and the input as a `tokenizer.json` to load.
pub fn tokenizer(data: &[u8]) {
    use autodidact_core::tokenizer::CharTokenizer;
    static TOK: OnceLock<CharTokenizer> = OnceLock::new();
    let tok = TOK.get_or_init(|| {
        CharTokenizer::new("0123456789+-*/=() abcdefghijklmnopqrstuvwxyz.,\n↺✓✗")
            .expect("the tokenizer")
    });
    let text = String::from_utf8_lossy(data);
    if let Ok(ids) = tok.encode(&text) {
        let back = tok.decode(&ids).expect("encoded ids decode");
        assert_eq!(back, text, "a text does not decode to itself");
    }
    let ids: Vec<u32> = data
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes")))
        .collect();
    let _ = tok.decode(&ids);
    let dir = folder("tokenizer");
    let path = dir.join("tokenizer.json");
    std::fs::write(&path, data).expect("writing tokenizer.json");
    if let Ok(loaded) = CharTokenizer::load(&path) {
        if let Ok(ids) = loaded.encode("1+2=3") {
            let _ = loaded.decode(&ids);
        }
    }
}

/// One line from an external verifier worker.
pub fn verifier_reply(data: &[u8]) {
    if let Ok(v) = autodidact_tasks::verifier::fuzz_reply(&String::from_utf8_lossy(data)) {
        assert!(
            (0.0..=1.0).contains(&v.score),
            "a verdict's score is outside [0, 1]"
        );
    }
}

/// A request body to `serve`: the first byte picks `/v1/completions` (even) or
/// `/v1/chat/completions` (odd); the rest is the JSON body.
pub fn serve_request(data: &[u8]) {
    use autodidact_serve::api::{ChatRequest, CompletionRequest};
    let Some((&which, body)) = data.split_first() else {
        return;
    };
    if which % 2 == 0 {
        if let Ok(r) = serde_json::from_slice::<CompletionRequest>(body) {
            let _ = r.plan();
        }
    } else if let Ok(r) = serde_json::from_slice::<ChatRequest>(body) {
        let _ = r.plan();
    }
}

/// A reply body from an OpenAI-compatible server: the first byte picks the API (bit 0) and
/// the number of choices asked for (1 to 4, bits 1 and 2); the rest is the body.
pub fn server_reply(data: &[u8]) {
    use autodidact_core::backend::OpenAiApi;
    let Some((&first, body)) = data.split_first() else {
        return;
    };
    let api = if first & 1 == 0 {
        OpenAiApi::Completions
    } else {
        OpenAiApi::Chat
    };
    let n = 1 + ((first >> 1) & 3) as usize;
    let _ = autodidact_remote::fuzz_reply(body, api, n);
}

/// A math answer against a reference, as the `math` compare grades them: the input is the
/// two, separated by a newline. Equivalence must be symmetric and reflexive for what parses.
pub fn math_answer(data: &[u8]) {
    use autodidact_tasks::math;
    let (a, b) = split(data, b'\n');
    let (a, b) = (String::from_utf8_lossy(a), String::from_utf8_lossy(b));
    let _ = math::canonical(&a);
    let _ = math::normalize(&b);
    let ab = math::equivalent(&a, &b);
    let ba = math::equivalent(&b, &a);
    assert_eq!(ab, ba, "equivalence is not symmetric for {a:?} and {b:?}");
}

/// The `trainer-stats.json` an external trainer writes.
pub fn trainer_report(data: &[u8]) {
    let _ = serde_json::from_slice::<autodidact_engine::trainer::TrainReport>(data);
}
