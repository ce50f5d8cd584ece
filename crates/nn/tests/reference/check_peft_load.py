#!/usr/bin/env python3
"""Run by hand: logits of a LoRA checkpoint written by autodidact, loaded by PEFT onto its base, against
the merged model `autodidact export` wrote (loaded by transformers).

Usage: python check_peft_load.py RUN/checkpoints/rNNNN MERGED_DIR   (needs torch, transformers, peft)
Measured on 2026-12-01 (SmolLM2-135M, rank-16 adapters after one star round): 51 tokens, PEFT vs
exported model 3.6e-6 relative, the adapters moving the logits 0.43 relative from the base."""
import json, sys, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from peft import PeftModel
ck, merged = sys.argv[1], sys.argv[2]
base_dir = json.load(open(ck + "/adapter_config.json"))["base_model_name_or_path"]
tok = AutoTokenizer.from_pretrained(base_dir)
peft = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32), ck).eval()
full = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32).eval()
base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32).eval()
text = tok.apply_chat_template([{"role": "user", "content": "What is 17 + 25?"}], tokenize=False, add_generation_prompt=True) + "17 + 25 = 42."
ids = tok(text, return_tensors="pt").input_ids
with torch.no_grad():
    a, b, c = peft(ids).logits, full(ids).logits, base(ids).logits
rel = lambda x, y: ((x - y).abs().max() / y.abs().max()).item()
print(f"{ids.shape[1]} tokens: PEFT vs exported merged model rel {rel(a, b):.2e}; adapters moved the logits from the base by rel {rel(a, c):.2e}")
