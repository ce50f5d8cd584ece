#!/usr/bin/env python3
"""PyTorch reference for `autodidact bench`: the identical model and workload in PyTorch eager.

Same architecture (Llama: RMSNorm, rotary "rotate_half" positions, SwiGLU, causal attention via
scaled_dot_product_attention, tied embeddings, no biases), same presets, same initialization
scheme (N(0, 0.02²) for matrices and the embedding, ones for norms), same training step
(mean next-token cross-entropy on random tokens, AdamW lr 1e-3 with weight decay 0.01 on
matrices only, global-norm clipping at 1.0), same sampling workload (one-token prompts,
temperature 1, KV cache, until the context is full), timed the same way (median step time after
3 warm-up steps, median of 5 sampling batches after one warm-up). Prints the same figures as
`autodidact bench`, one JSON object per preset with --json.

Usage: python bench/torch_reference.py [--preset small] [--threads 2] [--json]
Needs: torch (any 2.x with F.rms_norm, i.e. ≥ 2.4).
"""
import argparse
import json
import math
import resource
import statistics
import time

import torch
import torch.nn.functional as F

PRESETS = {
    # name: (hidden, layers, heads, intermediate, context)
    "tiny": (64, 4, 4, 176, 64),
    "small": (128, 4, 4, 352, 64),
    "base": (256, 6, 8, 688, 128),
}


class Block(torch.nn.Module):
    def __init__(self, c, h, f, eps):
        super().__init__()
        self.h, self.eps = h, eps
        self.attn_norm = torch.nn.Parameter(torch.ones(c))
        self.wqkv = torch.nn.Linear(c, 3 * c, bias=False)
        self.wo = torch.nn.Linear(c, c, bias=False)
        self.mlp_norm = torch.nn.Parameter(torch.ones(c))
        self.wgu = torch.nn.Linear(c, 2 * f, bias=False)
        self.wdown = torch.nn.Linear(f, c, bias=False)

    def forward(self, x, cos, sin, cache=None, pos=None):
        b, t, c = x.shape
        d = c // self.h
        hx = F.rms_norm(x, (c,), self.attn_norm, self.eps)
        q, k, v = self.wqkv(hx).view(b, t, 3, self.h, d).permute(2, 0, 3, 1, 4)  # each (B, H, T, D)
        q, k = rope(q, cos, sin), rope(k, cos, sin)
        if cache is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            kc, vc = cache
            kc[:, :, pos : pos + t] = k
            vc[:, :, pos : pos + t] = v
            y = F.scaled_dot_product_attention(q, kc[:, :, : pos + t], vc[:, :, : pos + t], is_causal=(t > 1))
        x = x + self.wo(y.transpose(1, 2).reshape(b, t, c))
        g, u = self.wgu(F.rms_norm(x, (c,), self.mlp_norm, self.eps)).chunk(2, dim=-1)
        return x + self.wdown(F.silu(g) * u)


def rope(x, cos, sin):
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


class Model(torch.nn.Module):
    def __init__(self, vocab, c, layers, h, f, ctx, theta=10000.0, eps=1e-5):
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, c)
        self.blocks = torch.nn.ModuleList(Block(c, h, f, eps) for _ in range(layers))
        self.norm = torch.nn.Parameter(torch.ones(c))
        self.eps, self.c, self.h = eps, c, h
        d = c // h
        inv = 1.0 / theta ** (torch.arange(0, d, 2).float() / d)
        ang = torch.arange(ctx).float()[:, None] * inv[None, :]
        emb = torch.cat((ang, ang), dim=-1)
        self.register_buffer("cos", emb.cos(), persistent=False)
        self.register_buffer("sin", emb.sin(), persistent=False)
        for p in self.parameters():
            if p.dim() == 2:
                torch.nn.init.normal_(p, 0.0, 0.02)

    def forward(self, idx, caches=None, pos=0):
        t = idx.shape[1]
        cos, sin = self.cos[pos : pos + t], self.sin[pos : pos + t]
        x = self.embed(idx)
        for i, blk in enumerate(self.blocks):
            x = blk(x, cos, sin, None if caches is None else caches[i], pos)
        x = F.rms_norm(x, (self.c,), self.norm, self.eps)
        return x @ self.embed.weight.T  # tied output head


def gemm_peak():
    n = 2048
    a, b = torch.ones(n, n), torch.full((n, n), 0.5)
    best = math.inf
    for _ in range(5):
        s = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - s)
    return 2 * n**3 / best


def measure(preset, args):
    torch.manual_seed(0)
    c, layers, h, f, ctx = PRESETS[preset]
    model = Model(args.vocab, c, layers, h, f, ctx)
    params = sum(p.numel() for p in model.parameters())
    b, t = args.batch, ctx
    data = torch.randint(0, args.vocab, (b, t + 1))
    x, y = data[:, :-1], data[:, 1:]
    decay = [p for p in model.parameters() if p.dim() == 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}], lr=1e-3
    )
    warmup = 3
    step_s = []
    for step in range(warmup + args.steps):
        start = time.perf_counter()
        logits = model(x)
        loss = F.cross_entropy(logits.reshape(-1, args.vocab), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step >= warmup:
            step_s.append(time.perf_counter() - start)
    train_tps = b * t / statistics.median(step_s)

    @torch.inference_mode()
    def sample():
        d = c // h
        caches = [(torch.zeros(b, h, ctx, d), torch.zeros(b, h, ctx, d)) for _ in range(layers)]
        tok = torch.ones(b, 1, dtype=torch.long)
        out = []
        for pos in range(ctx - 1):
            logits = model(tok, caches, pos)[:, -1]
            tok = torch.multinomial(torch.softmax(logits, dim=-1), 1)
            out.append(tok)
        return b * len(out)

    sample()  # warm-up
    rep_s = []
    for _ in range(5):
        s = time.perf_counter()
        n = sample()
        rep_s.append(time.perf_counter() - s)
    sample_tps = n / statistics.median(rep_s)
    # Read before the GEMM measurement, as autodidact bench does.
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {
        "preset": preset,
        "params": params,
        "threads": torch.get_num_threads(),
        "batch": b,
        "seq_len": t,
        "train_steps": args.steps,
        "train_tokens_per_s": train_tps,
        "train_flops_per_s": 6 * params * train_tps,
        "final_loss": loss.item(),
        "sample_new_tokens": n,
        "sample_tokens_per_s": sample_tps,
        "gemm_peak_flops_per_s": gemm_peak(),
        "peak_rss_bytes": peak_rss,
        "torch_version": torch.__version__,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", choices=list(PRESETS), default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--vocab", type=int, default=32)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    for p in [args.preset] if args.preset else list(PRESETS):
        r = measure(p, args)
        if args.json:
            print(json.dumps(r), flush=True)
        else:
            print(
                f"{p:<6} {r['params']:>9} params  train {r['train_tokens_per_s']:>8.0f} tok/s "
                f"({r['train_flops_per_s'] / 1e9:5.1f} GFLOP/s, loss {r['final_loss']:.3f})  "
                f"sample {r['sample_tokens_per_s']:>8.0f} tok/s  peak RSS {r['peak_rss_bytes'] / 2**20:.0f} MiB  "
                f"GEMM peak {r['gemm_peak_flops_per_s'] / 1e9:.0f} GFLOP/s  [torch {r['torch_version']}]",
                flush=True,
            )


if __name__ == "__main__":
    main()
