# cmake -DMPIEXEC="<mpirun;args>" -DPREPARE=<edit-prepare-text> -DTRAIN=<edit-train-gpt>
#       -DEXPORT=<edit-export> -DGENERATE=<edit-generate> -DWORK=<dir>
#       -P train_gpt_e2e.cmake
# Prepares a small generated corpus, trains a tiny GPT with EDiT on 2 ranks for 60 steps, checks
# that the loss falls and that the metrics, loss table and a checkpoint were written, then
# resumes from that checkpoint for 20 more steps (profiling three), exports and samples.
file(REMOVE_RECURSE "${WORK}")
file(MAKE_DIRECTORY "${WORK}/text")
set(corpus "")
foreach(i RANGE 1 400)
  math(EXPR n "${i} % 7")
  string(APPEND corpus "The quick brown fox ${n} jumps over the lazy dog number ${n}.\n")
endforeach()
file(WRITE "${WORK}/text/corpus.txt" "${corpus}")
include("${CMAKE_CURRENT_LIST_DIR}/e2e_support.cmake")  # run(), expect_failure()
run("${PREPARE}" --out "${WORK}/data" --val-fraction 0.1 "${WORK}/text")
set(common --model tiny --seq-len 32 --batch-size 4 --train-data "${WORK}/data/train_*.bin"
    --val-data "${WORK}/data/val_*.bin" --strategy edit --sync-every 8 --lr 3e-3 --warmup-steps 5
    --eval-every 20 --log-every 10 --checkpoint-every 60)
run(${MPIEXEC} -np 2 "${TRAIN}" ${common} --out-dir "${WORK}/run" --steps 60)

file(STRINGS "${WORK}/run/metrics.jsonl" lines)
list(LENGTH lines count)
if(NOT count EQUAL 60)
  message(FATAL_ERROR "metrics.jsonl has ${count} lines, expected 60")
endif()
list(GET lines 0 first)
list(GET lines 59 last)
string(JSON first_loss GET "${first}" loss_world)
string(JSON last_loss GET "${last}" loss_world)
message(STATUS "loss ${first_loss} -> ${last_loss}")
if(NOT last_loss LESS first_loss OR first_loss LESS 4.5)
  message(FATAL_ERROR "the loss did not fall from ~ln(256): ${first_loss} -> ${last_loss}")
endif()
# Require a drop of at least 1.5 nats (CMake has no float arithmetic; awk does it).
execute_process(COMMAND awk "BEGIN { exit !(${last_loss} < ${first_loss} - 1.5) }" RESULT_VARIABLE awk_result)
if(NOT awk_result EQUAL 0)
  message(FATAL_ERROR "the loss fell too little: ${first_loss} -> ${last_loss}")
endif()
if(NOT EXISTS "${WORK}/run/loss.tsv" OR NOT EXISTS "${WORK}/run/checkpoints/step_00000060/manifest.json")
  message(FATAL_ERROR "loss.tsv or the step-60 checkpoint is missing")
endif()
# Resume: 20 more steps from the checkpoint, appending to the same metrics, three of them profiled.
run(${MPIEXEC} -np 2 "${TRAIN}" ${common} --out-dir "${WORK}/run" --steps 80 --resume auto --profile-steps 65:3)
foreach(rank 0 1)
  set(profile "${WORK}/run/profile_rank${rank}.csv")
  if(NOT EXISTS "${profile}")
    message(FATAL_ERROR "--profile-steps 65:3 wrote no ${profile}")
  endif()
  file(READ "${profile}" text)
  if(NOT text MATCHES "\"edit::forward\",phase,phase,3,")
    message(FATAL_ERROR "${profile} has no forward phase of 3 calls:\n${text}")
  endif()
endforeach()
file(STRINGS "${WORK}/run/metrics.jsonl" lines)
list(LENGTH lines count)
list(GET lines 60 resumed)
string(JSON resumed_step GET "${resumed}" step)
if(NOT count EQUAL 80 OR NOT resumed_step EQUAL 60)
  message(FATAL_ERROR "resume did not continue at step 60 (${count} lines, first resumed step ${resumed_step})")
endif()
# Export and sample from the resumed run's latest checkpoint.
run("${EXPORT}" --run "${WORK}/run" --out "${WORK}/export/model.safetensors")
file(READ "${WORK}/export/model.safetensors" head LIMIT 8 HEX)
if(NOT EXISTS "${WORK}/export/config.json" OR head STREQUAL "")
  message(FATAL_ERROR "edit-export wrote no model.safetensors / config.json")
endif()
execute_process(COMMAND "${GENERATE}" --run "${WORK}/run" --prompt "The quick" --tokens 40
                RESULT_VARIABLE gen_result OUTPUT_VARIABLE sample)
