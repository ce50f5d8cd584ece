//! LoRA: low-rank adapters trained on a frozen pretrained model (Hu et al., 2021).
//!
//! Each adapted projection `W (out, in)` gains `s·B·A` with `s = alpha / rank`, `A (rank, in)`
//! and `B (out, rank)`, as PEFT's `LoraLayer` computes it; A starts like PEFT's default
//! (uniform in ±1/√in) and B at zero, so training starts from the pretrained model exactly.
//! How this differs from PEFT:
//! - **Merged weights.** The model's parameter buffer holds `W + s·B·A`, re-merged after each
//!   optimizer step from a frozen copy of the adapted weights. The forward pass, the input
//!   gradients and KV-cache sampling therefore run exactly as for a full model: one GEMM per
//!   projection and no extra activations, where PEFT adds the low-rank path to every forward.
//!   Both compute the same function up to float rounding (a merge costs `2·out·in·rank` FLOPs
//!   per adapter, a few GFLOPs per step for a 135M model, against the step's TFLOPs).
//! - **No dropout** on the adapter input (PEFT's `lora_dropout = 0`).
//! - **Frozen means not computed.** The backward pass skips the gradient of every frozen
//!   tensor (embedding, norms, biases, the output head, every `W`): the weight-gradient GEMMs
//!   are a third of a full step's work. An adapter's gradients come from the projection's
//!   input `x (N, in)` and upstream gradient `dy (N, out)`:
//!   `dB = s·dyᵀ·(x·Aᵀ)`, `dA = s·(dy·B)ᵀ·x`.
//!
//! Adapters and their optimizer state are saved on their own, in PEFT's layout (see
//! [`crate::checkpoint`]): `adapter_model.safetensors` and `adapter_config.json`, which name
//! the base checkpoint by path. `autodidact export` merges them into a full checkpoint.

use crate::kernels::{self, grow, SendPtr, View};
use crate::model::Transformer;
use crate::params::{TensorInfo, TensorKind};
use crate::rng::Rng;
use crate::{Error, Result};
use autodidact_core::{LoraConfig, LoraModule};
use rayon::prelude::*;
use std::path::PathBuf;

/// One adapted projection.
#[derive(Clone, Debug)]
pub(crate) struct Adapter {
    /// Offset of the adapted weight `(out, inp)` in the model's parameters.
    pub w: usize,
    pub out: usize,
    pub inp: usize,
    /// Offsets of A `(rank, inp)` and B `(out, rank)` in the adapters' buffer.
    pub a: usize,
    pub b: usize,
    /// Offset of the weight's pretrained values in [`Lora::base`].
    pub base: usize,
}

/// The checkpoint a set of adapters was trained on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BaseModel {
    /// The checkpoint directory, as an absolute path.
    pub dir: PathBuf,
    /// `sha256:<hex>` of its `config.json` and weight files, checked when adapters are loaded.
    pub digest: String,
}

/// The adapters of a [`Transformer`], their trainable values and the frozen weights they adapt.
#[derive(Clone, Debug)]
pub struct Lora {
    pub(crate) config: LoraConfig,
    pub(crate) adapters: Vec<Adapter>,
    /// A and B of every adapter, under their PEFT names (offsets into `params`).
    pub(crate) tensors: Vec<TensorInfo>,
    /// The trainable values: A and B of every adapter.
    pub(crate) params: Vec<f32>,
    /// The pretrained values of the adapted weights.
    base: Vec<f32>,
    pub(crate) base_model: Option<BaseModel>,
}

/// PEFT's name of an adapter tensor: `base_model.model.model.layers.{l}.{block}.{module}.lora_{A|B}.weight`.
pub(crate) fn peft_name(layer: usize, module: LoraModule, which: char) -> String {
    format!(
        "base_model.model.model.layers.{layer}.{}.{}.lora_{which}.weight",
        module.block(),
        module.name()
    )
}

impl Lora {
    pub fn config(&self) -> &LoraConfig {
        &self.config
    }

    /// The checkpoint the adapters were trained on, when they were attached to a loaded one.
    pub fn base_model(&self) -> Option<&BaseModel> {
        self.base_model.as_ref()
    }

    /// Number of trainable values (A and B of every adapter).
    pub fn num_params(&self) -> usize {
        self.params.len()
    }

    /// The trainable values, laid out as [`Lora::tensors`] says.
    pub fn params(&self) -> &[f32] {
        &self.params
    }

