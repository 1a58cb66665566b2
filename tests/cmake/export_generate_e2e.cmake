# cmake -DMPIEXEC="<mpirun;args>" -DPREPARE=<edit-prepare-text> -DTRAIN=<edit-train-gpt>
#       -DEXPORT=<edit-export> -DGENERATE=<edit-generate> -DWORK=<dir> -P export_generate_e2e.cmake
# edit-export and edit-generate on a 2-step single-rank run: an export never replaces files it was
# not asked to (another run's config.json, an earlier export), a failed write (a file size limit
# stands in for a full disk) leaves the old files byte for byte, and edit-generate refuses
# nonsense options by name and range. Both fail when their standard output cannot be written.
file(REMOVE_RECURSE "${WORK}")
file(MAKE_DIRECTORY "${WORK}/text")
set(corpus "")
foreach(i RANGE 1 200)
  string(APPEND corpus "The quick brown fox ${i} jumps over the lazy dog.\n")
endforeach()
file(WRITE "${WORK}/text/corpus.txt" "${corpus}")
include("${CMAKE_CURRENT_LIST_DIR}/e2e_support.cmake")  # run(), expect_failure(), digest(), expect_unchanged()

run("${PREPARE}" --out "${WORK}/data" --val-fraction 0.1 "${WORK}/text")
run(${MPIEXEC} -np 1 "${TRAIN}" --model tiny --seq-len 32 --batch-size 2 --train-data "${WORK}/data/train_*.bin"
    --val-data "${WORK}/data/val_*.bin" --strategy none --steps 2 --eval-every 0 --checkpoint-every 2
    --out-dir "${WORK}/run")

# A fresh folder: both files are written.
set(model "${WORK}/export/model.safetensors")
run("${EXPORT}" --run "${WORK}/run" --out "${model}")
if(NOT EXISTS "${model}" OR NOT EXISTS "${WORK}/export/config.json")
  message(FATAL_ERROR "edit-export wrote no model.safetensors / config.json")
endif()
digest("${WORK}/export" exported)
# Again without --overwrite: refused, naming the file and the flag.
expect_failure("model.safetensors already exists.*--overwrite" "${EXPORT}" --run "${WORK}/run" --out "${model}")
expect_unchanged("${WORK}/export" "${exported}" "a refused export")
# Into a run's folder: its config.json is never replaced, not even with --overwrite, in either format.
digest("${WORK}/run" run_files)
expect_failure("run, a training run's folder.*export into a folder of its own"
               "${EXPORT}" --run "${WORK}/run" --out "${WORK}/run/model.safetensors")
expect_failure("run, a training run's folder.*export into a folder of its own"
               "${EXPORT}" --run "${WORK}/run" --out "${WORK}/run/model.safetensors" --overwrite)
expect_failure("run, a training run's folder.*export into a folder of its own"
               "${EXPORT}" --run "${WORK}/run" --format hf --out "${WORK}/run" --overwrite)
expect_unchanged("${WORK}/run" "${run_files}" "an export into a run's folder")
# An --out that names a folder, not a file: refused before anything is written.
expect_failure("is a folder; pass the .safetensors file"
               "${EXPORT}" --run "${WORK}/run" --out "${WORK}/newdir/")
if(EXISTS "${WORK}/newdir")
  message(FATAL_ERROR "a refused export left ${WORK}/newdir behind")
endif()
# A file size limit fails the write as a full disk would: the old pair stays, no temporary is left.
# (Newlines, not semicolons, separate the shell commands: a CMake list would split at those.)
expect_failure("is the disk full\\?" bash -c "trap '' XFSZ\nulimit -f 16\nexec \"$0\" \"$@\""
               "${EXPORT}" --run "${WORK}/run" --out "${model}" --overwrite)
expect_unchanged("${WORK}/export" "${exported}" "an export that ran out of space")
# An unwritable summary fails the run.
execute_process(COMMAND "${EXPORT}" --run "${WORK}/run" --out "${WORK}/export2/model.safetensors"
                OUTPUT_FILE /dev/full RESULT_VARIABLE result ERROR_VARIABLE err)
if(result EQUAL 0 OR NOT err MATCHES "standard output")
  message(FATAL_ERROR "edit-export exited ${result} with its standard output on a full disk: ${err}")
endif()
run("${EXPORT}" --run "${WORK}/run" --out "${model}" --overwrite)

# edit-generate: each nonsense option is refused by name with its valid range.
foreach(spec "--tokens;-5;--tokens -5 is outside the valid range 1\\.\\."
             "--tokens;0;--tokens 0 is outside the valid range 1\\.\\."
             "--temperature;0;--temperature 0 is outside the valid range \\(0, inf\\)"
             "--temperature;-1;--temperature -1 is outside the valid range \\(0, inf\\)"
             "--temperature;nan;--temperature nan is outside the valid range \\(0, inf\\)"
             "--temperature;inf;--temperature inf is outside the valid range \\(0, inf\\)"
             "--top-k;-1;--top-k -1 is outside the valid range 0\\.\\.")
  list(GET spec 0 option)
  list(GET spec 1 value)
  list(GET spec 2 pattern)
  expect_failure("${pattern}" "${GENERATE}" --run "${WORK}/run" ${option} ${value})
endforeach()
execute_process(COMMAND "${GENERATE}" --run "${WORK}/run" --tokens 8 OUTPUT_FILE /dev/full
                RESULT_VARIABLE result ERROR_VARIABLE err)
if(result EQUAL 0 OR NOT err MATCHES "standard output; is the disk full\\?")
  message(FATAL_ERROR "edit-generate exited ${result} with its standard output on a full disk: ${err}")
endif()
run("${GENERATE}" --run "${WORK}/run" --prompt "The quick" --tokens 8 --top-k 0)
# A temperature near 0 samples the most likely id, as --top-k 1 does (it used to make every logit
# inf, and the sampler failed with a LibTorch trace).
foreach(args "--temperature;1e-45" "--top-k;1")
  execute_process(COMMAND "${GENERATE}" --run "${WORK}/run" --prompt "The quick" --tokens 8 ${args}
                  RESULT_VARIABLE result OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT result EQUAL 0)
    message(FATAL_ERROR "edit-generate ${args} failed (${result}): ${err}")
  endif()
  list(APPEND greedy "${out}")
endforeach()
list(GET greedy 0 coldest)
list(GET greedy 1 top1)
if(NOT coldest STREQUAL top1)
  message(FATAL_ERROR "--temperature 1e-45 gave '${coldest}', --top-k 1 gave '${top1}'")
endif()
file(REMOVE_RECURSE "${WORK}")
