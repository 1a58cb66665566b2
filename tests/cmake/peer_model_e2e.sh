#!/usr/bin/env bash
# peer_model_e2e.sh MPIEXEC... -- PREPARE TRAIN WORK EXPORT PYTHON PEER
# The plain PyTorch model of benchmarks/peer_pytorch.py, which the quality and speed comparisons
# train beside libedit, computes what libedit's GPT computes: for gpt2 (tied head) and llama
# (untied and tied), a model trained on 2 ranks is exported and the peer, loading the weights,
# must report the val loss libedit's own evaluation logged, on the same val batches.
# Skipped (the output says "edit-test-skipped") without a Python that has torch and numpy.
set -uo pipefail
source "$(dirname "$0")/e2e_corpus.sh" 11 "an independent model of the same weights." "${@:1:$#-3}"
export_tool=${*: -3:1} python=${*: -2:1} peer=${*: -1:1}
if ! "$python" -c "import torch, numpy" > /dev/null 2>&1; then
  echo "edit-test-skipped: $python has no torch or numpy (Debian: python3-torch, python3-numpy)"
  exit 0
fi
failures=0
for model in "gpt2 auto" "llama off" "llama on"; do
  read -r style tie <<< "$model"
  run=$work/$style-$tie
  "${mpiexec[@]}" -np 2 "$train" --model tiny --style "$style" --tie-embeddings "$tie" --seq-len 32 --batch-size 4 \
      --train-data "$work/data/train_*.bin" --val-data "$work/data/val_*.bin" --steps 24 --lr 3e-3 --warmup-steps 4 --sync-every 4 \
      --checkpoint-every 24 --eval-every 24 --eval-batches 3 --log-level warn --sample-tokens 0 --out-dir "$run" \
      > "$run.log" 2>&1 || { cat "$run.log"; echo "FAIL: training $style ($tie) failed"; failures=$((failures + 1)); continue; }
  "$export_tool" --run "$run" --out "$run/export/model.safetensors" > /dev/null || { failures=$((failures + 1)); continue; }
  libedit=$(awk 'END { print $4 }' "$run/loss.tsv")
  line=$("$python" "$peer" --check-export "$run/export/model.safetensors" --val-data "$work/data/val_*.bin" \
           --batch-size 4 --eval-batches 3 --ranks 2 --seed 1337 2>&1)
  peer_loss=$(sed -n 's/.*val loss here \([0-9.]*\).*/\1/p' <<< "$line")
  # Both sum the same fp32 products in other orders (equal to ~1e-6, not bit for bit), and loss.tsv
  # rounds to 6 digits.
  if [[ -z $peer_loss ]] || ! awk -v a="$libedit" -v b="$peer_loss" 'BEGIN { d = a - b; exit !((d < 0 ? -d : d) <= 1e-5 * a + 1e-5) }'; then
    echo "FAIL: $style ($tie): libedit's val loss $libedit, the peer's ${peer_loss:-(none)}: $line"
    failures=$((failures + 1))
  else
    echo "ok: $style (tie $tie): libedit $libedit, peer $peer_loss"
  fi
done
[[ $failures -eq 0 ]] || exit 1
rm -rf "$work"
