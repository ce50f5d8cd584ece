//! The Llama-style decoder: parameters, the training forward pass with its
//! activation cache, and the hand-written backward pass.
//!
//! Sequences are packed: the rows of a padded batch are laid end to end without
//! their padding, so every per-token operation (norms, projections, MLP, output
//! head) runs on exactly the real tokens, and attention runs per (row, head)
//! over that row's span. Shapes below use N for packed tokens, C for
//! `hidden_size`, F for `intermediate_size`, V for `vocab_size`, H heads of D
//! dimensions, L layers.
//!
//! The backward pass takes per-token weights `w_t` and optional entropy
//! coefficients `c_t` and accumulates the gradient of
//! `loss = −Σ_t w_t·log p(y_t) − Σ_t c_t·H_t` (H_t the entropy of position t's
//! next-token distribution) into a [`Gradients`] buffer. Every objective of
//! docs/design.md ("Objectives are token weights") reduces to this form; it lives in
//! `model/backward.rs`.
//!
//! The decoder layer is written once, in `model/layer.rs`: its forward pass serves both this
//! training pass and cached decoding (`sample.rs`), and its backward pass sits beside it.
//!
//! Threads: a batch with at least two rows per worker thread is split into shards of rows,
//! one per thread, each running forward and backward with single-threaded kernels (see
//! [`Activations`]); smaller batches run as one shard with multi-threaded kernels.

mod backward;
mod layer;

use crate::batch::TokenBatch;
use crate::config::TransformerConfig;
use crate::kernels::{self, grow, Rope, SendPtr, View};
use crate::lora::Lora;
use crate::optim::AdamW;
use crate::params::{Layout, TensorInfo};
use crate::{Error, Result};
pub(crate) use layer::{LayerIo, Stages};
use rayon::prelude::*;

/// Rows per parallel task for row-wise kernels.
const ROWS_PER_TASK: usize = 64;

/// A Llama-style decoder with its parameters in one flat buffer (see [`Layout`]).
#[derive(Clone, Debug)]
pub struct Transformer {
    pub(crate) config: TransformerConfig,
    pub(crate) layout: Layout,
    pub(crate) params: Vec<f32>,
    pub(crate) rope: Rope,
    /// LoRA adapters (see `lora.rs`): when present, `params` holds the merged weights and
    /// only the adapters train.
    pub(crate) lora: Option<Box<Lora>>,
}

impl TransformerConfig {
    /// A freshly initialized model (see [`Layout::init`]); `seed` fixes every weight.
    pub fn build(&self, seed: u64) -> Result<Transformer> {
        self.validate()?;
        let layout = Layout::new(self);
        let params = layout.init(self, seed);
        Transformer::from_parts(self.clone(), params)
    }
}

impl Transformer {
    pub(crate) fn from_parts(config: TransformerConfig, params: Vec<f32>) -> Result<Self> {
        config.validate()?;
        let layout = Layout::new(&config);
        if params.len() != layout.total {
            return Err(Error::invalid(
                "parameters",
                format!("{} values, the config needs {}", params.len(), layout.total),
            ));
        }
        let rope = Rope::new(
            config.head_dim(),
            config.context_length,
            config.rope_theta,
            config.rope_scaling.as_ref(),
        );
        Ok(Self {
            config,
            layout,
            params,
            rope,
            lora: None,
        })
    }