    /// A and B of every adapter: PEFT names, shapes and offsets into [`Lora::params`].
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// Writes `W + s·B·A` into `params` for every adapted weight.
    pub(crate) fn merge(&self, params: &mut [f32]) {
        let (r, s) = (self.config.rank, self.config.scale());
        assert!(self
            .adapters
            .iter()
            .all(|a| a.w + a.out * a.inp <= params.len()));
        let dst = SendPtr(params.as_mut_ptr());
        self.adapters.par_iter().for_each(|ad| {
            let n = ad.out * ad.inp;
            // SAFETY: adapters cover disjoint ranges of `params` (one weight each, checked in
            // bounds above), and nothing else touches `params` during the merge.
            let w = unsafe { std::slice::from_raw_parts_mut(dst.ptr().add(ad.w), n) };
            w.copy_from_slice(&self.base[ad.base..ad.base + n]);
            let a = &self.params[ad.a..ad.a + r * ad.inp];
            let b = &self.params[ad.b..ad.b + ad.out * r];
            // SAFETY: w is (out, inp) row-major, B (out, r) and A (r, inp) are in bounds.
            unsafe {
                kernels::gemm(
                    ad.out,
                    ad.inp,
                    r,
                    w.as_mut_ptr(),
                    ad.inp,
                    true,
                    View::rows(b, r),
                    View::rows(a, ad.inp),
                    s,
                    false,
                )
            }
        });
    }

    /// Accumulates into `g` (laid out like [`Lora::params`]) the gradients of the adapters on
    /// the weight at model offset `w` — `(out, inp)`, possibly a stack of several projections
    /// such as q | k | v — from the upstream gradient `dy (n, out)` and the input `x (n, inp)`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn backward(
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
        let (r, s) = (self.config.rank, self.config.scale());
        assert!(g.len() == self.params.len() && dy.len() >= n * out && x.len() >= n * inp);
        grow(scratch, 2 * n * r);
        let (u, e) = scratch[..2 * n * r].split_at_mut(n * r);
        let end = w + out * inp;
        for ad in self.adapters.iter().filter(|a| a.w >= w && a.w < end) {
            let row0 = (ad.w - w) / inp;
            debug_assert!(ad.inp == inp && row0 + ad.out <= out);
            let a = &self.params[ad.a..ad.a + r * inp];
            let b = &self.params[ad.b..ad.b + ad.out * r];
            // The adapter's columns of dy. (n, out_a), row stride `out`
            let dya = View::at(dy[row0..].as_ptr(), out);
            // SAFETY: every view stays inside its slice (shapes asserted above), and the
            // destinations (u, e and the adapter's A and B gradients) alias none of the inputs.
            unsafe {
                // u = x·Aᵀ  (n, r)
                kernels::gemm(
                    n,
                    r,
                    inp,
                    u.as_mut_ptr(),
                    r,
                    false,
                    View::rows(x, inp),
                    View::rows(a, inp).t(),
                    1.0,
                    par,
                );
                // dB += s·dyᵀ·u  (out_a, r)
                kernels::gemm(
                    ad.out,
                    r,
                    n,
                    g[ad.b..].as_mut_ptr(),
                    r,
                    true,
                    dya.t(),
                    View::rows(u, r),
                    s,
                    par,
                );
                // e = dy·B  (n, r)
                kernels::gemm(
                    n,
                    r,
                    ad.out,
                    e.as_mut_ptr(),
                    r,
                    false,
                    dya,
                    View::rows(b, r),
                    1.0,
                    par,
                );
                // dA += s·eᵀ·x  (r, inp)
                kernels::gemm(
                    r,
                    inp,
                    n,
                    g[ad.a..].as_mut_ptr(),
                    inp,
                    true,
                    View::rows(e, r).t(),
                    View::rows(x, inp),
                    s,
                    par,
                );
            }
        }
    }
}

