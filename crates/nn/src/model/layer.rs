//! The decoder layer, written once.
//!
//! The training pass (`forward_shard`) and cached decoding (`forward_cached` in `sample.rs`)
//! both run their layers through [`Transformer::layer_forward`], and their ends through
//! [`Transformer::embed`] and [`Transformer::head`]. The two callers differ in only two
//! ways, and they pass both in:
//! - **Where activations go** ([`Stages`]). Training keeps every stage, because the backward
//!   pass (`backward.rs`) reads them in the layout written here. Decoding reuses one region
//!   and updates the residual stream in place.
//! - **How attention reaches keys and values**: a closure from the rotated `q | k | v` to the
//!   heads' outputs. Training attends within each packed row and keeps the probabilities.
//!   Decoding appends k and v to its cache and attends over everything cached so far.
//!
//! Both callers run the same kernels in the same order on the same values, so a token's
//! activations do not depend on which path computed them.

use super::backward::Upstream;
use super::{for_each_head, norm_rows, Shard, Transformer, ROWS_PER_TASK};
use crate::kernels::{self, SendPtr, View};
use crate::params::LayerOffsets;
use rayon::prelude::*;

/// Per-stage values of M tokens, `width` values each. Kept: one region per stage,
/// `(S, M, width)`, as the backward pass reads them. Reused: every stage is the same region,
/// `(M, width)`, overwritten (or, for the residual stream, updated in place).
pub(crate) struct Stages<'a> {
    buf: &'a mut [f32],
    /// Values per stage: M · width.
    len: usize,
    kept: bool,
}

impl<'a> Stages<'a> {
    /// `stages` consecutive regions of `len` values at the start of `buf`.
    pub(crate) fn kept(buf: &'a mut [f32], stages: usize, len: usize) -> Self {
        Self {
            buf: &mut buf[..stages * len],
            len,
            kept: true,
        }
    }

    /// One region of `len` values at the start of `buf`, shared by every stage.
    pub(crate) fn reused(buf: &'a mut [f32], len: usize) -> Self {
        Self {
            buf: &mut buf[..len],
            len,
            kept: false,
        }
    }

    fn range(&self, stage: usize) -> std::ops::Range<usize> {
        let s = if self.kept { stage } else { 0 };
        s * self.len..(s + 1) * self.len
    }

    fn at(&self, stage: usize) -> &[f32] {
        &self.buf[self.range(stage)]
    }

    fn at_mut(&mut self, stage: usize) -> &mut [f32] {
        let r = self.range(stage);
        &mut self.buf[r]
    }

    /// Stage `stage + 1` of a residual stream, starting as a copy of stage `stage`, for a
    /// sublayer's output to be added to. Reused stages already hold it.
    fn carry(&mut self, stage: usize) -> &mut [f32] {
        if self.kept {
            let (prev, next) = self.buf.split_at_mut((stage + 1) * self.len);
            let next = &mut next[..self.len];
            next.copy_from_slice(&prev[stage * self.len..]);
            next
        } else {
            self.at_mut(stage + 1)
        }
    }
}

/// Where one layer's pass over M tokens reads and writes.
pub(crate) struct LayerIo<'a> {
    /// The residual stream: in, after attention, out. 3 stages of (M, C).
    pub resid: Stages<'a>,
    /// RMSNorm outputs before attention and before the MLP. 2 stages of (M, C).
    pub normed: Stages<'a>,
    /// 1/rms of those norms. 2 stages of (M).
    pub rstd: Stages<'a>,
    /// Rotated q, k and v. (M, Q), Q = C + 2·KV·D
    pub qkv: &'a mut [f32],
    /// Attention output before o_proj. (M, C)
    pub att: &'a mut [f32],
    /// Gate and up projections. (M, 2F)
    pub gu: &'a mut [f32],
    /// silu(gate)·up. (M, F)
    pub act: &'a mut [f32],
    /// σ(gate), saved for the SwiGLU backward when given. (M, F)
    pub sig: Option<&'a mut [f32]>,
    /// Position of each token, for the rotary embedding. (M)
    pub positions: &'a [u32],
}