    pub fn config(&self) -> &TransformerConfig {
        &self.config
    }
    pub fn layout(&self) -> &Layout {
        &self.layout
    }
    pub fn num_params(&self) -> usize {
        self.params.len()
    }
    /// The flat parameter buffer (offsets in [`Transformer::layout`]).
    pub fn params(&self) -> &[f32] {
        &self.params
    }
    /// The parameters, to change them directly. With adapters, the next optimizer step
    /// re-merges every adapted weight from its frozen copy.
    pub fn params_mut(&mut self) -> &mut [f32] {
        &mut self.params
    }
    /// Number of values that train: every parameter, or with LoRA the adapters'.
    pub fn num_trainable(&self) -> usize {
        self.lora
            .as_ref()
            .map_or(self.params.len(), |l| l.num_params())
    }
    /// The tensors that train, with offsets into the gradient buffer: the model's own, or
    /// with LoRA the adapters' (under PEFT's names).
    pub fn trainable_tensors(&self) -> &[TensorInfo] {
        match &self.lora {
            Some(l) => l.tensors(),
            None => &self.layout.tensors,
        }
    }
    /// One optimizer update of the trainable values from `grads` at learning rate `lr`
    /// (with LoRA, the adapters, then merged into the weights).
    pub fn update(&mut self, opt: &mut AdamW, grads: &Gradients, lr: f32) -> Result<()> {
        match &mut self.lora {
            None => opt.step(&mut self.params, &grads.data, lr),
            Some(lora) => {
                opt.step(&mut lora.params, &grads.data, lr)?;
                lora.merge(&mut self.params);
                Ok(())
            }
        }
    }
    /// The values of the tensor with Hugging Face name `name`.
    pub fn tensor(&self, name: &str) -> Option<&[f32]> {
        self.layout
            .tensors
            .iter()
            .find(|t| t.name == name)
            .map(|t| &self.params[t.range()])
    }

    pub(crate) fn check_tokens(&self, what: &'static str, tokens: &[u32]) -> Result<()> {
        let v = self.config.vocab_size;
        match tokens.iter().position(|&t| t as usize >= v) {
            Some(i) => Err(Error::invalid(
                what,
                format!(
                    "token id {} at index {i} is outside the vocabulary (size {v})",
                    tokens[i]
                ),
            )),
            None => Ok(()),
        }
    }
}

/// Gradients of the trainable values, laid out like them ([`Transformer::trainable_tensors`]).
#[derive(Clone, Debug)]
pub struct Gradients {
    pub data: Vec<f32>,
}

impl Gradients {
    pub fn new(model: &Transformer) -> Self {
        Self {
            data: vec![0.0; model.num_trainable()],
        }
    }
    pub fn zero(&mut self) {
        self.data.fill(0.0);
    }
    /// The L2 norm over all parameters. Chunk sums are added in a fixed order (a rayon
    /// `sum` would associate them differently from run to run), so the result is reproducible.
    pub fn global_norm(&self) -> f32 {
        let partial: Vec<f64> = self
            .data
            .par_chunks(1 << 14)
            .map(|c| c.iter().map(|&g| (g as f64) * (g as f64)).sum::<f64>())
            .collect();
        partial.iter().sum::<f64>().sqrt() as f32
    }
    /// Scales the gradients so their global norm is at most `max_norm`; returns the norm before clipping.
    pub fn clip_global_norm(&mut self, max_norm: f32) -> f32 {
        let norm = self.global_norm();
        if norm > max_norm && norm.is_finite() {
            let s = max_norm / (norm + 1e-6);
            self.data.iter_mut().for_each(|g| *g *= s);
        }
        norm
    }
    /// Multiplies every gradient by `s` (e.g. 1/micro-batches after accumulation).
    pub fn scale(&mut self, s: f32) {
        self.data.iter_mut().for_each(|g| *g *= s);
    }
}

/// What [`Transformer::forward`] returns beyond per-token log-probs.
#[derive(Clone, Copy, Debug, Default)]
pub struct ForwardOptions {
    /// Return each position's entropy of the next-token distribution.
    pub entropy: bool,
    /// Return the full logits, `(batch, seq_len, vocab)`.
    pub logits: bool,
}

/// Per-position outputs in the batch's padded `(batch, seq_len)` layout; padding positions hold 0.
#[derive(Clone, Debug)]
pub struct ForwardOutput {
    /// `log p(target_t | inputs_≤t)`.
    pub logprobs: Vec<f32>,
    pub entropy: Option<Vec<f32>>,
    pub logits: Option<Vec<f32>>,
}

