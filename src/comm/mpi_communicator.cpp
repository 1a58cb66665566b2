#include "edit/comm/mpi_communicator.h"

#include <ATen/ATen.h>
#include <mpi.h>
#include <spdlog/spdlog.h>

#include <atomic>
#include <condition_variable>
#include <deque>
#include <functional>
#include <limits>
#include <mutex>
#include <thread>
#include <vector>

#include "edit/core/check.h"
#include "mpi_process.h"

#ifdef __linux__
#include <sys/prctl.h>
#endif

namespace edit::comm {
namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

using detail::mpi_error_string;

// Counters shared by a communicator and the Work handles it gave out (which may outlive it).
struct StatsCell {
  mutable std::mutex mutex;
  CommStats stats;
  void add_wait(double seconds) {
    std::lock_guard<std::mutex> guard(mutex);
    stats.wait_seconds += seconds;
  }
  void add_op(std::int64_t bytes, double busy) {
    std::lock_guard<std::mutex> guard(mutex);
    stats.ops += 1;
    stats.bytes_sent += bytes;
    stats.busy_seconds += busy;
  }
};

class MpiWork final : public Work {
 public:
  MpiWork(std::shared_ptr<StatsCell> stats, std::function<void()> finish_on_caller)
      : stats_(std::move(stats)), finish_on_caller_(std::move(finish_on_caller)) {}

  void complete(std::exception_ptr error) {
    {
      std::lock_guard<std::mutex> guard(mutex_);
      done_ = true;
      error_ = std::move(error);
    }
    done_cv_.notify_all();
  }

  bool is_completed() override {
    std::lock_guard<std::mutex> guard(mutex_);
    return done_;
  }

  void wait() override {
    const auto start = Clock::now();
    std::exception_ptr error;
    {
      std::unique_lock<std::mutex> lock(mutex_);
      // No deadline here: the communication thread fails every op within CommOptions::timeout of
      // its start, and fails queued ops at once after a failure, so this always returns.
      done_cv_.wait(lock, [this] { return done_; });
      error = error_;
    }
    stats_->add_wait(seconds_since(start));
    if (error) std::rethrow_exception(error);
    // Copy a staged result back into the caller's tensor, on the caller's thread (and so, for CUDA
    // tensors, on the caller's current stream).
    std::call_once(finish_once_, [this] {
      if (finish_on_caller_) finish_on_caller_();
    });
  }

