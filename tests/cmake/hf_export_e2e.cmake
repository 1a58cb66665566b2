# cmake -DMPIEXEC="<mpirun;args>" -DPREPARE=<edit-prepare-text> -DTRAIN=<edit-train-gpt>
#       -DEXPORT=<edit-export> -DLOGITS=<edit_gpt_logits> -DPYTHON=<python with torch>
#       -DREFERENCE=<tests/models/hf_reference.py> -DBPE=<folder of encoder.json and vocab.bpe>
#       -DWORK=<dir> -P hf_export_e2e.cmake
# edit-export --format hf on runs trained 2 steps on 2 ranks with a shard group of 2 (so the export
# joins shards): GPT-2 style tied, Llama style untied and tied. Each folder's logits, computed by
# hf_reference.py from transformers' layout and config.json alone, must match libedit's own
# forward (edit_gpt_logits). GPT-2's tokenizer files are checked on a GPT-2 BPE run when GPT-2's
# files are in BPE (EDIT_GPT2_BPE_DIR overrides). Then the refusals: a folder with files in it
# without --overwrite, a bad --format, a --bpe folder without the files or with too many ids, a
# full disk; each leaves what was there byte for byte. Without torch in PYTHON the test prints
# "edit-test-skipped" and ctest reports it skipped.
if(DEFINED ENV{EDIT_GPT2_BPE_DIR} AND NOT "$ENV{EDIT_GPT2_BPE_DIR}" STREQUAL "")
  set(BPE "$ENV{EDIT_GPT2_BPE_DIR}")
endif()
execute_process(COMMAND "${PYTHON}" -c "import torch" RESULT_VARIABLE has_torch OUTPUT_QUIET ERROR_QUIET)
if(NOT has_torch EQUAL 0)
  message(STATUS "edit-test-skipped: ${PYTHON} cannot import torch; install Debian's python3-torch "
                 "(scripts/install-deps.sh) or configure with -DEDIT_TORCH_PYTHON=<a Python with torch>")
  return()
endif()
file(REMOVE_RECURSE "${WORK}")
file(MAKE_DIRECTORY "${WORK}/text")
set(corpus "")
foreach(i RANGE 1 200)
  math(EXPR n "${i} % 7")
  string(APPEND corpus "The quick brown fox ${n} jumps over the lazy dog number ${i}.\n")
endforeach()
file(WRITE "${WORK}/text/corpus.txt" "${corpus}")
include("${CMAKE_CURRENT_LIST_DIR}/e2e_support.cmake")  # run(), expect_failure(), digest(), expect_unchanged()

function(expect_same_file a b)
  file(SHA256 "${a}" sum_a)
  file(SHA256 "${b}" sum_b)
  if(NOT sum_a STREQUAL sum_b)
    message(FATAL_ERROR "${a} is not a copy of ${b}")
  endif()
endfunction()
# train(name args...): 2 steps on 2 ranks, one replica sharded over both, a checkpoint at the end.
function(train name)
  run(${MPIEXEC} -np 2 "${TRAIN}" --model tiny --seq-len 32 --batch-size 2 --strategy ddp --shard-size 2
      --lr 1e-2 --warmup-steps 0 --steps 2 --eval-every 0 --checkpoint-every 2 --out-dir "${WORK}/${name}" ${ARGN})
endfunction()
# export_and_compare(name): the run as an hf folder, checked against libedit's logits.
function(export_and_compare name)
  execute_process(COMMAND "${EXPORT}" --run "${WORK}/${name}" --format hf --out "${WORK}/hf/${name}"
                  RESULT_VARIABLE result OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT result EQUAL 0)
    message(FATAL_ERROR "edit-export --format hf failed (${result}) for ${name}:\n${out}\n${err}")
  endif()
  message(STATUS "${out}")
  set(summary "${out}" PARENT_SCOPE)
  run("${LOGITS}" "${WORK}/${name}" "${WORK}/${name}/logits.safetensors")
  execute_process(COMMAND "${PYTHON}" "${REFERENCE}" "${WORK}/hf/${name}" "${WORK}/${name}/logits.safetensors"
                  RESULT_VARIABLE result OUTPUT_VARIABLE out ERROR_VARIABLE err)
  message(STATUS "${name}: ${out}${err}")
  if(NOT result EQUAL 0)
    message(FATAL_ERROR "the Hugging Face layout of ${name} does not give libedit's logits (${result})")
  endif()
endfunction()

run("${PREPARE}" --out "${WORK}/data" "${WORK}/text")
set(data --train-data "${WORK}/data/train_*.bin" --val-data "${WORK}/data/val_*.bin")

# GPT-2 style, tied (edit-train-gpt's default for gpt2), byte vocabulary: no tokenizer files, and
# the summary says why; bos/eos null rather than GPT2Config's 50256, outside a 256-id vocabulary.
train(gpt2 ${data})
export_and_compare(gpt2)
if(NOT summary MATCHES "GPT2LMHeadModel.*no tokenizer files.*byte-vocabulary model has no Hugging Face tokenizer")
  message(FATAL_ERROR "the summary does not say that the export has no tokenizer: ${summary}")
