#!/usr/bin/env python3
"""Reference values for crates/nn/tests/score_reference.rs: a scalar score head (a reward
model) on the `torch_ref_untied` checkpoint, computed with transformers'
`LlamaForSequenceClassification` (num_labels = 1: `score.weight`, no bias, read at each
row's last non-padding token).

Writes ../fixtures/torch_ref_untied/score_reference.safetensors: the padded inputs
(right-padded with pad_token_id = vocab_size - 1, which no real token uses), the row
lengths, the head's weight, per-row loss coefficients d, the scores, and the gradients of
loss = sum_b d_b * score_b for every backbone parameter ("grad.<name>") and for the head
("grad.score.weight").

Run: python crates/nn/tests/reference/make_score_reference.py   (torch, transformers, safetensors)
Produced with torch 2.15.0, transformers 5.24.0.
"""
import os

import torch
from safetensors.torch import save_file
from transformers import LlamaForSequenceClassification

HERE = os.path.dirname(os.path.abspath(__file__))
DIR = os.path.join(HERE, "..", "fixtures", "torch_ref_untied")

torch.manual_seed(7)
vocab = 11
pad = vocab - 1
model = LlamaForSequenceClassification.from_pretrained(DIR, num_labels=1, pad_token_id=pad, dtype=torch.float32)
with torch.no_grad():
    model.score.weight.copy_(torch.randn_like(model.score.weight) * 0.5)
model.train()

lengths = [7, 3, 12, 1, 5]
T = max(lengths)
inputs = torch.full((len(lengths), T), pad, dtype=torch.long)
mask = torch.zeros((len(lengths), T), dtype=torch.long)
for b, n in enumerate(lengths):
    inputs[b, :n] = torch.randint(0, vocab - 1, (n,))
    mask[b, :n] = 1
d = torch.randn(len(lengths))

scores = model(input_ids=inputs, attention_mask=mask).logits.squeeze(-1)
loss = (d * scores).sum()
loss.backward()

out = {
    "inputs": inputs,
    "lengths": torch.tensor(lengths, dtype=torch.long),
    "head": model.score.weight.detach().reshape(-1).clone(),
    "d": d,
    "scores": scores.detach(),
    "grad.score.weight": model.score.weight.grad.reshape(-1).clone(),
}
for name, p in model.named_parameters():
    if name.startswith("model.") and p.grad is not None:
        out[f"grad.{name}"] = p.grad.detach().clone()
save_file({k: v.contiguous() for k, v in out.items()}, os.path.join(DIR, "score_reference.safetensors"))
print("scores", scores.tolist())
