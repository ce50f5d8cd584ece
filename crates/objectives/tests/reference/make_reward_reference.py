"""Reference values for the reward-model objectives (crates/objectives/tests/reward_reference.rs).

Bradley–Terry exactly as TRL 1.16's `RewardTrainer.compute_loss` computes it
(trl/trainer/reward_trainer.py: `-logsigmoid(r_chosen - r_rejected - margin).mean()`, plus
`center_rewards_coefficient * mean((r_chosen + r_rejected) ** 2)`), and the outcome loss as
PyTorch's `binary_cross_entropy_with_logits` (mean), on fixed random scores; gradients with
respect to the scores by autograd. Writes ../fixtures/reward_reference.json.

    python -m venv venv && venv/bin/pip install torch trl
    venv/bin/python make_reward_reference.py
"""
import inspect
import json
import os

import torch
import torch.nn.functional as F
from trl import RewardTrainer

torch.manual_seed(0)
torch.set_default_dtype(torch.float64)

# The formula below is TRL's: fail loudly if the installed TRL computes something else.
source = inspect.getsource(RewardTrainer.compute_loss)
assert "-nn.functional.logsigmoid(rewards_chosen - rewards_rejected - inputs[\"margin\"]).mean()" in source
assert "center_rewards_coefficient * torch.mean((rewards_chosen + rewards_rejected) ** 2)" in source

N = 7
chosen = (torch.randn(N) * 2).float().double()
rejected = (torch.randn(N) * 2).float().double()
margin = torch.rand(N).float().double()
CENTER = 0.01


def bt(c, r, m, center):
    loss = -F.logsigmoid(c - r - m).mean()
    if center is not None:
        loss = loss + center * torch.mean((c + r) ** 2)
    return loss


out = {"chosen": chosen.tolist(), "rejected": rejected.tolist(), "margin": margin.tolist(), "center": CENTER}
for name, m, center in [("plain", torch.zeros(N), None), ("margin_center", margin, CENTER)]:
    c = chosen.clone().requires_grad_(True)
    r = rejected.clone().requires_grad_(True)
    loss = bt(c, r, m, center)
    loss.backward()
    out[name] = {
        "loss": loss.item(),
        "grad_chosen": c.grad.tolist(),
        "grad_rejected": r.grad.tolist(),
        "accuracy": (chosen > rejected).double().mean().item(),
        "margin": (chosen - rejected).mean().item(),
    }

scores = (torch.randn(N) * 3).float().double()
labels = torch.tensor([1.0, 0.0, 1.0, 0.25, 0.0, 1.0, 0.8])
s = scores.clone().requires_grad_(True)
loss = F.binary_cross_entropy_with_logits(s, labels)
loss.backward()
out["bce"] = {"scores": scores.tolist(), "labels": labels.tolist(), "loss": loss.item(), "grad": s.grad.tolist()}

path = os.path.join(os.path.dirname(__file__), "..", "fixtures", "reward_reference.json")
with open(path, "w") as f:
    json.dump(out, f, indent=1)
print("wrote", path)
