//! The native transformer as a [`TrainablePolicy`]: text in, text and log-probs out.
//!
//! A sequence is the prompt as the tokenizer encodes prompts (after `<bos>`, for the
//! character vocabulary and most pretrained tokenizers), then the completion's tokens and
//! the first stop token. Log-probs and weights cover the completion's tokens and the stop
//! token (so the model learns to stop); prompt positions get no gradient.

use crate::checkpoint;
use crate::decode::SampleWorkspace;
use crate::model::{Activations, ForwardOptions, Gradients, Transformer};
use crate::optim::{AdamW, AdamWConfig};
use crate::sample::{SamplingConfig, StopCheck};
use crate::{Error, TokenBatch};
use autodidact_core::{
    Completion, Example, FinishReason, ModelTokenizer, OptimizerSettings, Policy, RowFeed,
    SampleWatch, SamplingParams, TokenScores, Tokenizer, TrainablePolicy, Wait,
};
use std::path::Path;

/// A [`Transformer`] with its tokenizer, training buffers and sampling workspace.
pub struct NativePolicy {
    model: Transformer,
    tokenizer: ModelTokenizer,
    act: Activations,
    grads: Gradients,
    optimizer: Option<AdamW>,
    workspace: SampleWorkspace,
    /// Per row of the last forward pass: (first target index of the completion, its length).
    last: Option<(Vec<(usize, usize)>, usize)>,
}

pub(crate) fn adamw(s: &OptimizerSettings) -> AdamWConfig {
    AdamWConfig {
        beta1: s.beta1,
        beta2: s.beta2,
        eps: s.eps,
        weight_decay: s.weight_decay,
    }
}

pub(crate) fn to_core(e: Error) -> autodidact_core::Error {
    match e {
        Error::Core(c) => c,
        other => autodidact_core::Error::Policy {
            backend: "native",
            source: Box::new(other),
        },
    }
}

impl NativePolicy {
    pub fn new(model: Transformer, tokenizer: impl Into<ModelTokenizer>) -> crate::Result<Self> {
        let tokenizer = tokenizer.into();
        checkpoint::check_vocab("policy", &model, &tokenizer)?;
        let grads = Gradients::new(&model);
        Ok(Self {
            model,
            tokenizer,
            act: Activations::new(),
            grads,
            optimizer: None,
            workspace: SampleWorkspace::new(),
            last: None,
        })
    }

    /// Loads a checkpoint directory written by [`TrainablePolicy::save`] (it must hold a
    /// `tokenizer.json`).
    pub fn load(dir: &Path) -> crate::Result<Self> {
        Self::from_checkpoint(checkpoint::load(dir)?, dir)
    }

    /// The policy of checkpoint `ck`, loaded from `dir` (which it must have read its
    /// tokenizer from).
    pub fn from_checkpoint(ck: checkpoint::Checkpoint, dir: &Path) -> crate::Result<Self> {
        let tokenizer = ck.tokenizer.ok_or_else(|| {
            Error::checkpoint(
                dir.join(checkpoint::TOKENIZER_FILE),
                "missing: a policy checkpoint needs its tokenizer",
            )
        })?;
        Self::new(ck.model, tokenizer)
    }

    pub fn model(&self) -> &Transformer {
        &self.model
    }

    pub fn tokenizer(&self) -> &ModelTokenizer {
        &self.tokenizer
    }

    /// The optimizer, once [`TrainablePolicy::reset_optimizer`] or `restore_optimizer` made one.
    pub fn optimizer(&self) -> Option<&AdamW> {
        self.optimizer.as_ref()
    }

    /// Continues with `opt` (loaded for this model), gradients cleared.
    pub(crate) fn set_optimizer(&mut self, opt: AdamW) {
        self.optimizer = Some(opt);
        self.grads.zero();
    }

    /// The token that ends a training completion.
    fn stop_token(&self) -> u32 {
        self.tokenizer.stop_tokens()[0]
    }

