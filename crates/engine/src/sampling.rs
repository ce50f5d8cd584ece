//! Sampling groups of completions and grading them.

use crate::progress::Observer;
use crate::Result;
use autodidact_core::rng::fnv1a;
use autodidact_core::{Completion, Group, Policy, Problem, Rng, SamplingParams, Task, Verdict};

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

/// Tokens sampled in `groups` (a round's `rollout/sampled_tokens`).
pub fn sampled_tokens(groups: &[Group]) -> usize {
    groups
        .iter()
        .flat_map(|g| &g.completions)
        .map(|c| c.tokens.len())
        .sum()
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
    let rows: Vec<Row> = (0..problems.len())
        .flat_map(|i| {
            (0..k as u64).map(move |j| Row {
                problem: i,
                prompt: prompts[i].clone(),
                prefix: String::new(),
                seed: sample_seed(seed, &problems[i], j),
                max_new_tokens: params.max_new_tokens,
            })
        })
        .collect();
    let graded = sample_rows(policy, task, problems, &rows, params, k as u64, obs)?;
    let mut groups = empty_groups(problems);
    add_graded(&mut groups, &rows, graded);
    Ok(groups)
}

/// The seed of sample `j` of `problem` in a call seeded by `seed`: it does not depend on
/// which other problems are sampled.
pub fn sample_seed(seed: u64, problem: &Problem, j: u64) -> u64 {
    Rng::derived(seed ^ fnv1a(problem.id.as_bytes()), j).next_u64()
}

/// One group per problem, with no completion yet.
pub fn empty_groups(problems: &[Problem]) -> Vec<Group> {
    problems
        .iter()
        .map(|p| Group {
            problem: p.clone(),
            completions: Vec::new(),
            verdicts: Vec::new(),
            rewards: Vec::new(),
        })
        .collect()
}

/// Adds each of `rows`' graded completions ([`sample_rows`]' output) to its problem's group,
/// in row order: its reward is its verdict's score, and a row that continued a prefix adds
/// the whole trace (the prefix, then the completion's text).
pub fn add_graded(groups: &mut [Group], rows: &[Row], graded: Vec<(Completion, Verdict)>) {
    for (row, (mut c, v)) in rows.iter().zip(graded) {
        if !row.prefix.is_empty() {
            c.text = format!("{}{}", row.prefix, c.text);
        }
        let g = &mut groups[row.problem];
        g.rewards.push(v.score);
        g.verdicts.push(v);
        g.completions.push(c);
    }
}

/// One completion to sample: of `problems[problem]`, from `prompt`, continuing `prefix` (the
/// verifier judges `prefix` + the completion), with its own seed and token budget.
#[derive(Clone, Debug)]
pub struct Row {
    pub problem: usize,
    pub prompt: String,
    pub prefix: String,
    pub seed: u64,
    pub max_new_tokens: usize,
}

/// Samples and grades `rows` (sampling settings `params`, but each row's own token budget),
/// in row order; rows of equal budget share the policy's calls. Progress counts rows done
/// in units of `rows_per_unit` (a problem's k samples, say).
pub fn sample_rows(
    policy: &mut dyn Policy,
    task: &dyn Task,
    problems: &[Problem],
    rows: &[Row],
    params: &SamplingParams,
    rows_per_unit: u64,
    obs: &mut dyn Observer,
) -> Result<Vec<(Completion, Verdict)>> {
    sample_rows_with(policy, rows, params, rows_per_unit, obs, |chunk, texts| {
        let items: Vec<(&Problem, &str)> = chunk
            .iter()
            .zip(texts)
            .map(|(&r, t)| (&problems[rows[r].problem], t.as_str()))
            .collect();
        Ok(task.verify_batch(&items)?)
    })
}

/// [`sample_rows`] with each policy call's completions read by `read(rows, texts)` instead
/// of the task's verifier (`texts[i]`: row `rows[i]`'s prefix and completion), one value per
/// row: the self-verification verdicts of `s2r`, which no verifier grades.
pub fn sample_rows_with<V>(
    policy: &mut dyn Policy,
    rows: &[Row],
    params: &SamplingParams,
    rows_per_unit: u64,
    obs: &mut dyn Observer,
    mut read: impl FnMut(&[usize], &[String]) -> Result<Vec<V>>,
) -> Result<Vec<(Completion, V)>> {
    let mut order: Vec<usize> = (0..rows.len()).collect();
    order.sort_by_key(|&r| std::cmp::Reverse(rows[r].max_new_tokens));
    let mut out: Vec<Option<(Completion, V)>> = (0..rows.len()).map(|_| None).collect();
    let (mut tokens, mut done) = (0u64, 0u64);
    for budget in order.chunk_by(|&a, &b| rows[a].max_new_tokens == rows[b].max_new_tokens) {
        let params = SamplingParams {
            max_new_tokens: rows[budget[0]].max_new_tokens,
            ..params.clone()
        };
        for chunk in budget.chunks(CHUNK_ROWS) {
            let prompts: Vec<String> = chunk.iter().map(|&r| rows[r].prompt.clone()).collect();
            let seeds: Vec<u64> = chunk.iter().map(|&r| rows[r].seed).collect();
            let completions = policy.sample(&prompts, &seeds, &params)?;
            let texts: Vec<String> = chunk
                .iter()
                .zip(&completions)
                .map(|(&r, c)| format!("{}{}", rows[r].prefix, c.text))
                .collect();
            let values = read(chunk, &texts)?;
            for ((&r, c), v) in chunk.iter().zip(completions).zip(values) {
                tokens += c.tokens.len() as u64;
                out[r] = Some((c, v));
            }
            done += chunk.len() as u64;
            obs.stage_progress(done / rows_per_unit.max(1), tokens);
        }
    }
    Ok(out
        .into_iter()
        .map(|x| x.expect("every row sampled"))
        .collect())
}
