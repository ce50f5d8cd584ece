//! Sampling groups of completions and grading them.

use crate::progress::Observer;
use crate::Result;
use autodidact_core::rng::fnv1a;
use autodidact_core::{Group, Policy, Problem, Rng, SamplingParams, Task};

/// Rows per call to the policy (progress is reported between calls).
const CHUNK_ROWS: usize = 512;

/// The seed of one random choice of a run: (run seed, round, stage, item) mixed, so that no
/// choice depends on the order others were made in.
pub fn derive_seed(seed: u64, round: u32, stage: &str, item: u64) -> u64 {
    let mut rng = Rng::derived(
        seed ^ fnv1a(stage.as_bytes()),
        ((round as u64) << 40) ^ item,
    );
    rng.next_u64()
}

/// Samples `k` completions for each problem and grades them with the task's verifier; the
/// reward of a completion is its verdict's score. Completion j of a problem is seeded by
/// `(seed, problem id, j)`, so it does not depend on which other problems are sampled.
pub fn sample_groups(
    policy: &mut dyn Policy,
    task: &dyn Task,
    problems: &[Problem],
    k: usize,
    params: &SamplingParams,
    seed: u64,
    obs: &mut dyn Observer,
) -> Result<Vec<Group>> {
    sample_prompts(
        policy,
        task,
        problems,
        &prompts_of(problems),
        k,
        params,
        seed,
        obs,
    )
}

fn prompts_of(problems: &[Problem]) -> Vec<String> {
    problems.iter().map(|p| p.prompt.clone()).collect()
}

/// [`sample_groups`] with the prompt of problem i replaced by `prompts[i]` (a hinted prompt);
/// the verifier still judges against the problem.
#[allow(clippy::too_many_arguments)]
pub fn sample_prompts(
    policy: &mut dyn Policy,
    task: &dyn Task,
    problems: &[Problem],
    prompts: &[String],
    k: usize,
    params: &SamplingParams,
    seed: u64,
    obs: &mut dyn Observer,
) -> Result<Vec<Group>> {
    let rows: Vec<(usize, u64)> = (0..problems.len())
        .flat_map(|i| (0..k as u64).map(move |j| (i, j)))
        .collect();
    let mut groups: Vec<Group> = problems
        .iter()
        .map(|p| Group {
            problem: p.clone(),
            completions: Vec::with_capacity(k),
            verdicts: Vec::with_capacity(k),
            rewards: Vec::with_capacity(k),
        })
        .collect();
    let mut tokens = 0u64;
    for chunk in rows.chunks(CHUNK_ROWS) {
        let chunk_prompts: Vec<String> = chunk.iter().map(|&(i, _)| prompts[i].clone()).collect();
        let seeds: Vec<u64> = chunk
            .iter()
            .map(|&(i, j)| Rng::derived(seed ^ fnv1a(problems[i].id.as_bytes()), j).next_u64())
            .collect();
        let completions = policy.sample(&chunk_prompts, &seeds, params)?;
        let items: Vec<(&Problem, &str)> = chunk
            .iter()
            .zip(&completions)
            .map(|(&(i, _), c)| (&problems[i], c.text.as_str()))
            .collect();
        let verdicts = task.verify_batch(&items)?;
        for ((&(i, _), c), v) in chunk.iter().zip(completions).zip(verdicts) {
            tokens += c.tokens.len() as u64;
            let g = &mut groups[i];
            g.rewards.push(v.score);
            g.verdicts.push(v);
            g.completions.push(c);
        }
        obs.stage_progress((chunk.last().map_or(0, |r| r.0) + 1) as u64, tokens);
    }
    Ok(groups)
}
