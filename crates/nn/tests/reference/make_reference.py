#!/usr/bin/env python3
"""Reference values for crates/nn/tests/torch_reference.rs, computed with transformers.

For tiny models with seeded random weights, writes to ../fixtures/torch_ref_<name>/:
  tied, untied   LlamaForCausalLM, multi-head attention, float32
  qwen2          Qwen2ForCausalLM: q/k/v biases, grouped-query attention (4 query heads, 2
                 key/value heads), untied, saved in bfloat16 (the reference runs the same
                 bfloat16-rounded weights in float32)
  llama3         LlamaForCausalLM with Llama-3 rope scaling (sequences run past
                 original_max_position_embeddings), grouped-query attention (4 heads, 1 key/value
                 head), tied, saved in float16 as a sharded checkpoint (model.safetensors.index.json)
Each holds:
  model.safetensors, config.json   the checkpoint, as transformers' save_pretrained writes it
  reference.safetensors            inputs (padded tokens, targets, row lengths, per-token weights and
                                   entropy coefficients) and outputs: logits, per-token log-probs of
                                   the targets, per-token entropies, the loss
                                   loss = -sum_t w_t log p(y_t) - sum_t c_t H_t   (real positions only)
                                   and the gradient of the loss for every parameter ("grad.<name>").
Also prints torch.optim.AdamW's trajectory used by optim.rs's unit test.

Run: python crates/nn/tests/reference/make_reference.py   (needs torch, transformers, safetensors)
Produced with torch 2.15.0, transformers 5.24.0.
"""
import os

import torch
from safetensors.torch import save_file
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

HERE = os.path.dirname(os.path.abspath(__file__))


def llama(tied: bool):
    return LlamaForCausalLM(LlamaConfig(
        vocab_size=11,
        hidden_size=16,
        intermediate_size=24,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=16,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        tie_word_embeddings=tied,
        initializer_range=0.3,
        attention_bias=False,
        mlp_bias=False,
        torch_dtype="float32",
    ))


def qwen2():
    return Qwen2ForCausalLM(Qwen2Config(
        vocab_size=13,
        hidden_size=16,
        intermediate_size=24,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=16,
        rms_norm_eps=1e-6,
        rope_theta=1000.0,
        tie_word_embeddings=False,
        initializer_range=0.3,
        use_sliding_window=False,
    ))


def llama3():
    return LlamaForCausalLM(LlamaConfig(
        vocab_size=11,
        hidden_size=16,
        intermediate_size=24,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=1,
        max_position_embeddings=32,
        rms_norm_eps=1e-5,
        rope_parameters={
            "rope_type": "llama3",
            "rope_theta": 500.0,
            "factor": 4.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8,
        },
        tie_word_embeddings=True,
        initializer_range=0.3,
    ))


def reference_pass(model, lengths):
    """Draws a padded batch (inputs, targets, per-token weights and entropy coefficients) for
    rows of `lengths`, runs `model` on it and back-propagates
    loss = -sum_t w_t log p(y_t) - sum_t c_t H_t over real positions. Returns the reference
    tensors (inputs and outputs; gradients stay on the parameters) and the loss."""
    lengths = torch.tensor(lengths)
    b, t, v = len(lengths), int(lengths.max()), model.config.vocab_size
    inputs = torch.randint(0, v, (b, t))
    targets = torch.randint(0, v, (b, t))
    weights = torch.rand(b, t) * 2 - 1
    coefs = torch.rand(b, t) - 0.5
    mask = (torch.arange(t)[None, :] < lengths[:, None]).float()

    logits = model(input_ids=inputs).logits  # (B, T, V); right padding does not affect real positions
    logp_all = torch.log_softmax(logits, dim=-1)
    logp = logp_all.gather(-1, targets[..., None])[..., 0]
    entropy = -(logp_all.exp() * logp_all).sum(-1)
    loss = -(weights * logp * mask).sum() - (coefs * entropy * mask).sum()
    loss.backward()

    ref = {
        "inputs": inputs.to(torch.int64),
        "targets": targets.to(torch.int64),
        "lengths": lengths.to(torch.int64),
        "weights": weights,
        "entropy_coefs": coefs,
        "logits": (logits * mask[..., None]).detach(),
        "logprobs": (logp * mask).detach(),
        "entropy": (entropy * mask).detach(),
        "loss": loss.detach().reshape(1),
    }
    return ref, loss


def make(name: str, seed: int, build, dtype=torch.float32, shard=None, lengths=(9, 5, 7)):
    torch.manual_seed(seed)
    model = build().float()
    # Norm gains away from 1 and biases away from 0 so their gradients and effects are tested too.
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if "norm" in pname:
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            elif pname.endswith(".bias"):
                p.copy_(0.3 * torch.randn_like(p))
    model.eval()
    out_dir = os.path.join(HERE, "..", "fixtures", f"torch_ref_{name}")
    # Saved in `dtype`; the reference runs those rounded weights in float32.
    model.to(dtype)
    kwargs = {"max_shard_size": shard} if shard else {}
    model.save_pretrained(out_dir, safe_serialization=True, **kwargs)
    model.float()
    # The cast rounded the rotary frequencies (a buffer) too; a loaded checkpoint recomputes them.
    model.model.rotary_emb = type(model.model.rotary_emb)(config=model.config)

    ref, loss = reference_pass(model, lengths)
    for name, p in model.named_parameters():
        ref[f"grad.{name}"] = p.grad.detach().clone()
    save_file({k: x.contiguous() for k, x in ref.items()}, os.path.join(out_dir, "reference.safetensors"))
    print(f"wrote {out_dir}: loss {loss.item():.6f}")


def adamw():
    p = torch.nn.Parameter(torch.tensor([1.0]))
    opt = torch.optim.AdamW([p], lr=0.1, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.5)
    for g in [0.5, -0.25, 2.0]:
        p.grad = torch.tensor([g])
        opt.step()
        print(f"adamw: after grad {g}: {p.item()!r}")


if __name__ == "__main__":
    make("tied", 1235, lambda: llama(True))
    make("untied", 1234, lambda: llama(False))
    make("qwen2", 2024, qwen2, dtype=torch.bfloat16)
    make("llama3", 2025, llama3, dtype=torch.float16, shard="4KB", lengths=(21, 12, 17))
    adamw()
