#!/usr/bin/env bash
# Install mergekit 0.1.5 (the reference implementation) into its own clean virtual environment,
# bench/_work/mergekit-venv, so its pinned dependencies never touch the project's environment.
#
#   bash bench/setup_mergekit.sh            # idempotent; re-run to repair
#
# torch is installed first and pinned to the CPU wheel that lies on this machine's disk
# (torch==2.13.0 resolves to 2.13.0+cpu via the pip find-links); any other torch spec would
# download gigabytes of CUDA wheels. mergekit's own `torch>=2.0.0` is then already satisfied.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="${MERGEKIT_VENV:-$here/_work/mergekit-venv}"
python="${PYTHON:-python3}"

if [[ ! -x "$venv/bin/python" ]]; then
    mkdir -p "$(dirname "$venv")"
    "$python" -m venv "$venv"
fi
"$venv/bin/python" -m pip install -q --upgrade pip
"$venv/bin/python" -m pip install -q "torch==2.13.0"
"$venv/bin/python" -m pip install -q "mergekit==0.1.5" "torch==2.13.0"

# mergekit must not have replaced torch with another build.
"$venv/bin/python" - <<'PY'
import importlib.metadata as md
import torch
assert torch.__version__.startswith("2.13.0"), f"unexpected torch {torch.__version__} in mergekit venv"
print(f"mergekit {md.version('mergekit')} with torch {torch.__version__}, "
      f"transformers {md.version('transformers')}")
PY
"$venv/bin/mergekit-yaml" --help >/dev/null
echo "ok: $venv/bin/mergekit-yaml"
