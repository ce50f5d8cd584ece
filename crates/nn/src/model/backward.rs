//! The backward pass: from per-token weights (and entropy coefficients) to parameter
//! gradients, shard by shard, mirroring `forward_shard` in reverse. This file holds the
//! driver, the output head and the embedding; each layer's backward sits beside its forward
//! in `layer.rs`.

use super::{Activations, Gradients, Shard, Transformer, ROWS_PER_TASK};
use crate::kernels::{self, grow};
use crate::{Error, Result};
use rayon::prelude::*;

impl Transformer {
    /// Accumulates into `grads` the gradient of `−Σ_t weights_t·log p(y_t) − Σ_t entropy_coef_t·H_t`
    /// over the batch cached in `act` by the last [`Transformer::forward`]. `weights` and
    /// `entropy_coef` use the batch's padded `(batch, seq_len)` layout; padding entries are ignored.
    pub fn backward(
        &self,
        act: &mut Activations,
        weights: &[f32],
        entropy_coef: Option<&[f32]>,
        grads: &mut Gradients,
    ) -> Result<()> {
        self.backward_from(
            act,
            HeadGrad::Tokens {
                weights,
                entropy_coef,
            },
            grads,
        )
        .map(|_| ())
    }

    /// The score of each row of the batch cached in `act` by the last
    /// [`Transformer::forward`]: `head · h`, with `h` the final-normed hidden state at the
    /// row's last position (a reward model's scalar head, Hugging Face's
    /// `LlamaForSequenceClassification` with one label). `head` has `hidden_size` values.
    /// (B)
    pub fn scores(&self, act: &Activations, head: &[f32]) -> Result<Vec<f32>> {
        let c = self.config.hidden_size;
        self.check_head(act, head)?;
        let slot = 2 * self.config.num_layers;
        let mut out = Vec::with_capacity(act.batch);
        for shard in act.shards.iter().take(act.bounds.len() - 1) {
            let ns = shard.normed_slot(slot);
            let normed = &shard.normed[ns * shard.n * c..(ns + 1) * shard.n * c];
            for &(start, len) in &shard.rows {
                let h = &normed[(start + len - 1) * c..(start + len) * c];
                out.push(h.iter().zip(head).map(|(a, b)| a * b).sum());
            }
        }
        Ok(out)
    }

    /// Accumulates into `grads` the gradient of `Σ_b dscores_b · score_b` (the scores of
    /// [`Transformer::scores`]) in the model's trainable parameters, and returns its gradient
    /// in `head`.
    pub fn backward_scores(
        &self,
        act: &mut Activations,
        head: &[f32],
        dscores: &[f32],
        grads: &mut Gradients,
    ) -> Result<Vec<f32>> {
        self.check_head(act, head)?;
        if dscores.len() != act.batch {
            return Err(Error::invalid(
                "score gradients",
                format!("{} values for a batch of {} rows", dscores.len(), act.batch),
            ));
        }
        if let Some(b) = dscores.iter().position(|x| !x.is_finite()) {
            return Err(Error::invalid(
                "score gradients",
                format!("row {b}: {} is not finite", dscores[b]),
            ));
        }
        self.backward_from(act, HeadGrad::Scores { head, dscores }, grads)
    }

    fn check_head(&self, act: &Activations, head: &[f32]) -> Result<()> {
        if !act.valid {
            return Err(Error::NoForwardCache);
        }
        let c = self.config.hidden_size;
        if head.len() != c {
            return Err(Error::invalid(
                "score head",
                format!("{} values; the model's hidden size is {c}", head.len()),
            ));
        }
        Ok(())
    }