    /// `prompt completion <stop>` (or `prompt completion_tokens`) and the length of the
    /// encoded prompt.
    /// A scalar head's score of each example (`head · h` at its last token, the whole
    /// sequence read; [`Transformer::scores`]), with the pass cached for
    /// [`NativePolicy::backward_scores`].
    pub(crate) fn forward_scores(
        &mut self,
        head: &[f32],
        batch: &[Example],
    ) -> crate::Result<Vec<f32>> {
        self.last = None;
        let ctx = self.model.config().context_length;
        let mut seqs = Vec::with_capacity(batch.len());
        for ex in batch {
            let (ids, _) = self.encode(ex)?;
            if ids.len() > ctx {
                return Err(Error::invalid(
                    "example",
                    format!(
                        "{} tokens, beyond the model's context of {ctx}: a score reads every token",
                        ids.len()
                    ),
                ));
            }
            seqs.push(ids);
        }
        let t = seqs.iter().map(|s| s.len()).max().unwrap_or(0);
        let mut inputs = vec![0u32; seqs.len() * t];
        for (b, s) in seqs.iter().enumerate() {
            inputs[b * t..b * t + s.len()].copy_from_slice(s);
        }
        // Targets are not read: every token is an input.
        let targets = vec![0u32; inputs.len()];
        let lengths = seqs.iter().map(|s| s.len()).collect();
        let tb = TokenBatch::new(inputs, targets, lengths, t)?;
        self.model
            .forward(&tb, ForwardOptions::default(), &mut self.act)?;
        self.model.scores(&self.act, head)
    }

    /// Accumulates the gradient of `Σ_b dscores_b · score_b` over the last
    /// [`NativePolicy::forward_scores`] into the policy's gradient; returns it in `head`.
    pub(crate) fn backward_scores(
        &mut self,
        head: &[f32],
        dscores: &[f32],
    ) -> crate::Result<Vec<f32>> {
        self.model
            .backward_scores(&mut self.act, head, dscores, &mut self.grads)
    }

    /// The optimizer step of [`TrainablePolicy::step`], with `extra` parameters beside the
    /// model's when given (a score head: its values, gradient and AdamW): all are clipped
    /// together to `max_grad_norm` (0: no clipping), as PyTorch's `clip_grad_norm_` over every
    /// parameter; returns the norm before clipping.
    pub(crate) fn step_with(
        &mut self,
        lr: f32,
        max_grad_norm: f32,
        extra: Option<(&mut [f32], &mut [f32], &mut AdamW)>,
    ) -> crate::Result<f32> {
        let opt = self.optimizer.as_mut().ok_or_else(|| {
            autodidact_core::Error::invalid(
                "training step",
                "no optimizer: call reset_optimizer before the first step",
            )
        })?;
        let norm = match &extra {
            None if max_grad_norm > 0.0 => self.grads.clip_global_norm(max_grad_norm),
            None => self.grads.global_norm(),
            Some((_, grad, _)) => {
                let base = self.grads.global_norm() as f64;
                let own: f64 = grad.iter().map(|&g| (g as f64) * (g as f64)).sum();
                (base * base + own).sqrt() as f32
            }
        };
        let extra = extra.map(|(values, grad, head_opt)| {
            if max_grad_norm > 0.0 && norm > max_grad_norm && norm.is_finite() {
                let s = max_grad_norm / (norm + 1e-6);
                self.grads.scale(s);
                grad.iter_mut().for_each(|g| *g *= s);
            }
            (values, grad, head_opt)
        });
        self.model.update(opt, &self.grads, lr)?;
        if let Some((values, grad, head_opt)) = extra {
            head_opt.step(values, grad, lr)?;
            grad.fill(0.0);
        }
        self.grads.zero();
        Ok(norm)
    }

    fn encode(&self, ex: &Example) -> crate::Result<(Vec<u32>, usize)> {
        let mut ids = self.tokenizer.encode_prompt(&ex.prompt)?;
        let prompt_len = ids.len();
        if prompt_len == 0 {
            return Err(Error::invalid(
                "example",
                "the prompt is empty and this tokenizer adds no BOS token: nothing predicts the completion's first token",
            ));
        }
        match &ex.completion_tokens {
            Some(tokens) => {
                let vocab = self.tokenizer.vocab_size();
                if let Some(&id) = tokens.iter().find(|&&t| t as usize >= vocab) {
                    return Err(autodidact_core::Error::UnknownId {
                        id,
                        vocab_size: vocab,
                    }
                    .into());
                }
                if tokens.is_empty() {
                    return Err(Error::invalid(
                        "example",
                        format!("completion of {:?} has no tokens", ex.prompt),
                    ));
                }
                ids.extend(tokens);
            }
            None => {
                ids.extend(self.tokenizer.encode(&ex.completion)?);
                ids.push(self.stop_token());
            }
        }
        let ctx = self.model.config().context_length;
        if ids.len() - 1 > ctx {
            return Err(Error::invalid(
                "example",
                format!(
                    "{:?} + {:?} is {} tokens with the special tokens; the model's context_length is {ctx}",
                    ex.prompt,
                    ex.completion,
                    ids.len()
                ),
            ));
        }
        Ok((ids, prompt_len))
    }

