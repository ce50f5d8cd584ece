//! Issue 17: every fuzz target over its committed corpus (`fuzz/corpus/<target>/`, grown by
//! libFuzzer runs by hand and holding every crash found), then over a fixed number of
//! mutations of it. The mutations are drawn from a seeded generator, so a failure names the
//! seed and the mutation that replays it:
//!
//! ```text
//! AUTODIDACT_FUZZ_MUTATIONS=20000 AUTODIDACT_FUZZ_SEED=7 \
//!   cargo test --release -p autodidact-fuzz --test corpus -- --nocapture
//! ```
//!
//! This is a smoke test that keeps found crashes fixed, not a fuzzer: coverage-guided runs are
//! `cargo +nightly fuzz run <target>` (see docs/reliability.md).

use autodidact_fuzz::{Target, TARGETS};
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target)
}

fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = corpus_dir(target);
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| {
            let p = e.unwrap().path();
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&p).unwrap())
        })
        .collect();
    files.sort();
    files
}

/// The mutations' choices.
struct Rng(autodidact_core::Rng);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0.next_u64()
    }
    fn below(&mut self, n: usize) -> usize {
        self.0.below(n.max(1) as u64) as usize
    }
}

/// Tokens that tend to reach edges: huge and negative numbers, deep nesting, odd floats.
const TOKENS: &[&str] = &[
    "18446744073709551615",
    "9223372036854775807",
    "4294967296",
    "-1",
    "0",
    "1e309",
    "NaN",
    "null",
    "[[[[[[[[[[[[[[[[",
    "((((((((((((((((",
    "{{{{{{{{{{{{{{{{",
    "\"",
    "\\u0000",
    "\u{0}",
    "\n",
    "=",
    ".",
    "true",
    "[]",
    "{}",
];

/// One random edit of `data` (with `others` to splice from).
fn mutate(rng: &mut Rng, data: &[u8], others: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut d = data.to_vec();
    let edits = 1 + rng.below(4);
    for _ in 0..edits {
        let at = rng.below(d.len() + 1);
        match rng.below(7) {
            0 if !d.is_empty() => {
                let i = rng.below(d.len());
                d[i] ^= 1 << rng.below(8);
            }
            1 if !d.is_empty() => {
                let i = rng.below(d.len());
                d[i] = rng.next() as u8;
            }
            2 => {
                let token = TOKENS[rng.below(TOKENS.len())].as_bytes();
                d.splice(at..at, token.iter().copied());
            }
            3 if !d.is_empty() => {
                let end = (at + 1 + rng.below(16)).min(d.len());
                d.drain(at.min(end)..end);
            }
            4 if !d.is_empty() => {
                let start = rng.below(d.len());
                let end = (start + 1 + rng.below(32)).min(d.len());
                let piece = d[start..end].to_vec();
                d.splice(at..at, piece);
            }
            5 if !others.is_empty() => {
                let other = &others[rng.below(others.len())].1;
                let start = rng.below(other.len() + 1);
                let end = (start + rng.below(64)).min(other.len());
                d.splice(at..at, other[start..end].iter().copied());
            }
            _ => {
                // An ASCII digit run, the most common field in every format here.
                let n = rng.next().to_string();
                d.splice(at..at, n.bytes());
            }
        }
    }
    d
}

fn env_number(var: &str, default: u64) -> u64 {
    std::env::var(var).map_or(default, |v| {
        v.parse()
            .unwrap_or_else(|_| panic!("{var}={v:?} is not a number"))
    })
}

thread_local! {
    /// Whether a target is running on this thread (its panics are reported with the input).
    static IN_TARGET: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `target` on `input`; a panic is returned as its message.
fn attempt(target: &Target, input: &[u8]) -> Result<(), String> {
    IN_TARGET.with(|t| t.set(true));
    let result = std::panic::catch_unwind(AssertUnwindSafe(|| (target.run)(input)));
    IN_TARGET.with(|t| t.set(false));
    result.map_err(|e| {
        e.downcast_ref::<String>()
            .cloned()
            .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "a panic".into())
    })
}

fn shown(input: &[u8]) -> String {
    let text = String::from_utf8_lossy(&input[..input.len().min(400)]);
    format!("{} bytes, starting {text:?}", input.len())
}

#[test]
fn issue17_fuzz_targets_survive_their_corpus_and_its_mutations() {
    let mutations = env_number("AUTODIDACT_FUZZ_MUTATIONS", 300);
    let seed = env_number("AUTODIDACT_FUZZ_SEED", 17);
    // A target's panics are reported below with their input; others as usual.
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if !IN_TARGET.with(|t| t.get()) {
            default(info)
        }
    }));
    let mut failures = Vec::new();
    for target in TARGETS {
        let seeds = corpus(target.name);
        assert!(!seeds.is_empty(), "fuzz/corpus/{} is empty", target.name);
        for (name, input) in &seeds {
            if let Err(e) = attempt(target, input) {
                failures.push(format!("{} corpus file {name}: {e}", target.name));
            }
        }
        let mut rng = Rng(autodidact_core::Rng::derived(
            seed,
            autodidact_core::rng::fnv1a(target.name.as_bytes()),
        ));
        for m in 0..mutations {
            let base = &seeds[rng.below(seeds.len())].1;
            let input = mutate(&mut rng, base, &seeds);
            if let Err(e) = attempt(target, &input) {
                // Kept whole, to be added to the corpus once fixed.
                let dir = std::env::temp_dir().join("autodidact-fuzz-failures");
                std::fs::create_dir_all(&dir).unwrap();
                let kept = dir.join(format!("{}-{seed}-{m}", target.name));
                std::fs::write(&kept, &input).unwrap();
                failures.push(format!(
                    "{} mutation {m} (AUTODIDACT_FUZZ_SEED={seed}, input kept in {}): {e}; input {}",
                    target.name,
                    kept.display(),
                    shown(&input)
                ));
            }
        }
        eprintln!(
            "fuzz {}: {} corpus inputs and {mutations} mutations",
            target.name,
            seeds.len()
        );
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
