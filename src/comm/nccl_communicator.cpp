// NCCL backend of Communicator (docs/architecture.md, comm/).
//
// Only raw device pointers (tensor.data_ptr()) and the CUDA runtime API, never c10::cuda: this
// file builds and links against Debian's CPU-only LibTorch. No ATen kernel ever runs on a CUDA
// tensor here (a CPU LibTorch has none), tensors only lend their metadata and their pointer.
#include "edit/comm/nccl_communicator.h"

#include <ATen/ATen.h>
#include <cuda_runtime_api.h>
#include <nccl.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstring>
#include <deque>
#include <mutex>
#include <thread>
#include <utility>

#include "edit/config.h"
#include "edit/core/check.h"

#if !EDIT_WITH_NCCL
#error "nccl_communicator.cpp belongs in the build only when EDIT_WITH_NCCL is on (src/CMakeLists.txt)"
#endif
#if NCCL_VERSION_CODE < NCCL_VERSION(2, 13, 0)
// 2.13 is the first release with all of ncclAvg, ncclRedOpCreatePreMulSum and ncclGetLastError.
#error "NcclCommunicator needs NCCL >= 2.13; install a newer NCCL or configure with -DEDIT_WITH_NCCL=OFF"
#endif

// A failed NCCL call becomes edit::Error naming the call, NCCL's error string and NCCL's last
// message; EDIT_CHECK adds file and line.
#define EDIT_NCCL_CHECK(call)                                                                               \
  do {                                                                                                      \
    const ncclResult_t edit_nccl_status_ = (call);                                                          \
    EDIT_CHECK(edit_nccl_status_ == ncclSuccess, #call, " failed: ", ncclGetErrorString(edit_nccl_status_), \
               " (", ncclGetLastError(nullptr), ")",                                                        \
               "; rerun with NCCL_DEBUG=WARN to see NCCL's own reason");                                    \
  } while (false)

// The same for CUDA runtime calls. (kernels/cuda_check.cuh has EDIT_CUDA_CHECK, but it lives
// beside the .cu files and includes cuda_runtime.h, which a plain g++ build does not need.)
#define EDIT_CUDART_CHECK(call)                                                                   \
  do {                                                                                            \
    const cudaError_t edit_cudart_status_ = (call);                                               \
    EDIT_CHECK(edit_cudart_status_ == cudaSuccess, #call,                                         \
               " failed: ", cudaGetErrorString(edit_cudart_status_),                              \
               "; check that the GPU is visible (nvidia-smi, CUDA_VISIBLE_DEVICES) and that the " \
               "driver matches the CUDA toolkit");                                                \
  } while (false)

namespace edit::comm {
namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// --- RAII for CUDA handles: deleters never throw, failures at teardown are ignored on purpose
// (the process may be unwinding from the very CUDA error that a deleter would report again).
struct StreamDeleter {
  void operator()(cudaStream_t stream) const noexcept { cudaStreamDestroy(stream); }
};
struct EventDeleter {
  void operator()(cudaEvent_t event) const noexcept { cudaEventDestroy(event); }
};
struct DeviceFree {
  void operator()(void* memory) const noexcept { cudaFree(memory); }
};
using StreamPtr = std::unique_ptr<CUstream_st, StreamDeleter>;
using EventPtr = std::unique_ptr<CUevent_st, EventDeleter>;
using DevicePtr = std::unique_ptr<void, DeviceFree>;

EventPtr make_event(unsigned flags) {
  cudaEvent_t event = nullptr;
  EDIT_CUDART_CHECK(cudaEventCreateWithFlags(&event, flags));
  return EventPtr(event);
}

// CUDA and NCCL calls act on the calling thread's current device; the caller's own choice of
// device must survive ours.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) {
    EDIT_CUDART_CHECK(cudaGetDevice(&previous_));
    if (previous_ != device) {
      EDIT_CUDART_CHECK(cudaSetDevice(device));
      switched_ = true;
    }
  }
  ~DeviceGuard() {
    if (switched_) cudaSetDevice(previous_);
  }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int previous_ = 0;
  bool switched_ = false;
};

constexpr const char* kSupportedDtypes = "float, double, half, bfloat16, int32, int64, uint8";

