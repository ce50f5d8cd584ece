//! Steps of a completion, and their values estimated from rollouts (Math-Shepherd): the
//! process labels of a process reward model, and the step credit of later recipes.
//!
//! A step ends after each match of a [`StepPattern`] (a task's trace separators,
//! `Task::step_pattern`, or a user's regex); text after the last match is the last step.
//! The value of the prefix through step i is the fraction of `k` continuations sampled from
//! it that the verifier accepts (the prefix and the continuation judged together); the value
//! of the whole completion is its own verdict, with no rollouts.
//!
//! How this differs from Math-Shepherd: its hard estimate (a step is good when any
//! continuation reaches the answer) is what a process label here is (`value > 0`), and its
//! soft estimate is the value itself; continuations are sampled from the same policy that
//! wrote the completion, at the caller's temperature, with the completion's own token budget
//! less the prefix's tokens.

use crate::progress::Observer;
use crate::sampling::{derive_seed, sample_rows, Row};
use crate::{Error, Result};
use autodidact_core::rng::fnv1a;
use autodidact_core::{Group, Policy, SamplingParams, Task};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// A regular expression after each match of which a step ends.
#[derive(Clone, Debug)]
pub struct StepPattern {
    re: regex::Regex,
}

impl StepPattern {
    /// The pattern `src`; `key` names the setting it came from in an error. A pattern that
    /// matches the empty string would end a step everywhere, so it is refused.
    pub fn new(key: &str, src: &str) -> Result<Self> {
        let re = regex::Regex::new(src)
            .map_err(|e| Error::config(key, format!("`{src}` is not a regular expression: {e}")))?;
        if re.is_match("") {
            return Err(Error::config(
                key,
                format!("`{src}` matches the empty string; a step separator must match some text (e.g. `[;#]` or `\\n`)"),
            ));
        }
        Ok(Self { re })
    }

    /// The pattern `setting` names, else `task`'s own (`Task::step_pattern`); `key` names the
    /// setting in an error, as when the task has no separators and nothing is set.
    pub fn for_task(key: &str, setting: Option<&str>, task: &dyn Task) -> Result<Self> {
        match setting.or(task.step_pattern()) {
            Some(p) => Self::new(key, p),
            None => Err(Error::config(
                key,
                format!(
                    "task `{}` has no step separators of its own; give a regular expression after each match of which a step ends (e.g. `\\n`)",
                    task.name()
                ),
            )),
        }
    }

    pub fn as_str(&self) -> &str {
        self.re.as_str()
    }

    /// The byte offset where each step of `text` ends (the last is `text.len()` when text
    /// follows the last separator); empty for empty text.
    pub fn ends(&self, text: &str) -> Vec<usize> {
        let mut ends: Vec<usize> = self.re.find_iter(text).map(|m| m.end()).collect();
        if ends.last().copied().unwrap_or(0) < text.len() {
            ends.push(text.len());
        }
        ends
    }

    /// The steps of `text`, which concatenate back to it.
    pub fn split<'a>(&self, text: &'a str) -> Vec<&'a str> {
        let mut start = 0;
        self.ends(text)
            .into_iter()
            .map(|end| {
                let s = &text[start..end];
                start = end;
                s
            })
            .collect()
    }
}

/// How a process reward model's step scores make a sequence's score.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepRule {
    /// The weakest step's score (a chain is as good as its worst step).
    #[default]
    Min,
    /// `Σ log σ(score)`: the log of the product of the steps' probabilities of being right.
    Product,
}

impl StepRule {
    pub fn name(self) -> &'static str {
        match self {
            StepRule::Min => "min",
            StepRule::Product => "product",
        }
    }

    /// The sequence score of step scores (logits); 0 steps score 0.
    pub fn combine(self, scores: &[f32]) -> f32 {
        match self {
            StepRule::Min if scores.is_empty() => 0.0,
            StepRule::Min => scores.iter().copied().fold(f32::INFINITY, f32::min),
            // log σ(x) = −softplus(−x), written to stay finite for large |x|.
            StepRule::Product => scores
                .iter()
                .map(|&x| x.min(0.0) - (-x.abs()).exp().ln_1p())
                .sum(),
        }
    }

    /// The sequence score of each run of consecutive step scores: `scores` holds
    /// `counts[0]` steps of the first sequence, then `counts[1]` of the next, and so on.
    pub fn combine_each(self, scores: &[f32], counts: impl IntoIterator<Item = usize>) -> Vec<f32> {
        let mut at = 0;
        counts
            .into_iter()
            .map(|c| {
                at += c;
                self.combine(&scores[at - c..at])
            })
            .collect()
    }
}

