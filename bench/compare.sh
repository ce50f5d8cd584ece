#!/usr/bin/env bash
# Runs `autodidact bench` and the PyTorch reference back to back on the same preset and
# thread count, REPEAT times interleaved (this machine's throughput drifts by ±15% over
# minutes), and prints the median of each figure and of each ratio (autodidact / PyTorch).
#
# Usage: bench/compare.sh [PRESET] [THREADS]        (defaults: small 2)
# Environment: PYTHON, an interpreter with torch (default python3); REPEAT (default 3).
set -euo pipefail
preset=${1:-small}
threads=${2:-2}
python=${PYTHON:-python3}
repeat=${REPEAT:-3}
root=$(cd "$(dirname "$0")/.." && pwd)

if ! "$python" -c 'import torch' 2>/dev/null; then
  echo "error: $python cannot import torch; set PYTHON to an interpreter with PyTorch installed" >&2
  exit 1
fi
cargo build --release --quiet --manifest-path "$root/Cargo.toml" -p autodidact-cli
results=()
for ((i = 0; i < repeat; i++)); do
  results+=("$("$root/target/release/autodidact" --threads "$threads" bench --preset "$preset" --json)")
  results+=("$("$python" "$root/bench/torch_reference.py" --preset "$preset" --threads "$threads" --json)")
done

"$python" - "${results[@]}" <<'PY'
import json, statistics, sys
runs = [json.loads(x) for x in sys.argv[1:]]
ours, theirs = runs[0::2], runs[1::2]
a, t = ours[0], theirs[0]
assert a["params"] == t["params"], f"models differ: {a['params']} vs {t['params']} parameters"
print(f"preset {a['preset']}: {a['params']} parameters, batch {a['batch']}, context {a['seq_len']}, "
      f"{a['threads']} threads, torch {t['torch_version']}, median of {len(ours)} interleaved runs")
print(f"{'':24}{'autodidact':>14}{'pytorch':>14}{'ratio':>9}   ratios per run")
rows = [
    ("train tokens/s", "train_tokens_per_s", 1),
    ("sample tokens/s", "sample_tokens_per_s", 1),
    ("train GFLOP/s (6NT)", "train_flops_per_s", 1e9),
    ("GEMM peak GFLOP/s", "gemm_peak_flops_per_s", 1e9),
    ("peak RSS MiB", "peak_rss_bytes", 2**20),
]
for name, key, unit in rows:
    xs = [r[key] / unit for r in ours]
    ys = [r[key] / unit for r in theirs]
    ratios = [x / y for x, y in zip(xs, ys)]
    per_run = " ".join(f"{r:.2f}" for r in ratios)
    print(f"{name:24}{statistics.median(xs):>14.1f}{statistics.median(ys):>14.1f}{statistics.median(ratios):>8.2f}x   {per_run}")
PY
