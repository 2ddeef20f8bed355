#!/usr/bin/env bash
# Multi-GPU fine-tuning (DDP through accelerate) and parallel federated clients, in one call on a
# 2-GPU machine (device tool, kind nvidia-h100-x2; carry [".whl", "runs/fed_carry"]):
#   bash bench/multigpu/run.sh
# 1. finetune/finetune.py, dense and TaLoS, global batch $GB: one process (batch $GB) vs
#    `accelerate launch --multi_gpu --num_processes 2` (batch $GB/2 each): loss curves, samples/s.
# 2. bench/multigpu/fed_round_time.py: federated rounds with clients trained sequentially on one
#    GPU vs one worker per GPU (client_devices), same seed: round time and global-model difference.
# Results in $OUT: multigpu.md, multigpu.json, loss_curves.png, logs.tgz.
set -uo pipefail
cd "$(dirname "$0")/../.."
out="${OUT:-runs/multigpu}" work=/tmp/multigpu
mkdir -p "$out" "$work"
python3 -m pip install -q --upgrade --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl 2>&1 | grep -v "^WARNING"
export PYTHONPATH="$PWD:/tmp/site" PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
[ -d /tmp/base ] || python3 bench/merge_quality/carry.py unpack runs/fed_carry /tmp/base
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
GB="${GB:-256}" STEPS="${STEPS:-300}"
common=(model=/tmp/base train.max_steps=$STEPS train.checkpoint_every=0 train.eval_every=0 train.log_every=10)
ft() {  # mode, n processes
    local cfg=finetune/configs/minilm_frozen_head_$1.yaml dir=$work/$1_$2gpu bs=$((GB / $2))
    local launch=(python3) && [ "$2" -gt 1 ] && launch=(python3 -m accelerate.commands.launch --multi_gpu --num_processes "$2" --num_machines 1 --mixed_precision no --dynamo_backend no)
    local t0=$SECONDS
    timeout "${STAGE_LIMIT:-150}" "${launch[@]}" finetune/finetune.py "$cfg" "${common[@]}" train.batch_size=$bs output.dir="$dir" \
        --overwrite > "$work/$1_$2gpu.log" 2>&1; echo "$1 $2 GPU(s): exit $? in $((SECONDS - t0)) s"
    tail -1 "$work/$1_$2gpu.log"
}
stages="${STAGES:-dense talos fed}"  # e.g. STAGES=dense GB=1024 STEPS=60: a larger per-GPU batch
for m in dense talos; do [[ " $stages " == *" $m "* ]] && { ft $m 1; ft $m 2; }; done
[[ " $stages " == *" fed "* ]] && timeout "${STAGE_LIMIT:-150}" python3 bench/multigpu/fed_round_time.py federated/configs/minilm_austen_full.yaml \
    "$work/fed_round_time.json" model=/tmp/base rounds=4 eval_every=4 clients_per_round=4 client.local_steps=100 \
    client.batch_size=64 client.lr=0.01 threads=4 > "$work/fed.log" 2>&1; echo "federated: exit $?"; tail -25 "$work/fed.log"
python3 bench/multigpu/summarize.py "$work" "$out"
tar czf "$out/logs.tgz" -C "$work" $(cd "$work" && ls *.log */train_log.jsonl */expert.json fed_round_time.json 2>/dev/null)