    /// The backward pass from the gradient at the model's output (`head`), shard by shard,
    /// summed into `grads`; returns the gradient of a score head's weight (empty for token
    /// weights).
    fn backward_from(
        &self,
        act: &mut Activations,
        head: HeadGrad,
        grads: &mut Gradients,
    ) -> Result<Vec<f32>> {
        if !act.valid {
            return Err(Error::NoForwardCache);
        }
        if act.config.as_ref() != Some(&self.config) {
            return Err(Error::invalid(
                "activations",
                "were cached by a forward pass of a model with a different config; call backward on the model that ran forward",
            ));
        }
        let t = act.seq_len;
        let padded = act.batch * t;
        if let HeadGrad::Tokens {
            weights,
            entropy_coef,
        } = head
        {
            for (what, values) in [
                ("token weights", Some(weights)),
                ("entropy coefficients", entropy_coef),
            ] {
                let Some(values) = values else { continue };
                if values.len() != padded {
                    return Err(Error::invalid(
                        what,
                        format!(
                            "{} values, expected batch × seq_len = {padded}",
                            values.len()
                        ),
                    ));
                }
                let lengths = act
                    .shards
                    .iter()
                    .take(act.bounds.len() - 1)
                    .flat_map(|s| s.rows.iter().map(|r| r.1));
                for (b, len) in lengths.enumerate() {
                    if let Some(i) = values[b * t..b * t + len]
                        .iter()
                        .position(|x| !x.is_finite())
                    {
                        return Err(Error::invalid(
                            what,
                            format!("row {b}, position {i}: {} is not finite", values[b * t + i]),
                        ));
                    }
                }
            }
        }
        let np = self.num_trainable();
        if grads.data.len() != np {
            return Err(Error::invalid(
                "gradients",
                format!(
                    "{} values, the model has {np} trainable values",
                    grads.data.len()
                ),
            ));
        }
        let n_shards = act.bounds.len() - 1;
        if act.shard_grads.len() < n_shards - 1 {
            act.shard_grads.resize_with(n_shards - 1, Vec::new);
        }
        for g in &mut act.shard_grads[..n_shards - 1] {
            g.clear();
            g.resize(np, 0.0);
        }
        let par = n_shards == 1;
        let bounds = &act.bounds;
        let mut targets: Vec<&mut [f32]> = vec![&mut grads.data[..]];
        targets.extend(
            act.shard_grads[..n_shards - 1]
                .iter_mut()
                .map(|g| &mut g[..]),
        );
        let head_grads: Vec<Vec<f32>> = act.shards[..n_shards]
            .par_iter_mut()
            .zip(targets)
            .enumerate()
            .map(|(i, (shard, g))| {
                let part = match head {
                    HeadGrad::Tokens {
                        weights,
                        entropy_coef,
                    } => {
                        let rows = bounds[i] * t..bounds[i + 1] * t;
                        HeadGrad::Tokens {
                            weights: &weights[rows.clone()],
                            entropy_coef: entropy_coef.map(|e| &e[rows]),
                        }
                    }
                    HeadGrad::Scores { head, dscores } => HeadGrad::Scores {
                        head,
                        dscores: &dscores[bounds[i]..bounds[i + 1]],
                    },
                };
                self.backward_shard(shard, part, g, par)
            })
            .collect();
        // Sum the other shards' gradients into the caller's buffer.
        if n_shards > 1 {
            let others = &act.shard_grads[..n_shards - 1];
            grads
                .data
                .par_chunks_mut(1 << 14)
                .enumerate()
                .for_each(|(k, dst)| {
                    let r = k * (1 << 14)..k * (1 << 14) + dst.len();
                    for o in others {
                        dst.iter_mut().zip(&o[r.clone()]).for_each(|(a, b)| *a += b);
                    }
                });
        }
        // The head's gradient, summed over shards in order.
        let mut dhead = Vec::new();
        for part in head_grads {
            if dhead.is_empty() {
                dhead = part;
            } else {
                dhead.iter_mut().zip(&part).for_each(|(a, b)| *a += b);
            }
        }
        Ok(dhead)
    }

