#!/usr/bin/env python3
"""Reference values for crates/nn/tests/torch_reference.rs, computed with transformers' LlamaForCausalLM.

For a tied and an untied tiny Llama with seeded random weights, writes to ../fixtures/torch_ref_{tied,untied}/:
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
from transformers import LlamaConfig, LlamaForCausalLM

HERE = os.path.dirname(os.path.abspath(__file__))


def make(tied: bool):
    torch.manual_seed(1234 + tied)
    cfg = LlamaConfig(
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
    )
    model = LlamaForCausalLM(cfg).float()
    # Norm gains away from 1 so their gradients and effects are tested too.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
    model.eval()
    out_dir = os.path.join(HERE, "..", "fixtures", f"torch_ref_{'tied' if tied else 'untied'}")
    model.save_pretrained(out_dir, safe_serialization=True)

    lengths = torch.tensor([9, 5, 7])
    b, t, v = len(lengths), int(lengths.max()), cfg.vocab_size
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
    make(tied=True)
    make(tied=False)
    adamw()
