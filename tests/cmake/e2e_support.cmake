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

# digest(dir var): the SHA-256 of every file in `dir`, names included, in `var`.
function(digest dir var)
  file(GLOB files LIST_DIRECTORIES true "${dir}/*")
  set(text "")
  foreach(f IN LISTS files)
    if(IS_DIRECTORY "${f}")
      string(APPEND text "${f} folder\n")
    else()
      file(SHA256 "${f}" sum)
      string(APPEND text "${f} ${sum}\n")
    endif()
  endforeach()
  set(${var} "${text}" PARENT_SCOPE)
endfunction()
# expect_unchanged(dir before what): `dir` still has the digest `before`, else the test fails
# naming `what` changed it.
function(expect_unchanged dir before what)
  digest("${dir}" after)
  if(NOT after STREQUAL before)
    message(FATAL_ERROR "${what} changed ${dir}:\nbefore:\n${before}\nafter:\n${after}")
  endif()
endfunction()
