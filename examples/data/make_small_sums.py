#!/usr/bin/env python3
"""Writes small-sums.jsonl: "What is a + b?" for every a, b in 1..30, as chat messages, for
the real-model examples (examples/smollm2-*.toml). Standard library only; the file is
committed, so running the examples needs no Python.

SmolLM2-135M-Instruct answers these in free text ("17 + 25 = 42." or a paragraph around a
wrong sum); its greedy pass@1 on the held-out split is about 25%, inside the 10-60% range
where self-training has both correct samples to learn from and room to improve. Larger
numbers (two-digit + two-digit up to 99) bring it near 10%; the word problems of
word-problems.jsonl near 10% as well. A line:

    {"id": "sum-17-25", "messages": [{"role": "user", "content": "What is 17 + 25?"}], "answer": "42"}

Usage: python3 examples/data/make_small_sums.py [--max 30] [--out PATH]
"""
import argparse
import json
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--max", type=int, default=30)
    ap.add_argument("--out", type=Path, default=Path(__file__).with_name("small-sums.jsonl"))
    args = ap.parse_args()
    with open(args.out, "w") as f:
        for a in range(1, args.max + 1):
            for b in range(1, args.max + 1):
                line = {
                    "id": f"sum-{a}-{b}",
                    "messages": [{"role": "user", "content": f"What is {a} + {b}?"}],
                    "answer": str(a + b),
                }
                f.write(json.dumps(line) + "\n")
    print(f"wrote {args.max ** 2} problems to {args.out}")


if __name__ == "__main__":
    main()