// The PreMulSum scalar, in the tensor's own dtype as NCCL requires (at most 8 bytes).
struct ScalarBytes {
  alignas(8) unsigned char bytes[8] = {};
};

ScalarBytes scalar_bytes(double value, ncclDataType_t dtype) {
  ScalarBytes out;
  switch (dtype) {
    case ncclFloat32: {
      const float v = static_cast<float>(value);
      std::memcpy(out.bytes, &v, sizeof v);
      break;
    }
    case ncclFloat64:
      std::memcpy(out.bytes, &value, sizeof value);
      break;
    case ncclFloat16: {
      const c10::Half v(static_cast<float>(value));
      std::memcpy(out.bytes, &v, sizeof v);
      break;
    }
    case ncclBfloat16: {
      const c10::BFloat16 v(static_cast<float>(value));
      std::memcpy(out.bytes, &v, sizeof v);
      break;
    }
    default:
      EDIT_FAIL("internal: no PreMulSum scalar for NCCL dtype ", static_cast<int>(dtype),
                "; all_reduce should have rejected a prescale on a non-floating tensor");
  }
  return out;
}

std::int64_t byte_size(const at::Tensor& tensor) {
  return tensor.numel() * static_cast<std::int64_t>(tensor.element_size());
}

ncclRedOp_t to_nccl(ReduceOp op) { return op == ReduceOp::kAvg ? ncclAvg : ncclSum; }

// One collective in flight. Shared by its Work and by the group's in-flight list, so its
// tensors stay alive until the GPU is done with them even when the Work is dropped unwaited.
struct Op {
  const char* name = "";
  Clock::time_point issued;
  EventPtr start;  // on the comm stream just before the NCCL call: busy time excludes the wait
  EventPtr done;   // just after it: the op is complete once this fires
  std::atomic<bool> accounted{false};

  std::mutex mutex;  // guards the two below
  std::vector<at::Tensor> keep_alive;
  std::string error;  // set once the op failed; later wait() calls rethrow it
};

// numel 0: nothing to move, nothing to wait for.
class CompletedWork final : public Work {
 public:
  void wait() override {}
  bool is_completed() override { return true; }
};

}  // namespace

namespace detail {

class NcclGroup : public std::enable_shared_from_this<NcclGroup> {
 public:
  using Launch = std::function<ncclResult_t(ncclComm_t, cudaStream_t)>;

  NcclGroup(std::shared_ptr<Communicator> bootstrap, int device, CommOptions options,
            NcclCommunicator::StreamFn caller_stream);
  ~NcclGroup();
  NcclGroup(const NcclGroup&) = delete;
  NcclGroup& operator=(const NcclGroup&) = delete;

  // "group 'sync' (rank 2 of 4, cuda:1)": every error message names where it happened.
  std::string where() const {
    return edit::detail::concat("group '", name_, "' (rank ", rank_, " of ", size_, ", cuda:", device_, ")");
  }

  void check_usable(const char* op);
  ncclDataType_t check_tensor(const char* op, const char* role, const at::Tensor& tensor) const;
  WorkPtr completed();
  WorkPtr issue(const char* op_name, std::vector<at::Tensor> tensors, std::int64_t bytes_sent,
                const Launch& launch);
  void wait(Op& op);
  bool is_completed(Op& op);

  std::shared_ptr<Communicator> bootstrap_;
  const int device_;
  int rank_ = 0;
  int size_ = 1;
  std::string name_;
  const CommOptions options_;
  const NcclCommunicator::StreamFn caller_stream_fn_;

  StreamPtr stream_;
  DevicePtr barrier_buffer_;  // one float: barrier() is an all_reduce of it

  std::atomic<bool> broken_{false};
  mutable std::mutex stats_mutex_;
  CommStats stats_;

 private:
  cudaStream_t caller_stream() const {
    return caller_stream_fn_ ? static_cast<cudaStream_t>(caller_stream_fn_()) : nullptr;
  }
  std::string broken_message(const char* op);
  void abort_locked(const std::string& reason);
  void prune_locked();
  void account_completion(Op& op);
  void release(Op& op);
  // Empty when the op may still finish; otherwise why it never will (the comm is then aborted).
  std::string poll_problem(Op& op);
  [[noreturn]] void fail(Op& op, const std::string& message);