 private:
  std::shared_ptr<StatsCell> stats_;
  std::function<void()> finish_on_caller_;
  std::once_flag finish_once_;
  std::mutex mutex_;
  std::condition_variable done_cv_;
  bool done_ = false;
  std::exception_ptr error_;
};

// A tensor as MPI sees it: contiguous host memory. `host` is the user's tensor itself when that
// already qualifies, else a staging copy.
struct HostBuffer {
  at::Tensor user;
  at::Tensor host;
  bool staged = false;
};

HostBuffer to_host(const at::Tensor& tensor, bool copy_in) {
  EDIT_CHECK(tensor.defined(), "collective got an undefined tensor; allocate it first");
  EDIT_CHECK(tensor.layout() == at::kStrided, "collectives need dense (strided) tensors, got layout ",
             tensor.layout(), "; call .to_dense() first");
  if (tensor.is_cpu() && tensor.is_contiguous()) return {tensor, tensor, false};
  // Pinned host memory makes the device<->host copies of CUDA tensors asynchronous-capable and fast.
  at::Tensor host = at::empty(tensor.sizes(), tensor.options().device(at::kCPU).pinned_memory(tensor.is_cuda()));
  if (copy_in) host.copy_(tensor);
  return {tensor, host, true};
}

// Whether two tensors that collectives would use in place (contiguous, on the CPU) share bytes.
bool overlap(const at::Tensor& a, const at::Tensor& b) {
  if (!a.is_cpu() || !b.is_cpu() || !a.is_contiguous() || !b.is_contiguous() || a.numel() == 0 || b.numel() == 0) {
    return false;  // (anything else is staged through a buffer of its own)
  }
  const auto* a0 = static_cast<const char*>(a.data_ptr());
  const auto* b0 = static_cast<const char*>(b.data_ptr());
  return a0 < b0 + b.numel() * b.element_size() && b0 < a0 + a.numel() * a.element_size();
}

int checked_count(std::int64_t count, const char* op) {
  EDIT_CHECK(count <= std::numeric_limits<int>::max(), op, " of ", count,
             " elements exceeds MPI's int count limit; split the tensor into chunks below 2^31 elements");
  return static_cast<int>(count);
}

std::string describe(const char* op, const at::Tensor& tensor, const char* extra = nullptr) {
  std::string text = std::string(op) + "(" + std::string(c10::toString(tensor.scalar_type())) + "[" +
                     std::to_string(tensor.numel()) + "]";
  if (extra != nullptr) text += std::string(", ") + extra;
  return text + ")";
}

// A sum over the ranks of a large float or double buffer as a ring of point-to-point messages,
// one round at a time, each rank passing a chunk to its right neighbour and adding the one from
// its left. OpenMPI's nonblocking all-reduce picks a binomial tree for few ranks, and its
// nonblocking reduce-scatter is as slow: 1.2-3.3x behind a ring from 1 MiB up on 2 and 4 ranks
// (docs/benchmarks.md, bench_comm). Each rank sends (p - 1) / p of the buffer per phase, as MPI's best algorithms do.
//  - reduce-scatter: p - 1 rounds leave the whole sum of chunk r on rank r. Round k sends chunk
//    r - k - 1 (the rank's own input at k = 0, else its running sum) and receives chunk r - k - 2,
//    whose running sum becomes this rank's input plus the received one. The input is only read.
//  - all-reduce: the same rounds in place (each rank then holds one finished chunk, r), then p - 1
//    rounds that pass the finished chunks on. Chunk c is summed on one rank and copied to the
//    others, so every rank ends with the same bits.
class RingReduction {
 public:
  static std::shared_ptr<RingReduction> all_reduce(at::Tensor data, int rank, int size) {
    const std::int64_t chunk = (data.numel() + size - 1) / size;
    return std::shared_ptr<RingReduction>(new RingReduction(data, data, chunk, rank, size, /*gather=*/true));
  }
  // `input` holds size x output.numel() values; rank r's output is their sum's chunk r.
  static std::shared_ptr<RingReduction> reduce_scatter(at::Tensor input, at::Tensor output, int rank, int size) {
    return std::shared_ptr<RingReduction>(
        new RingReduction(std::move(input), std::move(output), output.numel(), rank, size, /*gather=*/false));
  }

  // Under the MPI lock: posts the next round's send and receive into `requests`, or none when the
  // ring is done. Returns MPI's code.
  int post(MPI_Comm comm, std::vector<MPI_Request>& requests) {
    requests.clear();
    if (round_ == (gather_ ? 2 : 1) * (size_ - 1)) return MPI_SUCCESS;
    const bool scatter = round_ < size_ - 1;
    const int step = scatter ? round_ : round_ - (size_ - 1);
    const int right = mod(rank_ + 1), left = mod(rank_ - 1);
    const MPI_Datatype type = input_.scalar_type() == at::kDouble ? MPI_DOUBLE : MPI_FLOAT;
    requests.assign(2, MPI_REQUEST_NULL);
    int code = MPI_SUCCESS;
    if (scatter) {
      const int send = mod(rank_ - step - 1);
      receiving_ = mod(rank_ - step - 2);
      // The running sum of the chunk sent lives in the input's chunk (all-reduce, in place) or,
      // after the first round, in the output (reduce-scatter).
      const void* from = (gather_ || step == 0) ? chunk_ptr(input_, send) : output_.data_ptr();
      code = MPI_Isend(from, length(send), type, right, kTag, comm, &requests[0]);
      if (code != MPI_SUCCESS) return code;
      return MPI_Irecv(incoming_.data_ptr(), length(receiving_), type, left, kTag, comm, &requests[1]);
    }
    // All-gather: send chunk r - k (finished here), receive r - k - 1 (finished to the left).
    const int send = mod(rank_ - step);
    receiving_ = mod(rank_ - step - 1);
    code = MPI_Isend(chunk_ptr(input_, send), length(send), type, right, kTag, comm, &requests[0]);
    if (code != MPI_SUCCESS) return code;
    return MPI_Irecv(chunk_ptr(input_, receiving_), length(receiving_), type, left, kTag, comm, &requests[1]);
  }

