"""Pass@1 against wall-clock and sampled tokens for finished runs (docs/grpo-vs-star.md).

    python3 bench/curves.py RUN_DIR [RUN_DIR...]

Wall-clock is the sum of the journal's stage durations after the seed stage and the round-0
evaluation (the seed stage is shared by runs with the same seed settings); sampled tokens are
cumulative `rollout/sampled_tokens`. Evaluation time is included. Standard library only.
"""
import json
import sys

for run in sys.argv[1:]:
    journal = [json.loads(l) for l in open(f"{run}/journal.jsonl")]
    metrics = {m["round"]: m for m in map(json.loads, open(f"{run}/metrics.jsonl")) if "round" in m}
    recipe = json.load(open(f"{run}/rounds/r0001/manifest.json"))["recipe"] if len(metrics) > 1 else "?"
    print(f"\n{run} ({recipe})")
    print("| round | seconds after M0 | sampled tokens | pass@1 | pass@8 |")
    print("|---:|---:|---:|---:|---:|")
    seconds, tokens = 0.0, 0
    for entry in journal[2:]:
        seconds += entry["seconds"]
        if entry["stage"] != "eval":
            continue
        m = metrics[entry["round"]]
        tokens += int(m.get("rollout/sampled_tokens", 0))
        print(f"| {entry['round']} | {seconds:.0f} | {tokens:,} | {100 * m['eval/pass@1']:.1f}% | {100 * m['eval/pass@k']:.1f}% |")
    m0 = metrics[0]
    print(f"(M0: pass@1 {100 * m0['eval/pass@1']:.1f}%)")
