#!/usr/bin/env bash
# Activation checkpointing against keeping the activations, side by side in one sitting:
# edit-train-gpt on one rank, --strategy none, the given preset, sequence length and batch, with
# and without --activation-checkpointing, --reps times each in alternation (machine noise hits both
# alike). Peak resident memory comes from /usr/bin/time (the process's whole footprint: weights,
# AdamW moments, activations, allocator caches), the step time is the mean over the steps after
# the first (rank 0's metrics.jsonl), and the last val loss must be the same in both (the
# recompute repeats the same arithmetic).
#
#   benchmarks/activation_checkpointing.sh [--out DIR] [--reps N] [--model small] [--seq-len 256]
#                                          [--batch-size 16] [--steps 6] [--data DIR]
#
# Writes DIR/runs.csv (every run) and DIR/table.md (medians). Environment: EDIT_BUILD_DIR.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=${EDIT_BUILD_DIR:-$root/build}
out=$root/runs/activation_checkpointing reps=2 model=small seq_len=256 batch=16 steps=6 data=$root/data/fortunes
while [[ $# -gt 0 ]]; do
  case $1 in
    --out) out=$2; shift 2 ;;
    --reps) reps=$2; shift 2 ;;
    --model) model=$2; shift 2 ;;
    --seq-len) seq_len=$2; shift 2 ;;
    --batch-size) batch=$2; shift 2 ;;
    --steps) steps=$2; shift 2 ;;
    --data) data=$2; shift 2 ;;
    *) echo "activation_checkpointing.sh: unknown option $1 (see the header of this script)" >&2; exit 2 ;;
  esac
done
[[ -x $build/tools/edit-train-gpt ]] || { echo "no $build/tools/edit-train-gpt: build first (scripts/build.sh)" >&2; exit 1; }
[[ -f $data/train_000000.bin ]] || { echo "no corpus in $data: run edit-prepare-text --out $data <texts> first" >&2; exit 1; }
[[ -x /usr/bin/time ]] || { echo "needs /usr/bin/time (apt-get install time)" >&2; exit 1; }
mkdir -p "$out/runs"
echo "config,rep,peak_rss_mb,mean_step_s,val_loss" > "$out/runs.csv"
for rep in $(seq 1 "$reps"); do
  for config in kept recomputed; do
    flag=()
    [[ $config == recomputed ]] && flag=(--activation-checkpointing)
    run=$out/runs/${config}_$rep
    rm -rf "$run"
    OMP_NUM_THREADS=1 /usr/bin/time -f "%M" -o "$run.rss" "$build/tools/edit-train-gpt" --model "$model" \
      --seq-len "$seq_len" --batch-size "$batch" --steps "$steps" --strategy none --eval-every 0 --log-every 0 \
      --seed 1 --stop-signals none --checkpoint-every -1 --train-data "$data/train_000000.bin" --val-data "$data/val_000000.bin" \
      --out-dir "$run" "${flag[@]}" > "$run.log" 2>&1 || { echo "run $config $rep failed: see $run.log" >&2; exit 1; }
    python3 - "$run" "$config" "$rep" "$(tail -n 1 "$run.rss")" >> "$out/runs.csv" <<'PY'
import json, sys
run, config, rep, rss_kb = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
seconds = [json.loads(line)["seconds"] for line in open(f"{run}/metrics.jsonl")][1:]
val = open(f"{run}/loss.tsv").read().split("\n")[-2].split("\t")[3]
print(f"{config},{rep},{rss_kb / 1024:.0f},{sum(seconds) / len(seconds):.3f},{val}")
PY
  done
done
python3 - "$out" "$model" "$seq_len" "$batch" <<'PY' | tee "$out/table.md"
import csv, statistics, sys
out, model, seq_len, batch = sys.argv[1:5]
rows = list(csv.DictReader(open(f"{out}/runs.csv")))
med = {c: {k: statistics.median(float(r[k]) for r in rows if r["config"] == c) for k in ("peak_rss_mb", "mean_step_s")}
       for c in ("kept", "recomputed")}
vals = {c: {r["val_loss"] for r in rows if r["config"] == c} for c in ("kept", "recomputed")}
print(f"{model}, seq {seq_len}, batch {batch}, one rank; medians of {len(rows) // 2} runs each")
print("| activations | peak RSS MB | mean step s | val loss |")
print("|---|---:|---:|---|")
for c in ("kept", "recomputed"):
    print(f"| {c} | {med[c]['peak_rss_mb']:.0f} | {med[c]['mean_step_s']:.3f} | {', '.join(sorted(vals[c]))} |")
print(f"\nrecomputed / kept: memory {med['recomputed']['peak_rss_mb'] / med['kept']['peak_rss_mb']:.2f}x, "
      f"step time {med['recomputed']['mean_step_s'] / med['kept']['mean_step_s']:.2f}x; "
      f"same val loss: {'yes' if vals['kept'] == vals['recomputed'] else 'NO'}")
PY