    fn forward_examples(&mut self, batch: &[Example], entropy: bool) -> crate::Result<TokenScores> {
        self.last = None;
        let mut seqs = Vec::with_capacity(batch.len());
        let mut spans = Vec::with_capacity(batch.len());
        for ex in batch {
            let (ids, prompt_len) = self.encode(ex)?;
            // Targets are ids[1..]; the completion starts at target index prompt_len − 1.
            spans.push((prompt_len - 1, ids.len() - prompt_len));
            seqs.push(ids);
        }
        let tb = TokenBatch::from_sequences(&seqs)?;
        let seq_len = tb.seq_len();
        let opts = ForwardOptions {
            entropy,
            logits: false,
        };
        let out = self.model.forward(&tb, opts, &mut self.act)?;
        let rows = |v: &[f32]| -> Vec<Vec<f32>> {
            spans
                .iter()
                .enumerate()
                .map(|(b, &(start, len))| {
                    v[b * seq_len + start..b * seq_len + start + len].to_vec()
                })
                .collect()
        };
        let scores = TokenScores {
            logprobs: rows(&out.logprobs),
            entropies: out.entropy.as_deref().map(rows),
        };
        self.last = Some((spans, seq_len));
        Ok(scores)
    }

    fn backward_weights(
        &mut self,
        weights: &[Vec<f32>],
        entropy_coefs: Option<&[Vec<f32>]>,
    ) -> crate::Result<()> {
        let (spans, seq_len) = self.last.take().ok_or(Error::NoForwardCache)?;
        let pad = |what: &'static str, rows: &[Vec<f32>]| -> crate::Result<Vec<f32>> {
            if rows.len() != spans.len() {
                return Err(Error::invalid(
                    what,
                    format!(
                        "{} rows for a forward pass of {} examples",
                        rows.len(),
                        spans.len()
                    ),
                ));
            }
            let mut padded = vec![0.0f32; spans.len() * seq_len];
            for (b, (&(start, len), w)) in spans.iter().zip(rows).enumerate() {
                if w.len() != len {
                    return Err(Error::invalid(
                        what,
                        format!("row {b} has {} values for {len} completion tokens", w.len()),
                    ));
                }
                padded[b * seq_len + start..b * seq_len + start + len].copy_from_slice(w);
            }
            Ok(padded)
        };
        let w = pad("weights", weights)?;
        let c = entropy_coefs
            .map(|e| pad("entropy coefficients", e))
            .transpose()?;
        self.model
            .backward(&mut self.act, &w, c.as_deref(), &mut self.grads)
    }
}

impl NativePolicy {
    /// [`Policy::sample_each`] (`params`: one for every row, or one per row), with or
    /// without a watcher.
    fn sample_inner(
        &mut self,
        prompts: &[String],
        seeds: &[u64],
        params: &[SamplingParams],
        watch: Option<&dyn SampleWatch>,
    ) -> autodidact_core::Result<Vec<Completion>> {
        let encoded = prompts
            .iter()
            .map(|p| self.tokenizer.encode_prompt(p))
            .collect::<autodidact_core::Result<Vec<_>>>()?;
        let stop_tokens = self.tokenizer.stop_tokens();
        let cfgs = params
            .iter()
            .map(|p| sampling_config(p, &stop_tokens))
            .collect::<autodidact_core::Result<Vec<_>>>()?;
        let stop = StopStrings {
            tokenizer: &self.tokenizer,
            params,
            watch,
        };
        let samples = self
            .model
            .sample_each(&encoded, seeds, &cfgs, &mut self.workspace, &stop)
            .map_err(to_core)?;
        samples
            .into_iter()
            .enumerate()
            .map(|(row, s)| completion(&self.tokenizer, s, stop.of(row)))
            .collect()
    }
}

