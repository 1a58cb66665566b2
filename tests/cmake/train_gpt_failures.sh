#!/usr/bin/env bash
# train_gpt_failures.sh MPIEXEC... -- PREPARE TRAIN WORK
# Faults and bad input against edit-train-gpt on 2 ranks. Each case must exit non-zero within a
# bound, print a message that names the problem, and leave what was saved before byte-identical.
set -uo pipefail
source "$(dirname "$0")/e2e_corpus.sh" 13 "a small corpus for the failure tests." "$@"
# No --strategy or --seq-len here: cases set them (an option given twice is an error of its own).
base=(--model tiny --batch-size 4 --train-data "$work/data/train_*.bin" --val-data "$work/data/val_*.bin"
        --sync-every 4 --eval-every 0 --log-every 0 --log-level warn)
common=("${base[@]}" --seq-len 32)
failures=0
fail() { echo "FAIL: $*"; failures=$((failures + 1)); }
snapshot() { (cd "$1" && find . -type f ! -name '*.log' | sort | xargs md5sum) 2> /dev/null; }

# expect_failure NAME BOUND_S PATTERN ARGS...: non-zero exit within BOUND_S, output matching PATTERN.
expect_failure() {
  local name=$1 bound=$2 pattern=$3
  shift 3
  local start=$SECONDS
  timeout 120 "${mpiexec[@]}" -np 2 "$train" "${common[@]}" "$@" > "$work/$name.log" 2>&1
  local rc=$? took=$((SECONDS - start))
  if [[ $rc -eq 0 ]]; then fail "$name: exited 0"; return; fi
  # 128 + N: a rank died of signal N (an abort from an uncaught exception, a crash), not an error exit.
  if [[ $rc -ge 128 ]]; then fail "$name: crashed (exit $rc) instead of exiting with an error"; fi
  if [[ $took -gt $bound ]]; then fail "$name: took ${took} s (bound ${bound} s)"; fi
  grep -qE -- "$pattern" "$work/$name.log" || { fail "$name: no message matching '$pattern'"; sed 's/^/    /' "$work/$name.log" | head -20; }
  echo "ok: $name (exit $rc, ${took} s)"
}

# said_once NAME PATTERN: the case's message came once, not once per rank (faults in the command
# line and options, which every rank finds alike, are reported by rank 0).
said_once() {
  local count
  count=$(grep -cE -- "$2" "$1")
  [[ $count -eq 1 ]] || fail "$(basename "$1" .log): '$2' was printed $count times, not once"
}

# A run with checkpoints to protect.
"${mpiexec[@]}" -np 2 "$train" "${common[@]}" --steps 8 --checkpoint-every 4 --out-dir "$work/run" > "$work/first.log" 2>&1 \
  || { cat "$work/first.log"; echo "the first run failed"; exit 1; }
before=$(snapshot "$work/run")

expect_failure reused_out_dir 30 "holds a previous run.*--resume auto.*--overwrite" --steps 8 --out-dir "$work/run"
expect_failure other_model 30 "resume with the same model" --steps 12 --dim 32 --resume auto --out-dir "$work/run"
# Other heads split the same matrices differently: every shape matches, so only the run's
# config.json tells. Named from an explicit checkpoint folder too.
expect_failure other_heads 30 "another model \\(heads 4 -> 2.*--heads" --steps 12 --heads 2 --resume auto --out-dir "$work/run"
expect_failure other_heads_folder 30 "another model \\(heads 4 -> 2" --steps 12 --heads 2 \
  --resume "$(ls -d "$work/run/checkpoints/step_"* | sort | tail -n 1)/" --out-dir "$work/run_heads"
expect_failure steps_below_checkpoint 30 "past --steps 4" --steps 4 --resume auto --out-dir "$work/run"
# The run is EDiT's: as ddp or none its anchors and outer momenta would be dropped without a word.
expect_failure other_strategy 30 "holds a synchronization state.*strategy is ddp" --steps 12 --strategy ddp \
  --resume auto --out-dir "$work/run"