string(LENGTH "${sample}" sample_length)
if(NOT gen_result EQUAL 0 OR sample_length LESS 40)
  message(FATAL_ERROR "edit-generate failed (${gen_result}): ${sample}")
endif()
message(STATUS "sample: ${sample}")
# A-EDiT with rank 1 slowed: syncs on a wall clock, the fast rank takes more steps per round,
# and a resume from a round's checkpoint trains on to the new budget.
set(aedit --model tiny --seq-len 32 --batch-size 4 --train-data "${WORK}/data/train_*.bin"
    --val-data "${WORK}/data/val_*.bin" --strategy aedit --sync-interval 0.2 --lr 3e-3 --warmup-steps 5
    --eval-every 20 --log-every 0 --checkpoint-every 20 --straggler 1:+40ms --out-dir "${WORK}/aedit")
run(${MPIEXEC} -np 2 "${TRAIN}" ${aedit} --steps 30)
run(${MPIEXEC} -np 2 "${TRAIN}" ${aedit} --steps 60 --resume auto)
file(STRINGS "${WORK}/aedit/loss.tsv" rows)
list(GET rows -1 last_row)
string(REGEX MATCH "^[0-9]+" last_progress "${last_row}")
if(last_progress LESS 60)
  message(FATAL_ERROR "A-EDiT stopped at ${last_progress} steps per replica, before the resumed budget of 60")
endif()
file(STRINGS "${WORK}/aedit/metrics.jsonl" rounds REGEX "\"round_steps\"")
set(faster 0)
foreach(line IN LISTS rounds)
  string(JSON fast GET "${line}" round_steps 0)
  string(JSON slow GET "${line}" round_steps 1)
  if(fast GREATER slow)
    math(EXPR faster "${faster} + 1")
  endif()
endforeach()
list(LENGTH rounds round_count)
# The last round of each run (30 steps, then 60) ends on the step budget, not the clock: with two
# steps left it splits them 1 and 1 whatever the speeds, so those two rounds may be even.
math(EXPR clock_rounds "${round_count} - 2")
if(round_count LESS 4 OR faster LESS clock_rounds)
  message(FATAL_ERROR "A-EDiT: ${round_count} rounds, the unslowed rank 0 ahead in ${faster} of them "
                      "(at least ${clock_rounds} expected)")
endif()
# --eval-batches past what the val split holds: a warning, and the evaluation of the batches it
# holds (the val loss of a run asking for exactly those).
execute_process(COMMAND ${MPIEXEC} -np 2 "${TRAIN}" ${common} --steps 5 --eval-batches 100000 --out-dir "${WORK}/evals"
                RESULT_VARIABLE many_result OUTPUT_VARIABLE many_out ERROR_VARIABLE many_err)
if(NOT many_result EQUAL 0 OR NOT "${many_out}${many_err}" MATCHES "evaluating on those ([0-9]+)")
  message(FATAL_ERROR "--eval-batches 100000: no warning naming the batches held\n${many_out}\n${many_err}")
endif()
set(held ${CMAKE_MATCH_1})
# Fewer steps than H: no outer sync, so the anchor (what evaluations and exports use) never moves.
if(NOT "${many_out}${many_err}" MATCHES "--steps 5 is below --sync-every 8: no outer sync happens")
  message(FATAL_ERROR "--steps 5 with --sync-every 8: no warning that the anchor never moves\n${many_out}\n${many_err}")
endif()
file(STRINGS "${WORK}/evals/loss.tsv" many_rows REGEX "^0\t")
run(${MPIEXEC} -np 2 "${TRAIN}" ${common} --steps 5 --eval-batches ${held} --out-dir "${WORK}/evals" --overwrite)
file(STRINGS "${WORK}/evals/loss.tsv" held_rows REGEX "^0\t")
if(many_rows STREQUAL "" OR NOT many_rows STREQUAL held_rows)
  message(FATAL_ERROR "--eval-batches 100000 gave '${many_rows}', --eval-batches ${held} '${held_rows}'")
endif()
# Bad input: a token id beyond the model's vocabulary is refused with the file named.
execute_process(COMMAND ${MPIEXEC} -np 2 "${TRAIN}" ${common} --steps 5 --vocab-size 64 --out-dir "${WORK}/bad"
                RESULT_VARIABLE bad_result OUTPUT_VARIABLE bad_out ERROR_VARIABLE bad_err)
if(bad_result EQUAL 0 OR NOT "${bad_out}${bad_err}" MATCHES "train_000000.bin")
  message(FATAL_ERROR "a token id >= vocab was not refused with the file named:\n${bad_out}\n${bad_err}")
endif()
file(REMOVE_RECURSE "${WORK}")
