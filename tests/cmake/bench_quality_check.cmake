# cmake -DMPIEXEC="<mpirun;args>" -DPREPARE=<edit-prepare-text> -DBENCH=<bench_quality>
#       -DCORPUS=<text folder> -DWORK=<dir> -P bench_quality_check.cmake
# Training quality under a real schedule: the byte GPT on the fortunes corpus, a warm-up of 5 H
# then cosine, ranks seeded differently. EDiT with its penalty must end within 2% of DiLoCo's val
# loss (bench_quality --quick --check). A penalty detector that stops learning once the norms
# rise during the warm-up skips every later sync, and fails this by far.
file(REMOVE_RECURSE "${WORK}")
execute_process(COMMAND "${PREPARE}" --out "${WORK}/data" "${CORPUS}" RESULT_VARIABLE result ERROR_VARIABLE err)
if(NOT result EQUAL 0)
  message(FATAL_ERROR "edit-prepare-text failed (${result}): ${err}")
endif()
execute_process(COMMAND ${MPIEXEC} -np 2 "${BENCH}" --quick --check --data "${WORK}/data" --out "${WORK}/quality.csv"
                RESULT_VARIABLE result OUTPUT_VARIABLE out ERROR_VARIABLE err)
message("${out}")
if(NOT result EQUAL 0)
  message(FATAL_ERROR "bench_quality --quick --check failed (${result}):\n${err}")
endif()
file(REMOVE_RECURSE "${WORK}")