/// Activations of the last forward pass, kept for backward, plus backward scratch. Reused
/// across calls: buffers only grow, so a training loop allocates once.
///
/// A batch with at least two rows per worker thread is split into contiguous shards of rows
/// with about equal token counts, one per thread; each shard runs its whole forward and
/// backward pass with single-threaded kernels and its own gradient buffer, and the buffers are
/// summed at the end. Small batches run as one shard with multi-threaded kernels.
#[derive(Default, Debug)]
pub struct Activations {
    valid: bool,
    /// Config of the model whose pass is cached; backward checks it is called on the same shape.
    config: Option<TransformerConfig>,
    batch: usize,
    seq_len: usize,
    /// Row boundaries of the shards.
    bounds: Vec<usize>,
    shards: Vec<Shard>,
    /// Gradient buffers of shards 1.. (shard 0 accumulates into the caller's buffer).
    shard_grads: Vec<Vec<f32>>,
    /// When the training pass recomputes layers instead of keeping their activations.
    pub recompute: Recompute,
}

/// Whether a training pass keeps every layer's activations for the backward pass, or only
/// each layer's input, running the layer forward again just before its backward ("activation
/// checkpointing" at layer granularity). Recomputing costs one more forward pass of every
/// layer but the last (about a quarter more compute per step) and keeps one layer's q/k/v,
/// attention probabilities and MLP activations instead of all of them. The numbers are the
/// same either way: the recomputed layer runs the same kernels on the same inputs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Recompute {
    /// Keep every layer's activations.
    Never,
    /// Keep each layer's input only.
    Always,
    /// Recompute when keeping everything would take more than
    /// [`TRAIN_ACTIVATION_BUDGET`] bytes ([`TransformerConfig::recomputes`]).
    #[default]
    Auto,
}

/// Above this many bytes of kept activations, a training pass recomputes its layers
/// ([`Recompute::Auto`]). A 135M model (30 layers, d_model 576, a 49k vocabulary) keeps about
/// 1.7 MB per token without recompute, so batches beyond ~2,000 tokens recompute.
pub const TRAIN_ACTIVATION_BUDGET: u64 = 4 << 30;

/// One shard's cached pass and scratch.
#[derive(Default, Debug)]
struct Shard {
    /// Keep one layer's internals (not every layer's) and recompute each layer in backward.
    recompute: bool,
    /// Norm slots of the model: 2L + 1.
    slots: usize,
    n: usize,
    batch: usize,
    seq_len: usize,
    /// (packed start, length) of each row.
    rows: Vec<(usize, usize)>,
    /// Offset of each row's attention probabilities within one layer's block, and the block size.
    prob_offsets: Vec<usize>,
    prob_block: usize,
    tokens: Vec<u32>,
    targets: Vec<u32>,
    positions: Vec<u32>,
    /// Residual stream entering each norm: slot 2l (attention), 2l+1 (MLP), 2L (final). ((2L+1), N, C)
    resid: Vec<f32>,
    /// 1/rms per norm slot and token. ((2L+1), N)
    rstd: Vec<f32>,
    /// Normalized activations per slot. ((2L+1), N, C)
    normed: Vec<f32>,
    /// Rotated q, k and v per layer. (L, N, Q), Q = C + 2·KV·D
    qkv: Vec<f32>,
    /// Attention probabilities per layer, row-major per (row, head). (L, Σ_b H·n_b²)
    probs: Vec<f32>,
    /// Attention output before o_proj. (L, N, C)
    att: Vec<f32>,
    /// Gate and up projections. (L, N, 2F)
    gu: Vec<f32>,
    /// silu(gate)·up. (L, N, F)
    act: Vec<f32>,
    /// σ(gate), saved for the SwiGLU backward. (L, N, F)
    sig: Vec<f32>,
    /// Log-softmax of the logits. (N, V)
    logp: Vec<f32>,
    /// Entropy per token. (N)
    entropy: Vec<f32>,
    // Backward scratch.
    dx: Vec<f32>,
    dh: Vec<f32>,
    dqkv: Vec<f32>,
    datt: Vec<f32>,
    dgu: Vec<f32>,
    dact: Vec<f32>,
    dlogits: Vec<f32>,
    dprobs: Vec<f32>,
    /// LoRA's backward scratch: x·Aᵀ and dy·B of one adapter. (2, N, rank)
    lora_scratch: Vec<f32>,
}

impl Activations {
    pub fn new() -> Self {
        Self::default()
    }

    /// Bytes held by the buffers.
    pub fn allocated_bytes(&self) -> usize {
        self.shards
            .iter()
            .map(Shard::allocated_bytes)
            .sum::<usize>()
            + self
                .shard_grads
                .iter()
                .map(|g| g.capacity() * 4)
                .sum::<usize>()
    }
}

