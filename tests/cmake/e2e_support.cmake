# Helpers the whole-program test scripts share (include() it from a script run with cmake -P).

# run(command...): runs the command; a non-zero exit fails the test with its output.
function(run)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE result OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT result EQUAL 0)
    message(FATAL_ERROR "failed (${result}): ${ARGN}\n${out}\n${err}")
  endif()
endfunction()

# expect_failure(PATTERN command...): the command exits non-zero and its output matches PATTERN.
function(expect_failure pattern)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE result OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(result EQUAL 0 OR NOT "${out}${err}" MATCHES "${pattern}")
    message(FATAL_ERROR "expected a failure matching '${pattern}' (exit ${result}): ${ARGN}\n${out}\n${err}")
  endif()
endfunction()