  // Without the lock, once the round's messages are done: in a reduce-scatter round, the chunk's
  // running sum becomes this rank's input plus the received sum.
  void finish_round() {
    if (round_ < size_ - 1) {
      const std::int64_t n = length(receiving_);
      void* into = gather_ ? chunk_ptr(input_, receiving_) : output_.data_ptr();
      if (input_.scalar_type() == at::kDouble) {
        add(static_cast<double*>(into), static_cast<const double*>(chunk_ptr(input_, receiving_)),
            incoming_.data_ptr<double>(), n);
      } else {
        add(static_cast<float*>(into), static_cast<const float*>(chunk_ptr(input_, receiving_)),
            incoming_.data_ptr<float>(), n);
      }
    }
    ++round_;
  }

  // What MPI may still touch if the op is abandoned in flight.
  std::vector<at::Tensor> buffers() const { return {input_, output_, incoming_}; }

 private:
  RingReduction(at::Tensor input, at::Tensor output, std::int64_t chunk, int rank, int size, bool gather)
      : input_(std::move(input)),
        output_(std::move(output)),
        rank_(rank),
        size_(size),
        chunk_(chunk),
        gather_(gather),
        incoming_(at::empty({chunk_}, input_.options())) {}

  // Ops on one group run one at a time, so one tag suffices (below 32767, the least MPI_TAG_UB).
  static constexpr int kTag = 7301;

  // `into` may be `a` (in place) but never overlaps `b`.
  template <typename T>
  static void add(T* into, const T* a, const T* __restrict b, std::int64_t n) {
    for (std::int64_t i = 0; i < n; ++i) into[i] = a[i] + b[i];
  }
  int mod(int r) const { return ((r % size_) + size_) % size_; }
  std::int64_t begin(int c) const { return std::min<std::int64_t>(c * chunk_, input_.numel()); }
  int length(int c) const { return static_cast<int>(std::min<std::int64_t>((c + 1) * chunk_, input_.numel()) - begin(c)); }
  void* chunk_ptr(const at::Tensor& t, int c) const {
    return static_cast<char*>(t.data_ptr()) + begin(c) * static_cast<std::int64_t>(t.element_size());
  }

  at::Tensor input_, output_;
  int rank_, size_;
  std::int64_t chunk_;
  bool gather_;
  at::Tensor incoming_;
  int round_ = 0;
  int receiving_ = 0;
};

}  // namespace

// --- Impl --------------------------------------------------------------------------------------

struct MpiCommunicator::Impl {
  struct Op {
    std::string what;
    const char* call = "";  // the MPI function `start` calls, for error messages
    // Comm thread, under the MPI lock: starts the nonblocking collective and returns MPI's code
    // (the error message is built after the lock is released, as it calls MPI too).
    std::function<int(MPI_Comm, MPI_Request*)> start;
    // Every tensor MPI reads or writes while the op is in flight; `start` uses their memory, and
    // an op abandoned in flight hands them to detail::park_abandoned.
    std::vector<at::Tensor> buffers;
    std::function<void()> after;  // comm thread, after success (no MPI calls)
    // Instead of `start`: an op of several rounds of point-to-point messages.
    std::shared_ptr<RingReduction> ring;
    std::shared_ptr<MpiWork> work;
    std::int64_t bytes = 0;
  };

