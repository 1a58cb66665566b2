# cmake -DBUILD=<build dir> -DSOURCE=<repo> -DWORK=<dir> -DRUN="<launcher;args>" -P consumer_test.cmake
# Installs the built library into a prefix, then builds examples/custom_trainer out of tree with
# find_package(edit) against that prefix only, and runs it.
file(REMOVE_RECURSE "${WORK}")
function(run_step)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE result)
  if(NOT result EQUAL 0)
    message(FATAL_ERROR "step failed (${result}): ${ARGN}")
  endif()
endfunction()
run_step("${CMAKE_COMMAND}" --install "${BUILD}" --prefix "${WORK}/prefix")
run_step("${CMAKE_COMMAND}" -S "${SOURCE}/examples/custom_trainer" -B "${WORK}/build"
         -DCMAKE_BUILD_TYPE=Release "-DCMAKE_PREFIX_PATH=${WORK}/prefix")
run_step("${CMAKE_COMMAND}" --build "${WORK}/build")
run_step(${RUN} "${WORK}/build/custom_trainer" --strategy edit --steps 64 --sync-every 8)
file(REMOVE_RECURSE "${WORK}")