endif()
file(GLOB exported RELATIVE "${WORK}/hf/gpt2" "${WORK}/hf/gpt2/*")
list(SORT exported)
if(NOT exported STREQUAL "config.json;model.safetensors")
  message(FATAL_ERROR "a byte-vocabulary export holds ${exported}, not just config.json and model.safetensors")
endif()
file(READ "${WORK}/hf/gpt2/config.json" config)
string(JSON eos TYPE "${config}" eos_token_id)
string(JSON tied GET "${config}" tie_word_embeddings)
if(NOT eos STREQUAL "NULL" OR NOT tied STREQUAL "ON")
  message(FATAL_ERROR "gpt2 config.json: eos_token_id is ${eos} (want null), tie_word_embeddings ${tied}")
endif()
# Llama style, untied (the default for llama) and tied.
train(llama ${data} --style llama)
export_and_compare(llama)
train(llama_tied ${data} --style llama --tie-embeddings on)
export_and_compare(llama_tied)

# GPT-2's tokenizer: a GPT-2 BPE run, whose folder holds tokenizer/encoder.json and vocab.bpe
# (edit-train-gpt records them from the shards' folder), gets vocab.json and merges.txt, copies of them, and GPT2Tokenizer's
# files; --bpe overrides the recorded ones.
if(EXISTS "${BPE}/encoder.json" AND EXISTS "${BPE}/vocab.bpe")
  run("${PREPARE}" --tokenizer gpt2 --bpe "${BPE}" --out "${WORK}/gpt2-data" "${WORK}/text")
  train(gpt2_bpe --train-data "${WORK}/gpt2-data/train_*.bin" --val-data "${WORK}/gpt2-data/val_*.bin"
        --vocab-size 50304)
  # edit-train-gpt copied the shards' tokenizer record into the run.
  if(NOT EXISTS "${WORK}/gpt2_bpe/tokenizer/encoder.json" OR NOT EXISTS "${WORK}/gpt2_bpe/tokenizer/vocab.bpe")
    message(FATAL_ERROR "the GPT-2 run did not record its tokenizer in ${WORK}/gpt2_bpe/tokenizer")
  endif()
  export_and_compare(gpt2_bpe)
  if(NOT summary MATCHES "vocab.json, merges.txt, tokenizer_config.json.*tokenizer from .*gpt2_bpe/tokenizer")
    message(FATAL_ERROR "the summary does not list the tokenizer files: ${summary}")
  endif()
  expect_same_file("${WORK}/hf/gpt2_bpe/vocab.json" "${BPE}/encoder.json")
  expect_same_file("${WORK}/hf/gpt2_bpe/merges.txt" "${BPE}/vocab.bpe")
  file(READ "${WORK}/hf/gpt2_bpe/config.json" config)
  file(READ "${WORK}/hf/gpt2_bpe/tokenizer_config.json" tokenizer_config)
  file(READ "${WORK}/hf/gpt2_bpe/generation_config.json" generation_config)
  string(JSON eos GET "${config}" eos_token_id)
  string(JSON vocab GET "${config}" vocab_size)
  string(JSON class GET "${tokenizer_config}" tokenizer_class)
  string(JSON eos_token GET "${tokenizer_config}" eos_token)
  string(JSON generation_eos GET "${generation_config}" eos_token_id)
  if(NOT eos EQUAL 50256 OR NOT vocab EQUAL 50304 OR NOT class STREQUAL "GPT2Tokenizer"
     OR NOT eos_token STREQUAL "<|endoftext|>" OR NOT generation_eos EQUAL 50256)
    message(FATAL_ERROR "GPT-2 tokenizer export: eos ${eos}, vocab ${vocab}, class ${class}, eos_token "
                        "${eos_token}, generation eos ${generation_eos}")
  endif()
  # --bpe over the recorded files: a shorter merges list (still a tokenizer) is what is written.
  file(MAKE_DIRECTORY "${WORK}/other-bpe")
  file(COPY "${BPE}/encoder.json" DESTINATION "${WORK}/other-bpe")
  execute_process(COMMAND head -n 1001 "${BPE}/vocab.bpe" OUTPUT_FILE "${WORK}/other-bpe/vocab.bpe"
                  COMMAND_ERROR_IS_FATAL ANY)
  run("${EXPORT}" --run "${WORK}/gpt2_bpe" --format hf --bpe "${WORK}/other-bpe" --out "${WORK}/hf/override")
  expect_same_file("${WORK}/hf/override/merges.txt" "${WORK}/other-bpe/vocab.bpe")
  # A tokenizer with more ids than the model's vocabulary is refused before anything is written.
  expect_failure("tokenizer in .* has 50257 ids but the model's vocabulary is 256"
                 "${EXPORT}" --run "${WORK}/gpt2" --format hf --bpe "${BPE}" --out "${WORK}/hf/too-many")
  if(EXISTS "${WORK}/hf/too-many")
    message(FATAL_ERROR "a refused export created its folder")
  endif()
  # --overwrite from a byte run: the old tokenizer files go, a file the export does not own stays.
  file(WRITE "${WORK}/hf/gpt2_bpe/NOTES.txt" "mine\n")
  run("${EXPORT}" --run "${WORK}/gpt2" --format hf --out "${WORK}/hf/gpt2_bpe" --overwrite)
  file(GLOB exported RELATIVE "${WORK}/hf/gpt2_bpe" "${WORK}/hf/gpt2_bpe/*")
  list(SORT exported)
  if(NOT exported STREQUAL "NOTES.txt;config.json;model.safetensors")
    message(FATAL_ERROR "an overwritten export holds ${exported}")
  endif()
  expect_same_file("${WORK}/hf/gpt2_bpe/model.safetensors" "${WORK}/hf/gpt2/model.safetensors")
