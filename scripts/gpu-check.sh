#!/usr/bin/env bash
# The GPU path end to end, on one CUDA machine with a PyTorch 2.x (CUDA) installed:
#   1. builds libedit against that PyTorch's LibTorch, NCCL and the CUDA toolkit;
#   2. runs the CUDA and NCCL tests (NCCL between two ranks where there are two GPUs);
#   3. benchmarks GPT-2 124M in bf16 on one GPU (tokens/s and MFU for --strategy none, edit with
#      H = 32, and ddp), against the same model in a plain PyTorch loop on the same GPU, eager and
#      torch.compile'd (benchmarks/peer_pytorch.py: the independent reference), then two ranks on
#      that one GPU through the MPI host-staging path, and on two GPUs through NCCL where the
#      machine has them;
#   4. writes <out>/gpu_bench.csv and prints the table (markdown), with a profile of three steps of
#      --strategy none (device busy share, time per kernel kind, the costliest kernels);
#   5. last, the whole CPU unit suite against this LibTorch (after the figures, which matter more
#      when the machine's time is short).
# A build that fails in a test file still benchmarks with the edit-train-gpt it built (and exits
# non-zero at the end), so one bad test does not cost the figures.
#
#   scripts/gpu-check.sh [--out DIR] [--steps N] [--batch-size B] [--skip-build] [--skip-tests]
#
# Environment: EDIT_DEPS_PREFIX  a prefix holding spdlog, {fmt}, CLI11, nlohmann-json and GoogleTest
#                                where they are not installed system-wide (an offline machine);
#              EDIT_PEAK_TFLOPS  the GPU's dense bf16 peak (default: from its name, e.g. 989 for H100/H200 SXM);
#              PYTHON            the python3 that has torch (default: python3).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=${EDIT_BUILD_DIR:-$root/build-gpu}
out=$build/gpu-check
steps=96
batch=16
skip_build=0
skip_tests=0
build_failed=0
stamp=/dev/null  # set when this run builds
while [[ $# -gt 0 ]]; do
  case $1 in
    --out) out=$2; shift 2 ;;
    --steps) steps=$2; shift 2 ;;
    --batch-size) batch=$2; shift 2 ;;
    --skip-build) skip_build=1; shift ;;
    --skip-tests) skip_tests=1; shift ;;
    *) echo "gpu-check.sh: unknown argument '$1'; see the comment at the top of $0" >&2; exit 2 ;;
  esac
done
py=${PYTHON:-python3}
mkdir -p "$out"
log() { echo "== $(date +%T) $*"; }

command -v nvidia-smi >/dev/null && nvidia-smi -L || { echo "gpu-check.sh: no nvidia-smi: this needs a CUDA machine" >&2; exit 1; }
gpu_name=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)
torch_dir=$("$py" -c 'import torch; print(torch.utils.cmake_prefix_path)')/Torch
nccl_root=$("$py" - <<'PY'
import os
try:
    import nvidia.nccl as n
    print(list(n.__path__)[0])
except Exception:
    print("")
PY
)
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1
export PMIX_MCA_pcompress_base_silence_warning=1
if [[ -n ${EDIT_DEPS_PREFIX:-} ]]; then
  export LD_LIBRARY_PATH=$EDIT_DEPS_PREFIX/lib/x86_64-linux-gnu:$EDIT_DEPS_PREFIX/lib:${LD_LIBRARY_PATH:-}
fi

