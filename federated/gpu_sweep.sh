#!/usr/bin/env bash
# The federated comparison of docs/federated.md in one GPU-machine call (no internet there):
# every method x client lr of federated/configs/methods.yaml as its own process on the one GPU.
# Prepare here (once): wheels the device lacks in .whl/ (see bench/gpu.sh: datasets, pydantic, ...)
# and the float16 checkpoint (the task data travels with the working tree):
#   python bench/merge_quality/carry.py pack $M runs/fed_carry
# Run there (device tool, carry [".whl", "runs/fed_carry"]):  DEADLINE=300 bash federated/gpu_sweep.sh
# Results in $OUT: table.md, results.json, accuracy.png, logs.tgz.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-runs/fed/gpu_sweep}" work=/tmp/fed_sweep
mkdir -p "$out"
python3 -m pip install -q --upgrade --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
export PYTHONPATH="$PWD:/tmp/site" PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
python3 bench/merge_quality/carry.py unpack runs/fed_carry /tmp/base
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader; nproc
python3 federated/sweep.py federated/configs/minilm_austen_full.yaml model=/tmp/base \
    --variants federated/configs/methods.yaml --grid "${GRID:-client.lr=0.01,0.05}" --out "$work" \
    --deadline "${DEADLINE:-300}" --precision high "$@" | tee "$out/table_stdout.md" || echo "sweep failed: $?"
tar czf "$out/logs.tgz" -C "$work" $(cd "$work" && ls *.log *.jsonl)
cp "$work/table.md" "$work/results.json" "$work/accuracy.png" "$out/" || true
