#!/usr/bin/env bash
# Reproduce the merge-quality table (docs/merge-quality.md) from scratch:
#   bash bench/merge_quality/run.sh OUTDIR                # GPU profile: every task of eval/tasks/text_tasks.yaml
#   bash bench/merge_quality/run.sh OUTDIR --cpu-small    # reduced CPU smoke run (not results)
# Extra options go to bench/merge_quality/pipeline.py (--base DIR, --tasks FILE, --workers N, --deadline S).
# Re-running with the same OUTDIR resumes: finished experts and comparisons are kept.
set -euo pipefail
if [ $# -lt 1 ]; then
  echo "usage: bash bench/merge_quality/run.sh OUTDIR [--cpu-small] [pipeline options]" >&2
  exit 2
fi
out=$(realpath -m "$1"); shift
cd "$(dirname "$0")/../.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
exec python3 bench/merge_quality/pipeline.py "$out" "$@"