  // Serializes every call on comm_ (NCCL communicators are not thread-safe, and collectives must
  // be enqueued in one order), and guards ready_, in_flight_ and broken_reason_.
  std::mutex nccl_mutex_;
  ncclComm_t comm_ = nullptr;                  // nullptr once aborted
  EventPtr ready_;                             // re-recorded on the caller's stream at every issue
  std::deque<std::shared_ptr<Op>> in_flight_;  // in issue order, which is completion order
  std::string broken_reason_;
};

namespace {

class NcclWork final : public Work {
 public:
  NcclWork(std::shared_ptr<NcclGroup> group, std::shared_ptr<Op> op)
      : group_(std::move(group)), op_(std::move(op)) {}
  void wait() override { group_->wait(*op_); }
  bool is_completed() override { return group_->is_completed(*op_); }

 private:
  std::shared_ptr<NcclGroup> group_;
  std::shared_ptr<Op> op_;
};

}  // namespace

NcclGroup::NcclGroup(std::shared_ptr<Communicator> bootstrap, int device, CommOptions options,
                     NcclCommunicator::StreamFn caller_stream)
    : bootstrap_(std::move(bootstrap)),
      device_(device),
      options_(options.checked()),
      caller_stream_fn_(std::move(caller_stream)) {
  EDIT_CHECK(bootstrap_ != nullptr,
             "NcclCommunicator needs a bootstrap communicator over the same ranks (e.g. an "
             "MpiCommunicator) to share NCCL's unique id; got nullptr");
  rank_ = bootstrap_->rank();
  size_ = bootstrap_->size();
  name_ = bootstrap_->name();
  int count = 0;
  const cudaError_t status = cudaGetDeviceCount(&count);
  if (status != cudaSuccess) cudaGetLastError();  // clear "no driver" so later calls start clean
  EDIT_CHECK(status == cudaSuccess && count > 0, "NcclCommunicator for group '", name_, "' (rank ", rank_,
             "): no CUDA device is visible (cudaGetDeviceCount: ",
             status == cudaSuccess ? "0 devices" : cudaGetErrorString(status),
             "); run it on a GPU node (check nvidia-smi and CUDA_VISIBLE_DEVICES), or use "
             "MpiCommunicator for CPU tensors");
  EDIT_CHECK(device_ >= 0 && device_ < count, "NcclCommunicator for group '", name_, "' (rank ", rank_,
             "): cuda_device ", device_, " does not exist; this process sees ", count, " device(s), 0 to ",
             count - 1, " (usually pass the local rank modulo the GPUs per node)");

  DeviceGuard guard(device_);
  // Local resources before the collective part: a rank that fails here fails before its peers
  // commit to ncclCommInitRank, which blocks until every rank joins.
  cudaStream_t stream = nullptr;
  EDIT_CUDART_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  stream_.reset(stream);
  ready_ = make_event(cudaEventDisableTiming);
  void* buffer = nullptr;
  EDIT_CUDART_CHECK(cudaMalloc(&buffer, sizeof(float)));
  barrier_buffer_.reset(buffer);
  // Its value is never read; zeroed so that memory checkers (compute-sanitizer) stay quiet.
  EDIT_CUDART_CHECK(cudaMemsetAsync(buffer, 0, sizeof(float), stream));

  ncclUniqueId id;
  std::memset(&id, 0, sizeof id);
  if (rank_ == 0) EDIT_NCCL_CHECK(ncclGetUniqueId(&id));
  // (NCCL_UNIQUE_ID_BYTES) uint8 on the host: the id travels over the bootstrap, e.g. MPI.
  at::Tensor blob = at::zeros({static_cast<std::int64_t>(sizeof id)}, at::TensorOptions().dtype(at::kByte));
  if (rank_ == 0) std::memcpy(blob.data_ptr(), &id, sizeof id);
  bootstrap_->broadcast(blob, 0)->wait();
  std::memcpy(&id, blob.data_ptr(), sizeof id);

  ncclComm_t comm = nullptr;
  const ncclResult_t result = ncclCommInitRank(&comm, size_, id, rank_);
  EDIT_CHECK(result == ncclSuccess, "ncclCommInitRank for ", where(), " failed: ", ncclGetErrorString(result),
             " (", ncclGetLastError(nullptr),
             "); every rank of the bootstrap group must create its NcclCommunicator at the same point, "
             "each on a different GPU. Rerun with NCCL_DEBUG=INFO to see which rank or transport failed");
  comm_ = comm;
}

NcclGroup::~NcclGroup() {
  int previous = -1;
  if (cudaGetDevice(&previous) != cudaSuccess) previous = -1;
  cudaSetDevice(device_);
  if (comm_ != nullptr) {
    // ncclCommDestroy blocks on work still queued; with a dead peer that would be forever, so
    // give in-flight ops the usual timeout and abort if they do not drain.
    const Clock::time_point start = Clock::now();
    cudaError_t query = cudaStreamQuery(stream_.get());
    while (query == cudaErrorNotReady && Clock::now() - start < options_.timeout) {
      std::this_thread::sleep_for(options_.poll_max);
      query = cudaStreamQuery(stream_.get());
    }
    if (query == cudaSuccess) {
      ncclCommDestroy(comm_);
    } else {
      ncclCommAbort(comm_);
    }
    comm_ = nullptr;
  }
  // Freed here, while device_ is current, rather than after the caller's device is restored.
  in_flight_.clear();
  ready_.reset();
  barrier_buffer_.reset();
  stream_.reset();
  if (previous >= 0) cudaSetDevice(previous);
}

std::string NcclGroup::broken_message(const char* op) {
  std::lock_guard<std::mutex> lock(nccl_mutex_);
  return edit::detail::concat(op, " on ", where(), ": this NCCL communicator is broken and was aborted (",
                              broken_reason_, "); build a new communicator (in practice: restart the job)");
}

void NcclGroup::check_usable(const char* op) {
  if (broken_.load()) EDIT_FAIL(broken_message(op));
}

ncclDataType_t NcclGroup::check_tensor(const char* op, const char* role, const at::Tensor& tensor) const {
  EDIT_CHECK(tensor.defined(), op, " on ", where(), ": the ", role,
             " tensor is undefined; pass an allocated CUDA tensor");
  EDIT_CHECK(tensor.is_cuda(), op, " on ", where(), ": the ", role, " tensor is a ", tensor.device(),
             " tensor, but NcclCommunicator moves CUDA tensors only; move it with .cuda() (or "
             ".to(device)), or use MpiCommunicator for CPU tensors");
  EDIT_CHECK(tensor.layout() == at::kStrided, op, " on ", where(), ": the ", role, " tensor has layout ",
             tensor.layout(), "; NCCL needs a dense tensor: convert it with .to_dense()");
  EDIT_CHECK(!tensor.device().has_index() || tensor.device().index() == device_, op, " on ", where(),
             ": the ", role, " tensor is on ", tensor.device(),
             " but this communicator runs on cuda:", device_, "; allocate the tensor on cuda:", device_,
             " or build the communicator for its device");
  EDIT_CHECK(tensor.is_contiguous(), op, " on ", where(), ": the ", role, " tensor (sizes ", tensor.sizes(),
             ", strides ", tensor.strides(),
             ") is not contiguous; pass tensor.contiguous() (and copy the result back if it must land in "
             "the strided view)");
  switch (tensor.scalar_type()) {
    case at::kFloat:
      return ncclFloat32;
    case at::kDouble:
      return ncclFloat64;
    case at::kHalf:
      return ncclFloat16;
    case at::kBFloat16:
      return ncclBfloat16;
    case at::kInt:
      return ncclInt32;
    case at::kLong:
      return ncclInt64;
    case at::kByte:
      return ncclUint8;
    default:
      EDIT_FAIL(op, " on ", where(), ": the ", role, " tensor has dtype ", tensor.scalar_type(),
                ", which NcclCommunicator does not move; supported: ", kSupportedDtypes,
                ". Convert it, e.g. tensor.to(at::kFloat)");
  }
}

WorkPtr NcclGroup::completed() {
  std::lock_guard<std::mutex> lock(stats_mutex_);
  ++stats_.ops;
  return std::make_shared<CompletedWork>();
}

WorkPtr NcclGroup::issue(const char* op_name, std::vector<at::Tensor> tensors, std::int64_t bytes_sent,
                         const Launch& launch) {
  auto op = std::make_shared<Op>();
  op->name = op_name;
  op->keep_alive = std::move(tensors);
  const cudaStream_t caller = caller_stream();
  {
    std::lock_guard<std::mutex> lock(nccl_mutex_);
    // Checked again under the lock: another thread may have aborted since check_usable().
    EDIT_CHECK(!broken_.load(), op_name, " on ", where(),
               ": this NCCL communicator is broken and was aborted (", broken_reason_,
               "); build a new communicator (in practice: restart the job)");
    DeviceGuard guard(device_);
    prune_locked();
    op->start = make_event(cudaEventDefault);
    op->done = make_event(cudaEventDefault);
    // The op must see everything the caller queued before it; the comm stream waits for that
    // point only, so compute queued later runs alongside the transfer.
    EDIT_CUDART_CHECK(cudaEventRecord(ready_.get(), caller));
    EDIT_CUDART_CHECK(cudaStreamWaitEvent(stream_.get(), ready_.get(), 0));
    EDIT_CUDART_CHECK(cudaEventRecord(op->start.get(), stream_.get()));
    op->issued = Clock::now();
    const ncclResult_t result = launch(comm_, stream_.get());
    if (result != ncclSuccess) {
      const std::string reason =
          edit::detail::concat("NCCL could not issue ", op_name, " on ", where(), ": ",
                               ncclGetErrorString(result), " (", ncclGetLastError(comm_), ")");
      // A bad argument leaves the communicator usable; anything else (system, CUDA, remote
      // errors) means peers may now wait for this rank forever, so abort and fail fast.
      if (result != ncclInvalidArgument && result != ncclInvalidUsage) abort_locked(reason);
      EDIT_FAIL(reason, "; rerun with NCCL_DEBUG=WARN to see NCCL's own reason");
    }
    EDIT_CUDART_CHECK(cudaEventRecord(op->done.get(), stream_.get()));
    in_flight_.push_back(op);
  }
  {
    std::lock_guard<std::mutex> lock(stats_mutex_);
    ++stats_.ops;
    stats_.bytes_sent += bytes_sent;
  }
  return std::make_shared<NcclWork>(shared_from_this(), std::move(op));
}

void NcclGroup::abort_locked(const std::string& reason) {
  if (broken_.load()) return;
  broken_reason_ = reason;
  broken_.store(true);
  // ncclCommAbort ends NCCL's kernels early, so the done events of the ops still in flight fire
  // although their outputs are incomplete: mark those failed first, so their wait() throws.
  for (const std::shared_ptr<Op>& op : in_flight_) {
    if (cudaEventQuery(op->done.get()) == cudaSuccess) continue;
    std::lock_guard<std::mutex> lock(op->mutex);
    if (op->error.empty()) {
      op->error = edit::detail::concat(op->name, " on ", where(),
                                       " was still in flight when the communicator was aborted (", reason,
                                       "); its output is incomplete. Restart the job");
    }
  }
  if (comm_ != nullptr) {
    // Kills NCCL's kernels still spinning on a dead peer, so the comm stream drains.
    ncclCommAbort(comm_);
    comm_ = nullptr;
  }
}

void NcclGroup::prune_locked() {
  while (!in_flight_.empty() && cudaEventQuery(in_flight_.front()->done.get()) == cudaSuccess) {
    account_completion(*in_flight_.front());
    release(*in_flight_.front());
    in_flight_.pop_front();
  }
}

void NcclGroup::account_completion(Op& op) {
  if (op.accounted.exchange(true)) return;
  float milliseconds = 0.f;
  double busy = 0.0;
  if (cudaEventElapsedTime(&milliseconds, op.start.get(), op.done.get()) == cudaSuccess) {
    busy = milliseconds / 1e3;
  } else {
    cudaGetLastError();  // not fatal: fall back to host time, an upper bound
    busy = seconds_since(op.issued);
  }
  std::lock_guard<std::mutex> lock(stats_mutex_);
  stats_.busy_seconds += busy;
}

void NcclGroup::release(Op& op) {
  std::lock_guard<std::mutex> lock(op.mutex);
  op.keep_alive.clear();
}

std::string NcclGroup::poll_problem(Op& op) {
  std::lock_guard<std::mutex> lock(nccl_mutex_);
  if (broken_.load()) {
    return edit::detail::concat("NCCL communicator of ", where(), " was aborted while ", op.name,
                                " was in flight (", broken_reason_, ")");
  }
  ncclResult_t async = ncclSuccess;
  const ncclResult_t queried = comm_ != nullptr ? ncclCommGetAsyncError(comm_, &async) : ncclInvalidUsage;
  if (queried != ncclSuccess) async = queried;
  if (async != ncclSuccess && async != ncclInProgress) {
    abort_locked(edit::detail::concat("NCCL reported ", ncclGetErrorString(async), " on ", where(), " while ",
                                      op.name, " was in flight (", ncclGetLastError(comm_), ")"));
    return broken_reason_ + "; rerun with NCCL_DEBUG=WARN to see NCCL's own reason";
  }
  // The op's age since issue, not this wait's: an op nobody waited on for the whole timeout is as
  // stuck as one that was waited on (c10d's watchdog counts the same way).
  if (Clock::now() - op.issued > options_.timeout) {
    abort_locked(edit::detail::concat(
        "NCCL ", op.name, " on ", where(), " did not complete within ",
        std::chrono::duration<double>(options_.timeout).count(),
        " s (CommOptions::timeout, EDIT_COMM_TIMEOUT_S): a peer died, hangs, or issued collectives in a "
        "different order"));
    return broken_reason_ + ". The communicator was aborted and every later op on it fails; restart the job";
  }
  return {};
}

void NcclGroup::fail(Op& op, const std::string& message) {
  try {
    EDIT_FAIL(message);
  } catch (const Error& error) {
    std::lock_guard<std::mutex> lock(op.mutex);
    op.error = error.what();
    throw;
  }
}

void NcclGroup::wait(Op& op) {
  const Clock::time_point began = Clock::now();
  // Blocked time counts whether the op succeeds or throws.
  struct CountWait {
    NcclGroup& group;
    Clock::time_point began;
    ~CountWait() {
      std::lock_guard<std::mutex> lock(group.stats_mutex_);
      group.stats_.wait_seconds += seconds_since(began);
    }
  } count_wait{*this, began};

  {
    std::lock_guard<std::mutex> lock(op.mutex);
    if (!op.error.empty()) throw Error(op.error);
  }
  // Back-to-back queries for poll_spin (short ops finish within it), then sleeps growing from
  // poll_min to poll_max, so a rank waiting on a long transfer leaves its core to compute.
  const Clock::time_point spin_until = began + options_.poll_spin;
  std::chrono::microseconds nap = std::max(options_.poll_min, std::chrono::microseconds(1));
  for (;;) {
    const cudaError_t query = cudaEventQuery(op.done.get());
    if (query == cudaSuccess) {
      // Also when an abort (another op's timeout or error, on another thread) cut it short: then
      // abort_locked marked it failed.
      std::lock_guard<std::mutex> lock(op.mutex);
      if (!op.error.empty()) throw Error(op.error);
      break;
    }
    if (query != cudaErrorNotReady) {
      const std::string reason = edit::detail::concat("CUDA reported '", cudaGetErrorString(query),
                                                      "' while ", op.name, " ran on ", where());
      {
        std::lock_guard<std::mutex> lock(nccl_mutex_);
        abort_locked(reason);
      }
      fail(op,
           reason +
               "; an earlier kernel may have faulted (rerun with CUDA_LAUNCH_BLOCKING=1), restart the job");
    }
    const std::string problem = poll_problem(op);
    if (!problem.empty()) fail(op, problem);
    if (options_.busy_poll || Clock::now() < spin_until) continue;
    std::this_thread::sleep_for(nap);
    nap = std::min(nap * 2, options_.poll_max);
  }
  // The caller's later work (any stream order) and the host both see the op's results.
  DeviceGuard guard(device_);
  EDIT_CUDART_CHECK(cudaStreamWaitEvent(caller_stream(), op.done.get(), 0));
  EDIT_CUDART_CHECK(cudaEventSynchronize(op.done.get()));
  account_completion(op);
  release(op);
}

bool NcclGroup::is_completed(Op& op) {
  {
    std::lock_guard<std::mutex> lock(op.mutex);
    if (!op.error.empty()) return true;
  }
  if (broken_.load()) return true;
  const cudaError_t query = cudaEventQuery(op.done.get());
  if (query == cudaSuccess) {
    account_completion(op);
    return true;
  }
  if (query != cudaErrorNotReady) return true;  // wait() reports it
  if (Clock::now() - op.issued > options_.timeout) return true;
  std::lock_guard<std::mutex> lock(nccl_mutex_);
  ncclResult_t async = ncclSuccess;
  if (comm_ == nullptr || ncclCommGetAsyncError(comm_, &async) != ncclSuccess) return true;
  return async != ncclSuccess && async != ncclInProgress;
}

}  // namespace detail

