#!/usr/bin/env python3
"""transformers reference for `autodidact bench --checkpoint DIR`: the same pretrained model
and workload in PyTorch eager through `LlamaForCausalLM` (SDPA attention), float32.

- train: mean next-token cross-entropy on random tokens (batch × (seq_len + 1) ids, the model
  reads seq_len), AdamW (lr 1e-3, no weight decay), global-norm clipping at 1.0; the median
  step time after 3 warm-up steps, as `autodidact bench` times it;
- sample: `model.generate` from one-token prompts (the tokenizer's BOS, else a newline),
  `sample_batch` rows, exactly `new_tokens` new tokens each (min = max, so EOS does not end a
  row early), temperature 1, KV cache; the median of 3 batches after one warm-up.
- with --lora-rank R, training goes through PEFT: LoRA adapters of rank R (lora_alpha 2R, no
  dropout) on every projection, AdamW over the adapters only, as `autodidact bench
  --lora-rank R` does.

Each phase runs in its own process (`--phase`), so its peak RSS is its own. Prints one JSON
object with the fields `autodidact bench --json` prints. bench/compare-checkpoint.sh runs both
side by side.

Usage: python bench/hf_reference.py --checkpoint models/smollm2 --phase train|sample
           [--batch 8] [--seq-len 512] [--steps 5] [--sample-batch 64] [--new-tokens 64]
           [--threads 2] [--lora-rank R]
Needs: torch, transformers (and peft for --lora-rank).
"""
import argparse
import json
import resource
import statistics
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--phase", choices=["train", "sample"], required=True)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--sample-batch", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--lora-rank", type=int, default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(
        args.checkpoint, dtype=torch.float32, attn_implementation="sdpa"
    )
    tok = AutoTokenizer.from_pretrained(args.checkpoint)
    vocab = model.config.vocab_size
    params = sum(p.numel() for p in model.parameters())
    if args.lora_rank is not None and args.phase == "train":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(
            r=args.lora_rank,
            lora_alpha=2 * args.lora_rank,
            lora_dropout=0.0,
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
            task_type="CAUSAL_LM",
        ))
    out = {
        "preset": args.checkpoint,
        "params": params,
        "threads": args.threads,
        "torch_version": torch.__version__,
        "transformers_version": __import__("transformers").__version__,
    }
    if args.phase == "train":
        b, t = args.batch, args.seq_len
        model.train()
        trainable = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(trainable, lr=1e-3, weight_decay=0.0)
        ids = torch.randint(0, vocab, (b, t + 1))
        times, loss = [], 0.0
        for step in range(3 + args.steps):
            start = time.perf_counter()
            logits = model(input_ids=ids[:, :-1]).logits
            loss_t = torch.nn.functional.cross_entropy(logits.reshape(-1, vocab), ids[:, 1:].reshape(-1))
            opt.zero_grad(set_to_none=True)
            loss_t.backward()
            torch.nn.utils.clip_grad_norm_(trainable, 1.0)
            opt.step()
            loss = loss_t.item()
            if step >= 3:
                times.append(time.perf_counter() - start)
        out.update(
            batch=b,
            seq_len=t,
            train_steps=args.steps,
            train_tokens_per_s=b * t / statistics.median(times),
            train_flops_per_s=6 * params * b * t / statistics.median(times),
            final_loss=loss,
            train_peak_rss_bytes=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        )
    else:
        model.eval()
        first = tok.bos_token_id if tok.bos_token_id is not None else tok("\n").input_ids[0]
        prompt = torch.full((args.sample_batch, 1), first, dtype=torch.long)
        n = args.new_tokens

        def run() -> float:
            start = time.perf_counter()
            with torch.no_grad():
                y = model.generate(
                    prompt,
                    attention_mask=torch.ones_like(prompt),
                    do_sample=True,
                    temperature=1.0,
                    top_k=0,
                    top_p=1.0,
                    max_new_tokens=n,
                    min_new_tokens=n,
                    pad_token_id=tok.eos_token_id,
                    use_cache=True,
                )
            assert y.shape == (args.sample_batch, 1 + n), y.shape
            return time.perf_counter() - start

        run()
        times = [run() for _ in range(3)]
        out.update(
            sample_batch=args.sample_batch,
            sample_new_tokens=args.sample_batch * n,
            sample_tokens_per_s=args.sample_batch * n / statistics.median(times),
            sample_peak_rss_bytes=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        )
    print(json.dumps(out))


if __name__ == "__main__":
    main()
