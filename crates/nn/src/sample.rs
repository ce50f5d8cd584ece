//! Batched sampling with a KV cache.
//!
//! Prompts are prefilled together (packed, as in training), then every step
//! feeds one token per unfinished row. Rows finish independently (stop token,
//! a [`StopCheck`] such as a stop string, `max_new_tokens`, or a full context)
//! and drop out of later steps. Each row
//! draws from its own generator seeded by the caller, so a row's sample does not
//! depend on which other rows share its batch.
//!
//! Token choice ([`pick`]) applies temperature, then top-k, then top-p (the order
//! of Hugging Face's `generate`); temperature 0 is greedy (argmax, lowest id on
//! ties). The log-prob recorded for each sampled token is under the policy
//! itself — the log-softmax of the raw logits, as the trainer's forward pass
//! computes it — not under the tempered or truncated sampling distribution.

use crate::decode::{Par, RowFeed, SampleWorkspace, Shard, StreamRow};
use crate::kernels;
use crate::model::Transformer;
use crate::rng::Rng;
use crate::{Error, Result};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::sync::Mutex;

/// How tokens are chosen and when a row stops.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SamplingConfig {
    /// Softmax temperature; 0 means greedy decoding.
    pub temperature: f32,
    /// Keep only the `top_k` most likely tokens before sampling; 0 keeps all.
    pub top_k: usize,
    /// Keep the smallest set of most likely tokens whose probability reaches `top_p`; 1 keeps all.
    pub top_p: f32,
    /// Most tokens generated per row.
    pub max_new_tokens: usize,
    /// Tokens that end a row (the stop token is included in the output).
    pub stop_tokens: Vec<u32>,
    /// Also record, for each sampled token, this many most likely tokens at its position
    /// (0: none).
    #[serde(default)]
    pub top_logprobs: usize,
}

impl SamplingConfig {
    pub fn greedy(max_new_tokens: usize, stop_tokens: Vec<u32>) -> Self {
        Self {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            max_new_tokens,
            stop_tokens,
            top_logprobs: 0,
        }
    }

    pub fn validate(&self, vocab_size: usize) -> Result<()> {
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return Err(Error::config(
                "temperature",
                self.temperature,
                "must be a finite number ≥ 0 (0 is greedy)",
            ));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(Error::config(
                "top_p",
                self.top_p,
                "must be in (0, 1] (1 disables it)",
            ));
        }
        if self.max_new_tokens == 0 {
            return Err(Error::config("max_new_tokens", 0, "must be at least 1"));
        }
        if let Some(t) = self.stop_tokens.iter().find(|&&t| t as usize >= vocab_size) {
            return Err(Error::config(
                "stop_tokens",
                t,
                format!("must be token ids below the vocabulary size {vocab_size}"),
            ));
        }
        Ok(())
    }
}

pub use autodidact_core::FinishReason;

/// One row's completion.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// Generated tokens (after the prompt), including a final stop token.
    pub tokens: Vec<u32>,
    /// `log p(token)` under the policy (raw logits, temperature 1) for each generated token.
    pub logprobs: Vec<f32>,
    pub finish: FinishReason,
    /// With `top_logprobs` = k: per sampled token, the k most likely tokens at its position
    /// and their log-probs, most likely first (ties by lower id).
    pub top: Vec<Vec<(u32, f32)>>,
}

/// The `k` most likely tokens of `logits` with their log-probs (`lse` the log-sum-exp of
/// `logits`), most likely first, ties by lower id.
pub fn top_logprobs(logits: &[f32], lse: f32, k: usize) -> Vec<(u32, f32)> {
    let k = k.min(logits.len());
    let mut idx: Vec<u32> = (0..logits.len() as u32).collect();
    let order = |a: &u32, b: &u32| {
        logits[*b as usize]
            .total_cmp(&logits[*a as usize])
            .then(a.cmp(b))
    };
    if k < idx.len() {
        idx.select_nth_unstable_by(k, order);
        idx.truncate(k);
    }
    idx.sort_by(order);
    idx.into_iter()
        .map(|i| (i, logits[i as usize] - lse))
        .collect()
}

/// A caller's own condition for ending a row, checked after every token that did not
/// already end it: a stop string in the row's decoded text, for one. It is called from the
/// sampling threads, so it must be `Sync`.
pub trait StopCheck: Sync {
    /// Whether row `row` (its index among the call's prompts) ends after `generated`, its
    /// tokens so far.
    fn stopped(&self, row: usize, generated: &[u32]) -> bool;
}

