#!/usr/bin/env python3
"""Writes word-problems.jsonl: short arithmetic word problems with worked solutions, for
examples/star-word-problems.toml. Standard library only; the same seed gives the same file.

Every problem is an addition of two 2-digit numbers told as a story (some stories carry a
number that does not matter). The worked solution states the sum, then adds column by column
from the right as the built-in `addition` task does, and gives the answer after `#`:

    {"id": "wp-0", "prompt": "Ann has 23 figs and gets 45 more. How many now?",
     "answer": "68", "solution": "23+45=3+5+0=08;2+4+0=06#68"}

Usage: python3 examples/data/make_word_problems.py [--count 3000] [--seed 0] [--out PATH]
"""
import argparse
import json
import random
from pathlib import Path

NAMES = ["Ann", "Bob", "Cy", "Dee", "Eve", "Fay", "Gus", "Hal", "Ida", "Jo"]
THINGS = ["figs", "pens", "cats", "cups", "hats", "eggs", "toys", "bees"]
# (story, which two numbers are added); {n} a name, {t} a thing, {a} {b} {c} numbers.
STORIES = [
    ("{n} has {a} {t} and gets {b} more. How many now?", "ab"),
    ("{n} gave away {a} {t} and has {b} left. How many at first?", "ab"),
    ("A box has {a} {t} and another has {b}. How many in all?", "ab"),
    ("{n} is {c}. {n} has {a} {t} and finds {b}. How many now?", "ab"),
    ("{n} sold {a} {t} on day {c} and {b} the next. How many sold?", "ab"),
]


def trace(a: int, b: int) -> str:
    """`a+b=` and the column-by-column sum, as the built-in addition task writes it."""
    da, db = str(a)[::-1], str(b)[::-1]
    steps, carry = [], 0
    for i in range(max(len(da), len(db))):
        x = int(da[i]) if i < len(da) else 0
        y = int(db[i]) if i < len(db) else 0
        s = x + y + carry
        steps.append(f"{x}+{y}+{carry}={s:02d}")
        carry = s // 10
    return f"{a}+{b}=" + ";".join(steps) + f"#{a + b}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--count", type=int, default=3000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path(__file__).with_name("word-problems.jsonl"))
    args = ap.parse_args()
    rng = random.Random(args.seed)
    seen, lines = set(), []
    while len(lines) < args.count:
        story, _ = rng.choice(STORIES)
        a, b, c = rng.randint(10, 99), rng.randint(10, 99), rng.randint(2, 9)
        prompt = story.format(n=rng.choice(NAMES), t=rng.choice(THINGS), a=a, b=b, c=c)
        if prompt in seen:
            continue
        seen.add(prompt)
        lines.append({"id": f"wp-{len(lines)}", "prompt": prompt, "answer": str(a + b), "solution": trace(a, b)})
    with open(args.out, "w") as f:
        for line in lines:
            f.write(json.dumps(line) + "\n")
    print(f"wrote {len(lines)} problems to {args.out}")


if __name__ == "__main__":
    main()