/// The estimated value of each step of each completion of `groups` (`[group][completion]
/// [step]`), from `k` continuations of every proper prefix (see the module's notes). Rollout
/// j of step i of completion c is seeded by `(seed, problem id, c, i, j)`: every completion
/// gets estimates of its own, even where prefixes repeat (the labels of a process reward
/// model stay independent).
#[allow(clippy::too_many_arguments)]
pub fn step_values(
    policy: &mut dyn Policy,
    task: &dyn Task,
    groups: &[Group],
    pattern: &StepPattern,
    k: usize,
    params: &SamplingParams,
    seed: u64,
    obs: &mut dyn Observer,
) -> Result<Vec<Vec<Vec<f32>>>> {
    estimate(policy, task, groups, pattern, k, params, seed, None, obs)
}

/// [`step_values`] with continuations shared through `cache`: a prefix of a problem is
/// continued once (its rollouts seeded by `(seed, problem id, prefix, j)`), however many
/// completions share it, in this call or an earlier one with the same cache. Identical
/// prefixes then carry identical estimates. A cache belongs to one policy: start a new one
/// when the policy changes. `obs` sees a stage `stage` counting the prefixes to continue.
#[allow(clippy::too_many_arguments)]
pub fn shared_step_values(
    policy: &mut dyn Policy,
    task: &dyn Task,
    groups: &[Group],
    pattern: &StepPattern,
    k: usize,
    params: &SamplingParams,
    seed: u64,
    (cache, stage): (&mut PrefixCache, &str),
    obs: &mut dyn Observer,
) -> Result<Vec<Vec<Vec<f32>>>> {
    estimate(
        policy,
        task,
        groups,
        pattern,
        k,
        params,
        seed,
        Some((cache, stage)),
        obs,
    )
}

/// Continuations already sampled: per (problem id, prefix), how many of its rollouts the
/// verifier accepted, of how many.
#[derive(Debug, Default)]
pub struct PrefixCache {
    seen: HashMap<(String, String), (u32, u32)>,
    /// Per (problem id, prefix), the first of its continuations the verifier accepted (the
    /// text after the prefix): the chosen side of a first-pit pair.
    right: HashMap<(String, String), String>,
    /// Prefix estimates asked for, and how many were answered from the cache.
    pub asked: u64,
    pub hits: u64,
}

impl PrefixCache {
    /// The binomial variance `v(1 − v)/k` of each estimate in the cache, averaged: how noisy
    /// the step values are.
    pub fn mean_variance(&self) -> f64 {
        if self.seen.is_empty() {
            return 0.0;
        }
        let sum: f64 = self
            .seen
            .values()
            .map(|&(right, k)| {
                let v = right as f64 / k.max(1) as f64;
                v * (1.0 - v) / k.max(1) as f64
            })
            .sum();
        sum / self.seen.len() as f64
    }

    /// Share of the estimates asked for that an earlier identical prefix answered.
    pub fn hit_rate(&self) -> f64 {
        self.hits as f64 / self.asked.max(1) as f64
    }

    /// A continuation of `prefix` of problem `problem_id` that the verifier accepted (its
    /// text after the prefix), when one of its rollouts was.
    pub fn right_continuation(&self, problem_id: &str, prefix: &str) -> Option<&str> {
        self.right
            .get(&(problem_id.to_string(), prefix.to_string()))
            .map(String::as_str)
    }

    /// Records `continuation` as a right continuation of `prefix` (tests of what reads it).
    #[cfg(test)]
    pub(crate) fn with_right(mut self, problem_id: &str, prefix: &str, continuation: &str) -> Self {
        self.right.insert(
            (problem_id.to_string(), prefix.to_string()),
            continuation.to_string(),
        );
        self
    }

