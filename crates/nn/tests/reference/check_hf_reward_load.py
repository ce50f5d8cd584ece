#!/usr/bin/env python3
"""Loads a reward model written by autodidact with transformers' AutoModelForSequenceClassification
and prints the scores recorded in crates/nn/tests/reference/hf_reward_values.rs (used by
checkpoint.rs's `issue18_transformers_reads_our_reward_model`). The two sequences are scored as
one right-padded batch, so the config's pad_token_id is what finds each one's last token.

Usage:
  AUTODIDACT_HF_CHECK_DIR=/tmp/hf_rm cargo test -p autodidact-nn --test checkpoint issue18
  python crates/nn/tests/reference/check_hf_reward_load.py /tmp/hf_rm > crates/nn/tests/reference/hf_reward_values.rs
"""
import sys

import torch
import transformers
from transformers import AutoModelForSequenceClassification, PreTrainedTokenizerFast

path = sys.argv[1]
model = AutoModelForSequenceClassification.from_pretrained(path, dtype=torch.float32).eval()
assert type(model).__name__ == "LlamaForSequenceClassification", type(model)
assert model.config.num_labels == 1, model.config.num_labels
tok = PreTrainedTokenizerFast(tokenizer_file=f"{path}/tokenizer.json")
eos, pad = model.config.eos_token_id, model.config.pad_token_id
# prompt + completion + the stop token, as autodidact scores an example
seqs = [tok(t)["input_ids"] + [eos] for t in ["12+34=46", "9+9=18"]]
width = max(len(s) for s in seqs)
ids = torch.tensor([s + [pad] * (width - len(s)) for s in seqs])
with torch.no_grad():
    scores = model(input_ids=ids).logits[:, 0].tolist()
print(f"// Printed by check_hf_reward_load.py (transformers {transformers.__version__}, torch {torch.__version__}).")
print("#[allow(clippy::excessive_precision)]")
print(f"const HF_REWARD_SCORES: [f32; 2] = [{', '.join(repr(x) for x in scores)}];")
