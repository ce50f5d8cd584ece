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
        act.shards[..n_shards]
            .par_iter_mut()
            .zip(targets)
            .enumerate()
            .for_each(|(i, (shard, g))| {
                let rows = bounds[i] * t..bounds[i + 1] * t;
                self.backward_shard(
                    shard,
                    &weights[rows.clone()],
                    entropy_coef.map(|e| &e[rows]),
                    g,
                    par,
                );
            });
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
        Ok(())
    }

    /// Backward pass of shard `act`: `weights` and `entropy_coef` cover its rows (padded
    /// layout), gradients accumulate into `g`.
    fn backward_shard(
        &self,
        act: &mut Shard,
        weights: &[f32],
        entropy_coef: Option<&[f32]>,
        g: &mut [f32],
        par: bool,
    ) {
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
        grow(&mut act.dlogits, n * v);
        grow(&mut act.dprobs, prob_off);

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

        let lay = &self.layout;
        // Output head and final norm.
        let s = 2 * nl;
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

        for l in (0..nl).rev() {
            // The forward pass left the last layer's activations in place.
            if act.recompute && l + 1 < nl {
                self.train_layer_forward(l, act, par);
            }
            self.layer_backward(l, act, g, par);
        }

        // Embedding: scatter-add dx into the rows of the used tokens.
        let Some(ge) = self.base_grad(g, lay.embed, v * c) else {
            return;
        };
        for (row, &tok) in act.dx[..n * c].chunks_exact(c).zip(&act.tokens) {
            for (gi, di) in ge[tok as usize * c..(tok as usize + 1) * c]
                .iter_mut()
                .zip(row)
            {
                *gi += di;
            }
        }
    }
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
