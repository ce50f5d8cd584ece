//! Helpers shared by the engine's integration tests.
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
        .plan()
        .unwrap();
    Run::create(plan, out, rayon::current_num_threads()).unwrap()
}

/// The manifest of `round` of the run in `out`.
pub fn manifest(out: &Path, round: u32) -> Manifest {
    RunDir::open(out)
        .unwrap()
        .0
        .read_json(&format!("{}/manifest.json", RunDir::round_dir(round)))
        .unwrap()
}