if [[ $skip_build == 0 ]]; then
  log "build against $torch_dir"
  args=(-DTorch_DIR="$torch_dir" -DEDIT_WITH_CUDA=ON -DEDIT_WITH_NCCL=ON -DEDIT_BUILD_KERNELS=ON
        -DCMAKE_CUDA_ARCHITECTURES="${EDIT_CUDA_ARCHS:-90}" -DEDIT_ALLOCATOR=system)
  [[ -n ${EDIT_DEPS_PREFIX:-} ]] && args+=(-DCMAKE_PREFIX_PATH="$EDIT_DEPS_PREFIX")
  if [[ -n $nccl_root && -f $nccl_root/include/nccl.h ]]; then
    args+=(-DEDIT_NCCL_INCLUDE_DIR="$nccl_root/include" -DEDIT_NCCL_LIBRARY="$(ls "$nccl_root"/lib/libnccl.so* | head -1)")
  fi
  # Only what the checks run (EDIT_BUILD_TARGETS="" builds everything): the multi-rank tests only
  # where NCCL has two GPUs to run them on.
  targets="edit_tests edit-train-gpt"
  [[ $(nvidia-smi -L | wc -l) -ge 2 ]] && targets+=" edit_mpi_tests"
  stamp=$out/.build-started
  touch "$stamp"
  if ! EDIT_BUILD_KEEP_GOING=1 EDIT_BUILD_TARGETS=${EDIT_BUILD_TARGETS-$targets} EDIT_BUILD_DIR=$build bash "$root/scripts/build.sh" "${args[@]}" >"$out/build.log" 2>&1; then
    grep -E "error" "$out/build.log" | sort | uniq -c | sort -rn | head -60
    echo "gpu-check.sh: the build failed; see $out/build.log" >&2
    build_failed=1
    # A test file that does not compile must not cost the figures: with a freshly linked
    # edit-train-gpt the benchmarks still run (and the script still fails at the end).
    [[ $build/tools/edit-train-gpt -nt $stamp ]] || exit 1
    echo "gpu-check.sh: edit-train-gpt was built; the benchmarks run all the same" >&2
  fi
  grep -E "libedit |warning: " "$out/build.log" | head -20 || true
fi

tests_failed=0
# The test binary, when this run built it (or was told to skip the build).
tests_built() { [[ -x $build/tests/edit_tests && ( $skip_build == 1 || $build/tests/edit_tests -nt $stamp ) ]]; }
if [[ $skip_tests == 0 ]] && ! tests_built; then
  echo "gpu-check.sh: edit_tests was not built; no tests run" >&2
  tests_failed=1
elif [[ $skip_tests == 0 ]]; then
  # A failed test is reported at the end; the benchmark still runs.
  log "CUDA and NCCL tests"
  "$build/tests/edit_tests" --gtest_filter='*Cuda*:*CUDA*:*Nccl*:*NCCL*:*Gpu*:*GPU*' > "$out/tests_cuda.log" 2>&1 || tests_failed=1
  grep -E "^\[  (PASSED|FAILED|SKIPPED) |Failure|Expected|actual" "$out/tests_cuda.log" | head -30
  gpus=$(nvidia-smi -L | wc -l)
  if [[ $gpus -ge 2 ]]; then
    log "NCCL across 2 GPUs"
    mpirun -np 2 --oversubscribe --bind-to none "$build/tests/edit_mpi_tests" --gtest_filter='NcclMesh*' \
      > "$out/tests_nccl_np2.log" 2>&1 || tests_failed=1
    grep -E "^\[  (PASSED|FAILED|SKIPPED) |Failure" "$out/tests_nccl_np2.log" | head -10
  fi
fi

log "benchmark data"
data=$build/bench-data
"$py" - "$data" <<'PY'
import array, os, random, struct, sys
d = sys.argv[1]; os.makedirs(d, exist_ok=True)
rng = random.Random(0)
for name, n in (("train_000.bin", 4_000_000), ("val_000.bin", 200_000)):
    tokens = array.array("H", (rng.randrange(50257) for _ in range(n)))  # little-endian hosts
    with open(os.path.join(d, name), "wb") as f:  # llm.c header: magic, version 1, count
        f.write(struct.pack("<256i", 20240520, 1, n, *([0] * 253))); f.write(tokens.tobytes())
PY

