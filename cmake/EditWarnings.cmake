# Warnings for libedit's own targets. Third-party headers (LibTorch, MPI, spdlog) come in through
# imported targets, whose include directories are SYSTEM, so their warnings stay out of the way.
function(edit_target_warnings target)
  target_compile_options(${target} PRIVATE
    $<$<COMPILE_LANGUAGE:CXX>:-Wall -Wextra -Wpedantic -Wno-unused-parameter -Wnon-virtual-dtor>)
  if(EDIT_WERROR)
    target_compile_options(${target} PRIVATE $<$<COMPILE_LANGUAGE:CXX>:-Werror>)
  endif()
endfunction()
