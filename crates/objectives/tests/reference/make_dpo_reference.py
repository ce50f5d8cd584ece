"""Reference values for the DPO family, from TRL itself.

Runs `trl.DPOTrainer._compute_loss` (TRL 1.16) on fixed random per-token log-probs, with a
stand-in model whose output *is* those log-probs (a leaf tensor), precomputed reference
log-probs, and a stand-in accelerator; autograd gives the gradient with respect to each
token's log-prob, whose negation is the token weight autodidact's `dpo` must return.
TRL 1.16's `sigmoid` has no label smoothing; the cDPO form (ε > 0) is computed from its
formula, −(1−ε)·logσ(βΔ) − ε·logσ(−βΔ), in the same script.

    python3 -m venv /root/torchref && /root/torchref/bin/pip install torch trl
    /root/torchref/bin/python make_dpo_reference.py > ../fixtures/dpo_reference.json
"""
import json
from collections import defaultdict
from types import SimpleNamespace

import torch
import torch.nn.functional as F
import trl
from trl.trainer.dpo_trainer import DPOTrainer

torch.manual_seed(0)
P, L = 4, 6  # pairs, longest completion
lens = torch.tensor([3, 6, 4, 2, 5, 1, 6, 4])  # chosen rows 0..3, rejected rows 4..7
logps = -3.0 * torch.rand(2 * P, L, dtype=torch.float64)
mask = (torch.arange(L)[None, :] < lens[:, None]).double()
logps = logps * mask
ref = logps.sum(1) + 0.5 * torch.randn(2 * P, dtype=torch.float64)


class Accel:
    device = "cpu"

    def gather(self, x):
        return x

    gather_for_metrics = gather


def run(loss_type, beta, eps):
    leaf = logps.clone().requires_grad_(True)

    def model(**kw):
        return SimpleNamespace(
            log_probs=leaf,
            entropy=torch.zeros(2 * P, L, dtype=torch.float64),
            mean_logits=torch.zeros(2 * P, L, dtype=torch.float64),
            is_top1=torch.zeros(2 * P, L, dtype=torch.bool),
        )

    model.training = True
    me = SimpleNamespace(
        model=model, accelerator=Accel(), aux_loss_enabled=False, ld_alpha=None,
        precompute_ref_logps=True, f_divergence_type="reverse_kl", loss_types=[loss_type],
        loss_weights=[1.0], beta=beta, label_smoothing=eps, use_weighting=False,
        _metrics={"train": defaultdict(list)}, _total_train_tokens=0, _tp_size=1,
    )
    # completion_mask covers positions 1..L of an (L+1)-token sequence (the shifted mask).
    cm = torch.cat([torch.zeros(2 * P, 1, dtype=torch.long), mask.long()], dim=1)
    inputs = {
        "input_ids": torch.zeros(2 * P, L + 1, dtype=torch.long),
        "attention_mask": torch.ones(2 * P, L + 1, dtype=torch.long),
        "completion_mask": cm,
        "ref_chosen_logps": ref[:P],
        "ref_rejected_logps": ref[P:],
    }
    loss = DPOTrainer._compute_loss(me, model, inputs, False)
    loss.backward()
    w = (-leaf.grad * mask).tolist()
    m = {k: v[-1] for k, v in me._metrics["train"].items() if k.startswith(("rewards/", "logps/"))}
    return loss.item(), w, m


def cdpo(beta, eps):
    leaf = logps.clone().requires_grad_(True)
    s = leaf.sum(1) - ref
    d = s[:P] - s[P:]
    loss = (-(1 - eps) * F.logsigmoid(beta * d) - eps * F.logsigmoid(-beta * d)).mean()
    loss.backward()
    return loss.item(), (-leaf.grad * mask).tolist()


cases = []
for loss_type in ["sigmoid", "robust", "hinge", "ipo", "sppo_hard", "nca_pair", "bco_pair", "apo_zero"]:
    for beta in [0.1, 0.5]:
        eps = 0.1 if loss_type == "robust" else 0.0
        loss, w, m = run(loss_type, beta, eps)
        cases.append({"loss_type": loss_type, "beta": beta, "label_smoothing": eps,
                      "loss": loss, "weights": w, "metrics": m})
loss, w = cdpo(0.1, 0.2)
cases.append({"loss_type": "sigmoid", "beta": 0.1, "label_smoothing": 0.2, "loss": loss,
              "weights": w, "metrics": None})

rows = [row[: int(n)] for row, n in zip(logps.tolist(), lens.tolist())]
print(json.dumps({
    "trl_version": trl.__version__,
    "chosen": rows[:P], "rejected": rows[P:],
    "ref_chosen": ref[:P].tolist(), "ref_rejected": ref[P:].tolist(),
    "cases": cases,
}, indent=1))