impl Shard {
    /// Where layer `l`'s internals (q/k/v, attention, MLP) are kept: every layer its own, or
    /// with recompute one shared place.
    fn layer_slot(&self, l: usize) -> usize {
        if self.recompute {
            0
        } else {
            l
        }
    }

    /// Where norm slot `slot` (2l, 2l+1 for layer l, 2L for the final norm) keeps its
    /// normalized values: its own place, or with recompute 0 and 1 for the layer being worked
    /// on and 2 for the final norm.
    fn normed_slot(&self, slot: usize) -> usize {
        match (self.recompute, slot) {
            (false, s) => s,
            (true, s) if s + 1 == self.slots => 2,
            (true, s) => s % 2,
        }
    }

    fn allocated_bytes(&self) -> usize {
        let f = [
            &self.resid,
            &self.rstd,
            &self.normed,
            &self.qkv,
            &self.probs,
            &self.att,
            &self.gu,
            &self.act,
            &self.sig,
            &self.logp,
            &self.entropy,
            &self.dx,
            &self.dh,
            &self.dqkv,
            &self.datt,
            &self.dgu,
            &self.dact,
            &self.dlogits,
            &self.dprobs,
            &self.lora_scratch,
        ];
        f.iter().map(|b| b.capacity() * 4).sum()
    }
}

/// Runs `f(row, head)` for every attention task, on the thread pool when `par`.
fn for_each_head(rows: usize, heads: usize, par: bool, f: impl Fn((usize, usize)) + Sync + Send) {
    let task = move |i: usize| (i / heads, i % heads);
    if par {
        (0..rows * heads).into_par_iter().map(task).for_each(f);
    } else {
        (0..rows * heads).map(task).for_each(f);
    }
}

impl Transformer {
    /// Runs the model over `batch`, returning per-token log-probs of the targets (and, on request,
    /// entropies and logits), and caches the activations in `act` for [`Transformer::backward`].
    pub fn forward(
        &self,
        batch: &TokenBatch,
        opts: ForwardOptions,
        act: &mut Activations,
    ) -> Result<ForwardOutput> {
        let cfg = &self.config;
        if batch.seq_len > cfg.context_length {
            return Err(Error::invalid(
                "batch",
                format!(
                    "seq_len {} exceeds the model's context_length {}",
                    batch.seq_len, cfg.context_length
                ),
            ));
        }
        self.check_tokens("batch inputs", &batch.inputs)?;
        self.check_tokens("batch targets", &batch.targets)?;
        act.valid = false;
        act.batch = batch.batch_size();
        act.seq_len = batch.seq_len;
        // Shards of contiguous rows with about equal token counts.
        let threads = rayon::current_num_threads();
        let shards = if act.batch >= 2 * threads { threads } else { 1 };
        let total = batch.num_tokens();
        act.bounds.clear();
        act.bounds.push(0);
        let mut acc = 0;
        for (b, &len) in batch.lengths.iter().enumerate() {
            acc += len;
            let k = act.bounds.len();
            if k < shards && acc * shards >= k * total && b + 1 < act.batch {
                act.bounds.push(b + 1);
            }
        }
        act.bounds.push(act.batch);
        let n_shards = act.bounds.len() - 1;
        if act.shards.len() < n_shards {
            act.shards.resize_with(n_shards, Shard::default);
        }
        let recompute = match act.recompute {
            Recompute::Never => false,
            Recompute::Always => true,
            Recompute::Auto => cfg.recomputes(act.batch, act.seq_len),
        };
        act.shards.iter_mut().for_each(|s| s.recompute = recompute);
        let par = n_shards == 1;
        let bounds = &act.bounds;
        let outs: Vec<ForwardOutput> = act.shards[..n_shards]
            .par_iter_mut()
            .enumerate()
            .map(|(i, shard)| self.forward_shard(batch, bounds[i]..bounds[i + 1], opts, shard, par))
            .collect();
        act.valid = true;
        if act.config.as_ref() != Some(cfg) {
            act.config = Some(cfg.clone());
        }
        // Shards hold contiguous rows, so their padded outputs concatenate in order.
        let join = |parts: Vec<Vec<f32>>| parts.concat();
        let mut logprobs = Vec::with_capacity(outs.len());
        let (mut entropy, mut logits) = (Vec::new(), Vec::new());
        for o in outs {
            logprobs.push(o.logprobs);
            entropy.extend(o.entropy);
            logits.extend(o.logits);
        }
        Ok(ForwardOutput {
            logprobs: join(logprobs),
            entropy: opts.entropy.then(|| join(entropy)),
            logits: opts.logits.then(|| join(logits)),
        })
    }

