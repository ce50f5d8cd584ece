#!/usr/bin/env bash
# Runs `autodidact bench --checkpoint DIR` and the transformers reference (bench/hf_reference.py,
# one process per phase) back to back on the same pretrained model, workload and thread count,
# REPEAT times interleaved, and prints the median of each figure and of each ratio
# (autodidact / transformers).
#
# Usage: bench/compare-checkpoint.sh [DIR] [THREADS]        (defaults: models/smollm2 2)
# Environment: PYTHON, an interpreter with torch and transformers (default python3); REPEAT
# (default 1); BATCH, SEQ_LEN, STEPS (training: default 8, 512, 3); SAMPLE_BATCH, NEW_TOKENS
# (sampling: default 64, 64); LORA_RANK, to train LoRA adapters of that rank on every
# projection instead of every weight (PEFT on the transformers side; needs peft).
set -euo pipefail
dir=${1:-models/smollm2}
threads=${2:-2}
python=${PYTHON:-python3}
repeat=${REPEAT:-1}
batch=${BATCH:-8}
seq_len=${SEQ_LEN:-512}
steps=${STEPS:-3}
sample_batch=${SAMPLE_BATCH:-64}
new_tokens=${NEW_TOKENS:-64}
root=$(cd "$(dirname "$0")/.." && pwd)

if ! "$python" -c 'import torch, transformers' 2>/dev/null; then
  echo "error: $python cannot import torch and transformers; set PYTHON to an interpreter that has them" >&2
  exit 1
fi
cargo build --release --quiet --manifest-path "$root/Cargo.toml" -p autodidact-cli
common=(--batch "$batch" --seq-len "$seq_len" --steps "$steps" --sample-batch "$sample_batch" --new-tokens "$new_tokens")
if [ -n "${LORA_RANK:-}" ]; then
  common+=(--lora-rank "$LORA_RANK")
fi
results=()
for ((i = 0; i < repeat; i++)); do
  results+=("$("$root/target/release/autodidact" --threads "$threads" bench --checkpoint "$dir" "${common[@]}" --json)")
  train=$("$python" "$root/bench/hf_reference.py" --checkpoint "$dir" --phase train --threads "$threads" "${common[@]}")
  sample=$("$python" "$root/bench/hf_reference.py" --checkpoint "$dir" --phase sample --threads "$threads" "${common[@]}")
  results+=("$("$python" -c 'import json,sys; a=json.loads(sys.argv[1]); a.update(json.loads(sys.argv[2])); print(json.dumps(a))' "$train" "$sample")")
done

"$python" - "${results[@]}" <<'PY'
import json, statistics, sys
runs = [json.loads(x) for x in sys.argv[1:]]
ours, theirs = runs[0::2], runs[1::2]
a, t = ours[0], theirs[0]
assert a["params"] == t["params"], f"models differ: {a['params']} vs {t['params']} parameters"
print(f"{a['preset']}: {a['params']} parameters; train batch {a['batch']} × {a['seq_len']}, "
      f"sample batch {a['sample_batch']} × {a['sample_new_tokens'] // a['sample_batch']} new tokens; "
      f"{a['threads']} threads; torch {t['torch_version']}, transformers {t['transformers_version']}; "
      f"median of {len(ours)} interleaved runs")
print(f"{'':28}{'autodidact':>14}{'transformers':>14}{'ratio':>9}   ratios per run")
rows = [
    ("train tokens/s", "train_tokens_per_s", 1),
    ("train GFLOP/s (6NT)", "train_flops_per_s", 1e9),
    ("train peak RSS MiB", "train_peak_rss_bytes", 2**20),
    ("sample tokens/s", "sample_tokens_per_s", 1),
    ("sample peak RSS MiB", "sample_peak_rss_bytes", 2**20),
]
for name, key, unit in rows:
    xs = [r[key] / unit for r in ours]
    ys = [r[key] / unit for r in theirs]
    ratios = [x / y for x, y in zip(xs, ys)]
    per_run = " ".join(f"{r:.2f}" for r in ratios)
    print(f"{name:28}{statistics.median(xs):>14.1f}{statistics.median(ys):>14.1f}{statistics.median(ratios):>8.2f}x   {per_run}")
PY
