#!/usr/bin/env bash
# killed_save_test.sh MPIEXEC... -- PREPARE TRAIN WORK
# Trains with a checkpoint after every step and kills every rank with SIGKILL at an arbitrary
# moment (often in the middle of a save). Whatever was on disk then, the newest complete
# checkpoint must load, training must continue from it, and no step is in the metrics twice.
set -euo pipefail
source "$(dirname "$0")/e2e_corpus.sh" 11 "a small corpus for the killed-save test." "$@"
common=(--model tiny --seq-len 32 --batch-size 4 --train-data "$work/data/train_*.bin" --val-data "$work/data/val_*.bin"
        --strategy edit --sync-every 4 --eval-every 0 --log-every 0 --checkpoint-every 1 --keep-checkpoints 2
        --out-dir "$work/run" --log-level warn)
"${mpiexec[@]}" -np 2 "$train" "${common[@]}" --steps 100000 > "$work/first.log" 2>&1 &
job=$!
# Never leave the job behind, whatever happens below.
trap 'pkill -KILL -f "edit-train-gpt.*$work/run" 2> /dev/null || true' EXIT
# Wait until a few checkpoints exist, then kill at a moment that varies from run to run.
for _ in $(seq 1 600); do
  n=$( (find "$work/run/checkpoints" -maxdepth 2 -name manifest.json 2> /dev/null || true) | wc -l)
  [[ $n -ge 2 ]] && break
  sleep 0.1
done
sleep "0.$((RANDOM % 10))$((RANDOM % 10))"
pkill -KILL -f "edit-train-gpt.*$work/run" || true
wait "$job" && { echo "the killed job exited 0"; exit 1; }
echo "after the kill: $(ls "$work/run/checkpoints" | tr '\n' ' ')"
latest=$(find "$work/run/checkpoints" -maxdepth 1 -name 'step_*' ! -name '*.tmp' | sort | tail -n 1)
[[ -n $latest ]] || { echo "no complete checkpoint survived"; exit 1; }
step=$((10#${latest##*step_}))
"${mpiexec[@]}" -np 2 "$train" "${common[@]}" --steps $((step + 2)) --resume auto > "$work/second.log" 2>&1 \
  || { cat "$work/second.log"; echo "resuming from $latest failed"; exit 1; }
grep -q "\"step\":$((step + 1))" "$work/run/metrics.jsonl" || { echo "no step $((step + 1)) after resuming"; exit 1; }
# The killed run may have logged steps after its last complete checkpoint: the resumed run
# replaces them, so every step 0 .. step+1 is there exactly once.
steps=$(grep -o '"step":[0-9]*' "$work/run/metrics.jsonl" | cut -d: -f2)
twice=$(echo "$steps" | sort -n | uniq -d | head -n 1)
[[ -z $twice ]] || { echo "metrics.jsonl holds step $twice twice after resuming"; exit 1; }
[[ $(echo "$steps" | wc -l) -eq $((step + 2)) ]] || { echo "metrics.jsonl has $(echo "$steps" | wc -l) steps, expected $((step + 2))"; exit 1; }
echo "resumed from $latest and continued"
rm -rf "$work"