// --- NcclCommunicator ---------------------------------------------------------------------------

NcclCommunicator::NcclCommunicator(std::shared_ptr<Communicator> bootstrap, int cuda_device,
                                   CommOptions options, StreamFn caller_stream)
    : group_(std::make_shared<detail::NcclGroup>(std::move(bootstrap), cuda_device, options,
                                                 std::move(caller_stream))) {}

NcclCommunicator::~NcclCommunicator() = default;

int NcclCommunicator::rank() const { return group_->rank_; }
int NcclCommunicator::size() const { return group_->size_; }
const std::string& NcclCommunicator::name() const { return group_->name_; }
int NcclCommunicator::device() const { return group_->device_; }
void* NcclCommunicator::comm_stream() const { return group_->stream_.get(); }
bool NcclCommunicator::broken() const { return group_->broken_.load(); }

WorkPtr NcclCommunicator::all_reduce(at::Tensor tensor, AllReduceOptions options) {
  detail::NcclGroup& group = *group_;
  group.check_usable("all_reduce");
  const ncclDataType_t dtype = group.check_tensor("all_reduce", "input", tensor);
  EDIT_CHECK(std::isfinite(options.prescale), "all_reduce on ", group.where(), ": prescale is ",
             options.prescale, "; pass a finite weight");
  const bool scaled = options.prescale != 1.0;
  EDIT_CHECK(!scaled || at::isFloatingType(tensor.scalar_type()), "all_reduce on ", group.where(),
             ": prescale ", options.prescale, " needs a floating-point tensor, got ", tensor.scalar_type(),
             "; convert it with .to(at::kFloat) or scale the integers before the all_reduce");
  if (tensor.numel() == 0) return group.completed();

  void* data = tensor.data_ptr();
  const auto count = static_cast<size_t>(tensor.numel());
  const ncclRedOp_t plain = to_nccl(options.op);
  // The weight folds into NCCL's PreMulSum (with 1/size for an average): one pass over the data,
  // and no ATen kernel on a CUDA tensor, which a CPU-only LibTorch could not run.
  const double factor = options.op == ReduceOp::kAvg ? options.prescale / group.size_ : options.prescale;
  const ScalarBytes scalar = scaled ? scalar_bytes(factor, dtype) : ScalarBytes{};
  return group.issue("all_reduce", {tensor}, ring_bytes_all_reduce(byte_size(tensor), group.size_),
                     [=](ncclComm_t comm, cudaStream_t stream) -> ncclResult_t {
                       if (!scaled) return ncclAllReduce(data, data, count, dtype, plain, comm, stream);
                       ScalarBytes value = scalar;  // NCCL's API takes a non-const pointer; it only reads it
                       ncclRedOp_t premul;
                       const ncclResult_t created = ncclRedOpCreatePreMulSum(&premul, value.bytes, dtype,
                                                                             ncclScalarHostImmediate, comm);
                       if (created != ncclSuccess) return created;
                       const ncclResult_t reduced =
                           ncclAllReduce(data, data, count, dtype, premul, comm, stream);
                       // NCCL allows destroying the op as soon as the call that uses it has returned.
                       const ncclResult_t destroyed = ncclRedOpDestroy(premul, comm);
                       return reduced != ncclSuccess ? reduced : destroyed;
                     });
}

