#!/usr/bin/env bash
# libedit against a plain PyTorch loop (benchmarks/peer_pytorch.py), side by side, in one sitting:
# the same GPT (gpt2 style, dim 128, 4 blocks, 4 heads, T 128, tied head), 8 sequences per rank and
# step, 2 MPI ranks with one thread each, the fortunes corpus, for two vocabularies:
#   256    the byte tokens as edit-prepare-text writes them;
#   50257  the same bytes mapped to ids spread over GPT-2's vocabulary (b -> b * 50256 // 255), so
#          the head and the loss cost what GPT-2's do while the text stays learnable.
# Five runs per vocabulary: python DDP, python DiLoCo (H 32), edit-train-gpt --strategy ddp,
# diloco and edit (H 32). Each configuration runs --reps times; a round runs every configuration
# once, in a rotated order, so machine noise hits them alike. tokens/s = tokens of the steps after
# --skip over the sum of those steps' times on rank 0 (both programs time a step the same way:
# batch, forward, backward, clip, AdamW, sync). The table reports medians. Default steps: 64 (2
# syncs at H 32) with the byte vocabulary, 16 (no sync: those runs compare the inner loop alone)
# with GPT-2's, where one step of one rank takes ~2 s. A round takes ~7 minutes on 2 quiet cores
# (the two default rounds ~13), two thirds of it with GPT-2's vocabulary; under load far longer.
# CPU time: on a machine that other jobs load, wall time swings 2-3x from run to run. So each run
# also runs once with only its first --skip steps, and the difference of the two jobs' CPU
# seconds (user + system, both ranks, from /usr/bin/time) over the steps between is the CPU cost
# of a measured step, start-up and evaluation cancelled out: the load moves it far less.
#
#   benchmarks/peer_compare.sh [--out DIR] [--reps N] [--steps N] [--steps-wide N] [--skip N]
#                              [--vocabs "256 50257"] [--data DIR]
#
# Writes DIR/runs.csv (every run), DIR/summary.csv (medians, ratios) and DIR/table.md, and keeps
# each run's logs in DIR/runs/. Environment: EDIT_BUILD_DIR (default build/), PYTHON (default
# /usr/bin/python3, which has Debian's python3-torch).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=${EDIT_BUILD_DIR:-$root/build}
python=${PYTHON:-/usr/bin/python3}
out=$root/runs/peer_compare
reps=2
steps=64
steps_wide=16
skip=3
vocabs="256 50257"
data=$root/data/fortunes
while [[ $# -gt 0 ]]; do
  case $1 in
    --out) out=$2; shift 2 ;;
    --reps) reps=$2; shift 2 ;;
    --steps) steps=$2; shift 2 ;;
    --steps-wide) steps_wide=$2; shift 2 ;;
    --skip) skip=$2; shift 2 ;;
    --vocabs) vocabs=$2; shift 2 ;;
    --data) data=$2; shift 2 ;;
    -h|--help) sed -n '2,27p' "$0"; exit 0 ;;
    *) echo "peer_compare.sh: unknown argument '$1'; see the comment at the top of $0" >&2; exit 2 ;;
  esac
done

train_gpt=$build/tools/edit-train-gpt
prepare=$build/tools/edit-prepare-text
for program in "$train_gpt" "$prepare"; do
  [[ -x $program ]] || { echo "peer_compare.sh: $program is missing; build it first (EDIT_BUILD_TARGETS=\"edit-train-gpt edit-prepare-text\" scripts/build.sh)" >&2; exit 1; }
done
"$python" -c 'import torch, numpy' 2>/dev/null || {
  echo "peer_compare.sh: $python cannot import torch and numpy; apt-get install python3-torch (or set PYTHON)" >&2; exit 1; }

export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1
mpi=(mpirun -np 2 --oversubscribe --bind-to none)
# wall, user and system seconds of the job (ranks included); a job that hangs fails after 15 minutes
timed=(timeout --kill-after=10 900 /usr/bin/time -f "%e %U %S" -o)

# --- data ---------------------------------------------------------------------------------------
if ! compgen -G "$data/train_*.bin" >/dev/null; then
  corpus=/usr/share/games/fortunes
  [[ -d $corpus ]] || { echo "peer_compare.sh: no $data and no $corpus; apt-get install fortunes" >&2; exit 1; }
  "$prepare" --out "$data" "$corpus"