/// The sampler's settings for `p`, with the tokenizer's `stop_tokens` unless it ignores them.
fn sampling_config(
    p: &SamplingParams,
    stop_tokens: &[u32],
) -> autodidact_core::Result<SamplingConfig> {
    autodidact_core::check_stop_strings("stop", &p.stop)?;
    Ok(SamplingConfig {
        temperature: p.temperature,
        top_k: p.top_k,
        top_p: p.top_p,
        max_new_tokens: p.max_new_tokens,
        top_logprobs: p.top_logprobs,
        stop_tokens: if p.ignore_stop {
            Vec::new()
        } else {
            stop_tokens.to_vec()
        },
    })
}

/// A sample as a completion: its text, cut before the first of `stop` it holds.
fn completion(
    tokenizer: &ModelTokenizer,
    s: crate::Sample,
    stop: &[String],
) -> autodidact_core::Result<Completion> {
    let mut text = tokenizer.decode(&s.tokens)?;
    let mut finish = s.finish;
    if let Some(at) = autodidact_core::find_stop(&text, stop) {
        text.truncate(at);
        finish = FinishReason::Stop;
    }
    Ok(Completion {
        text,
        tokens: s.tokens,
        logprobs: s.logprobs,
        finish,
        top_logprobs: s.top,
    })
}

/// The stop strings of a row's settings (none when it ignores stops).
fn stop_strings(p: &SamplingParams) -> &[String] {
    if p.ignore_stop {
        &[]
    } else {
        &p.stop
    }
}

/// Ends a row once its decoded text contains one of its stop strings, and shows a watcher
/// the row's text as it grows. Without a watcher only the last few tokens are decoded after
/// each new one: enough to hold the longest stop string (a token is at least one byte of
/// text) with room for tokens that decode to nothing. An occurrence that ends in the new
/// token lies inside that window; an earlier one would have ended the row already.
struct StopStrings<'a> {
    tokenizer: &'a ModelTokenizer,
    /// One for every row, or one per row.
    params: &'a [SamplingParams],
    watch: Option<&'a dyn SampleWatch>,
}

impl StopStrings<'_> {
    /// The stop strings of `row`.
    fn of(&self, row: usize) -> &[String] {
        stop_strings(crate::sample::one_or_each(self.params, row))
    }
}

impl StopCheck for StopStrings<'_> {
    fn stopped(&self, row: usize, generated: &[u32]) -> bool {
        let streams = self.watch.is_some_and(|w| w.streams(row));
        stop_or_show(
            self.tokenizer,
            self.of(row),
            self.watch,
            streams,
            row,
            generated,
        )
    }
}

/// Whether row `row` ends after `generated`: its watcher's client went away, or its text
/// holds one of `stop`. A streamed row's final text is shown to the watcher (`streams`: the
/// watcher's [`SampleWatch::streams`] of the row, which the caller may know already).
fn stop_or_show(
    tokenizer: &ModelTokenizer,
    stop: &[String],
    watch: Option<&dyn SampleWatch>,
    streams: bool,
    row: usize,
    generated: &[u32],
) -> bool {
    let longest = stop.iter().map(String::len).max().unwrap_or(0);
    if watch.is_some_and(|w| w.cancelled(row)) {
        return true;
    }
    let watch = watch.filter(|_| streams);
    let from = match watch {
        Some(_) => 0,
        None if longest == 0 => return false,
        None => generated.len().saturating_sub(longest + 8),
    };
    // A decoding error ends nothing here; decoding the whole completion reports it.
    let Ok(text) = tokenizer.decode(&generated[from..]) else {
        return false;
    };
    if autodidact_core::find_stop(&text, stop).is_some() {
        return true;
    }
    let Some(watch) = watch else {
        return false;
    };
    // Final text: not the last longest − 1 bytes (a stop string may be starting there),
    // nor a trailing replacement character (a multi-byte character cut between tokens).
    let mut end = text.len().saturating_sub(longest.saturating_sub(1));
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let shown = text[..end].trim_end_matches('\u{FFFD}');
    watch.grew(row, generated, shown)
}

/// A server's feed as the decode loop's: prompts encoded, settings converted, samples
/// turned into completions. A row that cannot start goes back to the feed with the reason.
struct NativeFeed<'a> {
    feed: &'a dyn RowFeed,
    tokenizer: &'a ModelTokenizer,
    context_length: usize,
    stop_tokens: Vec<u32>,
}

