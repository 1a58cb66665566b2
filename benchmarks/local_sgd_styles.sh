#!/usr/bin/env bash
# Local SGD against Ddp for both model styles, with an independent implementation beside libedit:
# the val loss each reaches after --steps on --ranks MPI ranks (one replica each), for
#   libedit (edit-train-gpt): ddp; none (every rank alone: the floor of no communication); edit
#     with DiLoCo's outer defaults (Nesterov, lr 0.7, momentum 0.9); edit with --outer average
#     (the replicas' mean, no momentum); edit with --outer-lr 0.5 --outer-momentum 0.5;
#   peer (benchmarks/peer_pytorch.py, plain PyTorch): ddp; diloco with the defaults; diloco with
#     lr 1, momentum 0 (the mean);
#   both: streaming (Streaming DiLoCo, fp32 exchanges, --fragments 4 strided, --overlap 1, alpha
#     0.5, the outer defaults), the peer's written from the schedule in include/edit/sync/streaming.h;
# for --styles (gpt2, llama: tiny preset, T 64, 8 sequences per rank and step, warm-up --warmup,
# then a constant lr of 1e-3) and --seeds. The two implementations start from different random
# weights, so their losses agree only to the noise between seeds; what must agree is the ordering.
# "recovered" is (none - run) / (none - ddp): the share of data parallelism's gain over training
# alone that a run keeps while talking H times less.
#
#   benchmarks/local_sgd_styles.sh [--out DIR] [--ranks 4] [--steps 512] [--warmup 128] [--sync-every 16]
#                                  [--styles "gpt2 llama"] [--seeds "5 7"] [--data DIR]
#                                  [--libedit-runs "ddp none ..."] [--peer-runs "ddp diloco ..."]
#
# Writes DIR/runs.csv (every run) and DIR/table.md (means over the seeds). About 20 s a run on 2
# cores with 4 ranks; the defaults make 40 runs. Environment: EDIT_BUILD_DIR, PYTHON (default
# /usr/bin/python3, which has Debian's python3-torch).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=${EDIT_BUILD_DIR:-$root/build}
python=${PYTHON:-/usr/bin/python3}
out=$root/runs/local_sgd_styles ranks=4 steps=512 warmup=128 h=16 styles="gpt2 llama" seeds="5 7"
libedit_runs="ddp none edit edit-average edit-0.5-0.5 streaming" peer_runs="ddp diloco diloco-average streaming"
data=$root/data/fortunes
while [[ $# -gt 0 ]]; do
  case $1 in
    --out) out=$2; shift 2 ;;
    --ranks) ranks=$2; shift 2 ;;
    --steps) steps=$2; shift 2 ;;
    --warmup) warmup=$2; shift 2 ;;
    --sync-every) h=$2; shift 2 ;;
    --styles) styles=$2; shift 2 ;;
    --seeds) seeds=$2; shift 2 ;;
    --data) data=$2; shift 2 ;;
    --libedit-runs) libedit_runs=$2; shift 2 ;;
    --peer-runs) peer_runs=$2; shift 2 ;;
    -h|--help) sed -n '2,26p' "$0"; exit 0 ;;
    *) echo "local_sgd_styles.sh: unknown option $1 (see the header of this script)" >&2; exit 2 ;;
  esac