# One run: label, ranks, extra flags (RUN_BATCH=B in front sets this run's batch, RUN_ENV="K=V ..."
# its environment). Writes
# <out>/<label>/metrics.jsonl.
run() {
  local label=$1 ranks=$2 run_batch=${RUN_BATCH:-$batch}; shift 2
  log "run $label ($ranks rank(s)): $*"
  local launcher=()
  [[ $ranks -gt 1 ]] && launcher=(mpirun -np "$ranks" --oversubscribe --bind-to none)
  env ${RUN_ENV:-} "${launcher[@]}" "$build/tools/edit-train-gpt" --model 124m --device cuda --dtype bf16 \
    --train-data "$data/train_000.bin" --val-data "$data/val_000.bin" --batch-size "$run_batch" --lr 6e-4 \
    --warmup-steps 4 --eval-every 0 --eval-batches 1 --log-every 32 --checkpoint-every -1 --out-dir "$out/$label" --overwrite "$@" \
    > "$out/$label.log" 2>&1 || echo "run $label failed: $(tail -3 "$out/$label.log")"
  grep -E "device|step +[0-9]+/|rror" "$out/$label.log" | tail -4 || true
  report > "$out/gpu_bench.md"  # after every run: a partial table survives a stop
}
report() {
"$py" - "$out" "$gpu_name" "${EDIT_PEAK_TFLOPS:-}" "$batch" <<'PY'
import csv, json, os, statistics, sys
out, gpu, peak_arg, batch = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
peaks = {"H100": 989.4, "H200": 989.4, "GH200": 989.4, "A100": 312.0, "L40S": 362.1, "B200": 2250.0}
peak = float(peak_arg) if peak_arg else next((v for k, v in peaks.items() if k in gpu), float("nan"))
# GPT-2 124M (vocabulary 50304, tied head, 12 layers, width 768, context 1024): parameters N
# and the attention FLOPs per token (PaLM's 12 L d T) on top of 6 N.
V, T, d, L = 50304, 1024, 768, 12
N = V * d + T * d + L * (2 * 2 * d + 4 * d * d + 4 * d + 2 * 4 * d * d + 4 * d + d) + 2 * d
flops_per_token = 6 * N + 12 * L * d * T
rows = []
for label in ("none", "none_batch2x", "none_aten_loss", "edit_h32", "ddp", "none_recompute", "pytorch_eager",
              "pytorch_compile",
              "edit_h8_np2_mpi", "fsdp_edit_h8_s2_np2_mpi", "edit_h8_np2_nccl", "fsdp_edit_h8_s2_np2_nccl"):
    if label.startswith("pytorch"):  # a PyTorch reference run: one CSV row
        peer = os.path.join(out, label, "peer.csv")
        got = list(csv.DictReader(open(peer))) if os.path.exists(peer) else []
        if not got:
            ran = os.path.exists(os.path.join(out, label + ".log"))
            rows.append((label, "failed" if ran else "not run", "", "", "", "")); continue
        r = got[-1]
        tps = float(r["tokens_per_s"])
        rows.append((label, f"{int(r['steps']) - int(r['skip'])}", f"{tps:,.0f}",
                     f"{100 * flops_per_token * tps / (peak * 1e12):.1f}", f"{float(r['mean_step_ms']):.1f}", ""))
        continue
    path = os.path.join(out, label, "metrics.jsonl")
    lines = [json.loads(l) for l in open(path) if l.strip()] if os.path.exists(path) else []
    steps = [l for l in lines if l["step"] >= 5]   # after the warm-up of kernels and allocator
    if not steps:
        ran = os.path.exists(os.path.join(out, label + ".log"))
        rows.append((label, "failed" if ran else "not run", "", "", "", "")); continue
    total_tokens = sum(l["tokens_per_s"] * l["seconds"] for l in steps)
    total_seconds = sum(l["seconds"] for l in steps)
    tps = total_tokens / total_seconds  # all ranks together, averaged over time
    mfu = flops_per_token * tps / (peak * 1e12)
    sync = sum(l.get("sync_wait_s", 0.0) for l in steps)
    rows.append((label, f"{len(steps)}", f"{tps:,.0f}", f"{100 * mfu:.1f}", f"{total_seconds / len(steps) * 1e3:.1f}", f"{sync:.2f}"))
base = next((float(r[2].replace(",", "")) for r in rows if r[0] == "none" and r[2]), None)
with open(os.path.join(out, "gpu_bench.csv"), "w") as f:
    f.write("gpu,run,steps,tokens_per_s,mfu_percent,ms_per_step,sync_wait_s,vs_none\n")
    for r in rows:
        rel = f"{float(r[2].replace(',', '')) / base:.3f}" if base and r[2] else ""
        f.write(",".join([gpu, *[c.replace(",", "") for c in r], rel]) + "\n")
print(f"GPT-2 124M, bf16, batch {batch} x {T} per rank, {gpu} (dense bf16 peak {peak} TFLOP/s), N = {N:,}")
print("| run | steps timed | tokens/s | MFU % | ms/step | sync wait s | vs none |")
print("|---|---|---|---|---|---|---|")
for r in rows:
    rel = f"{float(r[2].replace(',', '')) / base:.3f}" if base and r[2] else ""
    print("| " + " | ".join([*r, rel]) + " |")
PY
}