/// A row of [`NativeFeed`]: its id and stop strings.
struct FedRow {
    id: usize,
    stop: Vec<String>,
    /// Whether the feed streams it (asked once, when it is taken).
    streams: bool,
}

impl crate::RowFeed for NativeFeed<'_> {
    type Tag = FedRow;

    fn take(&self, max: usize, wait: bool) -> Option<Vec<crate::StreamRow<FedRow>>> {
        let model = self.model();
        let wait = if wait { Wait::ForOne } else { Wait::Never };
        let rows = self.feed.take(max, wait, &model)?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let row = self.tokenizer.encode_prompt(&r.prompt).and_then(|prompt| {
                Ok(crate::StreamRow {
                    prompt,
                    seed: r.seed,
                    cfg: sampling_config(&r.params, &self.stop_tokens)?,
                    tag: FedRow {
                        id: r.id,
                        stop: stop_strings(&r.params).to_vec(),
                        streams: self.feed.streams(r.id),
                    },
                })
            });
            match row {
                Ok(row) => out.push(row),
                Err(e) => self.feed.finished(r.id, Err(e.to_string()), &model),
            }
        }
        Some(out)
    }

    fn stopped(&self, tag: &FedRow, generated: &[u32]) -> bool {
        stop_or_show(
            self.tokenizer,
            &tag.stop,
            Some(self.feed),
            tag.streams,
            tag.id,
            generated,
        )
    }

    fn finished(&self, tag: FedRow, sample: crate::Result<crate::Sample>) {
        let c = sample
            .map_err(to_core)
            .and_then(|s| completion(self.tokenizer, s, &tag.stop));
        self.feed
            .finished(tag.id, c.map_err(|e| e.to_string()), &self.model());
    }
}

impl NativeFeed<'_> {
    fn model(&self) -> autodidact_core::StreamModel<'_> {
        autodidact_core::StreamModel {
            tokenizer: self.tokenizer,
            context_length: self.context_length,
        }
    }
}

impl Policy for NativePolicy {
    fn sample(
        &mut self,
        prompts: &[String],
        seeds: &[u64],
        params: &SamplingParams,
    ) -> autodidact_core::Result<Vec<Completion>> {
        self.sample_inner(prompts, seeds, std::slice::from_ref(params), None)
    }

    fn sample_watched(
        &mut self,
        prompts: &[String],
        seeds: &[u64],
        params: &SamplingParams,
        watch: &dyn SampleWatch,
    ) -> autodidact_core::Result<Vec<Completion>> {
        self.sample_inner(prompts, seeds, std::slice::from_ref(params), Some(watch))
    }

    fn sample_each(
        &mut self,
        prompts: &[String],
        seeds: &[u64],
        params: &[SamplingParams],
        watch: &dyn SampleWatch,
    ) -> autodidact_core::Result<Vec<Completion>> {
        autodidact_core::check_each(prompts, seeds, params)?;
        self.sample_inner(prompts, seeds, params, Some(watch))
    }

    fn sample_stream(
        &mut self,
        feed: &dyn RowFeed,
        max_rows: usize,
    ) -> autodidact_core::Result<()> {
        let feed = NativeFeed {
            feed,
            tokenizer: &self.tokenizer,
            context_length: self.model.config().context_length,
            stop_tokens: self.tokenizer.stop_tokens(),
        };
        self.model
            .sample_stream(&feed, max_rows, &mut self.workspace);
        Ok(())
    }

    fn logprobs(&mut self, examples: &[Example]) -> autodidact_core::Result<Vec<Vec<f32>>> {
        let scores = self.forward_examples(examples, false).map_err(to_core)?;
        self.last = None;
        Ok(scores.logprobs)
    }

