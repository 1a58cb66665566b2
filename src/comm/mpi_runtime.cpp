#include "edit/comm/mpi_runtime.h"

#include <mpi.h>

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <thread>
#include <vector>

#include "edit/core/check.h"
#include "mpi_process.h"

namespace edit::comm {
namespace {

// Element-wise sums of 16-bit floats, accumulated in float then rounded once per pair.
template <typename T>
void sum16(void* in, void* inout, int* len, MPI_Datatype* /*type*/) {
  const T* a = static_cast<const T*>(in);
  T* b = static_cast<T*>(inout);
  for (int i = 0; i < *len; ++i) b[i] = static_cast<T>(static_cast<float>(a[i]) + static_cast<float>(b[i]));
}

// What MPI itself makes process-global. Deliberately never destroyed: MPI outlives every object
// of the program, and exit handlers and late static destructors still take the lock.
struct MpiProcess {
  struct Abandoned {
    MPI_Request request;
    std::vector<at::Tensor> buffers;
  };
  std::mutex lock;
  std::atomic<bool> broken{false};
  bool started_by_libedit = false;  // guarded by `lock`
  std::vector<Abandoned> graveyard;  // guarded by `lock`; see detail::park_abandoned
};

MpiProcess& process() {
  static MpiProcess* const state = std::make_unique<MpiProcess>().release();
  return *state;
}

// The one runtime of the process (MPI itself is process-global); weak so it dies with its users.
std::weak_ptr<MpiRuntime>& current_runtime() {
  static std::weak_ptr<MpiRuntime> runtime;
  return runtime;
}
std::mutex& acquire_mutex() {
  static std::mutex mutex;
  return mutex;
}

// Exit handler: MPI_Finalize when libedit started MPI, once the program is done with it.
void finalize_at_exit() {
  MpiProcess& state = process();
  std::lock_guard<std::mutex> guard(state.lock);
  if (state.broken) return;  // finalize would block on the dead peer; exit and let the launcher see it
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!finalized) MPI_Finalize();
}

const char* thread_level_name(int level) {
  if (level == MPI_THREAD_SINGLE) return "MPI_THREAD_SINGLE";
  if (level == MPI_THREAD_FUNNELED) return "MPI_THREAD_FUNNELED";
  if (level == MPI_THREAD_SERIALIZED) return "MPI_THREAD_SERIALIZED";
  if (level == MPI_THREAD_MULTIPLE) return "MPI_THREAD_MULTIPLE";
  return "an unknown thread level";
}

}  // namespace

namespace detail {

std::mutex& mpi_lock() { return process().lock; }

std::string mpi_error_string(int code) {
  char text[MPI_MAX_ERROR_STRING];
  int length = 0;
  std::lock_guard<std::mutex> guard(mpi_lock());
  if (MPI_Error_string(code, text, &length) != MPI_SUCCESS) return "MPI error code " + std::to_string(code);
  return std::string(text, static_cast<size_t>(length));
}

void park_abandoned(MPI_Request request, std::vector<at::Tensor> buffers) {
  MpiProcess& state = process();
  std::lock_guard<std::mutex> guard(state.lock);
  state.graveyard.push_back({request, std::move(buffers)});
}

}  // namespace detail

std::shared_ptr<MpiRuntime> MpiRuntime::acquire() {
  std::lock_guard<std::mutex> guard(acquire_mutex());
  if (auto existing = current_runtime().lock()) return existing;
  std::shared_ptr<MpiRuntime> runtime(new MpiRuntime());
  current_runtime() = runtime;
  return runtime;
}

