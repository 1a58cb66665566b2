# cmake -DMPIEXEC="<mpirun;args>" -DPREPARE=<edit-prepare-text> -DTRAIN=<edit-train-gpt>
#       -DGENERATE=<edit-generate> -DBPE=<folder of encoder.json and vocab.bpe> -DWORK=<dir>
#       -P gpt2_generate_e2e.cmake
# GPT-2's tokenizer through the programs: shards of GPT-2 ids, a tiny GPT with the padded
# vocabulary 50304 trained 20 steps on 2 ranks, and a sample that decodes back to text starting
# with the prompt. The wrong tokenizer for a run is refused by name, with the fix. The environment
# variable EDIT_GPT2_BPE_DIR overrides -DBPE (as for the tokenizer's unit test); without GPT-2's
# files the test prints "edit-test-skipped" and ctest reports it skipped.
if(DEFINED ENV{EDIT_GPT2_BPE_DIR} AND NOT "$ENV{EDIT_GPT2_BPE_DIR}" STREQUAL "")
  set(BPE "$ENV{EDIT_GPT2_BPE_DIR}")
endif()
if(NOT EXISTS "${BPE}/encoder.json" OR NOT EXISTS "${BPE}/vocab.bpe")
  message(STATUS "edit-test-skipped: no encoder.json and vocab.bpe in ${BPE}; run scripts/install-deps.sh"
                 " or set EDIT_GPT2_BPE_DIR to a folder holding GPT-2's files")
  return()
endif()
file(REMOVE_RECURSE "${WORK}")
file(MAKE_DIRECTORY "${WORK}/text")
set(corpus "")
foreach(i RANGE 1 300)
  math(EXPR n "${i} % 7")
  string(APPEND corpus "The quick brown fox ${n} jumps over the lazy dog number ${n}.\n")
endforeach()
file(WRITE "${WORK}/text/corpus.txt" "${corpus}")
include("${CMAKE_CURRENT_LIST_DIR}/e2e_support.cmake")  # run(), expect_failure()

run("${PREPARE}" --tokenizer gpt2 --bpe "${BPE}" --out "${WORK}/data" --val-fraction 0.1 "${WORK}/text")
# 50304: GPT-2's 50257 ids padded to a multiple of 64, as GPT-2-sized runs do; the 47 extra
# logits must never be sampled (decode would refuse their ids).
# The shards' vocabulary is checked against the model's before anything is trained.
expect_failure("tokenized by gpt2 \\(50257 ids.*--vocab-size 50304" ${MPIEXEC} -np 1 "${TRAIN}" --model tiny
               --seq-len 32 --train-data "${WORK}/data/train_*.bin" --steps 1 --out-dir "${WORK}/small-vocab")
execute_process(COMMAND ${MPIEXEC} -np 2 "${TRAIN}" --model tiny --vocab-size 50304 --seq-len 32 --batch-size 4
    --train-data "${WORK}/data/train_*.bin" --val-data "${WORK}/data/val_*.bin" --strategy edit
    --sync-every 10 --lr 3e-3 --warmup-steps 5 --eval-every 0 --log-every 10 --checkpoint-every 20
    --out-dir "${WORK}/run" --steps 20 --sample-tokens 8
    RESULT_VARIABLE train_result OUTPUT_VARIABLE train_out ERROR_VARIABLE train_err)
# The run records the shards' tokenizer, and its end-of-run sample is decoded with it.
if(NOT train_result EQUAL 0 OR NOT train_out MATCHES "----- sample -----")
  message(FATAL_ERROR "edit-train-gpt on GPT-2 shards failed (${train_result}) or printed no sample:\n${train_out}\n${train_err}")
endif()
file(READ "${WORK}/run/tokenizer/tokenizer.json" recorded)
file(SHA256 "${WORK}/run/tokenizer/encoder.json" run_encoder)
file(SHA256 "${BPE}/encoder.json" bpe_encoder)
if(NOT recorded MATCHES "\"kind\":\"gpt2\"" OR NOT run_encoder STREQUAL bpe_encoder)
  message(FATAL_ERROR "the run's tokenizer record is not GPT-2's: ${recorded}")
endif()
file(STRINGS "${WORK}/run/metrics.jsonl" lines)
list(GET lines 0 first)
list(GET lines -1 last)
string(JSON first_loss GET "${first}" loss_world)
string(JSON last_loss GET "${last}" loss_world)
message(STATUS "loss ${first_loss} -> ${last_loss}")
# ln(50304) = 10.8: a first loss near it shows the model predicts over GPT-2's vocabulary.
if(first_loss LESS 9 OR NOT last_loss LESS first_loss)
  message(FATAL_ERROR "the loss did not fall from ~ln(50304): ${first_loss} -> ${last_loss}")
endif()

execute_process(COMMAND "${GENERATE}" --run "${WORK}/run" --tokenizer gpt2 --bpe "${BPE}" --prompt "The quick"
                        --tokens 20
                RESULT_VARIABLE gen_result OUTPUT_VARIABLE sample ERROR_VARIABLE gen_err)
string(FIND "${sample}" "The quick" prompt_at)
if(NOT gen_result EQUAL 0 OR NOT prompt_at EQUAL 0)
  message(FATAL_ERROR "edit-generate --tokenizer gpt2 failed (${gen_result}) or lost the prompt: ${sample}\n${gen_err}")
endif()
message(STATUS "sample: ${sample}")
# Without --tokenizer or --bpe, edit-generate takes the run's record: the same sample.
execute_process(COMMAND "${GENERATE}" --run "${WORK}/run" --prompt "The quick" --tokens 20
                RESULT_VARIABLE auto_result OUTPUT_VARIABLE auto_sample ERROR_VARIABLE auto_err)
if(NOT auto_result EQUAL 0 OR NOT auto_sample STREQUAL sample)
  message(FATAL_ERROR "edit-generate with the run's recorded tokenizer gave another sample (${auto_result}):\n"
                      "${auto_sample}\nagainst\n${sample}\n${auto_err}")
endif()

# The wrong tokenizer for a run: a GPT-2 run read as bytes, a byte run read as GPT-2 ids.
expect_failure("vocabulary of 50304.*--tokenizer gpt2 --bpe DIR" "${GENERATE}" --run "${WORK}/run" --tokens 4
               --tokenizer byte)
# A run without a record (e.g. trained on shards from elsewhere) is read as bytes unless told.
file(REMOVE_RECURSE "${WORK}/run/tokenizer")
expect_failure("vocabulary of 50304.*--tokenizer gpt2 --bpe DIR" "${GENERATE}" --run "${WORK}/run" --tokens 4)
expect_failure("--tokenizer gpt2 needs --bpe DIR.*has no record" "${GENERATE}" --run "${WORK}/run" --tokenizer gpt2)
expect_failure("--bpe .* is given but --tokenizer is byte" "${GENERATE}" --run "${WORK}/run" --bpe "${BPE}"
               --tokenizer byte)
run("${PREPARE}" --out "${WORK}/bytes" "${WORK}/text")
run(${MPIEXEC} -np 1 "${TRAIN}" --model tiny --seq-len 32 --batch-size 2 --train-data "${WORK}/bytes/train_*.bin"
    --strategy none --steps 1 --eval-every 0 --checkpoint-every 1 --out-dir "${WORK}/byte-run")
expect_failure("vocabulary of 256 but the GPT-2 tokenizer in --bpe .* has 50257 ids.*--vocab-size 50257 or more"
               "${GENERATE}" --run "${WORK}/byte-run" --tokenizer gpt2 --bpe "${BPE}")
file(REMOVE_RECURSE "${WORK}")