WorkPtr NcclCommunicator::all_gather(at::Tensor output, at::Tensor input) {
  detail::NcclGroup& group = *group_;
  group.check_usable("all_gather");
  const ncclDataType_t dtype = group.check_tensor("all_gather", "input", input);
  group.check_tensor("all_gather", "output", output);
  EDIT_CHECK(output.scalar_type() == input.scalar_type(), "all_gather on ", group.where(), ": output dtype ",
             output.scalar_type(), " differs from input dtype ", input.scalar_type(),
             "; allocate the output with the input's dtype");
  EDIT_CHECK(output.numel() == group.size_ * input.numel(), "all_gather on ", group.where(), ": output has ",
             output.numel(), " elements but needs size() * input.numel() = ", group.size_, " * ",
             input.numel(), " = ", group.size_ * input.numel(),
             "; allocate the output with size() times the input's elements");
  if (input.numel() == 0) return group.completed();

  const void* send = input.data_ptr();
  void* receive = output.data_ptr();
  const auto count = static_cast<size_t>(input.numel());
  return group.issue("all_gather", {output, input}, ring_bytes_all_gather(byte_size(output), group.size_),
                     [=](ncclComm_t comm, cudaStream_t stream) {
                       return ncclAllGather(send, receive, count, dtype, comm, stream);
                     });
}

