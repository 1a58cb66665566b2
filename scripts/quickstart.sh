#!/usr/bin/env bash
# The main job: install, build, then a short run on 2 local MPI ranks.
#
# Today it runs examples/custom_trainer (a trainer linked against libedit: sharded units, EDiT with
# the pseudo-gradient penalty, the Trainer's JSONL metrics) on 2 ranks. The EDiT GPT pretraining on
# the fortunes corpus (edit-train-gpt) replaces it once that binary exists.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=${EDIT_BUILD_DIR:-$root/build}
cd "$root"

bash scripts/install-deps.sh
bash scripts/build.sh

ranks=${EDIT_RANKS:-2}
# OpenMPI refuses to start as root unless told; one torch thread per rank.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1
mkdir -p runs/quickstart
rm -f runs/quickstart/metrics.jsonl
mpirun -np "$ranks" --oversubscribe --bind-to none \
  "$build/examples/custom_trainer/custom_trainer" --strategy edit --steps 400 --sync-every 16 \
  --metrics runs/quickstart/metrics.jsonl
echo "metrics: runs/quickstart/metrics.jsonl"