    fn next_token_logprobs(
        &mut self,
        prompts: &[String],
        candidates: &[u32],
    ) -> autodidact_core::Result<Vec<Vec<f32>>> {
        let vocab = self.tokenizer.vocab_size();
        if let Some(&id) = candidates.iter().find(|&&t| t as usize >= vocab) {
            return Err(autodidact_core::Error::UnknownId {
                id,
                vocab_size: vocab,
            });
        }
        if prompts.is_empty() {
            return Ok(Vec::new());
        }
        // The encoded prompt as inputs; the target after it is a placeholder, only the
        // logits of the last input position are read.
        let ctx = self.model.config().context_length;
        let mut seqs = Vec::with_capacity(prompts.len());
        for p in prompts {
            let mut ids = self.tokenizer.encode_prompt(p)?;
            if ids.len() > ctx {
                return Err(autodidact_core::Error::invalid(
                    "prompt",
                    format!(
                        "{p:?} is {} tokens with the special tokens; the model's context_length is {ctx}",
                        ids.len()
                    ),
                ));
            }
            ids.push(self.stop_token());
            seqs.push(ids);
        }
        self.last = None;
        let tb = TokenBatch::from_sequences(&seqs).map_err(to_core)?;
        let (t, v) = (tb.seq_len(), vocab);
        let opts = ForwardOptions {
            entropy: false,
            logits: true,
        };
        let out = self
            .model
            .forward(&tb, opts, &mut self.act)
            .map_err(to_core)?;
        let logits = out.logits.expect("requested logits");
        Ok(seqs
            .iter()
            .enumerate()
            .map(|(b, ids)| {
                let at = b * t + ids.len() - 2;
                let row = &logits[at * v..(at + 1) * v];
                let lse = crate::kernels::log_sum_exp(row);
                candidates.iter().map(|&c| row[c as usize] - lse).collect()
            })
            .collect())
    }

    fn context_length(&self) -> usize {
        self.model.config().context_length
    }

    fn tokenizer(&self) -> &dyn Tokenizer {
        &self.tokenizer
    }
}

impl TrainablePolicy for NativePolicy {
    fn reset_optimizer(&mut self, s: &OptimizerSettings) -> autodidact_core::Result<()> {
        self.optimizer = Some(adamw(s).build(&self.model).map_err(to_core)?);
        self.grads.zero();
        Ok(())
    }

