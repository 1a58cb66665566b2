#include "edit/comm/mpi_runtime.h"

#include <mpi.h>

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdlib>

#include "edit/core/check.h"

namespace edit::comm {
namespace {

// Element-wise sums of 16-bit floats, accumulated in float then rounded once per pair.
template <typename T>
void sum16(void* in, void* inout, int* len, MPI_Datatype* /*type*/) {
  const T* a = static_cast<const T*>(in);
  T* b = static_cast<T*>(inout);
  for (int i = 0; i < *len; ++i) b[i] = static_cast<T>(static_cast<float>(a[i]) + static_cast<float>(b[i]));
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

}  // namespace

std::shared_ptr<MpiRuntime> MpiRuntime::acquire() {
  std::lock_guard<std::mutex> guard(acquire_mutex());
  if (auto existing = current_runtime().lock()) return existing;
  std::shared_ptr<MpiRuntime> runtime(new MpiRuntime());
  current_runtime() = runtime;
  return runtime;
}

MpiRuntime::MpiRuntime() {
  int initialized = 0;
  MPI_Initialized(&initialized);
  if (!initialized) {
    int finalized = 0;
    MPI_Finalized(&finalized);
    EDIT_CHECK(!finalized, "MPI was already finalized in this process and cannot be started again; "
               "keep one DeviceMesh (or MpiRuntime) alive for the whole program");
    int provided = 0;
    MPI_Init_thread(nullptr, nullptr, MPI_THREAD_SERIALIZED, &provided);
    owns_mpi_ = true;
    EDIT_CHECK(provided >= MPI_THREAD_SERIALIZED, "the MPI library provides thread level ", provided,
               " but libedit needs MPI_THREAD_SERIALIZED; use an MPI built with thread support");
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
  if (broken_) return;  // finalize would block on the dead peer; exit and let the launcher see it
  MPI_Op bf16 = static_cast<MPI_Op>(bf16_sum_);
  MPI_Op fp16 = static_cast<MPI_Op>(fp16_sum_);
  MPI_Op_free(&bf16);
  MPI_Op_free(&fp16);
  if (owns_mpi_) MPI_Finalize();
}

void MpiRuntime::abort_job(int exit_code) {
  int initialized = 0;
  MPI_Initialized(&initialized);
  if (initialized) MPI_Abort(MPI_COMM_WORLD, exit_code);
  std::exit(exit_code);
}

}  // namespace edit::comm
