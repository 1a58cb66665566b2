#include "edit/comm/communicator.h"

#include <algorithm>
#include <cmath>
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
    EDIT_CHECK(end != timeout && *end == '\0', "EDIT_COMM_TIMEOUT_S='", timeout,
               "' is not a number of seconds; unset it or set e.g. EDIT_COMM_TIMEOUT_S=300");
    options.timeout = timeout_from_seconds(seconds, "EDIT_COMM_TIMEOUT_S");
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

std::chrono::milliseconds CommOptions::timeout_from_seconds(double seconds, const std::string& source) {
  EDIT_CHECK(!std::isnan(seconds) && seconds >= 0.001, source, " is ", seconds,
             " s, but a collective's timeout must be at least 0.001 s (a millisecond); give e.g. 300, "
             "or inf to wait practically forever");
  const double max_seconds = std::chrono::duration<double>(kMaxTimeout).count();
  if (seconds >= max_seconds) return kMaxTimeout;  // inf included: no double-to-integer overflow
  return std::chrono::milliseconds(static_cast<std::int64_t>(seconds * 1000.0));
}

CommOptions CommOptions::checked() const {
  EDIT_CHECK(timeout.count() > 0, "CommOptions::timeout is ", timeout.count(),
             " ms; give a positive timeout (--comm-timeout, EDIT_COMM_TIMEOUT_S), or kMaxTimeout for practically never");
  CommOptions out = *this;
  out.timeout = std::min(timeout, kMaxTimeout);
  return out;
}

}  // namespace edit::comm