# One flipped byte in rank 1's newest checkpoint file: every rank stops, naming rank 1.
victim=$(ls -d "$work/run/checkpoints/step_"* | sort | tail -n 1)/rank_00001.bin
cp "$victim" "$work/victim.bak"
printf '\x5a' | dd of="$victim" bs=1 seek=$(($(stat -c %s "$victim") / 2)) conv=notrunc status=none
expect_failure damaged_one_rank 30 "rank\(s\) 1 are damaged" --steps 12 --resume auto --out-dir "$work/run"
cp "$work/victim.bak" "$victim"
# Resuming on other data (the val shard as training data) is refused by the data cursor.
common=("${base[@]/#$work\/data\/train_\*.bin/$work/data/val_*.bin}" --seq-len 32)
expect_failure other_data 30 "the checkpoint was trained on a corpus of" --steps 12 --resume auto --out-dir "$work/run"
common=("${base[@]}" --seq-len 32)
[[ "$(snapshot "$work/run")" == "$before" ]] || fail "a refused start changed the files of the run"
# An update that overflows (lr 1e39) leaves Inf weights before any loss shows them: the checkpoint
# of the next step is refused, and the run's checkpoints stay as they were.
saved=$(snapshot "$work/run/checkpoints")
expect_failure overflowed_update_not_saved 30 "holds NaN or Inf.*so this checkpoint was not written; the newest is still" \
  --steps 12 --lr 1e39 --min-lr 1e39 --checkpoint-every 1 --resume auto --out-dir "$work/run"
[[ "$(snapshot "$work/run/checkpoints")" == "$saved" ]] || fail "an overflowed update changed the saved checkpoints"

touch "$work/a_file"
expect_failure out_dir_under_a_file 30 "a_file" --steps 4 --out-dir "$work/a_file/run"
# Ranks that fail at once write whole lines, never one inside another's.
grep -qE "edit-train-gpt.*edit-train-gpt" "$work/out_dir_under_a_file.log" && fail "out_dir_under_a_file: garbled lines"
expect_failure min_lr_above_lr 30 "--min-lr 0.1 is above --lr" --steps 4 --lr 0.01 --min-lr 0.1 --out-dir "$work/x1"
said_once "$work/min_lr_above_lr.log" "--min-lr 0.1 is above --lr"
expect_failure shard_size_not_dividing 30 "world size 2 is not divisible by shard size 3" --steps 4 --shard-size 3 \
  --out-dir "$work/x18"
said_once "$work/shard_size_not_dividing.log" "is not divisible"
expect_failure no_penalty_with_ddp 30 "--no-penalty" --steps 4 --strategy ddp --no-penalty --out-dir "$work/x2"
expect_failure zero_heads 30 "--heads" --steps 4 --heads 0 --out-dir "$work/x3"
said_once "$work/zero_heads.log" "--heads: Value 0 must be above 0"
expect_failure stop_signals_none_and_more 30 "--stop-signals none turns the signals off" --steps 4 \
  --stop-signals none,usr1 --out-dir "$work/x13"
common=("${base[@]}")
expect_failure profile_not_a_window 30 "--profile-steps 9 is not FIRST:COUNT" --steps 4 --profile-steps 9 --out-dir "$work/x10"
expect_failure profile_after_the_run 30 "--profile-steps 3:2 ends after the run" --steps 4 --profile-steps 3:2 --out-dir "$work/x11"
expect_failure huge_seq_len 30 "lower --seq-len" --steps 4 --seq-len 1000000 --out-dir "$work/x4"
said_once "$work/huge_seq_len.log" "lower --seq-len"
common=("${base[@]}" --seq-len 32)
# --on-nonfinite skip leaves out the steps whose gradients are NaN, up to --max-skipped-steps in all
# (not in a row: here EDiT's syncs put the replicas back on the finite anchor every 4 steps).
expect_failure skipped_steps 60 "has skipped 5 steps already \(--max-skipped-steps 5\)" --steps 30 \
  --lr 1e39 --min-lr 1e39 --warmup-steps 0 --on-nonfinite skip --max-skipped-steps 5 --out-dir "$work/x12"
grep -q "its update was skipped" "$work/skipped_steps.log" || fail "skipped_steps: no warning of a skip"
expect_failure nan_loss 60 "(loss|gradient norm) is (nan|inf|-nan)" --steps 30 --lr 1e12 --warmup-steps 0 --clip 0 --out-dir "$work/x5"

# Option values the library refuses are refused before MPI starts too (exit 2, said once), a bad
# EDIT_COMM_TIMEOUT_S included; before, these exited 1 from every rank, or aborted (134).
expect_usage_error() {
  local name=$1 pattern=$2
  shift 2
  expect_failure "$name" 30 "$pattern" "$@"
  grep -q "MPI_ABORT" "$work/$name.log" && fail "$name: refused after MPI started (MPI_ABORT)"
  said_once "$work/$name.log" "$pattern"
}
expect_usage_error outer_momentum "outer momentum 5 out of range" --steps 4 --outer-momentum 5 --out-dir "$work/x19"
expect_usage_error weight_decay "AdamW weight decay -1 out of range.*--weight-decay" --steps 4 --weight-decay -1 \
  --out-dir "$work/x19"