impl Transformer {
    /// Runs layer `layer` over the M tokens of `io`:
    /// `x_mid = x + o_proj(attend(rope(qkv(norm(x)))))`, `x_out = x_mid + down(swiglu(gate_up(norm(x_mid))))`.
    /// `attend` maps the rotated `q | k | v` (M, Q) to the heads' outputs (M, C).
    /// `par` lets the kernels use the thread pool.
    pub(crate) fn layer_forward(
        &self,
        layer: usize,
        mut io: LayerIo<'_>,
        attend: impl FnOnce(&[f32], &mut [f32]),
        par: bool,
    ) {
        let cfg = &self.config;
        let (c, f, q, rot) = (
            cfg.hidden_size,
            cfg.intermediate_size,
            cfg.qkv_dim(),
            cfg.hidden_size + cfg.kv_dim(),
        );
        let m = io.positions.len();
        let p = &self.params;
        let LayerOffsets {
            attn_norm,
            wqkv,
            bqkv,
            wo,
            mlp_norm,
            wgu,
            wdown,
        } = self.layout.layers[layer];

        // --- attention block ---
        let qkv = &mut *io.qkv;
        self.norm_project(
            io.resid.at(0),
            io.normed.at_mut(0),
            io.rstd.at_mut(0),
            (attn_norm, wqkv),
            qkv,
            q,
            par,
        );
        // Add the biases, then rotate q and k (the first `rot` columns). (M, Q)
        let bias = bqkv.map(|b| &p[b..b + q]);
        let finish = |rows: &mut [f32], pos: &[u32]| {
            if let Some(b) = bias {
                rows.chunks_exact_mut(q)
                    .for_each(|r| r.iter_mut().zip(b).for_each(|(x, b)| *x += b));
            }
            self.rope.apply_rows(rows, q, rot, pos, false);
        };
        if par {
            qkv.par_chunks_mut(ROWS_PER_TASK * q)
                .zip(io.positions.par_chunks(ROWS_PER_TASK))
                .for_each(|(rows, pos)| finish(rows, pos));
        } else {
            finish(qkv, io.positions);
        }
        attend(qkv, io.att);
        // x_mid = x_in + att · Woᵀ
        kernels::linear(
            io.resid.carry(0),
            io.att,
            &p[wo..wo + c * c],
            m,
            c,
            c,
            true,
            par,
        );

        // --- MLP block ---
        let gu = &mut *io.gu;
        self.norm_project(
            io.resid.at(1),
            io.normed.at_mut(1),
            io.rstd.at_mut(1),
            (mlp_norm, wgu),
            gu,
            2 * f,
            par,
        );
        let a = &mut *io.act;
        match io.sig {
            Some(sig) if par => a
                .par_chunks_mut(ROWS_PER_TASK * f)
                .zip(sig.par_chunks_mut(ROWS_PER_TASK * f))
                .zip(gu.par_chunks(ROWS_PER_TASK * 2 * f))
                .for_each(|((a, sig), gu)| kernels::swiglu_train(a, sig, gu, f)),
            Some(sig) => kernels::swiglu_train(a, sig, gu, f),
            None if par => a
                .par_chunks_mut(ROWS_PER_TASK * f)
                .zip(gu.par_chunks(ROWS_PER_TASK * 2 * f))
                .for_each(|(a, gu)| kernels::swiglu(a, gu, f)),
            None => kernels::swiglu(a, gu, f),
        }
        // x_out = x_mid + act · Wdownᵀ
        kernels::linear(
            io.resid.carry(1),
            a,
            &p[wdown..wdown + c * f],
            m,
            f,
            c,
            true,
            par,
        );
    }