else()
  message(STATUS "tokenizer case not run: no encoder.json and vocab.bpe in ${BPE}; run scripts/install-deps.sh "
                 "or set EDIT_GPT2_BPE_DIR")
endif()

# Refusals. An existing folder with files in it, without --overwrite: byte for byte as it was.
digest("${WORK}/hf/llama" before)
expect_failure("hf/llama is a folder with files in it.*--overwrite"
               "${EXPORT}" --run "${WORK}/gpt2" --format hf --out "${WORK}/hf/llama")
expect_unchanged("${WORK}/hf/llama" "${before}" "a refused export")
# A bad --format names the option and the choices.
expect_failure("--format: bad not in \\{libedit,hf\\}" "${EXPORT}" --run "${WORK}/gpt2" --format bad --out "${WORK}/x")
# --bpe at a folder without GPT-2's files names the missing file; nothing is created.
file(MAKE_DIRECTORY "${WORK}/empty-bpe")
expect_failure("empty-bpe/encoder.json.*encoder.json and vocab.bpe"
               "${EXPORT}" --run "${WORK}/gpt2" --format hf --bpe "${WORK}/empty-bpe" --out "${WORK}/hf/no-bpe")
file(WRITE "${WORK}/half-bpe/encoder.json" "{\"a\": 0}")
expect_failure("half-bpe/vocab.bpe" "${EXPORT}" --run "${WORK}/gpt2" --format hf --bpe "${WORK}/half-bpe"
               --out "${WORK}/hf/no-bpe")
if(EXISTS "${WORK}/hf/no-bpe")
  message(FATAL_ERROR "a refused export created its folder")
endif()
expect_failure("--bpe is for --format hf" "${EXPORT}" --run "${WORK}/gpt2" --bpe "${WORK}/empty-bpe"
               --out "${WORK}/x.safetensors")
# --out an existing file: refused, the file kept.
file(WRITE "${WORK}/a-file" "keep")
expect_failure("a-file exists and is not a folder" "${EXPORT}" --run "${WORK}/gpt2" --format hf --out "${WORK}/a-file")
# A full disk (a file size limit) with --overwrite: the old export stays, no staging folder is left.
expect_failure("is the disk full\\?" bash -c "trap '' XFSZ\nulimit -f 16\nexec \"$0\" \"$@\""
               "${EXPORT}" --run "${WORK}/gpt2" --format hf --out "${WORK}/hf/llama" --overwrite)
expect_unchanged("${WORK}/hf/llama" "${before}" "an export that ran out of space")
file(GLOB staged "${WORK}/hf/*staged*")
if(staged)
  message(FATAL_ERROR "a failed export left ${staged}")
endif()
# The same into a new folder: the folder does not appear.
expect_failure("is the disk full\\?" bash -c "trap '' XFSZ\nulimit -f 16\nexec \"$0\" \"$@\""
               "${EXPORT}" --run "${WORK}/gpt2" --format hf --out "${WORK}/hf/new")
file(GLOB staged "${WORK}/hf/*staged*")
if(EXISTS "${WORK}/hf/new" OR staged)
  message(FATAL_ERROR "a failed export into a new folder left ${WORK}/hf/new or ${staged}")
endif()
# An empty folder needs no --overwrite (a trailing slash is the same folder).
file(MAKE_DIRECTORY "${WORK}/hf/empty")
run("${EXPORT}" --run "${WORK}/llama" --format hf --out "${WORK}/hf/empty/")
expect_same_file("${WORK}/hf/empty/model.safetensors" "${WORK}/hf/llama/model.safetensors")
# --overwrite replaces the export.
run("${EXPORT}" --run "${WORK}/gpt2" --format hf --out "${WORK}/hf/llama" --overwrite)
expect_same_file("${WORK}/hf/llama/model.safetensors" "${WORK}/hf/gpt2/model.safetensors")
file(REMOVE_RECURSE "${WORK}")