impl Transformer {
    /// This model with LoRA adapters on the projections `config` names, A drawn from `seed`
    /// and B zero: the same function as before, with only the adapters trainable. Fails if
    /// the model already has adapters.
    pub fn with_lora(mut self, config: &LoraConfig, seed: u64) -> Result<Self> {
        config.validate()?;
        if self.lora.is_some() {
            return Err(Error::invalid(
                "LoRA",
                "the model already has adapters; export it merged first",
            ));
        }
        let (c, f, kv) = (
            self.config.hidden_size,
            self.config.intermediate_size,
            self.config.kv_dim(),
        );
        let r = config.rank;
        let mut targets = config.target_modules.clone();
        targets.sort();
        let (mut adapters, mut tensors) = (Vec::new(), Vec::new());
        let (mut total, mut base_len) = (0, 0);
        for (layer, lo) in self.layout.layers.iter().enumerate() {
            for &module in &targets {
                let (w, out, inp) = match module {
                    LoraModule::QProj => (lo.wqkv, c, c),
                    LoraModule::KProj => (lo.wqkv + c * c, kv, c),
                    LoraModule::VProj => (lo.wqkv + (c + kv) * c, kv, c),
                    LoraModule::OProj => (lo.wo, c, c),
                    LoraModule::GateProj => (lo.wgu, f, c),
                    LoraModule::UpProj => (lo.wgu + f * c, f, c),
                    LoraModule::DownProj => (lo.wdown, c, f),
                };
                let (a, b) = (total, total + r * inp);
                for (which, offset, shape) in [('A', a, vec![r, inp]), ('B', b, vec![out, r])] {
                    tensors.push(TensorInfo {
                        name: peft_name(layer, module, which),
                        shape,
                        offset,
                        kind: TensorKind::Matrix,
                    });
                }
                total = b + out * r;
                adapters.push(Adapter {
                    w,
                    out,
                    inp,
                    a,
                    b,
                    base: base_len,
                });
                base_len += out * inp;
            }
        }
        let mut params = vec![0.0f32; total];
        let mut base = Vec::with_capacity(base_len);
        for (i, ad) in adapters.iter().enumerate() {
            // PEFT's default: kaiming_uniform_(a=√5) on A, which is U(−1/√in, 1/√in); B = 0.
            let bound = 1.0 / (ad.inp as f32).sqrt();
            let mut rng = Rng::derived(seed, i as u64);
            params[ad.a..ad.a + r * ad.inp]
                .iter_mut()
                .for_each(|x| *x = (2.0 * rng.uniform() - 1.0) * bound);
            base.extend_from_slice(&self.params[ad.w..ad.w + ad.out * ad.inp]);
        }
        self.lora = Some(Box::new(Lora {
            config: config.clone(),
            adapters,
            tensors,
            params,
            base,
            base_model: None,
        }));
        Ok(self)
    }

    /// The model's adapters, if it has any.
    pub fn lora(&self) -> Option<&Lora> {
        self.lora.as_deref()
    }

    /// Records the checkpoint the adapters were attached to (saved with them).
    pub fn set_lora_base(&mut self, base: BaseModel) {
        if let Some(l) = &mut self.lora {
            l.base_model = Some(base);
        }
    }

    /// Replaces the adapters' values (laid out as [`Lora::tensors`]) and re-merges them.
    pub fn set_lora_params(&mut self, values: &[f32]) -> Result<()> {
        let Some(lora) = &mut self.lora else {
            return Err(Error::invalid("LoRA", "the model has no adapters"));
        };
        if values.len() != lora.params.len() {
            return Err(Error::invalid(
                "LoRA",
                format!(
                    "{} adapter values for adapters of {}",
                    values.len(),
                    lora.params.len()
                ),
            ));
        }
        lora.params.copy_from_slice(values);
        lora.merge(&mut self.params);
        Ok(())
    }

    /// The model with its adapters merged in for good: a plain model whose every weight
    /// trains (what `autodidact export` writes).
    pub fn merged(mut self) -> Self {
        self.lora = None;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TransformerConfig;

    #[test]
    fn adapters_start_as_the_identity_and_merge_b_a() {
        let mut cfg = TransformerConfig::tiny(11);
        cfg.num_kv_heads = 2;
        let model = cfg.build(1).unwrap();
        let before = model.params().to_vec();
        let lora_cfg = LoraConfig {
            rank: 2,
            alpha: 4.0,
            target_modules: vec![LoraModule::VProj, LoraModule::DownProj],
        };
        let mut m = model.with_lora(&lora_cfg, 7).unwrap();
        assert_eq!(m.params(), &before[..]);
        let lora = m.lora().unwrap();
        // v_proj (kv, C) and down_proj (C, F) in each of 4 layers: A and B each.
        assert_eq!(lora.tensors().len(), 4 * 2 * 2);
        let (c, f, kv) = (64, cfg.intermediate_size, cfg.kv_dim());
        assert_eq!(lora.num_params(), 4 * (2 * c + kv * 2 + 2 * f + c * 2));
        assert_eq!(
            lora.tensors()[0].name,
            "base_model.model.model.layers.0.self_attn.v_proj.lora_A.weight"
        );
        // B = 1 everywhere: W' = W + 2·(column sums of A) in every row.
        let mut vals = m.lora().unwrap().params().to_vec();
        let ad = m.lora().unwrap().adapters[0].clone();
        vals[ad.b..ad.b + ad.out * 2].fill(1.0);
        m.set_lora_params(&vals).unwrap();
        let a = &vals[ad.a..ad.a + 2 * ad.inp];
        for o in 0..ad.out {
            for i in 0..ad.inp {
                let want = before[ad.w + o * ad.inp + i] + 2.0 * (a[i] + a[ad.inp + i]);
                let got = m.params()[ad.w + o * ad.inp + i];
                assert!((got - want).abs() < 1e-6, "{got} vs {want}");
            }
        }
        assert!(m.clone().with_lora(&lora_cfg, 0).is_err());
        let plain = m.merged();
        assert!(plain.lora().is_none());
    }
}