    /// Backward through layer `layer` of shard `act`, reading the stages its forward pass
    /// kept. On entry `act.dx` holds d loss / d x_out; on exit, d loss / d x_in. The layer's
    /// parameter gradients accumulate into `g`.
    pub(super) fn layer_backward(&self, layer: usize, act: &mut Shard, g: &mut [f32], par: bool) {
        let cfg = &self.config;
        let (c, f, d, kv, kvh) = (
            cfg.hidden_size,
            cfg.intermediate_size,
            cfg.head_dim(),
            cfg.kv_dim(),
            cfg.num_kv_heads,
        );
        let (q, rot, group) = (cfg.qkv_dim(), c + kv, cfg.num_heads / kvh);
        let (n, prob_off) = (act.n, act.prob_block);
        // Where this layer's activations are kept (see `Shard::layer_slot`).
        let l = act.layer_slot(layer);
        let p = &self.params;
        let LayerOffsets {
            attn_norm,
            wqkv,
            bqkv,
            wo,
            mlp_norm,
            wgu,
            wdown,
        } = self.layout.layers[layer];

        // --- MLP block --- dx holds d loss / d x_out.
        let s = 2 * layer + 1;
        let dx = &mut act.dx[..n * c];
        let a = &act.act[l * n * f..(l + 1) * n * f];
        let dact = &mut act.dact[..n * f];
        self.weight_grad(g, &mut act.lora_scratch, wdown, dx, a, n, f, c, par);
        kernels::linear_backward_input(dact, dx, &p[wdown..wdown + c * f], n, f, c, false, par);
        let gu = &act.gu[l * n * 2 * f..(l + 1) * n * 2 * f];
        let sig = &act.sig[l * n * f..(l + 1) * n * f];
        let dgu = &mut act.dgu[..n * 2 * f];
        if par {
            dgu.par_chunks_mut(ROWS_PER_TASK * 2 * f)
                .zip(dact.par_chunks(ROWS_PER_TASK * f))
                .zip(
                    gu.par_chunks(ROWS_PER_TASK * 2 * f)
                        .zip(sig.par_chunks(ROWS_PER_TASK * f)),
                )
                .for_each(|((dgu, da), (gu, sig))| kernels::swiglu_backward(dgu, da, gu, sig, f));
        } else {
            kernels::swiglu_backward(dgu, dact, gu, sig, f);
        }
        self.norm_linear_backward(act, Upstream::GateUp, s, g, wgu, 2 * f, mlp_norm, true, par);

        // --- attention block --- dx holds d loss / d x_mid.
        let s = 2 * layer;
        let dx = &act.dx[..n * c];
        let att = &act.att[l * n * c..(l + 1) * n * c];
        let datt = &mut act.datt[..n * c];
        self.weight_grad(g, &mut act.lora_scratch, wo, dx, att, n, c, c, par);
        kernels::linear_backward_input(datt, dx, &p[wo..wo + c * c], n, c, c, false, par);
        let qkv = &act.qkv[l * n * q..(l + 1) * n * q];
        let probs = &act.probs[l * prob_off..(l + 1) * prob_off];
        let dqkv = &mut act.dqkv[..n * q];
        {
            let (dqkv_ptr, dprobs_ptr) =
                (SendPtr(dqkv.as_mut_ptr()), SendPtr(act.dprobs.as_mut_ptr()));
            let rows = &act.rows;
            let offs = &act.prob_offsets;
            let datt = &*datt;
            // One task per (row, key/value head): the query heads of a group add their
            // gradients into the same dk and dv columns, so they run in turn.
            for_each_head(rows.len(), kvh, par, |(b, kh)| {
                let (st, len) = rows[b];
                for hh in kh * group..(kh + 1) * group {
                    let po = offs[b] + hh * len * len;
                    // SAFETY: each task reads its own row's slices and writes its row's columns of
                    // its q heads and its k/v head in dqkv, and its heads' blocks of the scratch.
                    unsafe {
                        let base = qkv.as_ptr().add(st * q);
                        let dbase = dqkv_ptr.ptr().add(st * q);
                        let (qo, ko, vo) = (hh * d, c + kh * d, c + kv + kh * d);
                        let scratch =
                            std::slice::from_raw_parts_mut(dprobs_ptr.ptr().add(po), len * len);
                        kernels::attention_head_backward(
                            View::at(base.add(qo), q),
                            View::at(base.add(ko), q),
                            View::at(base.add(vo), q),
                            &probs[po..po + len * len],
                            View::at(datt.as_ptr().add(st * c + hh * d), c),
                            dbase.add(qo),
                            dbase.add(ko),
                            dbase.add(vo),
                            q,
                            hh > kh * group,
                            scratch,
                            len,
                            d,
                        );
                    }
                }
            });
        }
        // Undo the rotation on dq and dk.
        if par {
            dqkv.par_chunks_mut(ROWS_PER_TASK * q)
                .zip(act.positions.par_chunks(ROWS_PER_TASK))
                .for_each(|(rows, pos)| self.rope.apply_rows(rows, q, rot, pos, true));
        } else {
            self.rope.apply_rows(dqkv, q, rot, &act.positions, true);
        }
        // The biases' gradient: column sums of d loss / d (q | k | v).
        if let Some(gb) = bqkv.and_then(|b| self.base_grad(g, b, q)) {
            for row in dqkv.chunks_exact(q) {
                gb.iter_mut().zip(row).for_each(|(g, d)| *g += d);
            }
        }
        self.norm_linear_backward(act, Upstream::Qkv, s, g, wqkv, q, attn_norm, true, par);
    }

    /// Looks up the embedding of each token into `x`. (M, C)
    pub(crate) fn embed(&self, tokens: &[u32], x: &mut [f32]) {
        let c = self.config.hidden_size;
        let emb = &self.params[self.layout.embed..self.layout.embed + self.config.vocab_size * c];
        for (row, &tok) in x.chunks_exact_mut(c).zip(tokens) {
            row.copy_from_slice(&emb[tok as usize * c..(tok as usize + 1) * c]);
        }
    }

    /// The final norm of the M rows of `x` into `normed` and `rstd`, then the output head
    /// into `logits`. (M, V)
    pub(crate) fn head(
        &self,
        x: &[f32],
        normed: &mut [f32],
        rstd: &mut [f32],
        logits: &mut [f32],
        par: bool,
    ) {
        let lay = &self.layout;
        let v = self.config.vocab_size;
        self.norm_project(
            x,
            normed,
            rstd,
            (lay.final_norm, lay.lm_head),
            logits,
            v,
            par,
        );
    }

    /// RMSNorm of the M rows of `x` (gain at parameter offset `offsets.0`) into `normed` and
    /// `rstd`, then `out = normed · Wᵀ` with W the (`n_out`, C) matrix at `offsets.1`: the
    /// pre-norm projection that opens each block, and the output head.
    #[allow(clippy::too_many_arguments)]
    fn norm_project(
        &self,
        x: &[f32],
        normed: &mut [f32],
        rstd: &mut [f32],
        offsets: (usize, usize),
        out: &mut [f32],
        n_out: usize,
        par: bool,
    ) {
        let (c, eps) = (self.config.hidden_size, self.config.rms_norm_eps);
        let (m, p, (gain, w)) = (rstd.len(), &self.params, offsets);
        norm_rows(normed, rstd, x, &p[gain..gain + c], eps, par);
        kernels::linear(out, normed, &p[w..w + n_out * c], m, c, n_out, false, par);
    }
}