expect_usage_error comm_timeout_zero "--comm-timeout is 0 s.*at least 0.001 s" --steps 4 --comm-timeout 0 \
  --out-dir "$work/x19"
EDIT_COMM_TIMEOUT_S=0 expect_usage_error comm_timeout_env "EDIT_COMM_TIMEOUT_S is 0 s" --steps 4 --out-dir "$work/x19"
# NaN passes every comparison of a range check: refused as not a number.
expect_usage_error alpha_nan "--alpha: Value nan is not a number" --steps 4 --strategy streaming --alpha nan \
  --out-dir "$work/x19"
expect_usage_error straggler_typo "straggler rule '1-2x' has no RANK:" --steps 4 --straggler 1-2x --out-dir "$work/x19"
[[ -e "$work/x19" ]] && fail "a start refused before MPI created its --out-dir"
# A misspelt backend switch is refused by name (it used to keep the default without a word).
EDIT_CROSS_ENTROPY=atem expect_failure cross_entropy_typo 30 "EDIT_CROSS_ENTROPY='atem' is not a choice" --steps 2 \
  --out-dir "$work/x21"

# A start refused once MPI runs (a misspelt data path) leaves an --out-dir the corrected command
# takes; a run without --checkpoint-every saves its last step; --resume auto where an earlier
# attempt left logs but no checkpoint starts over and keeps those logs.
expect_failure data_typo 30 "no file matches the data pattern" --steps 2 --train-data "$work/data/trian_*.bin" \
  --out-dir "$work/x20"
"${mpiexec[@]}" -np 2 "$train" "${common[@]}" --steps 2 --out-dir "$work/x20" > "$work/after_typo.log" 2>&1 \
  || fail "the corrected command was refused: $(tail -n 3 "$work/after_typo.log")"
[[ $(ls "$work/x20/checkpoints" 2> /dev/null) == "step_00000002" ]] \
  || fail "a run without --checkpoint-every did not save its last step: $(ls "$work/x20/checkpoints" 2>&1)"
rm -rf "$work/x20/checkpoints/step_00000002"
cp "$work/x20/metrics.jsonl" "$work/first_attempt.jsonl"
"${mpiexec[@]}" -np 2 "$train" "${common[@]}" --steps 2 --resume auto --out-dir "$work/x20" > "$work/restart.log" 2>&1 \
  || fail "--resume auto without a checkpoint failed: $(tail -n 3 "$work/restart.log")"
grep -q "no checkpoint under .* yet; starting from step 0 (the earlier attempt's logs are kept" "$work/restart.log" \
  || fail "--resume auto without a checkpoint did not say it starts over"
cmp -s "$work/first_attempt.jsonl" "$work/x20/metrics.jsonl.1" || fail "the earlier attempt's metrics were not kept"
echo "ok: refused start, last step saved, restart keeps logs"

# --config: a good file is read; a bad one is refused, naming the file and the line.
printf 'steps = 2  # from the file\n' > "$work/good.toml"
"${mpiexec[@]}" -np 2 "$train" "${common[@]}" --config "$work/good.toml" --out-dir "$work/cfg" > "$work/cfg.log" 2>&1 \
  || fail "a good --config file failed: $(tail -n 5 "$work/cfg.log")"
[[ $(grep -c '"step"' "$work/cfg/metrics.jsonl" 2> /dev/null) -eq 2 ]] || fail "steps = 2 from --config was not used"
printf 'steps = 2\nbogus = 1\n' > "$work/unknown.toml"
expect_failure config_unknown_key 30 "unknown.toml:2: unknown option 'bogus'" --config "$work/unknown.toml" --out-dir "$work/x6"
said_once "$work/config_unknown_key.log" "unknown option 'bogus'"
printf '[train]\nsteps = 2\n' > "$work/table.toml"
expect_failure config_table 30 "table.toml:1: sections" --config "$work/table.toml" --out-dir "$work/x7"
printf 'steps = 2\nsteps = 3\n' > "$work/twice.toml"
expect_failure config_twice 30 "twice.toml:2: 'steps' is set twice" --config "$work/twice.toml" --out-dir "$work/x8"
printf 'steps = 2\n\x01\x02\x00\n' > "$work/binary.toml"
expect_failure config_binary 30 "binary.toml:2: byte" --config "$work/binary.toml" --out-dir "$work/x9"