  std::shared_ptr<MpiRuntime> runtime;
  MPI_Comm comm = MPI_COMM_NULL;
  std::string name;
  int rank = 0;
  int size = 1;
  CommOptions options;
  std::shared_ptr<StatsCell> stats = std::make_shared<StatsCell>();

  std::mutex queue_mutex;
  std::condition_variable queue_cv;
  std::deque<Op> queue;
  std::string broken_reason;  // set once an op failed; guarded by queue_mutex
  std::atomic<bool> stopping{false};
  std::thread thread;

  std::string group() const {
    return "group '" + name + "' (rank " + std::to_string(rank) + " of " + std::to_string(size) +
           ", world rank " + std::to_string(runtime->world_rank()) + ")";
  }

  WorkPtr enqueue(Op op) {
    WorkPtr work = op.work;
    {
      std::lock_guard<std::mutex> guard(queue_mutex);
      queue.push_back(std::move(op));
    }
    queue_cv.notify_one();
    return work;
  }

  std::shared_ptr<MpiWork> new_work(std::function<void()> finish_on_caller = {}) {
    return std::make_shared<MpiWork>(stats, std::move(finish_on_caller));
  }

  // Until every request is done (MPI_Testall sets each to MPI_REQUEST_NULL as it completes).
  void poll(std::vector<MPI_Request>& requests, const Op& op, Clock::time_point start) {
    auto pause = options.poll_min;
    const auto deadline = start + options.timeout;
    // A peer that stopped (SIGSTOP, a swapped-out node) shows only as a wait: say so long before
    // the timeout ends the job, so the stall is never silent.
    const auto warn_at = start + std::max<Clock::duration>(std::chrono::seconds(10), options.timeout / 10);
    bool warned = false;
    while (true) {
      int done = 0;
      int code = MPI_SUCCESS;
      {
        std::lock_guard<std::mutex> guard(runtime->lock());
        code = MPI_Testall(static_cast<int>(requests.size()), requests.data(), &done, MPI_STATUSES_IGNORE);
      }
      EDIT_CHECK(code == MPI_SUCCESS, op.what, " on ", group(), " failed: ", mpi_error_string(code));
      if (done) return;
      if (Clock::now() > deadline) {
        EDIT_FAIL(op.what, " on ", group(), " did not complete within ",
                  std::chrono::duration<double>(options.timeout).count(),
                  " s: a peer in this group died or stopped answering. Check the other ranks' logs; "
                  "if the op is legitimately this slow, raise --comm-timeout (EDIT_COMM_TIMEOUT_S)");
      }
      if (!warned && Clock::now() > warn_at) {
        warned = true;
        spdlog::warn("{} on {} has waited {:.0f} s for its peers: one may be stopped, dead or much slower. "
                     "The job fails if it is not done within {:.0f} s (--comm-timeout / EDIT_COMM_TIMEOUT_S)",
                     op.what, group(), std::chrono::duration<double>(Clock::now() - start).count(),
                     std::chrono::duration<double>(options.timeout).count());
      }
      EDIT_CHECK(!stopping, op.what, " on ", group(),
                 " was still in flight when its communicator was destroyed; wait() on every Work first");
      if (options.busy_poll || Clock::now() - start < options.poll_spin) continue;
      std::this_thread::sleep_for(pause);
      pause = std::min(pause * 2, options.poll_max);
    }
  }

