#!/usr/bin/env bash
# mergekit-het vs mergekit 0.1.5 on a GPU machine, in one command (no internet needed there).
#
# Prepare here (once): the wheels for mergekit and the packages the device lacks, in .whl/:
#   P="--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64"
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp $P -d .whl \
#       mergekit==0.1.5 immutables==0.21 pydantic==2.13.4 pydantic-core==2.46.4 annotated-types==0.7.0 \
#       typing-inspection==0.4.2 typing-extensions==4.15.0
# Run there (device tool, carry [".whl"]):
#   bash bench/gpu.sh
# Results: $OUT/cuda/results.{md,json,png}, $OUT/cpu/results.{md,json,png}, $OUT/gpu.log.
#
# Knobs (environment): PRESET (1b = Llama 1.1B shape), SIZES (comma list of presets for a scaling
# table, overrides PRESET; CPU_SIZES likewise for the CPU stage), EXPERTS (3), DTYPE (bfloat16),
# GPU_METHODS (linear,task_arithmetic,ties), CPU_METHODS (ties; empty = skip the CPU run),
# REPEAT (1), WORK (/tmp/bench), GPU_TIMEOUT (360 s), CPU_TIMEOUT (180 s), MERGEKIT_CMD (default: python3 -m mergekit.scripts.run_yaml from
# the wheels; set it to skip the wheel install, e.g. to try this script on a machine without a GPU),
# DEVICE (cuda; cpu to try the script without a GPU).
set -euo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-bench/_work/results/gpu}"
mkdir -p "$out"
exec > >(tee "$out/gpu.log") 2>&1

if [[ -z "${MERGEKIT_CMD:-}" ]]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
    MERGEKIT_CMD="python3 -m mergekit.scripts.run_yaml"
fi
export PYTHONUNBUFFERED=1
preset="${PRESET:-1b}" experts="${EXPERTS:-3}" dtype="${DTYPE:-bfloat16}"
work="${WORK:-/tmp/bench}" repeat="${REPEAT:-1}" device="${DEVICE:-cuda}"

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "no nvidia-smi"
nproc; free -g | head -2
python3 - <<'PY'
import importlib.metadata as md
for name in ("torch", "transformers", "safetensors", "mergekit", "pydantic", "click", "immutables", "peft"):
    try:
        print(f"{name} {md.version(name)}")
    except md.PackageNotFoundError:
        print(f"{name} MISSING")
PY

common=(--preset "$preset" --experts "$experts" --dtype "$dtype" --repeat "$repeat" --work "$work"
        --mergekit-cmd "$MERGEKIT_CMD")
# Each stage is bounded (timeout sends SIGTERM; compare.py then kills the running merge and writes
# the results of the runs that finished), so the whole call stays inside the device's 10 minutes.
gpu_sizes=(); [[ -n "${SIZES:-}" ]] && gpu_sizes=(--sizes "$SIZES")
cpu_sizes=(); [[ -n "${CPU_SIZES:-${SIZES:-}}" ]] && cpu_sizes=(--sizes "${CPU_SIZES:-$SIZES}")
timeout "${GPU_TIMEOUT:-360}" python3 bench/compare.py "${common[@]}" "${gpu_sizes[@]}" --device "$device" \
    --methods "${GPU_METHODS:-linear,task_arithmetic,ties}" --out "$out/$device" || echo "$device stage exited with $?"
if [[ -n "${CPU_METHODS-ties}" && "$device" != cpu ]]; then
    timeout "${CPU_TIMEOUT:-180}" python3 bench/compare.py "${common[@]}" "${cpu_sizes[@]}" --device cpu \
        --methods "${CPU_METHODS-ties}" --out "$out/cpu" || echo "cpu stage exited with $?"
fi
