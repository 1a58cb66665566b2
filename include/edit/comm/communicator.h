// Communicator: the collectives every strategy is built on (docs/architecture.md, comm/).
//
// Every collective is asynchronous: it returns a Work handle at once and progresses on the
// communicator's own thread (MPI) or stream (NCCL), so callers choose when to block and compute
// overlaps communication. Collectives must be issued in the same order on every rank of a group.
//
//   auto work = comm.all_reduce(grad, {ReduceOp::kAvg});
//   ... compute ...
//   work->wait();   // rethrows an error of the collective, or a timeout naming group and op
#pragma once

#include <ATen/core/Tensor.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace edit::comm {

enum class ReduceOp { kSum, kAvg };

const char* to_string(ReduceOp op);

// Knobs every communicator shares.
struct CommOptions {
  // Every op gives up after this long with an error naming the group and the op, so a dead or
  // hung peer never hangs the job. Default 10 minutes (first NCCL/MPI connections can be slow on
  // big clusters); the environment variable EDIT_COMM_TIMEOUT_S overrides it (see from_env()).
  std::chrono::milliseconds timeout{std::chrono::minutes(10)};
  // MPI progress polling on the communication thread. MPI's nonblocking collectives advance only
  // inside MPI_Test, several rounds per op, so the thread tests back to back for `poll_spin`
  // (small ops finish within it), then sleeps between tests, growing from poll_min to poll_max, so
  // a waiting thread does not steal the core that compute needs when ranks outnumber cores.
  std::chrono::microseconds poll_spin{50};
  std::chrono::microseconds poll_min{5};
  std::chrono::microseconds poll_max{100};
  // Test back to back without sleeping: lowest latency when every rank has a spare core.
  bool busy_poll = false;
  // MPI: float and double all-reduces and reduce-scatters (sum or average) of at least this many
  // bytes (the whole buffer) run as a ring of point-to-point messages, 1.2-3.3x OpenMPI's
  // nonblocking collectives from 1 MiB up with few ranks (docs/benchmarks.md); smaller ones, and
  // 0 here, use MPI_Iallreduce and MPI_Ireduce_scatter_block. Every rank of a group must use the
  // same value (as with any collective's arguments).
  std::int64_t ring_min_bytes = std::int64_t{1} << 20;

  // Defaults overridden from the environment: EDIT_COMM_TIMEOUT_S, EDIT_COMM_BUSY_POLL=1,
  // EDIT_COMM_RING_MIN_BYTES (0: never the ring).
  static CommOptions from_env();

  // The longest timeout a communicator keeps: 1e8 s (about 3 years), "practically never". Longer
  // ones are cut to it, so that a deadline (now + timeout, in the clock's nanoseconds) cannot
  // overflow into the past and fail every op at once.
  static constexpr std::chrono::milliseconds kMaxTimeout{std::chrono::seconds(100'000'000)};
  // `seconds` (from a flag or the environment, named by `source`) as a timeout: inf and anything
  // above kMaxTimeout give kMaxTimeout; NaN, <= 0 and under a millisecond are refused with the fix.
  static std::chrono::milliseconds timeout_from_seconds(double seconds, const std::string& source);
  // These options as a communicator keeps them: the timeout cut to kMaxTimeout; a timeout <= 0
  // is refused (every op would fail at once).
  CommOptions checked() const;
};

struct AllReduceOptions {
  ReduceOp op = ReduceOp::kSum;
  // Multiplies the input by this factor before the reduction: a weighted sum sum_i w_i x_i is
  // all_reduce(x, {kSum, w_i}). Applied in place on the caller's thread.
  double prescale = 1.0;
};

struct ReduceScatterOptions {
  ReduceOp op = ReduceOp::kSum;
};

// Async handle of one collective. Errors raised inside the collective surface on wait().
class Work {
 public:
  virtual ~Work() = default;
  // Blocks until the collective is done and its results are visible in the output tensors.
  // Throws edit::Error on failure or when the communicator's timeout passes (the message names
  // the op, the group and the ranks).
  virtual void wait() = 0;
  // Non-blocking: true once wait() would return (or throw) without blocking.
  virtual bool is_completed() = 0;
};
using WorkPtr = std::shared_ptr<Work>;

// What a group has done so far, for benchmarks and metrics.
struct CommStats {
  std::int64_t ops = 0;
  // Bytes this rank sent, counted as a ring algorithm does: all_reduce 2(n-1)/n of the tensor,
  // all_gather and reduce_scatter (n-1)/n of the full buffer, broadcast the tensor (root).
  std::int64_t bytes_sent = 0;
  double wait_seconds = 0.0;  // time callers spent blocked in Work::wait()
  double busy_seconds = 0.0;  // time from an op's start to its completion, summed
};

// Bytes one rank sends for a collective in a ring algorithm (see CommStats::bytes_sent).
std::int64_t ring_bytes_all_reduce(std::int64_t tensor_bytes, int group_size);
std::int64_t ring_bytes_all_gather(std::int64_t full_bytes, int group_size);  // also reduce_scatter

class Communicator {
 public:
  virtual ~Communicator() = default;

  virtual int rank() const = 0;  // this process's rank within the group
  virtual int size() const = 0;
  virtual const std::string& name() const = 0;  // "world", "shard", "sync", ...

  // In place on `tensor` (any shape, any numel including 0).
  virtual WorkPtr all_reduce(at::Tensor tensor, AllReduceOptions options = {}) = 0;
  // output.numel() == size() * input.numel(); rank r's input lands at [r*n, (r+1)*n) of output.
  virtual WorkPtr all_gather(at::Tensor output, at::Tensor input) = 0;
  // input.numel() == size() * output.numel(); rank r gets the reduction of input[r*n, (r+1)*n).
  virtual WorkPtr reduce_scatter(at::Tensor output, at::Tensor input, ReduceScatterOptions options = {}) = 0;
  virtual WorkPtr broadcast(at::Tensor tensor, int root) = 0;
  virtual WorkPtr barrier() = 0;

  // Small host-side exchanges (norms, step counts, flags): blocking, rank order.
  virtual std::vector<double> all_gather_values(const std::vector<double>& mine) = 0;

  virtual CommStats stats() const = 0;
  virtual void reset_stats() = 0;
};

}  // namespace edit::comm