  void run() {
    while (true) {
      Op op;
      std::string broken;
      {
        std::unique_lock<std::mutex> lock(queue_mutex);
        queue_cv.wait(lock, [this] { return stopping || !queue.empty(); });
        if (queue.empty()) return;
        op = std::move(queue.front());
        queue.pop_front();
        broken = broken_reason;
      }
      if (!broken.empty()) {
        op.work->complete(std::make_exception_ptr(
            Error(op.what + " on " + group() + " refused: the group is unusable after an earlier failure (" +
                  broken + "); restart the job, from the last checkpoint if there is one")));
        continue;
      }
      const auto start = Clock::now();
      std::vector<MPI_Request> requests;
      try {
        if (op.ring) {
          while (true) {
            int code = MPI_SUCCESS;
            {
              std::lock_guard<std::mutex> guard(runtime->lock());
              code = op.ring->post(comm, requests);
            }
            EDIT_CHECK(code == MPI_SUCCESS, op.call, " for ", op.what, " on ", group(), " failed: ",
                       mpi_error_string(code));
            if (requests.empty()) break;
            poll(requests, op, start);
            op.ring->finish_round();
          }
        } else {
          requests.assign(1, MPI_REQUEST_NULL);
          int code = MPI_SUCCESS;
          {
            std::lock_guard<std::mutex> guard(runtime->lock());
            code = op.start(comm, &requests[0]);
          }
          EDIT_CHECK(code == MPI_SUCCESS, op.call, " for ", op.what, " on ", group(), " failed: ",
                     mpi_error_string(code));
          poll(requests, op, start);
        }
        if (op.after) op.after();
        stats->add_op(op.bytes, seconds_since(start));
        op.work->complete(nullptr);
      } catch (const std::exception& e) {
        {
          std::lock_guard<std::mutex> guard(queue_mutex);
          broken_reason = e.what();
        }
        runtime->mark_broken();
        // Still in flight (a timeout, or destroyed under it): MPI may write into the buffers
        // whenever a late peer joins, long after the caller has seen the error and freed its
        // tensors.
        for (MPI_Request request : requests) {
          if (request != MPI_REQUEST_NULL) detail::park_abandoned(request, op.buffers);
        }
        spdlog::error("{}", e.what());
        op.work->complete(std::current_exception());
      }
    }
  }

  MPI_Datatype reduce_type(at::ScalarType type, const char* op) const {
    switch (type) {
      case at::kFloat:
        return MPI_FLOAT;
      case at::kDouble:
        return MPI_DOUBLE;
      case at::kBFloat16:
      case at::kHalf:
        return MPI_UINT16_T;  // summed by the runtime's custom ops
      case at::kInt:
        return MPI_INT32_T;
      case at::kLong:
        return MPI_INT64_T;
      case at::kByte:
        return MPI_UINT8_T;
      case at::kChar:
        return MPI_INT8_T;
      default:
        EDIT_FAIL(op, " on ", group(), ": dtype ", type, " cannot be reduced; use float32, float64, bfloat16, ",
                  "float16, int8/uint8, int32 or int64");
    }
  }

  MPI_Op sum_op(at::ScalarType type) const {
    if (type == at::kBFloat16) return static_cast<MPI_Op>(runtime->bf16_sum_op());
    if (type == at::kHalf) return static_cast<MPI_Op>(runtime->fp16_sum_op());
    return MPI_SUM;
  }

  // Float and double sums of at least CommOptions::ring_min_bytes go around the ring.
  bool takes_ring(std::int64_t bytes, at::ScalarType type) const {
    const std::int64_t from = options.ring_min_bytes;
    return size > 1 && from > 0 && bytes >= from && (type == at::kFloat || type == at::kDouble);
  }

  void check_avg(ReduceOp op, at::ScalarType type, const char* name_of_op) const {
    EDIT_CHECK(op != ReduceOp::kAvg || at::isFloatingType(type), name_of_op, " on ", group(),
               ": ReduceOp::kAvg needs a floating dtype, got ", type, "; use kSum and divide yourself");
  }
};

// --- MpiCommunicator ----------------------------------------------------------------------------

