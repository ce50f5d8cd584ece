#!/usr/bin/env bash
# Runs `autodidact bench` and the PyTorch reference back to back on the same preset and
# thread count, and prints their figures and the ratios (autodidact / PyTorch).
#
# Usage: bench/compare.sh [PRESET] [THREADS]        (defaults: small 2)
# PYTHON selects the interpreter that has torch (default: python3).
set -euo pipefail
preset=${1:-small}
threads=${2:-2}
python=${PYTHON:-python3}
root=$(cd "$(dirname "$0")/.." && pwd)

if ! "$python" -c 'import torch' 2>/dev/null; then
  echo "error: $python cannot import torch; set PYTHON to an interpreter with PyTorch installed" >&2
  exit 1
fi
cargo build --release --quiet --manifest-path "$root/Cargo.toml" -p autodidact-cli
ours=$("$root/target/release/autodidact" --threads "$threads" bench --preset "$preset" --json)
theirs=$("$python" "$root/bench/torch_reference.py" --preset "$preset" --threads "$threads" --json)

"$python" - "$ours" "$theirs" <<'PY'
import json, sys
a, t = json.loads(sys.argv[1]), json.loads(sys.argv[2])
assert a["params"] == t["params"], f"models differ: {a['params']} vs {t['params']} parameters"
print(f"preset {a['preset']}: {a['params']} parameters, batch {a['batch']}, context {a['seq_len']}, {a['threads']} threads, torch {t['torch_version']}")
print(f"{'':24}{'autodidact':>14}{'pytorch':>14}{'ratio':>9}")
rows = [
    ("train tokens/s", "train_tokens_per_s", 1, True),
    ("sample tokens/s", "sample_tokens_per_s", 1, True),
    ("train GFLOP/s (6NT)", "train_flops_per_s", 1e9, True),
    ("GEMM peak GFLOP/s", "gemm_peak_flops_per_s", 1e9, True),
    ("peak RSS MiB", "peak_rss_bytes", 2**20, False),
]
for name, key, unit, higher_better in rows:
    x, y = a[key] / unit, t[key] / unit
    print(f"{name:24}{x:>14.1f}{y:>14.1f}{x / y:>8.2f}x")
print(f"{'final train loss':24}{a['final_loss']:>14.3f}{t['final_loss']:>14.3f}")
PY