WorkPtr NcclCommunicator::reduce_scatter(at::Tensor output, at::Tensor input, ReduceScatterOptions options) {
  detail::NcclGroup& group = *group_;
  group.check_usable("reduce_scatter");
  const ncclDataType_t dtype = group.check_tensor("reduce_scatter", "input", input);
  group.check_tensor("reduce_scatter", "output", output);
  EDIT_CHECK(output.scalar_type() == input.scalar_type(), "reduce_scatter on ", group.where(),
             ": output dtype ", output.scalar_type(), " differs from input dtype ", input.scalar_type(),
             "; allocate the output with the input's dtype");
  EDIT_CHECK(input.numel() == group.size_ * output.numel(), "reduce_scatter on ", group.where(),
             ": input has ", input.numel(), " elements but needs size() * output.numel() = ", group.size_,
             " * ", output.numel(), " = ", group.size_ * output.numel(),
             "; pad the input to a multiple of size() and size the output to input.numel() / size()");
  if (output.numel() == 0) return group.completed();

  const void* send = input.data_ptr();
  void* receive = output.data_ptr();
  const auto count = static_cast<size_t>(output.numel());
  const ncclRedOp_t op = to_nccl(options.op);
  return group.issue("reduce_scatter", {output, input}, ring_bytes_all_gather(byte_size(input), group.size_),
                     [=](ncclComm_t comm, cudaStream_t stream) {
                       return ncclReduceScatter(send, receive, count, dtype, op, comm, stream);
                     });
}