# Streaming DiLoCo: options for another strategy, and a schedule that cannot work.
expect_failure streaming_flags_elsewhere 30 "--fragments, --quant apply only to Streaming DiLoCo" --steps 4 \
  --strategy edit --fragments 2 --quant fp4 --out-dir "$work/x13"
# Streaming DiLoCo's and A-EDiT's own options, the model's unit count included, before MPI too.
expect_usage_error fragments_not_dividing_h "--sync-every 4 is not divisible by --fragments 3" --steps 4 \
  --strategy streaming --fragments 3 --out-dir "$work/x14"
common=("${base[@]:0:8}" "${base[@]:10}" --seq-len 32)  # base without its --sync-every 4
[[ " ${common[*]} " != *" --sync-every "* ]] || fail "the cases below need base without --sync-every"
expect_usage_error fragments_past_the_units "--fragments 8 with a model of 4 units" --steps 4 --strategy streaming \
  --fragments 8 --sync-every 8 --out-dir "$work/x14"
expect_usage_error time_limit_below_interval "time limit 1 s is shorter than one sync interval" --steps 4 \
  --strategy aedit --sync-interval 2 --time-limit 1 --out-dir "$work/x14"
common=("${base[@]}" --seq-len 32)

# A-EDiT: a step count where a wall-clock interval is due, and its options for another strategy.
expect_failure straggler_past_the_ranks 30 "slows rank 2, but the job has 2 rank\(s\), 0 to 1" --steps 4 \
  --straggler 2:2x --out-dir "$work/x17"
said_once "$work/straggler_past_the_ranks.log" "slows rank 2"
expect_failure aedit_sync_every 30 "--sync-every counts steps, but A-EDiT syncs on a wall clock" --steps 4 \
  --strategy aedit --sync-interval 1 --out-dir "$work/x15"
expect_failure aedit_flags_elsewhere 30 "--sync-interval, --time-limit apply only to A-EDiT" --steps 4 \
  --strategy edit --sync-interval 1 --time-limit 30 --out-dir "$work/x16"

# Devices and precision: refused before anything is trained, naming the fix.
expect_failure bad_dtype 30 "--dtype" --steps 4 --dtype fp8 --out-dir "$work/x10"
expect_failure nccl_on_cpu 30 "--comm-backend nccl needs CUDA tensors.*--device cuda" --steps 4 --device cpu \
  --comm-backend nccl --out-dir "$work/x11"
if ! command -v nvidia-smi > /dev/null || ! nvidia-smi -L > /dev/null 2>&1; then
  expect_failure cuda_without_gpu 30 "device 'cuda' asked for, but .*--device cpu" --steps 4 --device cuda --out-dir "$work/x12"
fi

# A full disk while training (a file size limit makes writes past 40 KiB fail with EFBIG, as
# ENOSPC would): a loud failure, never exit 0.
# The limit is set inside each rank (mpirun's own shared-memory files must not hit it).
"${mpiexec[@]}" -np 2 bash -c 'trap "" XFSZ; ulimit -f 40; exec "$@"' limited "$train" "${common[@]}" --steps 8 \
    --checkpoint-every 4 --out-dir "$work/full" > "$work/full_disk.log" 2>&1 && fail "full disk: the run exited 0"
grep -q "is the disk full" "$work/full_disk.log" || { fail "full disk: no message"; head -n 20 "$work/full_disk.log"; }
echo "ok: full_disk"

# --overwrite starts over: the old checkpoints are gone, the new run's are there.
"${mpiexec[@]}" -np 2 "$train" "${common[@]}" --steps 2 --checkpoint-every 2 --overwrite --out-dir "$work/run" > "$work/overwrite.log" 2>&1 \
  || fail "--overwrite failed: $(tail -n 5 "$work/overwrite.log")"
[[ $(ls "$work/run/checkpoints") == "step_00000002" ]] || fail "--overwrite left $(ls "$work/run/checkpoints" | tr '\n' ' ')"
[[ $(grep -c '"step"' "$work/run/metrics.jsonl") -eq 2 ]] || fail "--overwrite kept the old metrics"

[[ $failures -eq 0 ]] || { echo "$failures case(s) failed"; exit 1; }
rm -rf "$work"
