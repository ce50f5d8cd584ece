"""Policy-gradient steps of an autodidact training job (objective `pg`): the clipped
surrogate over pre-computed advantages, on TRL's log-prob and entropy utilities.

    accelerate launch integrations/trl/pg.py --config {config}

A policy-gradient round (grpo, rloo, reinforce) trained externally is one job per rollout
step. autodidact samples the step's completions, scores them with the verifier, turns the
rewards into advantages, and writes them with the tokens as sampled and the sampling
log-probs (`prompt`, `completion`, `reward`, `advantage`, `completion_ids`,
`old_logprobs`). The job's `plan` says which lines each optimizer step trains (its
minibatches over `num_iterations` passes), the surrogate's settings and where the step
sits in the run's learning-rate schedule; `reference` names the checkpoint of the KL term,
`optimizer_state` the checkpoint whose AdamW state the steps continue.

Per completion token, with ratio = exp(log p − old log p) and A the advantage (the
completion's, or the token's own when the line has `token_advantages`):
    loss_t = −min(ratio·A, clip(ratio, 1 − ε_low, 1 + ε_high)·A) + β·k(log p − ref log p)
(β is the line's `kl_coef` when the lines have one, else the surrogate's `beta`)
aggregated over each optimizer step's completions as `token` (TRL's `dapo`), `sequence`
(`grpo`) or `constant` (`dr_grpo`); minus `entropy_coef` × the mean token entropy; plus
`sft_coef` × the token-mean NLL of the step's `anchors` (verifier-correct completions).
This is TRL's `GRPOTrainer._compute_loss` for those loss types, with the KL estimator
selectable (k1, k2, k3; TRL's is k3) and no vLLM importance correction: the samples'
log-probs are the old policy's, as autodidact's own trainer takes them.

Why not `GRPOTrainer` itself: it samples its own completions and computes its own
advantages; here both come from autodidact (its verifiers, groups and curation). The
loop below is the part of it that remains.

With several processes each optimizer step's completions are split across them, and the
loss is normalized by the step's global counts, so the update is the same. The optimizer
state is saved as `optimizer.pt` (PyTorch's AdamW state) beside the weights; under
DeepSpeed ZeRO or FSDP it is sharded and this script does not carry it between steps (a
fresh AdamW per step): train with DDP, or natively, when that matters.
"""

import json
import math
import os
import sys

import torch
from accelerate import Accelerator, DistributedType
from transformers import AutoModelForCausalLM
from trl.trainer.utils import entropy_from_logits, selective_log_softmax

from common import adamw, examples, load, read_job, schedule

OPTIMIZER_FILE = "optimizer.pt"


def main():
    train(read_job(sys.argv))


def kl(d, estimator):
    """A per-token estimate of KL(π‖π_ref) from d = log p − ref log p."""
    if estimator == "k1":
        return d
    if estimator == "k2":
        return 0.5 * d * d
    return torch.exp(-d) + d - 1.0