/// No condition beyond stop tokens and lengths.
pub struct NoStop;

impl StopCheck for NoStop {
    fn stopped(&self, _row: usize, _generated: &[u32]) -> bool {
        false
    }
}

/// Chooses the next token from one row of logits.
pub fn pick(logits: &[f32], cfg: &SamplingConfig, rng: &mut Rng) -> u32 {
    if cfg.temperature == 0.0 {
        let mut best = 0;
        for (i, &z) in logits.iter().enumerate() {
            if z > logits[best] {
                best = i;
            }
        }
        return best as u32;
    }
    let inv_t = 1.0 / cfg.temperature;
    let m = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let truncate = (cfg.top_k > 0 && cfg.top_k < logits.len()) || cfg.top_p < 1.0;
    let u = rng.uniform();
    if !truncate {
        let total: f32 = logits.iter().map(|&z| kernels::exp((z - m) * inv_t)).sum();
        let target = u * total;
        let mut acc = 0.0;
        for (i, &z) in logits.iter().enumerate() {
            acc += kernels::exp((z - m) * inv_t);
            if acc > target {
                return i as u32;
            }
        }
        return (logits.len() - 1) as u32;
    }
    // Most likely first; ties by lower id, so the order is fully determined.
    let mut probs: Vec<(f32, u32)> = logits
        .iter()
        .enumerate()
        .map(|(i, &z)| (kernels::exp((z - m) * inv_t), i as u32))
        .collect();
    probs.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    if cfg.top_k > 0 {
        probs.truncate(cfg.top_k);
    }
    if cfg.top_p < 1.0 {
        let total: f32 = probs.iter().map(|p| p.0).sum();
        let mut acc = 0.0;
        let mut keep = probs.len();
        for (i, p) in probs.iter().enumerate() {
            acc += p.0 / total;
            if acc >= cfg.top_p {
                keep = i + 1;
                break;
            }
        }
        probs.truncate(keep);
    }
    let total: f32 = probs.iter().map(|p| p.0).sum();
    let target = u * total;
    let mut acc = 0.0;
    for p in &probs {
        acc += p.0;
        if acc > target {
            return p.1;
        }
    }
    probs[probs.len() - 1].1
}

/// Where a slice of a call's rows starts among its prompts, the caller's stop check (which
/// takes the row's index in the call), and the call's settings (one, or one per row).
#[derive(Clone, Copy)]
struct Rows<'a> {
    first: usize,
    stop: &'a dyn StopCheck,
    cfgs: &'a [SamplingConfig],
}

/// Row `row`'s item of settings given once for every row, or once per row.
pub(crate) fn one_or_each<T>(items: &[T], row: usize) -> &T {
    match items {
        [one] => one,
        all => &all[row],
    }
}

impl Transformer {
    /// Samples a completion for each prompt. `seeds[i]` seeds row i's generator.
    pub fn sample(
        &self,
        prompts: &[Vec<u32>],
        seeds: &[u64],
        cfg: &SamplingConfig,
    ) -> Result<Vec<Sample>> {
        self.sample_with(prompts, seeds, cfg, &mut SampleWorkspace::new())
    }

    /// [`Transformer::sample`] with caller-owned buffers, for repeated sampling.
    pub fn sample_with(
        &self,
        prompts: &[Vec<u32>],
        seeds: &[u64],
        cfg: &SamplingConfig,
        ws: &mut SampleWorkspace,
    ) -> Result<Vec<Sample>> {
        self.sample_until(prompts, seeds, cfg, ws, &NoStop)
    }

    /// [`Transformer::sample_with`] that also ends a row when `stop` says so; such a row
    /// finishes with [`FinishReason::Stop`] and keeps the token that triggered it.
    pub fn sample_until(
        &self,
        prompts: &[Vec<u32>],
        seeds: &[u64],
        cfg: &SamplingConfig,
        ws: &mut SampleWorkspace,
        stop: &dyn StopCheck,
    ) -> Result<Vec<Sample>> {
        self.sample_each(prompts, seeds, std::slice::from_ref(cfg), ws, stop)
    }

