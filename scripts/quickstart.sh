#!/usr/bin/env bash
# The main job: install, build, prepare the fortunes corpus, then a short EDiT GPT pretraining on
# 2 local MPI ranks (a few minutes on 2 cores), an evaluation, a sample, and runs/quickstart/loss.png.
#   EDIT_RANKS=4 EDIT_STEPS=1600 scripts/quickstart.sh    (more ranks, longer run)
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=${EDIT_BUILD_DIR:-$root/build}
cd "$root"

source "$root/scripts/phases.sh"

phase deps bash scripts/install-deps.sh --programs  # the tests' references come with scripts/test.sh
# The configuration scripts/test.sh uses (so it reuses this build), and only the programs run here.
phase build env EDIT_BUILD_TARGETS="edit-prepare-text edit-train-gpt" bash scripts/build.sh -DEDIT_WERROR=ON

data=data/fortunes
prepare_data() {
  if [[ ! -f $data/train_000000.bin ]]; then
    "$build/tools/edit-prepare-text" --out "$data" /usr/share/games/fortunes
  fi
}
phase data prepare_data

out=runs/quickstart
rm -rf "$out"
ranks=${EDIT_RANKS:-2}
# OpenMPI refuses to start as root unless told; one torch thread per rank.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1
# A 0.8 M-parameter byte GPT (the small preset narrowed to dim 128, 4 blocks): on 2 cores it sees
# ~2 M tokens in 1024 steps and reaches a val loss near 2.16 nats/byte, where samples show words.
# Evaluations and checkpoints fall on outer syncs (every 32 steps), where the anchor they use moves.
seq_len=128 batch=8 sync_every=32 steps=${EDIT_STEPS:-1024}
train() {
  mpirun -np "$ranks" --oversubscribe --bind-to none \
    "$build/tools/edit-train-gpt" --model small --dim 128 --layers 4 --heads 4 \
    --seq-len $seq_len --batch-size $batch --train-data "$data/train_*.bin" --val-data "$data/val_*.bin" \
    --strategy edit --sync-every $sync_every --steps "$steps" --lr 4e-3 --warmup-steps 50 \
    --eval-every 128 --log-every 128 --checkpoint-every 256 --out-dir "$out" --sample-tokens 200
}
phase train train

plot() {
  # The outer syncs (every H steps) as vertical lines, at the tokens seen by then.
  local syncs="" tokens
  for ((s = sync_every; s <= steps; s += sync_every)); do
    tokens=$((s * batch * seq_len * ranks))
    syncs+="set arrow from $tokens, graph 0 to $tokens, graph 1 nohead dashtype 2 linecolor rgb '#e69f00'"$'\n'
  done
  gnuplot <<GNUPLOT
set terminal png size 900,540
set output "$out/loss.png"
set title "EDiT byte GPT (dim 128, 4 blocks) on fortunes, $ranks ranks (orange lines: outer syncs, every $sync_every steps)"
set xlabel "tokens"
set ylabel "loss (nats per byte)"
set grid ytics
$syncs
plot "$out/loss.tsv" using 2:3 with linespoints title "train", \
     "$out/loss.tsv" using 2:4 with linespoints title "val"
GNUPLOT
}
phase plot plot
echo "wrote $out/loss.png, $out/loss.tsv and $out/metrics.jsonl"
