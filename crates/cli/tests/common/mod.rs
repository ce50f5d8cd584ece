//! Helpers shared by the integration tests that drive runs through the engine's library API
//! with the native backend.
#![allow(dead_code)]

use autodidact_engine::run::Manifest;
use autodidact_engine::store::RunDir;
use autodidact_engine::{Run, RunConfig, DEMO_CONFIG};
use std::path::Path;

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
