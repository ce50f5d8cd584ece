#!/usr/bin/env python3
"""llama.cpp reference for the sampling row of `autodidact bench --checkpoint DIR`: the same
model, from the GGUF file it was imported from, through llama-cpp-python.

Workload as `autodidact bench` samples: `--sample-batch` rows, each from a one-token prompt (the
model's BOS, else a newline), exactly `--new-tokens` new tokens (no stop), temperature 1, one
KV cache holding every row as its own sequence, all rows decoded together in one batch per
step (llama.cpp's batched decoding, as its `batched` example does). Token choice is a
multinomial draw from the softmax of each row's logits, done in numpy. Prints one JSON object
with `sample_tokens_per_s` and `sample_peak_rss_bytes`, the median of 3 batches after one
warm-up.

Note the weights: llama.cpp runs the GGUF's own quantized tensors (SmolLM2's are Q4_1 and
Q8_0), so it reads a quarter of the bytes autodidact and transformers read in float32; it
computes a slightly different model.

Usage: python bench/llama_cpp_reference.py --gguf FILE.gguf [--sample-batch 64]
           [--new-tokens 64] [--threads 2]
Needs: llama-cpp-python (built from source: PyPI has no wheel), numpy.
"""
import argparse
import json
import os
import resource
import statistics
import time

import llama_cpp
import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--gguf", required=True)
    ap.add_argument("--sample-batch", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    rows, n = args.sample_batch, args.new_tokens
    # The high-level Llama object loads the model; the context is made here, since
    # llama-cpp-python's constructor does not pass n_seq_max (one KV cache sequence per row).
    llm = llama_cpp.Llama(
        model_path=args.gguf,
        n_ctx=64,
        n_threads=args.threads,
        verbose=bool(os.environ.get("VERBOSE")),
    )
    cparams = llama_cpp.llama_context_default_params()
    cparams.n_ctx = rows * (n + 2)
    cparams.n_batch = cparams.n_ubatch = max(rows, 64)
    cparams.n_seq_max = rows
    cparams.n_threads = cparams.n_threads_batch = args.threads
    ctx = llama_cpp.llama_init_from_model(llm.model, cparams)
    if not ctx:
        raise RuntimeError("llama_init_from_model failed")
    vocab = llm.n_vocab()
    bos = llm.token_bos()
    first = bos if bos >= 0 else llm.tokenize(b"\n", add_bos=False, special=False)[0]
    rng = np.random.default_rng(0)
    batch = llama_cpp.llama_batch_init(rows, 0, rows)

    def fill(tokens, pos):
        batch.n_tokens = rows
        for i, t in enumerate(tokens):
            batch.token[i] = int(t)
            batch.pos[i] = pos
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = i
            batch.logits[i] = True

    def run() -> float:
        llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(ctx), True)
        start = time.perf_counter()
        tokens = [first] * rows
        for pos in range(n):
            fill(tokens, pos)
            rc = llama_cpp.llama_decode(ctx, batch)
            if rc != 0:
                raise RuntimeError(f"llama_decode returned {rc} at position {pos}")
            logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits(ctx), shape=(rows * vocab,))
            z = logits.reshape(rows, vocab).astype(np.float64)
            p = np.exp(z - z.max(axis=1, keepdims=True))
            p /= p.sum(axis=1, keepdims=True)
            u = rng.random((rows, 1))
            tokens = (p.cumsum(axis=1) < u).sum(axis=1).clip(0, vocab - 1)
        return time.perf_counter() - start

    run()
    times = [run() for _ in range(3)]
    print(json.dumps({
        "gguf": args.gguf,
        "threads": args.threads,
        "llama_cpp_python_version": llama_cpp.__version__,
        "sample_batch": rows,
        "sample_new_tokens": rows * n,
        "sample_tokens_per_s": rows * n / statistics.median(times),
        "sample_peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }))


if __name__ == "__main__":
    main()