    /// [`Transformer::sample_until`] with settings of each row's own (`cfgs[i]` for row i;
    /// one setting serves every row): requests that ask for different temperatures,
    /// lengths or stop tokens share one decode batch.
    pub fn sample_each(
        &self,
        prompts: &[Vec<u32>],
        seeds: &[u64],
        cfgs: &[SamplingConfig],
        ws: &mut SampleWorkspace,
        stop: &dyn StopCheck,
    ) -> Result<Vec<Sample>> {
        let mc = &self.config;
        if cfgs.len() != 1 && cfgs.len() != prompts.len() {
            return Err(Error::invalid(
                "sampling request",
                format!(
                    "{} settings for {} prompts; give one for all or one per prompt",
                    cfgs.len(),
                    prompts.len()
                ),
            ));
        }
        for cfg in cfgs {
            cfg.validate(mc.vocab_size)?;
        }
        if seeds.len() != prompts.len() {
            return Err(Error::invalid(
                "sampling request",
                format!(
                    "{} prompts but {} seeds; give one seed per prompt",
                    prompts.len(),
                    seeds.len()
                ),
            ));
        }
        for (i, p) in prompts.iter().enumerate() {
            check_prompt(self, i, p)?;
        }
        // Rows are independent, so a large request runs as consecutive chunks whose workspace
        // stays within the budget, giving the same samples in bounded memory.
        let longest = prompts.iter().map(Vec::len).max().unwrap_or(1);
        let max_new = cfgs.iter().map(|c| c.max_new_tokens).max().unwrap_or(1);
        let threads = rayon::current_num_threads();
        let per_row = mc.sample_row_bytes(longest, longest + max_new).max(1);
        let chunk = ((ws.budget / per_row) as usize).max(2 * threads);
        let mut out = Vec::with_capacity(prompts.len());
        for (p, s) in prompts.chunks(chunk).zip(seeds.chunks(chunk)) {
            let rows = Rows {
                first: out.len(),
                stop,
                cfgs,
            };
            out.extend(self.sample_sharded(p, s, ws, threads, rows));
        }
        Ok(out)
    }

    /// One chunk of [`Transformer::sample_with`] for validated prompts.
    fn sample_sharded(
        &self,
        prompts: &[Vec<u32>],
        seeds: &[u64],
        ws: &mut SampleWorkspace,
        threads: usize,
        rows_of: Rows,
    ) -> Vec<Sample> {
        let rows = prompts.len();
        // With enough rows, each thread runs the whole decode loop for its own shard of rows
        // with single-threaded kernels, so the many small steps need no synchronization. Rows
        // are independent, so sharding does not change what a row samples.
        let shards = if rows >= 2 * threads { threads } else { 1 };
        if ws.shards.len() < shards {
            ws.shards.resize_with(shards, Shard::default);
        }
        let par = if shards == 1 { Par::Always } else { Par::Never };
        let bounds: Vec<usize> = (0..=shards).map(|i| i * rows / shards).collect();
        let parts: Vec<Vec<Sample>> = ws.shards[..shards]
            .par_iter_mut()
            .enumerate()
            .map(|(i, shard)| {
                let r = bounds[i]..bounds[i + 1];
                let feed = Fixed::new(&prompts[r.clone()], &seeds[r.clone()], rows_of, r.start);
                // The chunk was sized to the workspace budget; every row starts at once.
                self.decode(&feed, shard, r.len(), u64::MAX, par);
                feed.samples()
            })
            .collect();
        parts.concat()
    }
}

/// Checks prompt `i` of a call: 1..context_length tokens, each in the vocabulary.
pub(crate) fn check_prompt(model: &Transformer, i: usize, p: &[u32]) -> Result<()> {
    let mc = model.config();
    if p.is_empty() || p.len() >= mc.context_length {
        return Err(Error::invalid(
            "prompt",
            format!(
                "prompt {i} has {} tokens; it needs 1..{} (context_length {} leaves room for one new token)",
                p.len(),
                mc.context_length - 1,
                mc.context_length
            ),
        ));
    }
    model.check_tokens("prompt", p)
}

/// A call's slice of rows as a feed: all of them at the first take, each sample kept in its
/// place.
struct Fixed<'a> {
    rows: Mutex<Option<Vec<StreamRow<usize>>>>,
    out: Mutex<Vec<Option<Sample>>>,
    of: Rows<'a>,
    /// The slice's first row in the call.
    first: usize,
}