MpiRuntime::MpiRuntime() {
  MpiProcess& state = process();
  std::lock_guard<std::mutex> guard(state.lock);
  int initialized = 0;
  MPI_Initialized(&initialized);
  if (!initialized) {
    int finalized = 0;
    MPI_Finalized(&finalized);
    EDIT_CHECK(!finalized, "MPI was already finalized in this process (the program called MPI_Finalize) and "
               "cannot be started again; call MPI_Finalize only after the program's last use of libedit");
    int provided = 0;
    MPI_Init_thread(nullptr, nullptr, MPI_THREAD_SERIALIZED, &provided);
    state.started_by_libedit = true;
    // Finalized at exit, not with the last runtime (see the header): MPI must still be up when a
    // program's error handler calls abort_job after unwinding its DeviceMesh.
    std::atexit(finalize_at_exit);
    EDIT_CHECK(provided >= MPI_THREAD_SERIALIZED, "the MPI library provides only ", thread_level_name(provided),
               " but libedit needs MPI_THREAD_SERIALIZED; use an MPI built with thread support");
  } else if (!state.started_by_libedit) {
    // The program started MPI itself. libedit's communication threads call MPI (one at a time,
    // under lock()), which MPI allows only from MPI_THREAD_SERIALIZED up; below that MPI may
    // misbehave in ways that look like anything but a thread-level problem.
    int provided = MPI_THREAD_SINGLE;
    MPI_Query_thread(&provided);
    EDIT_CHECK(provided >= MPI_THREAD_SERIALIZED, "the program initialized MPI with ", thread_level_name(provided),
               " but libedit needs at least MPI_THREAD_SERIALIZED (its communication threads call MPI, one at a "
               "time); initialize MPI with MPI_Init_thread(&argc, &argv, MPI_THREAD_SERIALIZED, &provided) "
               "instead of MPI_Init, or leave MPI_Init to libedit");
  }
  MPI_Comm_rank(MPI_COMM_WORLD, &world_rank_);
  MPI_Comm_size(MPI_COMM_WORLD, &world_size_);
  // Errors come back as codes that we turn into edit::Error, instead of MPI aborting the job.
  MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
  MPI_Op bf16 = MPI_OP_NULL;
  MPI_Op fp16 = MPI_OP_NULL;
  MPI_Op_create(&sum16<c10::BFloat16>, /*commute=*/1, &bf16);
  MPI_Op_create(&sum16<c10::Half>, /*commute=*/1, &fp16);
  bf16_sum_ = bf16;
  fp16_sum_ = fp16;
}

MpiRuntime::~MpiRuntime() {
  if (broken()) return;  // MPI is left as the failure left it, for the launcher to clean up
  std::lock_guard<std::mutex> guard(process().lock);
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (finalized) return;  // the program finalized its own MPI first: the ops are gone with it
  MPI_Op bf16 = static_cast<MPI_Op>(bf16_sum_);
  MPI_Op fp16 = static_cast<MPI_Op>(fp16_sum_);
  MPI_Op_free(&bf16);
  MPI_Op_free(&fp16);
}

std::mutex& MpiRuntime::lock() { return process().lock; }
void MpiRuntime::mark_broken() { process().broken = true; }
bool MpiRuntime::broken() const { return process().broken; }

void MpiRuntime::abort_job(int exit_code) {
  // The lock keeps the abort from racing a communication thread's MPI call. A thread stuck inside
  // a blocking call (a split with a dead peer) may never let go of it, and ending the job is what
  // matters then, so after a short wait the abort goes ahead without the lock.
  std::unique_lock<std::mutex> guard(process().lock, std::defer_lock);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(2);
  while (!guard.try_lock() && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  int initialized = 0;
  int finalized = 0;
  MPI_Initialized(&initialized);
  MPI_Finalized(&finalized);
  // MPI_Abort is valid only between init and finalize. Outside that there is no job left for MPI to
  // end (never started, or the program finalized it), and exiting with the code is all there is.
  if (initialized && !finalized) MPI_Abort(MPI_COMM_WORLD, exit_code);
  // Exit handlers and static destructors may take the lock again.
  if (guard.owns_lock()) guard.unlock();
  std::exit(exit_code);
}

}  // namespace edit::comm