    /// Backward pass of shard `act` from `head`, which covers its rows; gradients
    /// accumulate into `g`. Returns a score head's weight gradient (empty for tokens).
    fn backward_shard(
        &self,
        act: &mut Shard,
        head: HeadGrad,
        g: &mut [f32],
        par: bool,
    ) -> Vec<f32> {
        let cfg = &self.config;
        let (c, f, v, nl) = (
            cfg.hidden_size,
            cfg.intermediate_size,
            cfg.vocab_size,
            cfg.num_layers,
        );
        let (n, t) = (act.n, act.seq_len);
        let prob_off = act.prob_block;
        grow(&mut act.dx, n * c);
        grow(&mut act.dh, n * c);
        grow(&mut act.dqkv, n * cfg.qkv_dim());
        grow(&mut act.datt, n * c);
        grow(&mut act.dgu, n * 2 * f);
        grow(&mut act.dact, n * f);
        grow(&mut act.dprobs, prob_off);
        let lay = &self.layout;
        let s = 2 * nl;
        let mut dhead = Vec::new();
        match head {
            HeadGrad::Tokens {
                weights,
                entropy_coef,
            } => {
                grow(&mut act.dlogits, n * v);
                // Per packed token: (weight, entropy coefficient).
                let mut wc = Vec::with_capacity(n);
                for (b, &(_, len)) in act.rows.iter().enumerate() {
                    for i in 0..len {
                        wc.push((
                            weights[b * t + i],
                            entropy_coef.map_or(0.0, |ec| ec[b * t + i]),
                        ));
                    }
                }

                // d loss / d logits = w (p − onehot(y)) + c p (log p + H).  (N, V)
                {
                    let dl = &mut act.dlogits[..n * v];
                    let logp = &act.logp[..n * v];
                    let (targets, entropy) = (&act.targets[..n], &act.entropy[..n]);
                    if !par {
                        kernels::logits_backward(dl, logp, v, &wc, targets, entropy);
                    } else {
                        dl.par_chunks_mut(ROWS_PER_TASK * v)
                            .zip(logp.par_chunks(ROWS_PER_TASK * v))
                            .zip(wc.par_chunks(ROWS_PER_TASK))
                            .zip(
                                targets
                                    .par_chunks(ROWS_PER_TASK)
                                    .zip(entropy.par_chunks(ROWS_PER_TASK)),
                            )
                            .for_each(|(((dl, lp), wc), (y, h))| {
                                kernels::logits_backward(dl, lp, v, wc, y, h)
                            });
                    }
                }

                // Output head and final norm.
                self.norm_linear_backward(
                    act,
                    Upstream::Logits,
                    s,
                    g,
                    lay.lm_head,
                    v,
                    lay.final_norm,
                    false,
                    par,
                );
            }
            HeadGrad::Scores { head, dscores } => {
                // d loss / d h at each row's last position = dscore · head; 0 elsewhere.
                // The head's gradient: Σ_b dscore_b · h_b.  (C)
                dhead = vec![0.0f32; c];
                let ns = act.normed_slot(s);
                let dh = &mut act.dh[..n * c];
                dh.fill(0.0);
                let normed = &act.normed[ns * n * c..(ns + 1) * n * c];
                for (&(start, len), &ds) in act.rows.iter().zip(dscores) {
                    let last = (start + len - 1) * c..(start + len) * c;
                    dh[last.clone()]
                        .iter_mut()
                        .zip(head)
                        .for_each(|(d, w)| *d = ds * w);
                    dhead
                        .iter_mut()
                        .zip(&normed[last])
                        .for_each(|(d, h)| *d += ds * h);
                }
                self.norm_backward(act, s, g, lay.final_norm, false, par);
            }
        }

        for l in (0..nl).rev() {
            // The forward pass left the last layer's activations in place.
            if act.recompute && l + 1 < nl {
                self.train_layer_forward(l, act, par);
            }
            self.layer_backward(l, act, g, par);
        }

        // Embedding: scatter-add dx into the rows of the used tokens.
        let Some(ge) = self.base_grad(g, lay.embed, v * c) else {
            return dhead;
        };
        for (row, &tok) in act.dx[..n * c].chunks_exact(c).zip(&act.tokens) {
            for (gi, di) in ge[tok as usize * c..(tok as usize + 1) * c]
                .iter_mut()
                .zip(row)
            {
                *gi += di;
            }
        }
        dhead
    }
}

/// The gradient at the model's output a backward pass starts from.
#[derive(Clone, Copy)]
enum HeadGrad<'a> {
    /// Per-token weights on the log-probs (and entropy coefficients), padded `(B, T)`.
    Tokens {
        weights: &'a [f32],
        entropy_coef: Option<&'a [f32]>,
    },
    /// Per-row gradients of a score head's outputs, and the head's weight. (B), (C)
    Scores { head: &'a [f32], dscores: &'a [f32] },
}

/// Which shard buffer holds the gradient flowing into a norm → linear pair.
#[derive(Clone, Copy)]
pub(super) enum Upstream {
    /// d loss / d logits, into the output head.
    Logits,
    /// d loss / d [gate | up], into the MLP's first projection.
    GateUp,
    /// d loss / d [q | k | v], into the attention projections.
    Qkv,
}