    fn restore_optimizer(
        &mut self,
        dir: &Path,
        s: &OptimizerSettings,
    ) -> autodidact_core::Result<bool> {
        match checkpoint::load_optimizer(dir, &self.model, &adamw(s)).map_err(to_core)? {
            Some(opt) => {
                self.set_optimizer(opt);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    fn forward(
        &mut self,
        batch: &[Example],
        entropy: bool,
    ) -> autodidact_core::Result<TokenScores> {
        self.forward_examples(batch, entropy).map_err(to_core)
    }

    fn backward(
        &mut self,
        weights: &[Vec<f32>],
        entropy_coefs: Option<&[Vec<f32>]>,
    ) -> autodidact_core::Result<()> {
        self.backward_weights(weights, entropy_coefs)
            .map_err(to_core)
    }

    fn step(&mut self, lr: f32, max_grad_norm: f32) -> autodidact_core::Result<f32> {
        self.step_with(lr, max_grad_norm, None).map_err(to_core)
    }

    fn save(&self, dir: &Path) -> autodidact_core::Result<()> {
        checkpoint::save(
            dir,
            &self.model,
            Some(&self.tokenizer),
            self.optimizer.as_ref(),
        )
        .map_err(to_core)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TransformerConfig;

    fn policy() -> NativePolicy {
        let tok = autodidact_core::CharTokenizer::new("0123456789+=#").unwrap();
        let mut cfg = TransformerConfig::tiny(tok.vocab_size());
        cfg.context_length = 24;
        NativePolicy::new(cfg.build(3).unwrap(), tok).unwrap()
    }

    #[test]
    fn logprobs_cover_completion_and_stop_token() {
        let mut p = policy();
        let ex = [Example::new("1+2=", "3#3"), Example::new("10+20=", "30")];
        let lp = p.logprobs(&ex).unwrap();
        assert_eq!(lp[0].len(), 4);
        assert_eq!(lp[1].len(), 3);
        assert!(lp.iter().flatten().all(|&x| x < 0.0 && x.is_finite()));
        // The same example alone gives the same log-probs (rows do not interact).
        let alone = p.logprobs(&ex[1..]).unwrap();
        for (a, b) in alone[0].iter().zip(&lp[1]) {
            assert!((a - b).abs() < 1e-5);
        }
    }

    #[test]
    fn training_raises_the_completion_logprob() {
        let mut p = policy();
        let ex = [Example::new("1+2=", "3")];
        p.reset_optimizer(&OptimizerSettings {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        })
        .unwrap();
        let before: f32 = p.logprobs(&ex).unwrap()[0].iter().sum();
        for _ in 0..20 {
            let lp = p.forward(&ex, false).unwrap().logprobs;
            let w: Vec<Vec<f32>> = lp.iter().map(|r| vec![1.0; r.len()]).collect();
            p.backward(&w, None).unwrap();
            p.step(1e-2, 1.0).unwrap();
        }
        let after: f32 = p.logprobs(&ex).unwrap()[0].iter().sum();
        assert!(after > before + 1.0, "{before} -> {after}");
        // Backward without a forward pass is an error, not a panic.
        assert!(p.backward(&[vec![1.0; 2]], None).is_err());
    }

    #[test]
    fn sampled_tokens_score_as_they_were_sampled() {
        // Policy-gradient ratios start at exactly 1 only if the trainer scores the sampled
        // tokens (not a re-tokenization of their text) as the sampler did.
        let mut p = policy();
        let prompts = vec!["1+2=".to_string(), "10+2=".to_string()];
        let out = p
            .sample(
                &prompts,
                &[4, 5],
                &SamplingParams {
                    temperature: 1.0,
                    ..SamplingParams::greedy(6)
                },
            )
            .unwrap();
        let ex: Vec<Example> = prompts
            .iter()
            .zip(&out)
            .map(|(pr, c)| Example {
                prompt: pr.clone(),
                completion: c.text.clone(),
                completion_tokens: Some(c.tokens.clone()),
            })
            .collect();
        let scores = p.forward(&ex, true).unwrap();
        for (c, lp) in out.iter().zip(&scores.logprobs) {
            assert_eq!(lp.len(), c.tokens.len());
            for (a, b) in lp.iter().zip(&c.logprobs) {
                assert!((a - b).abs() < 1e-4, "{a} vs {b}");
            }
        }
        let h = scores.entropies.unwrap();
        assert!(h.iter().flatten().all(|&x| x > 0.0 && x.is_finite()));
        // Entropy coefficients go through backward.
        let w: Vec<Vec<f32>> = scores.logprobs.iter().map(|r| vec![0.1; r.len()]).collect();
        p.backward(&w, Some(&w)).unwrap();
    }

    #[test]
    fn sampled_text_round_trips_and_stops() {
        let mut p = policy();
        let out = p
            .sample(
                &["1+2=".to_string(), "3+4=".to_string()],
                &[1, 2],
                &SamplingParams {
                    temperature: 1.0,
                    ..SamplingParams::greedy(8)
                },
            )
            .unwrap();
        assert_eq!(out.len(), 2);
        for c in &out {
            assert_eq!(c.tokens.len(), c.logprobs.len());
            assert!(c.tokens.len() <= 8);
        }
        assert!(p
            .sample(&["1+a".to_string()], &[1], &SamplingParams::greedy(4))
            .is_err());
        // Ignoring stop tokens fills max_new_tokens (a throughput benchmark's workload).
        let full = p
            .sample(
                &["1+2=".to_string(), "3+4=".to_string()],
                &[1, 2],
                &SamplingParams {
                    ignore_stop: true,
                    ..SamplingParams::greedy(8)
                },
            )
            .unwrap();
        assert!(full.iter().all(|c| c.tokens.len() == 8), "{full:?}");
    }

    #[test]
    fn issue14_stop_strings_cut_the_text_and_end_the_row() {
        // Rows draw from their own seeds, so a row sampled with stop strings is a prefix of
        // the same row sampled without them: up to the token that completes the first
        // occurrence, with the text cut before it.
        let mut p = policy();
        let prompts: Vec<String> = (0..12).map(|i| format!("{i}+{}=", 3 * i)).collect();
        let seeds: Vec<u64> = (0..12).collect();
        let free = SamplingParams {
            temperature: 2.0,
            ..SamplingParams::greedy(12)
        };
        let base = p.sample(&prompts, &seeds, &free).unwrap();
        // Stop strings taken from the middle of two completions' texts.
        let long: Vec<&Completion> = base.iter().filter(|c| c.text.len() >= 6).collect();
        assert!(long.len() >= 2, "{base:?}");
        let stop: Vec<String> = vec![long[0].text[2..4].into(), long[1].text[3..4].into()];
        let cut = p
            .sample(&prompts, &seeds, &free.clone().with_stop(stop.clone()))
            .unwrap();
        let mut stopped = 0;
        for (b, c) in base.iter().zip(&cut) {
            match autodidact_core::find_stop(&b.text, &stop) {
                Some(at) => {
                    stopped += 1;
                    assert_eq!(c.text, b.text[..at], "{stop:?}");
                    assert_eq!(c.finish, FinishReason::Stop);
                    // The fewest tokens whose text holds a stop string.
                    let n = (1..=b.tokens.len())
                        .find(|&n| {
                            let t = p.tokenizer.decode(&b.tokens[..n]).unwrap();
                            autodidact_core::find_stop(&t, &stop).is_some()
                        })
                        .unwrap();
                    assert_eq!(c.tokens, b.tokens[..n]);
                }
                None => assert_eq!(
                    (&c.text, &c.tokens, c.finish),
                    (&b.text, &b.tokens, b.finish)
                ),
            }
            // Log-probs to rounding: a step's product over fewer rows rounds differently.
            for (x, y) in c.logprobs.iter().zip(&b.logprobs) {
                assert!((x - y).abs() < 1e-4, "{x} vs {y}");
            }
            assert_eq!(c.logprobs.len(), c.tokens.len());
        }
        assert!(stopped >= 2);
        // Ignoring stops ignores stop strings too; an empty stop string is refused.
        let full = SamplingParams {
            ignore_stop: true,
            ..free.clone().with_stop(stop)
        };
        let all = p.sample(&prompts, &seeds, &full).unwrap();
        assert!(all.iter().all(|c| c.tokens.len() == 12));
        let e = p
            .sample(&prompts, &seeds, &free.with_stop(vec!["".into()]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("stop string 0 is empty"), "{e}");
    }

    #[test]
    fn issue15_a_watch_sees_only_final_text_and_can_end_rows() {
        use std::sync::Mutex;
        // Streams rows 0..6 (records each shown text), ends row 6 at once, ignores row 7.
        struct Rec(Mutex<Vec<Vec<String>>>);
        impl SampleWatch for Rec {
            fn streams(&self, row: usize) -> bool {
                row < 6
            }
            fn cancelled(&self, row: usize) -> bool {
                row == 6
            }
            fn grew(&self, row: usize, _tokens: &[u32], text: &str) -> bool {
                assert!(row < 6, "row {row} is not streamed");
                self.0.lock().unwrap()[row].push(text.to_string());
                false
            }
        }
        let mut p = policy();
        let prompts: Vec<String> = (0..8).map(|i| format!("{i}+{}=", 7 * i)).collect();
        let seeds: Vec<u64> = (10..18).collect();
        let hot = SamplingParams {
            temperature: 2.0,
            ..SamplingParams::greedy(12)
        };
        let base = p.sample(&prompts, &seeds, &hot).unwrap();
        let longest = base
            .iter()
            .map(|c| &c.text)
            .max_by_key(|t| t.len())
            .unwrap();
        assert!(longest.chars().count() >= 5, "{base:?}");
        let stop: Vec<String> = vec![longest.chars().skip(3).take(2).collect()];
        let params = hot.with_stop(stop.clone());
        let plain = p.sample(&prompts, &seeds, &params).unwrap();
        let rec = Rec(Mutex::new(vec![Vec::new(); 8]));
        let watched = p.sample_watched(&prompts, &seeds, &params, &rec).unwrap();
        let shown = rec.0.into_inner().unwrap();
        for row in 0..6 {
            assert_eq!(watched[row].text, plain[row].text);
            // Each shown text extends the last and is a prefix of the final text, which
            // never shows a stop string.
            let mut last = "";
            for t in &shown[row] {
                assert!(
                    t.starts_with(last) && plain[row].text.starts_with(t.as_str()),
                    "{t:?} of {:?}",
                    plain[row].text
                );
                last = t;
            }
        }
        assert!(shown.iter().take(6).any(|s| s.len() > 1), "{shown:?}");
        assert_eq!(
            watched[6].tokens.len(),
            1,
            "a cancelled row ends after its first token"
        );
        assert_eq!(watched[7].text, plain[7].text);
    }
}