run none 1 --strategy none --steps "$steps"
# Twice the sequences per step: how much of the MFU gap is per-step overhead (launches, host reads).
RUN_BATCH=$((batch * 2)) run none_batch2x 1 --strategy none --steps "$steps"
# LibTorch's loss over an fp32 copy of the logits instead of the fused kernels: what they save.
RUN_ENV="EDIT_CROSS_ENTROPY=aten" run none_aten_loss 1 --strategy none --steps "$steps"
run edit_h32 1 --strategy edit --sync-every 32 --steps "$steps"
run ddp 1 --strategy ddp --steps "$steps"
# Each block recomputed in its backward: what it costs here (MFU counts the model's FLOPs only, so
# the recompute shows as a lower MFU).
run none_recompute 1 --strategy none --steps "$steps" --activation-checkpointing
# The same model and step in a plain PyTorch loop on this GPU (bf16 autocast, torch's fused
# attention and AdamW): eager, then compiled (torch.compile fuses what eager runs op by op; its
# first steps compile, and are left out with the other warm-up steps).
peer() {
  local label=$1; shift
  log "run $label: benchmarks/peer_pytorch.py $*"
  mkdir -p "$out/$label"
  rm -f "$out/$label/peer.csv"
  "$py" "$root/benchmarks/peer_pytorch.py" --device cuda --dtype bf16 --attention sdpa --fused-adamw \
    --vocab-size 50304 --seq-len 1024 --dim 768 --heads 12 --layers 12 --batch-size "$batch" \
    --train-data "$data/train_000.bin" --val-data "$data/val_000.bin" --lr 6e-4 --warmup-steps 4 \
    --skip-steps 5 --eval-batches 1 --log-every 32 --csv "$out/$label/peer.csv" --label "$label" "$@" \
    > "$out/$label.log" 2>&1 || echo "run $label failed: $(tail -3 "$out/$label.log")"
  grep -E "peer_pytorch" "$out/$label.log" | tail -2 || true
  report > "$out/gpu_bench.md"
}
peer pytorch_eager --steps "$steps"
# Steps 20-22 of a short run profiled (a run of its own: profiled steps are slower): how busy the
# GPU is, time per kernel kind, the costliest kernels.
run profile 1 --strategy none --steps 30 --profile-steps 20:3
# (A failed run leaves no report: that must not stop the runs after it.)
{ awk '/profile of step/ {p = 1} p && /^\[/ && !/profile of step/ {p = 0} p' "$out/profile.log" | sed 's/^\[.*\] //'; } \
  > "$out/profile.md" 2>/dev/null || true
cat "$out/profile.md"
peer pytorch_compile --steps "$steps" --compile
# Two ranks on the one GPU: NCCL refuses that, so their collectives go through MPI and host memory.
# Few steps: staging makes them slow (1.7 s a step with S = 2), and they show its cost, nothing more.
run edit_h8_np2_mpi 2 --strategy edit --sync-every 8 --steps 24 --comm-backend mpi
run fsdp_edit_h8_s2_np2_mpi 2 --strategy edit --sync-every 8 --shard-size 2 --steps 12 --comm-backend mpi
# Two ranks on two GPUs of their own: NCCL between them.
if [[ $(nvidia-smi -L | wc -l) -ge 2 ]]; then
  run edit_h8_np2_nccl 2 --strategy edit --sync-every 8 --steps $((steps / 2)) --comm-backend nccl
  run fsdp_edit_h8_s2_np2_nccl 2 --strategy edit --sync-every 8 --shard-size 2 --steps $((steps / 2)) --comm-backend nccl
fi
cat "$out/gpu_bench.md"
[[ -s $out/profile.md ]] && { echo; echo "Where the time of --strategy none goes (CSV and trace in $out/profile/):"; cat "$out/profile.md"; } >> "$out/gpu_bench.md"

if [[ $skip_tests == 0 ]] && tests_built; then
  log "unit tests"
  "$build/tests/edit_tests" --gtest_brief=1 > "$out/tests_unit.log" 2>&1 || tests_failed=1
  tail -5 "$out/tests_unit.log"
fi
log "done: $out/gpu_bench.csv"
[[ $build_failed == 0 ]] || { echo "gpu-check.sh: the build failed (the figures above are from what built); see $out/build.log" >&2; exit 1; }
[[ $tests_failed == 0 ]] || { echo "gpu-check.sh: tests failed; see $out/tests_*.log" >&2; exit 1; }