fi
wide=$data-v50257
if ! compgen -G "$wide/train_*.bin" >/dev/null; then
  mkdir -p "$wide"
  "$python" - "$data" "$wide" <<'EOF'
import glob, os, sys
import numpy as np
source, target = sys.argv[1:]
for path in sorted(glob.glob(os.path.join(source, "*.bin"))):
    header = np.fromfile(path, dtype="<i4", count=256)
    tokens = np.fromfile(path, dtype="<u2", offset=1024)
    assert header[0] == 20240520 and header[1] == 1 and tokens.size == header[2] and tokens.max() < 256, path
    mapped = (tokens.astype(np.int64) * 50256 // 255).astype("<u2")  # 0 -> 0, 255 -> 50256, distinct ids
    with open(os.path.join(target, os.path.basename(path)) + ".tmp", "wb") as f:
        f.write(header.tobytes())
        f.write(mapped.tobytes())
    os.replace(os.path.join(target, os.path.basename(path)) + ".tmp", os.path.join(target, os.path.basename(path)))
EOF
fi

# --- runs ---------------------------------------------------------------------------------------
mkdir -p "$out/runs"
index=$out/index.tsv
printf 'round\tvocab\timpl\tstrategy\tkind\tsteps\tdir\tload_before\tload_after\n' > "$index"
model=(--dim 128 --layers 4 --heads 4 --seq-len 128 --batch-size 8)
configs=(py-ddp py-diloco edit-ddp edit-diloco edit-edit)
port=$((29600 + RANDOM % 200))
load() { cut -d' ' -f1 /proc/loadavg; }

run_one() {  # round vocab config kind (full: the measured run; base: its first --skip steps only)
  local round=$1 vocab=$2 config=$3 kind=$4
  local n=$steps train=$data
  [[ $vocab == 256 ]] || { n=$steps_wide; train=$wide; }
  [[ $kind == full ]] || n=$skip
  local dir=$out/runs/v${vocab}_${config}_r${round}_${kind}
  rm -rf "$dir" && mkdir -p "$dir"
  local before; before=$(load)
  port=$((port + 1))
  case $config in
    py-*)
      MASTER_PORT=$port "${timed[@]}" "$dir/time.txt" "${mpi[@]}" "$python" "$root/benchmarks/peer_pytorch.py" "${model[@]}" \
        --vocab-size "$vocab" --train-data "$train/train_*.bin" --val-data "$train/val_*.bin" \
        --strategy "${config#py-}" --sync-every 32 --steps "$n" --skip-steps "$skip" \
        --eval-batches 1 --csv "$dir/result.csv" --label "round $round" > "$dir/log.txt" 2>&1 ;;
    edit-*)
      "${timed[@]}" "$dir/time.txt" "${mpi[@]}" "$train_gpt" --model small "${model[@]}" --vocab-size "$vocab" --device cpu --dtype fp32 \
        --train-data "$train/train_*.bin" --val-data "$train/val_*.bin" \
        --strategy "${config#edit-}" --sync-every 32 --steps "$n" \
        --eval-every 0 --eval-batches 1 --log-every 0 --checkpoint-every -1 --out-dir "$dir" --overwrite > "$dir/log.txt" 2>&1 ;;
  esac || { echo "peer_compare.sh: $config (vocab $vocab, round $round, $kind) failed; see $dir/log.txt" >&2; tail -5 "$dir/log.txt" >&2; exit 1; }
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$round" "$vocab" "${config%%-*}" "${config#*-}" "$kind" "$n" "$dir" "$before" "$(load)" >> "$index"
  [[ $kind == full ]] && echo "  round $round, vocab $vocab, $config: done (load $before -> $(load))"
  return 0
}

start=$(date +%s)
echo "peer_compare.sh: $reps rounds x vocabularies ($vocabs) x ${#configs[@]} runs; load now $(load) on $(nproc --all) cores"
for ((round = 1; round <= reps; round++)); do
  for vocab in $vocabs; do
    # Rotate the order each round: no configuration always runs first (or right after another).
    for ((i = 0; i < ${#configs[@]}; i++)); do
      config=${configs[$(((i + round - 1) % ${#configs[@]}))]}
      run_one "$round" "$vocab" "$config" base
      run_one "$round" "$vocab" "$config" full
    done
  done
done
echo "peer_compare.sh: runs took $(($(date +%s) - start)) s"
"$python" "$root/benchmarks/peer_table.py" --index "$index" --skip "$skip" --out "$out"