class Scorer:
    """Log-probs (and entropies) of given completion tokens after their prompts."""

    def __init__(self, tok, lines, device):
        self.device = device
        self.pad = tok.pad_token_id
        # `<bos>` and whatever else the tokenizer adds before a prompt, as autodidact does.
        self.prompts = [tok(l["prompt"])["input_ids"] for l in lines]
        self.completions = [l["completion_ids"] for l in lines]

    def __call__(self, model, rows, entropy=False):
        seqs = [self.prompts[i] + self.completions[i] for i in rows]
        width = max(len(s) for s in seqs)
        ids = torch.full((len(rows), width), self.pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for j, s in enumerate(seqs):
            ids[j, : len(s)] = torch.tensor(s)
            mask[j, : len(s)] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        logits = model(input_ids=ids, attention_mask=mask).logits
        out = []
        for j, i in enumerate(rows):
            p, c = len(self.prompts[i]), len(self.completions[i])
            # The logits at position t predict token t + 1.
            row = logits[j, p - 1 : p + c - 1].float()
            lp = selective_log_softmax(row, ids[j, p : p + c])
            out.append((lp, entropy_from_logits(row) if entropy else None))
        return out


def train(job):
    if job["objective"] != "pg":
        sys.exit(f"pg.py trains pg jobs; this one is {job['objective']} (use train.py)")
    plan, o = job["plan"], job["optimizer"]
    s = plan["surrogate"]
    acc = Accelerator(cpu=not torch.cuda.is_available())
    world, rank = acc.num_processes, acc.process_index
    torch.manual_seed(job["seed"] % 2**32)
    model, tok = load(job)
    lines = examples(job["data"])
    # The surrogate's completions need a sampling log-prob per token.
    for i in sorted({i for u in plan["updates"] for i in u["rows"]}):
        l = lines[i]
        if len(l["completion_ids"]) == 0 or len(l["completion_ids"]) != len(l["old_logprobs"]):
            sys.exit(f"{job['data']}: line {i + 1}: completion_ids and old_logprobs must be as long as each other, and not empty")
    score = Scorer(tok, lines, acc.device)
    model.to(acc.device)

    # A line's own KL coefficient (`kl_coef`, on every line or on none) replaces `beta`.
    with_coef = sum("kl_coef" in l for l in lines)
    if with_coef not in (0, len(lines)):
        sys.exit(f"{job['data']}: {with_coef} of {len(lines)} lines have a kl_coef; give it on every line or on none")
    betas = [float(l["kl_coef"]) if with_coef else float(s["beta"]) for l in lines]
    if any(not (b >= 0 and math.isfinite(b)) for b in betas):
        sys.exit(f"{job['data']}: a kl_coef must be a finite number >= 0")
    refs = None
    if any(b > 0 for b in betas):
        if not job.get("reference"):
            sys.exit("the job's loss has a KL term (plan.surrogate.beta > 0, or a line's kl_coef > 0) but names no reference checkpoint")
        ref = model if job["reference"] == job["model"] else AutoModelForCausalLM.from_pretrained(job["reference"], dtype=model.dtype).to(acc.device)
        ref.eval()
        with torch.no_grad():
            refs = {}
            for start in range(0, len(lines), plan["micro_batch_size"]):
                rows = list(range(start, min(start + plan["micro_batch_size"], len(lines))))
                for i, (lp, _) in zip(rows, score(ref, rows)):
                    refs[i] = lp.detach()
        if ref is not model:
            del ref

    opt = adamw(job, model)
    factor = schedule(job, plan["schedule_total"])
    # DeepSpeed and FSDP shard the optimizer's state: it is not carried between steps here.
    carried = acc.distributed_type not in (DistributedType.DEEPSPEED, DistributedType.FSDP)
    state = job.get("optimizer_state") if carried else None
    if not carried:
        acc.print(f"{acc.distributed_type}: AdamW's state is not carried between steps (it starts afresh)")
    if state and os.path.exists(os.path.join(state, OPTIMIZER_FILE)):
        opt.load_state_dict(torch.load(os.path.join(state, OPTIMIZER_FILE), map_location=acc.device))
    elif state:
        acc.print(f"{state} holds no {OPTIMIZER_FILE}: AdamW starts afresh")
    model.train()
    model, opt = acc.prepare(model, opt)

    lo, hi = 1 - s["epsilon_low"], 1 + s["epsilon_high"]
    old = [torch.tensor(l["old_logprobs"], dtype=torch.float32, device=acc.device) for l in lines]
    # Step-level credit gives an advantage per completion token (`token_advantages`).
    def advantage(i, l):
        t = l.get("token_advantages")
        if t is None:
            return float(l["advantage"])
        if len(t) != len(l["completion_ids"]):
            sys.exit(f"{job['data']}: line {i + 1}: {len(t)} token_advantages for {len(l['completion_ids'])} completion_ids")
        return torch.tensor(t, dtype=torch.float32, device=acc.device)

    adv = [advantage(i, l) for i, l in enumerate(lines)]
    first = [u for u in plan["updates"] if u["pass"] == 0]
    sums = dict.fromkeys(["loss", "sft_loss", "grad_norm", "tokens", "clipped_low", "clipped_high", "kl", "entropy"], 0.0)
    micro = plan["micro_batch_size"]
    for k, u in enumerate(plan["updates"]):
        counted = u["pass"] == 0
        rows, anchors = u["rows"], u.get("anchors", [])
        # The step's global counts normalize every process's share.
        tokens = sum(len(old[i]) for i in rows)
        anchor_tokens = sum(len(old[i]) for i in anchors)
        mine = rows[rank::world]
        # Gradients are averaged over processes: each process's share is scaled by `world`.
        if anchors and plan["sft_coef"] > 0:
            share = anchors[rank::world]
            for start in range(0, len(share), micro):
                part = share[start : start + micro]
                nll = -sum(lp.sum() for lp, _ in score(model, part)) / max(anchor_tokens, 1)
                acc.backward(plan["sft_coef"] * nll * world)
                if counted:
                    sums["sft_loss"] += nll.item() / len(first)
        for start in range(0, len(mine), micro):
            part = mine[start : start + micro]
            loss = 0.0
            for i, (lp, h) in zip(part, score(model, part, entropy=True)):
                ratio = torch.exp(lp - old[i])
                a = adv[i]
                per_token = -torch.min(ratio * a, torch.clamp(ratio, lo, hi) * a)
                if betas[i] > 0:
                    k_t = kl(lp - refs[i], s["kl_estimator"])
                    per_token = per_token + betas[i] * k_t
                    if counted:
                        sums["kl"] += k_t.sum().item()
                if s["aggregation"] == "token":
                    w = 1.0 / max(tokens, 1)
                elif s["aggregation"] == "sequence":
                    w = 1.0 / (len(rows) * len(lp))
                else:
                    w = 1.0 / (len(rows) * plan["max_new_tokens"])
                loss = loss + w * per_token.sum() - s["entropy_coef"] * h.sum() / max(tokens, 1)
                if counted:
                    r = ratio.detach()
                    sums["clipped_low"] += ((r < lo) & (a < 0)).sum().item()
                    sums["clipped_high"] += ((r > hi) & (a > 0)).sum().item()
                    sums["entropy"] += h.sum().item()
                    sums["tokens"] += len(lp)
            acc.backward(loss * world)
            if counted:
                sums["loss"] += loss.item() / len(first)
        norm = acc.clip_grad_norm_(model.parameters(), o["max_grad_norm"] if o["max_grad_norm"] > 0 else float("inf"))
        sums["grad_norm"] += float(norm) / len(plan["updates"])
        for g in opt.param_groups:
            g["lr"] = o["lr"] * factor(plan["schedule_first"] + k)
        opt.step()
        opt.zero_grad(set_to_none=True)
        acc.print(f"update {k + 1}/{len(plan['updates'])}: pass {u['pass']}, {len(rows)} completions, lr {opt.param_groups[0]['lr']:.3g}, grad norm {float(norm):.4f}")

    # Each process summed its share; the report holds the step's totals.
    keys = ["loss", "sft_loss", "tokens", "clipped_low", "clipped_high", "kl", "entropy"]
    totals = acc.reduce(torch.tensor([sums[k] for k in keys], dtype=torch.float64, device=acc.device), "sum")
    sums.update(zip(keys, totals.tolist()))
    acc.wait_for_everyone()
    if acc.is_main_process:
        out = job["output"]
        acc.unwrap_model(model).save_pretrained(out)
        tok.save_pretrained(out)
        if carried:
            torch.save(opt.state_dict(), os.path.join(out, OPTIMIZER_FILE))
        report = {
            "losses": [sums["loss"]],
            "stats": {
                "examples": len(lines),
                "steps": len(plan["updates"]),
                "tokens": int(sums["tokens"]),
                "first_loss": sums["loss"],
                "last_loss": sums["loss"],
            },
            "metrics": {
                "pg/loss": sums["loss"],
                "pg/sft_loss": sums["sft_loss"],
                "pg/grad_norm": sums["grad_norm"],
                "pg/tokens": sums["tokens"],
                "pg/clipped_low": sums["clipped_low"],
                "pg/clipped_high": sums["clipped_high"],
                "pg/kl_sum": sums["kl"],
                "pg/entropy_sum": sums["entropy"],
            },
        }
        if job.get("stats"):
            with open(job["stats"], "w") as f:
                json.dump(report, f, indent=2)
        print(f"{len(plan['updates'])} updates on {len(lines)} completions, loss {sums['loss']:.4f}")


if __name__ == "__main__":
    main()
