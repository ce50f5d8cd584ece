#!/usr/bin/env python3
"""Reference values for the LoRA test in crates/nn/tests/torch_reference.rs, computed with PEFT.

Base model: the Qwen2 fixture of make_reference.py (../fixtures/torch_ref_qwen2: q/k/v biases,
grouped-query attention, untied, bfloat16 weights run in float32). PEFT adds LoRA adapters
(r = 2, lora_alpha = 3, every linear projection of every layer, no dropout); lora_A keeps
PEFT's initialization and lora_B is set to seeded random values (PEFT starts it at zero,
where lora_A's gradient vanishes). Writes ../fixtures/torch_ref_lora/:
  adapter_model.safetensors, adapter_config.json   as PeftModel.save_pretrained writes them,
                   except base_model_name_or_path, rewritten to "../torch_ref_qwen2" (relative
                   paths are resolved against the adapter directory)
  reference.safetensors   inputs (padded tokens, targets, row lengths, per-token weights and
                   entropy coefficients) and outputs: logits, per-token log-probs, entropies, the
                   loss  -sum_t w_t log p(y_t) - sum_t c_t H_t  (real positions only) and its
                   gradient for every adapter tensor ("grad.<PEFT name>"); the base is frozen.

Run: python crates/nn/tests/reference/make_lora_reference.py   (needs torch, transformers, peft)
Produced with torch 2.15.0, transformers 5.24.0, peft 0.21.2.
"""
import json
import os

import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM

from make_reference import reference_pass

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.join(HERE, "..", "fixtures")


def main():
    torch.manual_seed(77)
    base = AutoModelForCausalLM.from_pretrained(os.path.join(FIXTURES, "torch_ref_qwen2"), dtype=torch.float32)
    config = LoraConfig(
        r=2,
        lora_alpha=3,
        lora_dropout=0.0,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(base, config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(0.5 * torch.randn_like(p))
    model.eval()
    out_dir = os.path.join(FIXTURES, "torch_ref_lora")
    model.save_pretrained(out_dir)
    cfg_path = os.path.join(out_dir, "adapter_config.json")
    with open(cfg_path) as f:
        cfg = json.load(f)
    cfg["base_model_name_or_path"] = "../torch_ref_qwen2"
    with open(cfg_path, "w") as f:
        json.dump(cfg, f, indent=2, sort_keys=True)
    readme = os.path.join(out_dir, "README.md")
    if os.path.exists(readme):
        os.remove(readme)

    ref, loss = reference_pass(model, (9, 5, 7))
    trained = 0
    for name, p in model.named_parameters():
        if p.requires_grad:
            ref["grad." + name.replace(".default", "")] = p.grad.detach().clone()
            trained += 1
    save_file({k: x.contiguous() for k, x in ref.items()}, os.path.join(out_dir, "reference.safetensors"))
    print(f"wrote {out_dir}: {trained} adapter tensors, loss {loss.item():.6f}")


if __name__ == "__main__":
    main()
