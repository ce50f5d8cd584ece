"""Reference values for the policy-gradient objectives (crates/objectives/tests/pg_reference.rs).

Computes advantages and the GRPO-family loss exactly as TRL 1.16's GRPOTrainer does
(trl/trainer/grpo_trainer.py: `_generate_and_score_completions` for advantages with
`multi_objective_aggregation="sum_then_normalize"`, `_compute_loss` for the loss with
`importance_sampling_level="token"`), using TRL's own `nanstd`, on fixed random arrays, and
the gradient of the loss with respect to the per-token log-probs and entropies by autograd.
RLOO / REINFORCE advantages and the k1 / k2 KL estimators (TRL only has k3) follow their
formulas. Writes ../fixtures/pg_reference.json.

    python -m venv venv && venv/bin/pip install torch trl
    venv/bin/python make_pg_reference.py
"""
import json
import os

import torch
import trl
from trl.trainer.utils import nanstd

torch.manual_seed(0)
torch.set_default_dtype(torch.float64)

G = 3  # completions per prompt
B = 6  # sequences (two groups)
T = 7  # padded length
MAX_COMPLETION_LENGTH = 8  # TRL's max_completion_length (Dr. GRPO's constant)
lengths = [7, 3, 5, 1, 6, 4]
mask = torch.zeros(B, T)
for i, n in enumerate(lengths):
    mask[i, :n] = 1.0

logps = -torch.rand(B, T) * 2.0 - 0.05
old = logps + (torch.rand(B, T) - 0.5) * 0.8  # ratios both inside and outside the clip range
ref = logps + (torch.rand(B, T) - 0.5) * 1.0
entropies = torch.rand(B, T) * 2.0
rewards = torch.tensor([1.0, 0.0, 1.0, 0.5, 0.5, 0.5])  # second group: zero spread


def trl_advantages(rewards, scale_rewards):
    mean_grouped = torch.nanmean(rewards.view(-1, G), dim=1).repeat_interleave(G, dim=0)
    if scale_rewards in ["group", "none"]:
        std_rewards = nanstd(rewards.view(-1, G), dim=1).repeat_interleave(G, dim=0)
    else:
        std_rewards = nanstd(rewards).expand_as(rewards)
    adv = rewards - mean_grouped
    if scale_rewards != "none":
        adv = adv / (std_rewards + 1e-4)
    return adv


def rloo(rewards):
    r = rewards.view(-1, G)
    return ((r - (r.sum(1, keepdim=True) - r) / (G - 1))).view(-1)


def kl(estimator, lp, rp):
    d = lp - rp
    if estimator == "k1":
        return d
    if estimator == "k2":
        return 0.5 * d * d
    # TRL's expression, verbatim.
    return torch.exp(rp - lp) - (rp - lp) - 1


def trl_loss(loss_type, advantages, eps_low, eps_high, beta, estimator, entropy_coef):
    per_token_logps = logps.clone().requires_grad_(True)
    ent = entropies.clone().requires_grad_(True)
    adv = advantages.unsqueeze(1)
    coef_1 = torch.exp(per_token_logps - old)
    coef_2 = torch.clamp(coef_1, 1 - eps_low, 1 + eps_high)
    per_token_loss = -torch.min(coef_1 * adv, coef_2 * adv)
    if beta != 0.0:
        per_token_loss = per_token_loss + beta * kl(estimator, per_token_logps, ref)
    if loss_type == "grpo":
        loss = ((per_token_loss * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()
    elif loss_type == "dr_grpo":
        loss = (per_token_loss * mask).sum() / (per_token_loss.size(0) * MAX_COMPLETION_LENGTH)
    else:  # dapo: num_items_in_batch = completion tokens of the batch
        loss = (per_token_loss * mask).sum() / mask.sum()
    if entropy_coef != 0.0:
        loss = loss - entropy_coef * (ent * mask).sum() / mask.sum().clamp(min=1.0)
    loss.backward()
    low = ((coef_1 < 1 - eps_low) & (adv < 0)).double()
    high = ((coef_1 > 1 + eps_high) & (adv > 0)).double()
    rows = lambda x: [x[i, :n].tolist() for i, n in enumerate(lengths)]
    return {
        "loss": loss.item(),
        "weights": rows(-per_token_logps.grad),
        "entropy_coefs": rows(-ent.grad) if entropy_coef != 0.0 else None,
        "clipped_low": int((low * mask).sum().item()),
        "clipped_high": int((high * mask).sum().item()),
        "kl_sum": (kl(estimator, logps, ref) * mask).sum().item() if beta != 0.0 else 0.0,
    }


adv_grpo = trl_advantages(rewards, "group")
cases = []
for loss_type, aggregation in [("dapo", "token"), ("grpo", "sequence"), ("dr_grpo", "constant")]:
    for beta, estimator, entropy_coef in [(0.0, "k3", 0.0), (0.04, "k3", 0.01), (0.1, "k1", 0.0), (0.1, "k2", 0.02)]:
        out = trl_loss(loss_type, adv_grpo, 0.2, 0.28, beta, estimator, entropy_coef)
        out.update(aggregation=aggregation, beta=beta, kl_estimator=estimator, entropy_coef=entropy_coef,
                   epsilon_low=0.2, epsilon_high=0.28)
        cases.append(out)

rows = lambda x: [x[i, :n].tolist() for i, n in enumerate(lengths)]
fixture = {
    "generator": f"make_pg_reference.py, torch {torch.__version__}, trl {trl.__version__}",
    "group_size": G,
    "max_completion_length": MAX_COMPLETION_LENGTH,
    "rewards": rewards.tolist(),
    "logprobs": rows(logps),
    "old_logprobs": rows(old),
    "ref_logprobs": rows(ref),
    "entropies": rows(entropies),
    "advantages": {
        "grpo_group": adv_grpo.tolist(),
        "grpo_batch": trl_advantages(rewards, "batch").tolist(),
        "grpo_none": trl_advantages(rewards, "none").tolist(),
        "rloo": rloo(rewards).tolist(),
        "reinforce": (rewards - rewards.mean()).tolist(),
    },
    "cases": cases,
}
here = os.path.dirname(os.path.abspath(__file__))
with open(os.path.join(here, "..", "fixtures", "pg_reference.json"), "w") as f:
    json.dump(fixture, f, indent=1)
print("wrote", len(cases), "cases")