    /// Prefixes continued (each cost k rollouts).
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

/// Where a prefix's value comes from: rollouts queued in this call (the index of its block
/// of k rows), or the cache.
enum Source {
    Rows(usize),
    Cached(f32),
}

#[allow(clippy::too_many_arguments)]
fn estimate(
    policy: &mut dyn Policy,
    task: &dyn Task,
    groups: &[Group],
    pattern: &StepPattern,
    k: usize,
    params: &SamplingParams,
    seed: u64,
    shared: Option<(&mut PrefixCache, &str)>,
    obs: &mut dyn Observer,
) -> Result<Vec<Vec<Vec<f32>>>> {
    let (mut cache, stage) = shared.unzip();
    let problems: Vec<_> = groups.iter().map(|g| g.problem.clone()).collect();
    let mut rows = Vec::new();
    // (group, completion, step) of each estimate, and where it comes from.
    let mut owners = Vec::new();
    // With a cache: the block of each (problem, prefix) queued in this call.
    let mut queued: HashMap<(String, String), usize> = HashMap::new();
    // Every step 0 until its rollouts say otherwise; the last is the verdict.
    let mut values: Vec<Vec<Vec<f32>>> = Vec::with_capacity(groups.len());
    for (gi, g) in groups.iter().enumerate() {
        let id = fnv1a(g.problem.id.as_bytes());
        let mut group_values = Vec::with_capacity(g.completions.len());
        for (ci, (c, verdict)) in g.completions.iter().zip(&g.verdicts).enumerate() {
            let ends = pattern.ends(&c.text);
            let mut steps = vec![0.0; ends.len()];
            if let Some(last) = steps.last_mut() {
                *last = verdict.is_correct() as u8 as f32;
            }
            group_values.push(steps);
            for (si, &end) in ends.iter().enumerate().take(ends.len().saturating_sub(1)) {
                let prefix = &c.text[..end];
                let item = match cache.as_deref_mut() {
                    None => ((ci as u64) << 20) ^ si as u64,
                    Some(cache) => {
                        let key = (g.problem.id.clone(), prefix.to_string());
                        cache.asked += 1;
                        if let Some(&(right, n)) = cache.seen.get(&key) {
                            cache.hits += 1;
                            owners.push(((gi, ci, si), Source::Cached(right as f32 / n as f32)));
                            continue;
                        }
                        if let Some(&block) = queued.get(&key) {
                            cache.hits += 1;
                            owners.push(((gi, ci, si), Source::Rows(block)));
                            continue;
                        }
                        queued.insert(key, rows.len() / k.max(1));
                        // Seeded by the prefix, not by who wrote it.
                        fnv1a(prefix.as_bytes()) >> 20
                    }
                };
                let used = policy.tokenizer().encode(prefix)?.len();
                owners.push(((gi, ci, si), Source::Rows(rows.len() / k.max(1))));
                for j in 0..k as u64 {
                    rows.push(Row {
                        problem: gi,
                        prompt: format!("{}{prefix}", g.problem.prompt),
                        prefix: prefix.to_string(),
                        seed: derive_seed(seed ^ id, 0, "step-rollout", (item << 16) ^ j),
                        max_new_tokens: params.max_new_tokens.saturating_sub(used).max(1),
                    });
                }
            }
        }
        values.push(group_values);
    }
    if k == 0 {
        return Ok(values);
    }
    if let Some(stage) = stage {
        obs.stage_started(stage, (rows.len() / k) as u64);
    }
    let graded = if rows.is_empty() {
        Vec::new()
    } else {
        sample_rows(policy, task, &problems, &rows, params, k as u64, obs)?
    };
    let blocks: Vec<u32> = graded
        .chunks(k)
        .map(|b| b.iter().filter(|(_, v)| v.is_correct()).count() as u32)
        .collect();
    if let Some(cache) = cache {
        for ((id, prefix), block) in queued {
            let rollouts = &graded[block * k..(block + 1) * k];
            if let Some((c, _)) = rollouts.iter().find(|(_, v)| v.is_correct()) {
                cache
                    .right
                    .insert((id.clone(), prefix.clone()), c.text.clone());
            }
            cache.seen.insert((id, prefix), (blocks[block], k as u32));
        }
    }
    for ((gi, ci, si), source) in owners {
        values[gi][ci][si] = match source {
            Source::Rows(b) => blocks[b] as f32 / k as f32,
            Source::Cached(v) => v,
        };
    }
    Ok(values)
}

/// Each step's advantage: the change in value it made, `A_i = V_i − V_{i−1}`, with `v0` the
/// value before the first step (the problem's expected outcome; the group's mean reward is
/// its estimate). The advantages add up to `V_last − v0`, the outcome's advantage.
pub fn step_advantages(v0: f32, values: &[f32]) -> Vec<f32> {
    let mut before = v0;
    values
        .iter()
        .map(|&v| {
            let a = v - before;
            before = v;
            a
        })
        .collect()
}

/// The step each token of a completion belongs to, from the steps' byte ends (`ends`, as
/// [`StepPattern::ends`] gives them for `text`): a token belongs to the step in which its
/// text ends. `decoded(i)` is the text of the first `i` tokens; a token that adds no text of
/// `text` (a stop token) belongs to the last step, as does everything of an empty text.
pub fn token_steps(
    tokens: usize,
    text: &str,
    ends: &[usize],
    mut decoded: impl FnMut(usize) -> Result<String>,
) -> Result<Vec<usize>> {
    let last = ends.len().saturating_sub(1);
    let mut out = Vec::with_capacity(tokens);
    // Bytes of `text` covered so far: monotone, and never past the text (a tokenizer may
    // decode a partial character or a special token as something else).
    let mut covered = 0;
    for i in 1..=tokens {
        let prefix = decoded(i)?;
        let mut common = prefix
            .bytes()
            .zip(text.bytes())
            .take_while(|(a, b)| a == b)
            .count();
        while !text.is_char_boundary(common) {
            common -= 1;
        }
        covered = covered.max(common);
        let step = if covered == 0 {
            0
        } else {
            ends.iter().position(|&e| e >= covered).unwrap_or(last)
        };
        out.push(step.min(last));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::group;
    use autodidact_core::{
        Completion, Example, FinishReason, Problem, Rng, Split, Tokenizer, Verdict,
    };

    #[test]
    fn issue18_steps_end_after_each_separator_and_concatenate_back() {
        let p = StepPattern::new("step_pattern", autodidact_tasks::TRACE_STEPS).unwrap();
        assert_eq!(
            p.split("7+4+0=11;2+2+1=05#511"),
            ["7+4+0=11;", "2+2+1=05#", "511"]
        );
        assert_eq!(p.split("12;3#"), ["12;", "3#"]);
        assert_eq!(p.split("no separator"), ["no separator"]);
        assert!(p.split("").is_empty());
        assert_eq!(p.ends("a;b"), [2, 3]);
        let e = StepPattern::new("step_pattern", "x*")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("step_pattern") && e.contains("empty string"),
            "{e}"
        );
        let e = StepPattern::new("step_pattern", "(")
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a regular expression"), "{e}");
    }

    #[test]
    fn issue18_min_and_product_of_step_scores() {
        assert_eq!(StepRule::Min.combine(&[2.0, -1.0, 3.0]), -1.0);
        let sig = |x: f32| 1.0 / (1.0 + (-x).exp());
        let want = (sig(2.0) * sig(-1.0) * sig(3.0)).ln();
        assert!((StepRule::Product.combine(&[2.0, -1.0, 3.0]) - want).abs() < 1e-6);
        // Finite where σ underflows.
        assert!((StepRule::Product.combine(&[-200.0]) + 200.0).abs() < 1e-3);
        assert_eq!(StepRule::Product.combine(&[]), 0.0);
    }

    /// Continues a prompt holding s separators `;` with `#ok` with probability 2^−s and
    /// `#no` otherwise: the value of a prefix with s separators is exactly 2^−s.
    struct Coin;

    impl autodidact_core::Policy for Coin {
        fn sample(
            &mut self,
            prompts: &[String],
            seeds: &[u64],
            _: &SamplingParams,
        ) -> autodidact_core::Result<Vec<Completion>> {
            Ok(prompts
                .iter()
                .zip(seeds)
                .map(|(p, &s)| {
                    let q = 0.5f64.powi(p.matches(';').count() as i32);
                    let u = Rng::derived(s, 0).uniform_f64();
                    let text = if u < q { "#ok" } else { "#no" }.to_string();
                    Completion {
                        tokens: vec![0; text.len()],
                        text,
                        logprobs: vec![],
                        finish: FinishReason::Stop,
                        top_logprobs: vec![],
                    }
                })
                .collect())
        }
        fn logprobs(&mut self, _: &[Example]) -> autodidact_core::Result<Vec<Vec<f32>>> {
            unreachable!()
        }
        fn next_token_logprobs(
            &mut self,
            _: &[String],
            _: &[u32],
        ) -> autodidact_core::Result<Vec<Vec<f32>>> {
            unreachable!()
        }
        fn context_length(&self) -> usize {
            64
        }
        fn tokenizer(&self) -> &dyn Tokenizer {
            static TOK: std::sync::OnceLock<autodidact_core::CharTokenizer> =
                std::sync::OnceLock::new();
            TOK.get_or_init(|| autodidact_core::CharTokenizer::new("ab;#okn?=").unwrap())
        }
    }

    /// Accepts a completion that ends `#ok`.
    struct EndsOk;

    impl Task for EndsOk {
        fn name(&self) -> &str {
            "ends-ok"
        }
        fn alphabet(&self) -> String {
            "ab;#okn".into()
        }
        fn max_chars(&self) -> (usize, usize) {
            (4, 16)
        }
        fn problems(&self, _: Split, _: usize, _: u64) -> autodidact_core::Result<Vec<Problem>> {
            unreachable!()
        }
        fn verify(&self, _: &Problem, completion: &str) -> Verdict {
            match completion.ends_with("#ok") {
                true => Verdict::correct("ok".into()),
                false => Verdict::incorrect("no".into()),
            }
        }
    }

    /// Each estimate is a binomial fraction of k rollouts around the closed-form value: over
    /// many completions its mean is within 3 standard errors of it, and its variance is the
    /// binomial one. The whole completion's value is its verdict, and the same seed gives the
    /// same values.
    #[test]
    fn issue18_step_values_estimate_the_closed_form_value_of_each_prefix() {
        let n = 200;
        let items: Vec<(&str, Option<&str>, bool)> = (0..n)
            .map(|i| match i % 2 {
                0 => ("a;b;#ok", Some("ok"), true),
                _ => ("a;b;#no", Some("no"), false),
            })
            .collect();
        let groups = [group("p", &items)];
        let pattern = StepPattern::new("p", autodidact_tasks::TRACE_STEPS).unwrap();
        let (k, params) = (8, SamplingParams::greedy(8));
        let values = |seed| {
            step_values(
                &mut Coin,
                &EndsOk,
                &groups,
                &pattern,
                k,
                &params,
                seed,
                &mut crate::Silent,
            )
            .unwrap()
            .remove(0)
        };
        let v = values(3);
        // Steps `a;`, `b;`, `#` and `ok`/`no`.
        assert!(v.iter().all(|s| s.len() == 4));
        for (step, q) in [(0, 0.5), (1, 0.25), (2, 0.25)] {
            let est: Vec<f64> = v.iter().map(|s| s[step] as f64).collect();
            let mean = est.iter().sum::<f64>() / n as f64;
            let var = est.iter().map(|e| (e - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
            let se = (q * (1.0 - q) / (n * k) as f64).sqrt();
            println!("step {step}: estimate {mean:.4} (closed form {q}), variance {var:.4} (binomial {:.4})", q * (1.0 - q) / k as f64);
            assert!((mean - q).abs() < 3.0 * se, "step {step}: {mean} vs {q}");
            assert!(
                (var / (q * (1.0 - q) / k as f64) - 1.0).abs() < 0.35,
                "step {step}: variance {var}"
            );
        }
        for (i, s) in v.iter().enumerate() {
            assert_eq!(
                s[3],
                (i % 2 == 0) as u8 as f32,
                "the last step is the verdict"
            );
        }
        assert_eq!(values(3), v);
        assert_ne!(values(4), v);
    }
    /// Issue 20: with a cache, a prefix is continued once however many completions share it
    /// (here 200 completions share 3 prefixes), the estimate is the closed form's within 3
    /// standard errors, and a second call with the same cache samples nothing and answers
    /// the same.
    #[test]
    fn issue20_shared_step_values_continue_each_prefix_once() {
        let items: Vec<(&str, Option<&str>, bool)> = (0..200)
            .map(|i| match i % 2 {
                0 => ("a;b;#ok", Some("ok"), true),
                _ => ("a;b;#no", Some("no"), false),
            })
            .collect();
        let groups = [group("p", &items)];
        let pattern = StepPattern::new("p", autodidact_tasks::TRACE_STEPS).unwrap();
        let (k, params) = (400, SamplingParams::greedy(8));
        let mut cache = PrefixCache::default();
        let run = |cache: &mut PrefixCache| {
            shared_step_values(
                &mut Coin,
                &EndsOk,
                &groups,
                &pattern,
                k,
                &params,
                5,
                (cache, "steps"),
                &mut crate::Silent,
            )
            .unwrap()
            .remove(0)
        };
        let v = run(&mut cache);
        assert_eq!(cache.len(), 3, "`a;`, `a;b;` and `a;b;#`");
        assert_eq!((cache.asked, cache.hits), (600, 597));
        assert!(
            v.iter().all(|s| s[..3] == v[0][..3]),
            "one estimate per prefix"
        );
        for (step, q) in [(0, 0.5f64), (1, 0.25), (2, 0.25)] {
            let se = (q * (1.0 - q) / k as f64).sqrt();
            assert!(
                (v[0][step] as f64 - q).abs() < 3.0 * se,
                "step {step}: {}",
                v[0][step]
            );
        }
        let want: f64 = [0.5f64, 0.25, 0.25]
            .iter()
            .map(|q| q * (1.0 - q) / k as f64)
            .sum::<f64>()
            / 3.0;
        assert!((cache.mean_variance() / want - 1.0).abs() < 0.1);
        // Each prefix keeps a continuation the verifier accepted (a first-pit pair's chosen
        // side).
        for prefix in ["a;", "a;b;", "a;b;#"] {
            let c = cache
                .right_continuation("p", prefix)
                .expect("a right rollout");
            assert!(EndsOk
                .verify(&groups[0].problem, &format!("{prefix}{c}"))
                .is_correct());
        }
        assert_eq!(cache.right_continuation("p", "b;"), None);
        assert_eq!(run(&mut cache), v);
        assert_eq!((cache.asked, cache.hits, cache.len()), (1200, 1197, 3));
    }

    #[test]
    fn issue20_step_advantages_are_value_differences_that_add_up_to_the_outcome() {
        let a = step_advantages(0.5, &[0.75, 0.25, 0.0]);
        assert_eq!(a, [0.25, -0.5, -0.25]);
        assert_eq!(a.iter().sum::<f32>(), 0.0 - 0.5);
        assert!(step_advantages(0.3, &[]).is_empty());
    }

    /// A token belongs to the step its text ends in: with one character per token, the
    /// separator closes its step; with a token spanning a separator, the later step; a
    /// stop token (decoding to something not in the text) the last step.
    #[test]
    fn issue20_tokens_map_to_the_step_their_text_ends_in() {
        let text = "a;b;#ok";
        let p = StepPattern::new("p", autodidact_tasks::TRACE_STEPS).unwrap();
        let ends = p.ends(text);
        assert_eq!(ends, [2, 4, 5, 7]);
        let chars: Vec<String> = text
            .chars()
            .map(String::from)
            .chain(["</s>".into()])
            .collect();
        let decoded = |pieces: &[String]| {
            let pieces = pieces.to_vec();
            move |i: usize| Ok(pieces[..i].concat())
        };
        assert_eq!(
            token_steps(8, text, &ends, decoded(&chars)).unwrap(),
            [0, 0, 1, 1, 2, 3, 3, 3]
        );
        let merged: Vec<String> = ["a", ";b", ";#", "ok"].map(String::from).to_vec();
        assert_eq!(
            token_steps(4, text, &ends, decoded(&merged)).unwrap(),
            [0, 1, 2, 3]
        );
        // A first token that decodes to nothing of the text belongs to the first step.
        let odd: Vec<String> = ["<s>", "a;"].map(String::from).to_vec();
        assert_eq!(token_steps(2, "a;", &[2], decoded(&odd)).unwrap(), [0, 0]);
        assert_eq!(token_steps(1, "", &[], |_| Ok(String::new())).unwrap(), [0]);
    }
}
