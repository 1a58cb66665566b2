# cmake -DSOURCE=<repo> -DWORK=<dir> -DARGS="-DX=Y;..." -DEXPECT=<regex> -P expect_configure_failure.cmake
# Configures libedit with a bad option combination; passes only if configure fails AND its output
# matches EXPECT (the message that tells the user what to do).
file(REMOVE_RECURSE "${WORK}")
execute_process(
  COMMAND "${CMAKE_COMMAND}" -S "${SOURCE}" -B "${WORK}" -DEDIT_BUILD_TESTS=OFF
          -DEDIT_BUILD_TOOLS=OFF -DEDIT_BUILD_EXAMPLES=OFF -DEDIT_BUILD_BENCHMARKS=OFF ${ARGS}
  RESULT_VARIABLE result OUTPUT_VARIABLE out ERROR_VARIABLE err)
file(REMOVE_RECURSE "${WORK}")
if(result EQUAL 0)
  message(FATAL_ERROR "configure with ${ARGS} succeeded; it should have failed.\n${out}\n${err}")
endif()
string(REPLACE "\n" " " flat "${out} ${err}")
string(REGEX REPLACE " +" " " flat "${flat}")
if(NOT flat MATCHES "${EXPECT}")
  message(FATAL_ERROR "configure failed, but without the expected advice '${EXPECT}':\n${out}\n${err}")
endif()
message(STATUS "configure failed as expected with: ${EXPECT}")
