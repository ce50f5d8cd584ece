//! Flat parameter storage and its mapping to Hugging Face tensor names.
//!
//! All parameters live in one `Vec<f32>`, and so do gradients and the AdamW
//! moments, with identical offsets: zeroing, clipping and the optimizer step
//! are single loops over a slice. Within a layer the tensors are stored in
//! the order q, k, v (so `[q; k; v]` is one contiguous `(3C, C)` matrix and the
//! three projections run as one GEMM) and gate, up (one `(2F, C)` matrix).
//! Every Hugging Face tensor is still a contiguous slice, so checkpoints map
//! one-to-one onto `LlamaForCausalLM` names.

use crate::config::TransformerConfig;
use crate::rng::Rng;

/// Offsets of one decoder block's tensors in the flat buffer.
#[derive(Clone, Copy, Debug)]
pub struct LayerOffsets {
    /// `input_layernorm.weight` (C)
    pub attn_norm: usize,
    /// `q_proj`, `k_proj`, `v_proj` weights stacked: (Q, C), Q = C + 2·KV·D
    pub wqkv: usize,
    /// Their biases stacked, (Q), when the model has them.
    pub bqkv: Option<usize>,
    /// `o_proj.weight` (C, C)
    pub wo: usize,
    /// `post_attention_layernorm.weight` (C)
    pub mlp_norm: usize,
    /// `gate_proj`, `up_proj` weights stacked: (2F, C)
    pub wgu: usize,
    /// `down_proj.weight` (C, F)
    pub wdown: usize,
}

/// One named tensor of the flat buffer.
#[derive(Clone, Debug)]
pub struct TensorInfo {
    /// Hugging Face name, e.g. `model.layers.0.self_attn.q_proj.weight`.
    pub name: String,
    pub shape: Vec<usize>,
    pub offset: usize,
    pub kind: TensorKind,
}

/// What a tensor is, which decides how it starts and whether weight decay applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TensorKind {
    /// A projection or embedding matrix: drawn from N(0, initializer_range²), decayed.
    Matrix,
    /// An RMSNorm gain: starts at one, not decayed.
    Norm,
    /// A bias: starts at zero, not decayed.
    Bias,
}

impl TensorInfo {
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn range(&self) -> std::ops::Range<usize> {
        self.offset..self.offset + self.len()
    }
}

/// Where each tensor lives in the flat buffer.
#[derive(Clone, Debug)]
pub struct Layout {
    pub tensors: Vec<TensorInfo>,
    /// `model.embed_tokens.weight` (V, C)
    pub embed: usize,
    pub layers: Vec<LayerOffsets>,
    /// `model.norm.weight` (C)
    pub final_norm: usize,
    /// `lm_head.weight` (V, C); the embedding when tied.
    pub lm_head: usize,
    pub total: usize,
}

impl Layout {
    pub fn new(cfg: &TransformerConfig) -> Self {
        let (v, c, f, kv) = (
            cfg.vocab_size,
            cfg.hidden_size,
            cfg.intermediate_size,
            cfg.kv_dim(),
        );
        let mut tensors = Vec::new();
        let mut total = 0;
        let mut push = |name: String, shape: Vec<usize>, kind: TensorKind| {
            let offset = total;
            total += shape.iter().product::<usize>();
            tensors.push(TensorInfo {
                name,
                shape,
                offset,
                kind,
            });
            offset
        };
        let embed = push(
            "model.embed_tokens.weight".into(),
            vec![v, c],
            TensorKind::Matrix,
        );
        let mut layers = Vec::with_capacity(cfg.num_layers);
        for l in 0..cfg.num_layers {
            let p = format!("model.layers.{l}.");
            let attn_norm = push(
                format!("{p}input_layernorm.weight"),
                vec![c],
                TensorKind::Norm,
            );
            let wqkv = push(
                format!("{p}self_attn.q_proj.weight"),
                vec![c, c],
                TensorKind::Matrix,
            );
            push(
                format!("{p}self_attn.k_proj.weight"),
                vec![kv, c],
                TensorKind::Matrix,
            );
            push(
                format!("{p}self_attn.v_proj.weight"),
                vec![kv, c],
                TensorKind::Matrix,
            );
            let bqkv = cfg.qkv_bias.then(|| {
                let b = push(
                    format!("{p}self_attn.q_proj.bias"),
                    vec![c],
                    TensorKind::Bias,
                );
                push(
                    format!("{p}self_attn.k_proj.bias"),
                    vec![kv],
                    TensorKind::Bias,
                );
                push(
                    format!("{p}self_attn.v_proj.bias"),
                    vec![kv],
                    TensorKind::Bias,
                );
                b
            });
            let wo = push(
                format!("{p}self_attn.o_proj.weight"),
                vec![c, c],
                TensorKind::Matrix,
            );
            let mlp_norm = push(
                format!("{p}post_attention_layernorm.weight"),
                vec![c],
                TensorKind::Norm,
            );
            let wgu = push(
                format!("{p}mlp.gate_proj.weight"),
                vec![f, c],
                TensorKind::Matrix,
            );
            push(
                format!("{p}mlp.up_proj.weight"),
                vec![f, c],
                TensorKind::Matrix,
            );
            let wdown = push(
                format!("{p}mlp.down_proj.weight"),
                vec![c, f],
                TensorKind::Matrix,
            );
            layers.push(LayerOffsets {
                attn_norm,
                wqkv,
                bqkv,
                wo,
                mlp_norm,
                wgu,
                wdown,
            });
        }
        let final_norm = push("model.norm.weight".into(), vec![c], TensorKind::Norm);
        let lm_head = if cfg.tie_embeddings {
            embed
        } else {
            push("lm_head.weight".into(), vec![v, c], TensorKind::Matrix)
        };
        Layout {
            tensors,
            embed,
            layers,
            final_norm,
            lm_head,
            total,
        }
    }

    /// Fresh parameters: N(0, initializer_range²) for matrices and embeddings, ones for norms, zeros for biases
    /// (the initialization of Hugging Face's `LlamaPreTrainedModel`).
    pub fn init(&self, cfg: &TransformerConfig, seed: u64) -> Vec<f32> {
        let mut data = vec![0.0; self.total];
        for (i, t) in self.tensors.iter().enumerate() {
            let slice = &mut data[t.range()];
            match t.kind {
                TensorKind::Norm => slice.fill(1.0),
                TensorKind::Bias => slice.fill(0.0),
                TensorKind::Matrix => {
                    let mut rng = Rng::derived(seed, i as u64);
                    slice
                        .iter_mut()
                        .for_each(|x| *x = rng.normal() * cfg.initializer_range);
                }
            }
        }
        data
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_covers_buffer_without_gaps() {
        for (tie, kv, bias) in [(true, 4, false), (false, 2, true)] {
            let mut cfg = TransformerConfig::tiny(11);
            cfg.tie_embeddings = tie;
            cfg.num_kv_heads = kv;
            cfg.qkv_bias = bias;
            let l = Layout::new(&cfg);
            assert_eq!(l.total, cfg.num_params());
            let mut end = 0;
            for t in &l.tensors {
                assert_eq!(t.offset, end, "{}", t.name);
                end += t.len();
            }
            assert_eq!(end, l.total);
            let (c, q) = (cfg.hidden_size, cfg.qkv_dim());
            let bias = if bias { q } else { 0 };
            assert_eq!(l.layers[0].wo - l.layers[0].wqkv, q * c + bias);
        }
    }
}