impl Transformer {
    /// The gradient of base tensor `off..off + len` in `g`, or `None` when the base weights
    /// are frozen (LoRA).
    pub(super) fn base_grad<'g>(
        &self,
        g: &'g mut [f32],
        off: usize,
        len: usize,
    ) -> Option<&'g mut [f32]> {
        self.lora.is_none().then(|| &mut g[off..off + len])
    }

    /// Accumulates the gradient for the weight `(out, inp)` at `w` from `dy (n, out)` and the
    /// projection's input `x (n, inp)`: the weight's own in full fine-tuning; with LoRA, that of
    /// the adapters on it (none for the output head).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn weight_grad(
        &self,
        g: &mut [f32],
        scratch: &mut Vec<f32>,
        w: usize,
        dy: &[f32],
        x: &[f32],
        n: usize,
        inp: usize,
        out: usize,
        par: bool,
    ) {
        match &self.lora {
            None => {
                kernels::linear_backward_weight(&mut g[w..w + out * inp], dy, x, n, inp, out, par)
            }
            Some(lora) => lora.backward(g, scratch, w, dy, x, n, inp, out, par),
        }
    }

    /// Backward through `y = rmsnorm(x) · Wᵀ` for norm slot `slot` of shard `act`: with `dy`
    /// from `upstream` (N, out), accumulates the gradients of W (at `w_off`, shape (out, C))
    /// and of the norm gain (at `norm_off`) into `g`, and writes — or with `accumulate` adds —
    /// d loss / d x into `act.dx`.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn norm_linear_backward(
        &self,
        act: &mut Shard,
        upstream: Upstream,
        slot: usize,
        g: &mut [f32],
        w_off: usize,
        out: usize,
        norm_off: usize,
        accumulate: bool,
        par: bool,
    ) {
        let (n, c, p) = (act.n, self.config.hidden_size, &self.params);
        let dy = match upstream {
            Upstream::Logits => &act.dlogits[..n * out],
            Upstream::GateUp => &act.dgu[..n * out],
            Upstream::Qkv => &act.dqkv[..n * out],
        };
        let ns = act.normed_slot(slot);
        let normed = &act.normed[ns * n * c..(ns + 1) * n * c];
        self.weight_grad(g, &mut act.lora_scratch, w_off, dy, normed, n, c, out, par);
        let w = &p[w_off..w_off + out * c];
        kernels::linear_backward_input(&mut act.dh[..n * c], dy, w, n, c, out, false, par);
        self.norm_backward(act, slot, g, norm_off, accumulate, par);
    }

    /// The backward pass of norm slot `slot` from d loss / d (its output) in `act.dh`: the
    /// gain's gradient (at `norm_off`) into `g`, and d loss / d x written — or with
    /// `accumulate` added — into `act.dx`.
    fn norm_backward(
        &self,
        act: &mut Shard,
        slot: usize,
        g: &mut [f32],
        norm_off: usize,
        accumulate: bool,
        par: bool,
    ) {
        let (n, c, p) = (act.n, self.config.hidden_size, &self.params);
        let mut frozen = Vec::new();
        let dgain = match self.base_grad(g, norm_off, c) {
            Some(d) => d,
            None => {
                frozen.resize(c, 0.0);
                &mut frozen[..]
            }
        };
        norm_rows_backward(
            &mut act.dx[..n * c],
            dgain,
            &act.dh[..n * c],
            &act.resid[slot * n * c..(slot + 1) * n * c],
            &act.rstd[slot * n..(slot + 1) * n],
            &p[norm_off..norm_off + c],
            accumulate,
            par,
        );
    }
}

/// RMSNorm backward over rows; on the thread pool when `par`, with the weight gradient
/// reduced over tasks.
#[allow(clippy::too_many_arguments)]
fn norm_rows_backward(
    dx: &mut [f32],
    dw: &mut [f32],
    dy: &[f32],
    x: &[f32],
    rstd: &[f32],
    w: &[f32],
    accumulate: bool,
    par: bool,
) {
    let c = w.len();
    if !par {
        let mut tmp = vec![0.0f32; c];
        return kernels::rmsnorm_backward(dx, dw, dy, x, rstd, w, &mut tmp, accumulate);
    }
    let rows = 4 * ROWS_PER_TASK;
    // Per-block partial gains, summed in block order: a rayon `reduce` would associate them
    // differently from run to run and break reproducibility.
    let partials: Vec<Vec<f32>> = dx
        .par_chunks_mut(rows * c)
        .zip(dy.par_chunks(rows * c))
        .zip(x.par_chunks(rows * c))
        .zip(rstd.par_chunks(rows))
        .map(|(((dx, dy), x), r)| {
            let mut dwp = vec![0.0f32; 2 * c];
            let (dw, tmp) = dwp.split_at_mut(c);
            kernels::rmsnorm_backward(dx, dw, dy, x, r, w, tmp, accumulate);
            dwp.truncate(c);
            dwp
        })
        .collect();
    for partial in &partials {
        dw.iter_mut().zip(partial).for_each(|(a, b)| *a += b);
    }
}
