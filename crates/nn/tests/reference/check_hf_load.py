#!/usr/bin/env python3
"""Loads a checkpoint written by autodidact with transformers and prints the reference values
recorded in crates/nn/tests/reference/hf_load_values.rs (used by checkpoint.rs's
`transformers_reads_our_checkpoint`).

Usage:
  AUTODIDACT_HF_CHECK_DIR=/tmp/hf_check cargo test -p autodidact-nn --test checkpoint transformers
  python crates/nn/tests/reference/check_hf_load.py /tmp/hf_check > crates/nn/tests/reference/hf_load_values.rs
"""
import sys

import torch
import transformers
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

path = sys.argv[1]
model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
assert type(model).__name__ == "LlamaForCausalLM", type(model)
tok = PreTrainedTokenizerFast(tokenizer_file=f"{path}/tokenizer.json")
ids = tok("12+34=46")["input_ids"]  # the post-processor prepends <bos>
assert tok.decode(ids, skip_special_tokens=True) == "12+34=46"
with torch.no_grad():
    logits = model(input_ids=torch.tensor([ids])).logits[0].flatten().tolist()
print(f"// Printed by check_hf_load.py (transformers {transformers.__version__}, torch {torch.__version__}).")
print(f"const HF_IDS: [u32; {len(ids)}] = {ids};")
print("#[allow(clippy::excessive_precision)]")
print(f"const HF_LOGITS: [f32; {len(logits)}] = [")
for i in range(0, len(logits), 6):
    print("    " + " ".join(f"{x!r}," for x in logits[i : i + 6]))
print("];")
