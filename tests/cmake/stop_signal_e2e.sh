#!/usr/bin/env bash
# stop_signal_e2e.sh MPIEXEC... -- PREPARE TRAIN WORK
# A signal in the middle of a 2-rank run (SIGUSR1 to mpirun, which forwards it to every rank;
# SIGTERM to one rank alone) stops every rank at one step with a checkpoint and exit code
# 128 + the signal; --resume auto then ends where an uninterrupted run ends, to the last digit.
set -uo pipefail
source "$(dirname "$0")/e2e_corpus.sh" 17 "a corpus that a signal interrupts." "$@"
common=(--model tiny --seq-len 32 --batch-size 4 --steps 1500 --eval-every 500 --log-every 0 --seed 5
        --train-data "$work/data/train_*.bin" --val-data "$work/data/val_*.bin")
args=("${common[@]}" --sync-every 4)
failures=0
fail() { echo "FAIL: $*"; failures=$((failures + 1)); }

"${mpiexec[@]}" -np 2 "$train" "${args[@]}" --out-dir "$work/whole" > "$work/whole.log" 2>&1 \
  || { cat "$work/whole.log"; echo "the uninterrupted run failed"; exit 1; }
reference=$(tail -n 1 "$work/whole/loss.tsv")

# interrupt NAME SIGNAL TARGET: TARGET is "mpirun" or "rank1".
interrupt() {
  local name=$1 signal=$2 target=$3 out="$work/$1"
  "${mpiexec[@]}" -np 2 "$train" "${args[@]}" --out-dir "$out" > "$work/$name.log" 2>&1 &
  local launcher=$!
  # Signal once the run is well under way (rank 0 writes a metrics line per step).
  for _ in $(seq 1 600); do
    [[ -f "$out/metrics.jsonl" && $(wc -l < "$out/metrics.jsonl") -ge 100 ]] && break
    sleep 0.1
  done
  if [[ $target == mpirun ]]; then
    kill -"$signal" "$launcher"
  else
    # The newest of the two rank processes (children of the launcher's tree) alone.
    kill -"$signal" "$(pgrep -n -f -- "--out-dir $out")"
  fi
  wait "$launcher"
  local rc=$? expected=$((128 + $(kill -l "$signal")))
  [[ $rc -eq $expected ]] || { fail "$name: exit $rc, expected $expected"; sed 's/^/    /' "$work/$name.log" | tail -20; return; }
  local step
  step=$(grep -oE "every rank stopped at step [0-9]+" "$work/$name.log" | grep -oE "[0-9]+$")
  [[ -n $step ]] || { fail "$name: no message of the stop"; return; }
  [[ -d "$out/checkpoints/step_$(printf %08d "$step")" ]] || fail "$name: no checkpoint of step $step"
  "${mpiexec[@]}" -np 2 "$train" "${args[@]}" --out-dir "$out" --resume auto > "$work/$name.resumed.log" 2>&1 \
    || { fail "$name: the resumed run failed"; tail -20 "$work/$name.resumed.log"; return; }
  if [[ -n $reference ]]; then
    [[ "$(tail -n 1 "$out/loss.tsv")" == "$reference" ]] \
      || fail "$name: stopped at step $step and resumed, it ends at '$(tail -n 1 "$out/loss.tsv")', not '$reference'"
  else  # (on the wall clock: other steps, but the same end)
    [[ "$(tail -n 1 "$out/loss.tsv" | cut -f 1)" == 1500 ]] || fail "$name: the resumed run does not end at step 1500"
  fi
  echo "ok: $name (stopped at step $step of 1500, exit $rc, resumed to the end)"
}

interrupt usr1_to_mpirun USR1 mpirun
interrupt term_to_one_rank TERM rank1
# A-EDiT votes at its rounds (every 0.2 s here), where the replicas meet anyway.
args=("${common[@]}" --strategy aedit --sync-interval 0.2)
reference=""
interrupt aedit_usr1_to_mpirun USR1 mpirun
[[ $failures -eq 0 ]] || { echo "$failures failure(s)"; exit 1; }
echo "all stop-signal cases passed"