impl<'a> Fixed<'a> {
    fn new(prompts: &[Vec<u32>], seeds: &[u64], of: Rows<'a>, start: usize) -> Self {
        let first = of.first + start;
        let rows = prompts
            .iter()
            .zip(seeds)
            .enumerate()
            .map(|(i, (p, &seed))| StreamRow {
                prompt: p.clone(),
                seed,
                cfg: one_or_each(of.cfgs, first + i).clone(),
                tag: first + i,
            })
            .collect();
        Self {
            rows: Mutex::new(Some(rows)),
            out: Mutex::new(vec![None; prompts.len()]),
            of,
            first,
        }
    }

    fn samples(self) -> Vec<Sample> {
        let out = self.out.into_inner().unwrap_or_else(|e| e.into_inner());
        out.into_iter()
            .map(|s| s.expect("the decode loop hands back every row it takes"))
            .collect()
    }
}

impl RowFeed for Fixed<'_> {
    type Tag = usize;

    fn take(&self, _max: usize, _wait: bool) -> Option<Vec<StreamRow<usize>>> {
        self.rows.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    fn stopped(&self, tag: &usize, generated: &[u32]) -> bool {
        self.of.stop.stopped(*tag, generated)
    }

    fn finished(&self, tag: usize, sample: Result<Sample>) {
        // The rows were checked before the call, so every row samples.
        let sample = sample.expect("rows checked before the call");
        self.out.lock().unwrap_or_else(|e| e.into_inner())[tag - self.first] = Some(sample);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(t: f32, k: usize, p: f32) -> SamplingConfig {
        SamplingConfig {
            temperature: t,
            top_k: k,
            top_p: p,
            max_new_tokens: 1,
            stop_tokens: vec![],
            top_logprobs: 0,
        }
    }

    #[test]
    fn greedy_is_argmax_with_lowest_id_on_ties() {
        let mut r = Rng::new(1);
        assert_eq!(pick(&[0.0, 3.0, 3.0, -1.0], &cfg(0.0, 0, 1.0), &mut r), 1);
    }

    #[test]
    fn frequencies_follow_the_truncated_distribution() {
        // p ∝ exp(logits) = [0.1, 0.2, 0.3, 0.4]
        let logits: Vec<f32> = [0.1f32, 0.2, 0.3, 0.4].iter().map(|p| p.ln()).collect();
        let count = |c: SamplingConfig| {
            let mut r = Rng::new(9);
            let mut n = [0usize; 4];
            for _ in 0..40_000 {
                n[pick(&logits, &c, &mut r) as usize] += 1;
            }
            n.map(|x| x as f64 / 40_000.0)
        };
        let full = count(cfg(1.0, 0, 1.0));
        for (f, want) in full.iter().zip([0.1, 0.2, 0.3, 0.4]) {
            assert!((f - want).abs() < 0.01, "{full:?}");
        }
        // top-k 2 keeps {3, 2}: 0.4/0.7, 0.3/0.7
        let k2 = count(cfg(1.0, 2, 1.0));
        assert_eq!(k2[0] + k2[1], 0.0);
        assert!((k2[3] - 4.0 / 7.0).abs() < 0.01, "{k2:?}");
        // top-p 0.65 keeps {3, 2} (0.4 + 0.3 ≥ 0.65)
        let p = count(cfg(1.0, 0, 0.65));
        assert_eq!(p[0] + p[1], 0.0);
        // temperature 0.5 squares the odds: p ∝ [1, 4, 9, 16] / 30
        let t = count(cfg(0.5, 0, 1.0));
        assert!((t[3] - 16.0 / 30.0).abs() < 0.01, "{t:?}");
    }

    #[test]
    fn bad_settings_are_rejected() {
        let mut c = cfg(1.0, 0, 1.0);
        c.top_p = 0.0;
        assert!(c.validate(4).unwrap_err().to_string().contains("top_p"));
        let mut c = cfg(-1.0, 0, 1.0);
        assert!(c
            .validate(4)
            .unwrap_err()
            .to_string()
            .contains("temperature"));
        c = cfg(1.0, 0, 1.0);
        c.stop_tokens = vec![4];
        assert!(c
            .validate(4)
            .unwrap_err()
            .to_string()
            .contains("stop_tokens"));
    }
}
