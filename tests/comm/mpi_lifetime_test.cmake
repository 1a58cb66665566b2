# cmake -DMPIEXEC="<mpirun;args>" -DPROGRAM=<edit_mpi_lifetime> -DCASE=<case> -DRANKS=<n>
#       -DEXIT=zero|nonzero|any -DEXPECT=<regex> -P mpi_lifetime_test.cmake
# Runs one case of edit_mpi_lifetime. Passes when the output matches EXPECT, no rank printed
# "<case>: FAIL", MPI did not complain about a call after MPI_Finalize, and the exit status is as
# EXIT says.
execute_process(COMMAND ${MPIEXEC} -np ${RANKS} "${PROGRAM}" ${CASE}
  RESULT_VARIABLE result OUTPUT_VARIABLE out ERROR_VARIABLE err TIMEOUT 100)
message(STATUS "${CASE} on ${RANKS} ranks ended with '${result}':\n${out}${err}")
if(result MATCHES "timeout|terminated")
  message(FATAL_ERROR "the job hung")
endif()
if("${out}${err}" MATCHES "${CASE}: FAIL")
  message(FATAL_ERROR "a rank reported a failed check")
endif()
if("${out}${err}" MATCHES "after MPI_FINALIZE")
  message(FATAL_ERROR "libedit called MPI after MPI_Finalize")
endif()
if(NOT "${out}${err}" MATCHES "${EXPECT}")
  message(FATAL_ERROR "the output does not match '${EXPECT}'")
endif()
if(EXIT STREQUAL "zero" AND NOT result EQUAL 0)
  message(FATAL_ERROR "the job exited with '${result}', expected 0")
elseif(EXIT STREQUAL "nonzero" AND result EQUAL 0)
  message(FATAL_ERROR "the job exited 0, expected a failure status")
endif()