    /// Layer `l` of shard `act`'s training pass, from its input (residual stage 2l) into the
    /// layer's kept stages: the forward pass runs it once per layer, and with recompute the
    /// backward pass runs it again just before the layer's backward.
    fn train_layer_forward(&self, l: usize, act: &mut Shard, par: bool) {
        let cfg = &self.config;
        let (c, f, h, d) = (
            cfg.hidden_size,
            cfg.intermediate_size,
            cfg.num_heads,
            cfg.head_dim(),
        );
        let (q, kv, group) = (
            cfg.qkv_dim(),
            cfg.kv_dim(),
            cfg.num_heads / cfg.num_kv_heads,
        );
        let (n, prob_off) = (act.n, act.prob_block);
        let (ls, ns) = (act.layer_slot(l), act.normed_slot(2 * l));
        let (probs, rows, offs) = (
            &mut act.probs[ls * prob_off..(ls + 1) * prob_off],
            &act.rows,
            &act.prob_offsets,
        );
        // Within each packed row, causally, one task per (row, head); keeps the probabilities.
        let attend = |qkv: &[f32], att: &mut [f32]| {
            let (att_ptr, probs_ptr) = (SendPtr(att.as_mut_ptr()), SendPtr(probs.as_mut_ptr()));
            for_each_head(rows.len(), h, par, |(b, hh)| {
                let (st, len) = rows[b];
                // SAFETY: each (row, head) task reads its row's q/k/v columns and writes a disjoint
                // region of `att` (its row × its head's columns) and of `probs`.
                unsafe {
                    let base = qkv.as_ptr().add(st * q);
                    let kh = hh / group;
                    let pr = std::slice::from_raw_parts_mut(
                        probs_ptr.ptr().add(offs[b] + hh * len * len),
                        len * len,
                    );
                    kernels::attention_head(
                        View::at(base.add(hh * d), q),
                        View::at(base.add(c + kh * d), q),
                        View::at(base.add(c + kv + kh * d), q),
                        att_ptr.ptr().add(st * c + hh * d),
                        c,
                        pr,
                        len,
                        d,
                    );
                }
            });
        };
        // Stages 2l, 2l+1, 2l+2 of the residual stream; 2l, 2l+1 of the norms.
        let io = LayerIo {
            resid: Stages::kept(&mut act.resid[2 * l * n * c..], 3, n * c),
            normed: Stages::kept(&mut act.normed[ns * n * c..], 2, n * c),
            rstd: Stages::kept(&mut act.rstd[2 * l * n..], 2, n),
            qkv: &mut act.qkv[ls * n * q..(ls + 1) * n * q],
            att: &mut act.att[ls * n * c..(ls + 1) * n * c],
            gu: &mut act.gu[ls * n * 2 * f..(ls + 1) * n * 2 * f],
            act: &mut act.act[ls * n * f..(ls + 1) * n * f],
            sig: Some(&mut act.sig[ls * n * f..(ls + 1) * n * f]),
            positions: &act.positions,
        };
        self.layer_forward(l, io, attend, par);
    }