MpiCommunicator::MpiCommunicator(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {
  {
    std::lock_guard<std::mutex> guard(impl_->runtime->lock());
    MPI_Comm_rank(impl_->comm, &impl_->rank);
    MPI_Comm_size(impl_->comm, &impl_->size);
    MPI_Comm_set_errhandler(impl_->comm, MPI_ERRORS_RETURN);
  }
  Impl* raw = impl_.get();
  impl_->thread = std::thread([raw] {
#ifdef __linux__
    // Linux stretches every sleep by the thread's timer slack (50 us by default), which would turn
    // the back-off's 5 us naps into 55 us ones and add that to every small collective.
    prctl(PR_SET_TIMERSLACK, 1UL, 0UL, 0UL, 0UL);
#endif
    raw->run();
  });
}

MpiCommunicator::~MpiCommunicator() {
  {
    std::lock_guard<std::mutex> guard(impl_->queue_mutex);
    impl_->stopping = true;
  }
  impl_->queue_cv.notify_all();
  impl_->thread.join();
  if (impl_->runtime->broken()) return;  // freeing may wait on the dead peer
  std::lock_guard<std::mutex> guard(impl_->runtime->lock());
  int finalized = 0;
  MPI_Finalized(&finalized);
  // A communicator kept in a static can outlive MPI (finalized at exit, or by the program).
  if (!finalized) MPI_Comm_free(&impl_->comm);
}

std::shared_ptr<MpiCommunicator> MpiCommunicator::world(std::shared_ptr<MpiRuntime> runtime,
                                                        CommOptions options, std::string name) {
  auto impl = std::make_unique<Impl>();
  int code = MPI_SUCCESS;
  {
    std::lock_guard<std::mutex> guard(runtime->lock());
    // Our own copy of the world, so the program's MPI traffic never matches ours.
    code = MPI_Comm_dup(MPI_COMM_WORLD, &impl->comm);
  }
  EDIT_CHECK(code == MPI_SUCCESS, "duplicating MPI_COMM_WORLD for group '", name, "' failed: ", mpi_error_string(code));
  impl->runtime = std::move(runtime);
  impl->options = options.checked();
  impl->name = std::move(name);
  return std::shared_ptr<MpiCommunicator>(new MpiCommunicator(std::move(impl)));
}

std::shared_ptr<MpiCommunicator> MpiCommunicator::split(int color, int key, std::string name) const {
  auto impl = std::make_unique<Impl>();
  int code = MPI_SUCCESS;
  {
    std::lock_guard<std::mutex> guard(impl_->runtime->lock());
    code = MPI_Comm_split(impl_->comm, color, key, &impl->comm);
  }
  EDIT_CHECK(code == MPI_SUCCESS, "splitting ", impl_->group(), " into '", name, "' failed: ", mpi_error_string(code));
  impl->runtime = impl_->runtime;
  impl->options = impl_->options;
  impl->name = std::move(name);
  return std::shared_ptr<MpiCommunicator>(new MpiCommunicator(std::move(impl)));
}

int MpiCommunicator::rank() const { return impl_->rank; }
int MpiCommunicator::size() const { return impl_->size; }
const std::string& MpiCommunicator::name() const { return impl_->name; }
const CommOptions& MpiCommunicator::options() const { return impl_->options; }
const std::shared_ptr<MpiRuntime>& MpiCommunicator::runtime() const { return impl_->runtime; }

WorkPtr MpiCommunicator::all_reduce(at::Tensor tensor, AllReduceOptions options) {
  Impl& impl = *impl_;
  const at::ScalarType type = tensor.scalar_type();
  const MPI_Datatype mpi_type = impl.reduce_type(type, "all_reduce");
  const MPI_Op mpi_op = impl.sum_op(type);
  impl.check_avg(options.op, type, "all_reduce");
  if (options.prescale != 1.0) {
    EDIT_CHECK(at::isFloatingType(type), "all_reduce on ", impl.group(), ": prescale ", options.prescale,
               " needs a floating dtype, got ", type);
    tensor.mul_(options.prescale);
  }
  const int count = checked_count(tensor.numel(), "all_reduce");
  HostBuffer buffer = to_host(tensor, /*copy_in=*/true);
  Impl::Op op;
  op.what = describe("all_reduce", tensor, to_string(options.op));
  op.bytes = ring_bytes_all_reduce(tensor.numel() * tensor.element_size(), impl.size);
  at::Tensor host = buffer.host;
  op.buffers = {host};
  const std::int64_t bytes = tensor.numel() * tensor.element_size();
  if (impl.takes_ring(bytes, type)) {
    op.call = "MPI_Isend/MPI_Irecv (ring)";
    op.ring = RingReduction::all_reduce(host, impl.rank, impl.size);
    op.buffers = op.ring->buffers();
  } else {
    op.call = "MPI_Iallreduce";
    op.start = [data = host.data_ptr(), count, mpi_type, mpi_op](MPI_Comm comm, MPI_Request* request) {
      return MPI_Iallreduce(MPI_IN_PLACE, data, count, mpi_type, mpi_op, comm, request);
    };
  }
  if (options.op == ReduceOp::kAvg) {
    const int size = impl.size;
    op.after = [host, size] { host.div_(size); };
  }
  op.work = impl.new_work(buffer.staged ? std::function<void()>([buffer] { buffer.user.copy_(buffer.host); })
                                        : std::function<void()>());
  return impl.enqueue(std::move(op));
}

WorkPtr MpiCommunicator::all_gather(at::Tensor output, at::Tensor input) {
  Impl& impl = *impl_;
  EDIT_CHECK(output.scalar_type() == input.scalar_type(), "all_gather on ", impl.group(), ": output dtype ",
             output.scalar_type(), " differs from input dtype ", input.scalar_type());
  EDIT_CHECK(output.numel() == impl.size * input.numel(), "all_gather on ", impl.group(), ": output has ",
             output.numel(), " elements but group size ", impl.size, " x input ", input.numel(), " = ",
             impl.size * input.numel(), "; allocate the output as group size x input elements");
  const std::int64_t chunk_bytes = input.numel() * input.element_size();
  const int count = checked_count(chunk_bytes, "all_gather (bytes)");
  HostBuffer out = to_host(output, /*copy_in=*/false);
  // FSDP-style in-place gather: the input already sits at this rank's slot of the output.
  const bool in_place = !out.staged && input.is_cpu() && input.is_contiguous() && chunk_bytes > 0 &&
                        input.data_ptr() == static_cast<char*>(out.host.data_ptr()) + impl.rank * chunk_bytes;
  HostBuffer in = in_place ? HostBuffer{input, input, false} : to_host(input, /*copy_in=*/true);
  Impl::Op op;
  op.what = describe("all_gather", output);
  op.bytes = ring_bytes_all_gather(output.numel() * output.element_size(), impl.size);
  op.buffers = {in.host, out.host};
  op.call = "MPI_Iallgather";
  const void* send = in_place ? MPI_IN_PLACE : in.host.data_ptr();
  op.start = [send, recv = out.host.data_ptr(), count](MPI_Comm comm, MPI_Request* request) {
    return MPI_Iallgather(send, count, MPI_BYTE, recv, count, MPI_BYTE, comm, request);
  };
  op.work = impl.new_work(out.staged ? std::function<void()>([out] { out.user.copy_(out.host); })
                                     : std::function<void()>());
  return impl.enqueue(std::move(op));
}

WorkPtr MpiCommunicator::reduce_scatter(at::Tensor output, at::Tensor input, ReduceScatterOptions options) {
  Impl& impl = *impl_;
  const at::ScalarType type = input.scalar_type();
  EDIT_CHECK(output.scalar_type() == type, "reduce_scatter on ", impl.group(), ": output dtype ",
             output.scalar_type(), " differs from input dtype ", type);
  EDIT_CHECK(input.numel() == impl.size * output.numel(), "reduce_scatter on ", impl.group(), ": input has ",
             input.numel(), " elements but group size ", impl.size, " x output ", output.numel(), " = ",
             impl.size * output.numel(), "; pad the input to a multiple of the group size");
  // Neither MPI nor the ring may write a chunk of the sum over input that is still to be read.
  EDIT_CHECK(!overlap(input, output), "reduce_scatter on ", impl.group(),
             ": the output overlaps the input's memory; give it a tensor of its own");
  const MPI_Datatype mpi_type = impl.reduce_type(type, "reduce_scatter");
  const MPI_Op mpi_op = impl.sum_op(type);
  impl.check_avg(options.op, type, "reduce_scatter");
  const int count = checked_count(output.numel(), "reduce_scatter");
  HostBuffer in = to_host(input, /*copy_in=*/true);
  HostBuffer out = to_host(output, /*copy_in=*/false);
  Impl::Op op;
  op.what = describe("reduce_scatter", input, to_string(options.op));
  op.bytes = ring_bytes_all_gather(input.numel() * input.element_size(), impl.size);
  at::Tensor out_host = out.host;
  if (impl.takes_ring(input.numel() * input.element_size(), type)) {
    op.call = "MPI_Isend/MPI_Irecv (ring)";
    op.ring = RingReduction::reduce_scatter(in.host, out_host, impl.rank, impl.size);
    op.buffers = op.ring->buffers();
  } else {
    op.buffers = {in.host, out_host};
    op.call = "MPI_Ireduce_scatter_block";
    op.start = [send = in.host.data_ptr(), recv = out_host.data_ptr(), count, mpi_type, mpi_op](
                   MPI_Comm comm, MPI_Request* request) {
      return MPI_Ireduce_scatter_block(send, recv, count, mpi_type, mpi_op, comm, request);
    };
  }
  if (options.op == ReduceOp::kAvg) {
    const int size = impl.size;
    op.after = [out_host, size] { out_host.div_(size); };
  }
  op.work = impl.new_work(out.staged ? std::function<void()>([out] { out.user.copy_(out.host); })
                                     : std::function<void()>());
  return impl.enqueue(std::move(op));
}

WorkPtr MpiCommunicator::broadcast(at::Tensor tensor, int root) {
  Impl& impl = *impl_;
  EDIT_CHECK(root >= 0 && root < impl.size, "broadcast on ", impl.group(), ": root ", root,
             " is not a rank of this group (0..", impl.size - 1, ")");
  const std::int64_t bytes = tensor.numel() * tensor.element_size();
  const int count = checked_count(bytes, "broadcast (bytes)");
  HostBuffer buffer = to_host(tensor, /*copy_in=*/impl.rank == root);
  Impl::Op op;
  op.what = describe("broadcast", tensor, ("root " + std::to_string(root)).c_str());
  op.bytes = (impl.rank == root && impl.size > 1) ? bytes : 0;
  op.buffers = {buffer.host};
  op.call = "MPI_Ibcast";
  op.start = [data = buffer.host.data_ptr(), count, root](MPI_Comm comm, MPI_Request* request) {
    return MPI_Ibcast(data, count, MPI_BYTE, root, comm, request);
  };
  op.work = impl.new_work(buffer.staged ? std::function<void()>([buffer] { buffer.user.copy_(buffer.host); })
                                        : std::function<void()>());
  return impl.enqueue(std::move(op));
}

WorkPtr MpiCommunicator::barrier() {
  Impl& impl = *impl_;
  Impl::Op op;
  op.what = "barrier()";
  op.call = "MPI_Ibarrier";
  op.start = [](MPI_Comm comm, MPI_Request* request) {
    return MPI_Ibarrier(comm, request);
  };
  op.work = impl.new_work();
  return impl.enqueue(std::move(op));
}

std::vector<double> MpiCommunicator::all_gather_values(const std::vector<double>& mine) {
  const auto n = static_cast<std::int64_t>(mine.size());
  at::Tensor input = at::empty({n}, at::kDouble);
  std::copy(mine.begin(), mine.end(), input.data_ptr<double>());
  at::Tensor output = at::empty({n * impl_->size}, at::kDouble);
  all_gather(output, input)->wait();
  const double* values = output.data_ptr<double>();
  return std::vector<double>(values, values + output.numel());
}

CommStats MpiCommunicator::stats() const {
  std::lock_guard<std::mutex> guard(impl_->stats->mutex);
  return impl_->stats->stats;
}

void MpiCommunicator::reset_stats() {
  std::lock_guard<std::mutex> guard(impl_->stats->mutex);
  impl_->stats->stats = CommStats{};
}

}  // namespace edit::comm
