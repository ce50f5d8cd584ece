"""Reads a run's TensorBoard events with TensorBoard's own reader and checks every scalar
against the run's metrics.jsonl (step and value), and the config text against config.toml.

    pip install tensorboard
    python scripts/check-tensorboard.py RUN_DIR

Prints one line per tag and exits non-zero on any mismatch. autodidact never needs Python:
this is the by-hand check of crates/engine/src/tensorboard.rs (docs/monitors.md).
"""
import json
import math
import os
import sys

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def main(run):
    acc = EventAccumulator(os.path.join(run, "tensorboard"), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    want = {}
    with open(os.path.join(run, "metrics.jsonl")) as f:
        for line in f:
            d = json.loads(line)
            step_key = "round" if "round" in d else "seed/step" if "seed/step" in d else None
            if step_key is None:
                continue
            for k, v in d.items():
                if k != step_key and isinstance(v, (int, float)) and not isinstance(v, bool):
                    want.setdefault(k, []).append((int(d[step_key]), float(v)))
    tags = acc.Tags()
    bad = 0
    for tag, points in sorted(want.items()):
        got = [(e.step, e.value) for e in acc.Scalars(tag)] if tag in tags["scalars"] else []
        ok = len(got) == len(points) and all(
            s == ws and math.isclose(v, wv, rel_tol=1e-6, abs_tol=1e-6) for (s, v), (ws, wv) in zip(got, points)
        )
        bad += not ok
        print(f"{'ok ' if ok else 'BAD'} {tag}: {len(got)} of {len(points)} points")
    extra = set(tags["scalars"]) - set(want)
    for tag in sorted(extra):
        print(f"BAD {tag}: in the events, not in metrics.jsonl")
    bad += len(extra)
    text = acc.Tensors("config")[0].tensor_proto.string_val[0].decode()
    with open(os.path.join(run, "config.toml")) as f:
        same = text == f.read()
    print(f"{'ok ' if same else 'BAD'} config: text of {len(text)} characters")
    bad += not same
    print(f"{len(want) - (bad - len(extra) - (not same))} of {len(want)} scalar tags match; {bad} problems")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
