# PyTorch 2.x wheels carry their own {fmt} headers (v11, v12) in torch/include, which comes before
# the system include folder on every compile line. A system spdlog built on an older external {fmt}
# (Debian's and Ubuntu's are) then sees torch's {fmt} and fails to compile (`basic_runtime is not a
# member of fmt`). The fix: spdlog's own {fmt} first, through a folder in the build tree that holds
# only a link to it (the system folder itself cannot be moved ahead: CMake drops it from the flags).
# Consumers of an installed libedit that mix the two need the same: put spdlog's {fmt} first.
set(_edit_torch_fmt "")
foreach(_dir IN LISTS TORCH_INCLUDE_DIRS)
  if(EXISTS "${_dir}/fmt/core.h")
    set(_edit_torch_fmt "${_dir}")
  endif()
endforeach()
get_target_property(_edit_spdlog_defs spdlog::spdlog INTERFACE_COMPILE_DEFINITIONS)
if(_edit_torch_fmt AND "${_edit_spdlog_defs}" MATCHES "SPDLOG_FMT_EXTERNAL" AND TARGET fmt::fmt)
  get_target_property(_edit_fmt_includes fmt::fmt INTERFACE_INCLUDE_DIRECTORIES)
  find_path(EDIT_SPDLOG_FMT_INCLUDE_DIR fmt/core.h HINTS ${_edit_fmt_includes} NO_DEFAULT_PATH)
  if(NOT EDIT_SPDLOG_FMT_INCLUDE_DIR)
    find_path(EDIT_SPDLOG_FMT_INCLUDE_DIR fmt/core.h)
  endif()
  if(EDIT_SPDLOG_FMT_INCLUDE_DIR AND NOT EDIT_SPDLOG_FMT_INCLUDE_DIR STREQUAL _edit_torch_fmt)
    set(_edit_shim "${PROJECT_BINARY_DIR}/spdlog-fmt")
    file(MAKE_DIRECTORY "${_edit_shim}")
    file(REMOVE "${_edit_shim}/fmt")
    file(CREATE_LINK "${EDIT_SPDLOG_FMT_INCLUDE_DIR}/fmt" "${_edit_shim}/fmt" SYMBOLIC)
    include_directories(BEFORE SYSTEM "${_edit_shim}")
    message(STATUS "spdlog's {fmt} (${EDIT_SPDLOG_FMT_INCLUDE_DIR}) goes before LibTorch's (${_edit_torch_fmt})")
  endif()
endif()
