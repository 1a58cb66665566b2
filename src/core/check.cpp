#include "edit/core/check.h"

#include <cstring>

namespace edit::detail {

void throw_error(const char* file, int line, const char* condition, const std::string& message) {
  // Strip the directories: "src/comm/mpi_communicator.cpp:42" reads better than an absolute path.
  const char* base = file;
  for (const char* marker : {"/src/", "/include/", "/tests/", "/examples/", "/benchmarks/", "/kernels/", "/tools/"}) {
    if (const char* found = std::strstr(file, marker)) {
      base = found + 1;
      break;
    }
  }
  std::string what = concat(base, ":", line, ": ", message);
  if (message.empty() && condition != nullptr) {
    what += concat("check failed: ", condition);
  }
  throw Error(what);
}

}  // namespace edit::detail