    /// Forward pass of rows `rows` of `batch` into shard `act`; outputs cover those rows only.
    fn forward_shard(
        &self,
        batch: &TokenBatch,
        rows: std::ops::Range<usize>,
        opts: ForwardOptions,
        act: &mut Shard,
        par: bool,
    ) -> ForwardOutput {
        let cfg = &self.config;
        let (c, f, v, h, nl, q) = (
            cfg.hidden_size,
            cfg.intermediate_size,
            cfg.vocab_size,
            cfg.num_heads,
            cfg.num_layers,
            cfg.qkv_dim(),
        );
        let t = batch.seq_len;

        // Pack.
        act.batch = rows.len();
        act.seq_len = t;
        act.rows.clear();
        act.prob_offsets.clear();
        act.tokens.clear();
        act.targets.clear();
        act.positions.clear();
        let mut start = 0;
        let mut prob_off = 0;
        for b in rows {
            let len = batch.lengths[b];
            act.rows.push((start, len));
            act.prob_offsets.push(prob_off);
            prob_off += h * len * len;
            start += len;
            act.tokens
                .extend_from_slice(&batch.inputs[b * t..b * t + len]);
            act.targets
                .extend_from_slice(&batch.targets[b * t..b * t + len]);
            act.positions.extend((0..len).map(|p| p as u32));
        }
        let n = start;
        act.n = n;
        act.prob_block = prob_off;
        // Every layer's input and norm statistics are kept; the rest for every layer, or with
        // recompute for one.
        let slots = 2 * nl + 1;
        act.slots = slots;
        let (kept, normed_slots) = if act.recompute { (1, 3) } else { (nl, slots) };
        grow(&mut act.resid, slots * n * c);
        grow(&mut act.rstd, slots * n);
        grow(&mut act.normed, normed_slots * n * c);
        grow(&mut act.qkv, kept * n * q);
        grow(&mut act.probs, kept * prob_off);
        grow(&mut act.att, kept * n * c);
        grow(&mut act.gu, kept * n * 2 * f);
        grow(&mut act.act, kept * n * f);
        grow(&mut act.sig, kept * n * f);
        grow(&mut act.logp, n * v);
        grow(&mut act.entropy, n);

        self.embed(&act.tokens, &mut act.resid[..n * c]);
        for l in 0..nl {
            self.train_layer_forward(l, act, par);
        }

        // Final norm and output head. (N, V)
        let (s, ns) = (2 * nl, act.normed_slot(2 * nl));
        let logp = &mut act.logp[..n * v];
        self.head(
            &act.resid[s * n * c..(s + 1) * n * c],
            &mut act.normed[ns * n * c..(ns + 1) * n * c],
            &mut act.rstd[s * n..(s + 1) * n],
            logp,
            par,
        );

        let mut logits_out = opts.logits.then(|| vec![0.0f32; act.batch * t * v]);
        if let Some(out) = logits_out.as_mut() {
            for (b, &(st, len)) in act.rows.iter().enumerate() {
                out[b * t * v..(b * t + len) * v].copy_from_slice(&logp[st * v..(st + len) * v]);
            }
        }
        let entropy = &mut act.entropy[..n];
        if par {
            logp.par_chunks_mut(ROWS_PER_TASK * v)
                .zip(entropy.par_chunks_mut(ROWS_PER_TASK))
                .for_each(|(z, e)| kernels::log_softmax_rows(z, v, e));
        } else {
            kernels::log_softmax_rows(logp, v, entropy);
        }

        let mut logprobs = vec![0.0f32; act.batch * t];
        let mut ent_out = opts.entropy.then(|| vec![0.0f32; act.batch * t]);
        for (b, &(st, len)) in act.rows.iter().enumerate() {
            for i in 0..len {
                let tok = st + i;
                logprobs[b * t + i] = logp[tok * v + act.targets[tok] as usize];
                if let Some(e) = ent_out.as_mut() {
                    e[b * t + i] = entropy[tok];
                }
            }
        }
        ForwardOutput {
            logprobs,
            entropy: ent_out,
            logits: logits_out,
        }
    }
}

/// RMSNorm over rows, split across the thread pool when `par`.
fn norm_rows(y: &mut [f32], rstd: &mut [f32], x: &[f32], w: &[f32], eps: f32, par: bool) {
    let c = w.len();
    if !par {
        return kernels::rmsnorm(y, rstd, x, w, eps);
    }
    y.par_chunks_mut(ROWS_PER_TASK * c)
        .zip(rstd.par_chunks_mut(ROWS_PER_TASK))
        .zip(x.par_chunks(ROWS_PER_TASK * c))
        .for_each(|((y, r), x)| kernels::rmsnorm(y, r, x, w, eps));
}
