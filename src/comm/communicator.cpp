#include "edit/comm/communicator.h"

#include <cstdlib>
#include <string>

#include "edit/core/check.h"

namespace edit::comm {

const char* to_string(ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum:
      return "sum";
    case ReduceOp::kAvg:
      return "avg";
  }
  return "?";
}

std::int64_t ring_bytes_all_reduce(std::int64_t tensor_bytes, int group_size) {
  // Reduce-scatter then all-gather around the ring: each rank sends 2 (n-1)/n of the tensor.
  return group_size <= 1 ? 0 : 2 * (group_size - 1) * tensor_bytes / group_size;
}

std::int64_t ring_bytes_all_gather(std::int64_t full_bytes, int group_size) {
  return group_size <= 1 ? 0 : (group_size - 1) * full_bytes / group_size;
}

CommOptions CommOptions::from_env() {
  CommOptions options;
  if (const char* timeout = std::getenv("EDIT_COMM_TIMEOUT_S"); timeout != nullptr && *timeout != '\0') {
    char* end = nullptr;
    const double seconds = std::strtod(timeout, &end);
    EDIT_CHECK(end != timeout && *end == '\0' && seconds > 0, "EDIT_COMM_TIMEOUT_S='", timeout,
               "' is not a positive number of seconds; unset it or set e.g. EDIT_COMM_TIMEOUT_S=300");
    options.timeout = std::chrono::milliseconds(static_cast<std::int64_t>(seconds * 1000.0));
  }
  if (const char* busy = std::getenv("EDIT_COMM_BUSY_POLL"); busy != nullptr) {
    options.busy_poll = std::string(busy) == "1";
  }
  if (const char* ring = std::getenv("EDIT_COMM_RING_MIN_BYTES"); ring != nullptr && *ring != '\0') {
    char* end = nullptr;
    const long long bytes = std::strtoll(ring, &end, 10);
    EDIT_CHECK(end != ring && *end == '\0' && bytes >= 0, "EDIT_COMM_RING_MIN_BYTES='", ring,
               "' is not a number of bytes >= 0; unset it, or 0 to keep every all-reduce and reduce-scatter on MPI's own");
    options.ring_min_bytes = bytes;
  }
  return options;
}

}  // namespace edit::comm