done
[[ -x $build/tools/edit-train-gpt ]] || { echo "no $build/tools/edit-train-gpt: build first (scripts/build.sh)" >&2; exit 1; }
[[ -f $data/train_000000.bin ]] || { echo "no corpus in $data: run edit-prepare-text --out $data <texts> first" >&2; exit 1; }
"$python" -c "import torch" 2> /dev/null || { echo "$python has no torch (Debian: python3-torch); set PYTHON" >&2; exit 1; }
export OMP_NUM_THREADS=1
mpi=(mpirun -np "$ranks" --oversubscribe --bind-to none)
[[ $(id -u) -eq 0 ]] && export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
files=(--train-data "$data/train_000000.bin" --val-data "$data/val_000000.bin")
schedule=(--seq-len 64 --batch-size 8 --steps "$steps" --warmup-steps "$warmup" --lr 1e-3 --min-lr 1e-3)
mkdir -p "$out/runs"
echo "style,seed,impl,run,val_loss" > "$out/runs.csv"
for seed in $seeds; do
  for style in $styles; do
    for run in $libedit_runs; do
      case $run in
        ddp | none) args=(--strategy "$run") ;;
        edit) args=(--strategy edit --sync-every "$h") ;;
        edit-average) args=(--strategy edit --sync-every "$h" --outer average) ;;
        edit-0.5-0.5) args=(--strategy edit --sync-every "$h" --outer-lr 0.5 --outer-momentum 0.5) ;;
        streaming) args=(--strategy streaming --sync-every "$h" --fragments 4 --overlap 1) ;;
        *) echo "unknown libedit run $run" >&2; exit 2 ;;
      esac
      dir=$out/runs/libedit_${style}_${seed}_$run
      rm -rf "$dir"
      "${mpi[@]}" "$build/tools/edit-train-gpt" --model tiny --style "$style" "${files[@]}" "${schedule[@]}" \
        --seed "$seed" --eval-every 0 --log-level warn --sample-tokens 0 --checkpoint-every -1 --out-dir "$dir" "${args[@]}" \
        > "$dir.log" 2>&1 || { echo "libedit $style $run (seed $seed) failed: see $dir.log" >&2; exit 1; }
      echo "$style,$seed,libedit,$run,$(awk 'END { print $4 }' "$dir/loss.tsv")" | tee -a "$out/runs.csv"
    done
    for run in $peer_runs; do
      case $run in
        ddp) args=(--strategy ddp) ;;
        diloco) args=(--strategy diloco --sync-every "$h") ;;
        diloco-average) args=(--strategy diloco --sync-every "$h" --outer-lr 1 --outer-momentum 0) ;;
        streaming) args=(--strategy streaming --sync-every "$h" --fragments 4 --overlap 1) ;;
        *) echo "unknown peer run $run" >&2; exit 2 ;;
      esac
      log=$out/runs/peer_${style}_${seed}_$run.log
      "${mpi[@]}" "$python" "$root/benchmarks/peer_pytorch.py" --style "$style" --dim 64 --heads 4 --layers 2 \
        "${files[@]}" "${schedule[@]}" --seed "$seed" "${args[@]}" > "$log" 2>&1 \
        || { echo "peer $style $run (seed $seed) failed: see $log" >&2; exit 1; }
      echo "$style,$seed,peer,$run,$(sed -n 's/.*| val loss \([0-9.]*\).*/\1/p' "$log" | tail -n 1)" | tee -a "$out/runs.csv"
    done
  done
done
"$python" - "$out" "$ranks" "$steps" "$h" <<'PY' | tee "$out/table.md"
import csv, statistics, sys
out, ranks, steps, h = sys.argv[1:5]
rows = list(csv.DictReader(open(f"{out}/runs.csv")))
seeds = sorted({r["seed"] for r in rows})
print(f"{ranks} ranks, {steps} steps, H {h}; val loss, mean over seeds {', '.join(seeds)}\n")
print("| style | implementation | run | val loss | vs ddp | recovered |")
print("| --- | --- | --- | --- | --- | --- |")
def mean(style, impl, run):  # None when that run was not made
    losses = [float(r["val_loss"]) for r in rows if (r["style"], r["impl"], r["run"]) == (style, impl, run)]
    return statistics.mean(losses) if losses else None
for style in dict.fromkeys(r["style"] for r in rows):
    floor = mean(style, "libedit", "none")
    for impl in ("libedit", "peer"):
        ddp = mean(style, impl, "ddp")
        for run in dict.fromkeys(r["run"] for r in rows if (r["style"], r["impl"]) == (style, impl)):
            loss = mean(style, impl, run)
            # The floor is libedit's (the peer has no "none"); recovery against each one's own ddp.
            recovered = None
            if floor is not None and ddp is not None and floor != ddp and run not in ("ddp", "none"):
                recovered = (floor - loss) / (floor - ddp)
            print(f"| {style} | {impl} | {run} | {loss:.4f} | {'' if ddp is None else f'{loss / ddp:.3f}'} | "
                  f"{'' if recovered is None else f'{100 * recovered:.0f}%'} |")
PY