WorkPtr NcclCommunicator::broadcast(at::Tensor tensor, int root) {
  detail::NcclGroup& group = *group_;
  group.check_usable("broadcast");
  const ncclDataType_t dtype = group.check_tensor("broadcast", "input", tensor);
  EDIT_CHECK(root >= 0 && root < group.size_, "broadcast on ", group.where(), ": root ", root,
             " is not a rank of this group; pass a root in [0, ", group.size_, ")");
  if (tensor.numel() == 0) return group.completed();

  void* data = tensor.data_ptr();
  const auto count = static_cast<size_t>(tensor.numel());
  // Only the root sends the tensor (CommStats::bytes_sent).
  const std::int64_t sent = group.rank_ == root && group.size_ > 1 ? byte_size(tensor) : 0;
  return group.issue("broadcast", {tensor}, sent, [=](ncclComm_t comm, cudaStream_t stream) {
    return ncclBroadcast(data, data, count, dtype, root, comm, stream);
  });
}

WorkPtr NcclCommunicator::barrier() {
  detail::NcclGroup& group = *group_;
  group.check_usable("barrier");
  void* buffer = group.barrier_buffer_.get();
  return group.issue("barrier", {}, ring_bytes_all_reduce(sizeof(float), group.size_),
                     [=](ncclComm_t comm, cudaStream_t stream) {
                       return ncclAllReduce(buffer, buffer, 1, ncclFloat32, ncclSum, comm, stream);
                     });
}

std::vector<double> NcclCommunicator::all_gather_values(const std::vector<double>& mine) {
  group_->check_usable("all_gather_values");
  return group_->bootstrap_->all_gather_values(mine);
}

CommStats NcclCommunicator::stats() const {
  std::lock_guard<std::mutex> lock(group_->stats_mutex_);
  return group_->stats_;
}

void NcclCommunicator::reset_stats() {
  std::lock_guard<std::mutex> lock(group_->stats_mutex_);
  group_->stats_ = CommStats{};
}

}  // namespace edit::comm
