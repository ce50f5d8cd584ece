"""How a self-correction run's model reviews slips it did not make: for each held-out addition
problem of a round's `eval-episodes.jsonl`, the worked solution with one digit changed is
given as the first attempt, and the model's greedy second attempt is graded. Printed beside
the same round's own episodes (first attempts the model wrote), this separates "cannot
correct" from "does not correct its own errors".

    /work/refvenv/bin/python scripts/review-probe.py RUN_DIR [ROUND] [SEED]

Needs torch and transformers (the run's checkpoints load as Llama models).
"""

import json
import random
import sys

import torch
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast


def solution(a, b):
    """The built-in addition task's worked solution (crates/tasks/src/addition.rs)."""
    da, db = str(a)[::-1], str(b)[::-1]
    carry, cols = 0, []
    for i in range(max(len(da), len(db))):
        x = int(da[i]) if i < len(da) else 0
        y = int(db[i]) if i < len(db) else 0
        s = x + y + carry
        cols.append(f"{x}+{y}+{carry}={s:02d}")
        carry = s // 10
    return ";".join(cols) + f"#{a + b}"


def corrupt(text, rng):
    """One digit changed, as the seed stage's corrupted first attempts are."""
    at = rng.choice([i for i, c in enumerate(text) if c.isdigit()])
    new = (int(text[at]) + 1 + rng.randrange(9)) % 10
    return text[:at] + str(new) + text[at + 1 :]


def answer(text):
    return text.rsplit("#", 1)[-1] if "#" in text else None


def main():
    run = sys.argv[1]
    rnd = int(sys.argv[2]) if len(sys.argv) > 2 else 0
    rng = random.Random(int(sys.argv[3]) if len(sys.argv) > 3 else 0)
    ck = f"{run}/checkpoints/r{rnd:04d}"
    tok = PreTrainedTokenizerFast(tokenizer_file=f"{ck}/tokenizer.json")
    model = AutoModelForCausalLM.from_pretrained(ck).eval()
    episodes = [json.loads(l) for l in open(f"{run}/rounds/r{rnd:04d}/eval-episodes.jsonl")]
    wrong = fixed = kept = 0
    for e in episodes:
        a, b = map(int, e["problem_id"].split(":")[1].split("+"))
        bad = corrupt(solution(a, b), rng)
        if answer(bad) == str(a + b):
            continue  # the slip left the answer right (a column digit only)
        ids = tok(e["prompt"] + bad + "↺", return_tensors="pt")["input_ids"]
        with torch.no_grad():
            out = model.generate(ids, max_new_tokens=40, do_sample=False, eos_token_id=2, pad_token_id=0)
        second = tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
        wrong += 1
        fixed += answer(second) == str(a + b)
        kept += answer(second) == answer(bad)
    own_wrong = sum(e["first_grade"] != "correct" for e in episodes)
    own_fixed = sum(e["first_grade"] != "correct" and e["second_grade"] == "correct" for e in episodes)
    own_kept = sum(e["first_grade"] != "correct" and e["second_answer"] == e.get("first_answer") for e in episodes)
    print(f"{run} round {rnd}: {len(episodes)} held-out problems")
    print(f"  a slip that changed the answer (one digit of the solution): {wrong}; fixed {fixed} ({100 * fixed / max(wrong, 1):.0f}%), wrong answer kept {kept}")
    print(f"  its own wrong greedy first attempt: {own_wrong}; fixed {own_fixed} ({100 * own_fixed / max(own_wrong, 1):.0f}%), wrong answer kept {own_kept}")


if __name__ == "__main__":
    main()
