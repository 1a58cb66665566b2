// MpiRuntime: MPI's process-wide state (init, finalize, the lock every MPI call takes).
//
// MPI is initialized once per process with MPI_THREAD_SERIALIZED. Each communicator runs its own
// communication thread, so several threads do call MPI; they take this runtime's lock around every
// call, which is exactly what SERIALIZED requires and keeps us off MPI_THREAD_MULTIPLE paths.
//
// Lifetime: MPI stays initialized from the first acquire() until the process exits (libedit
// finalizes it in an exit handler), not only while an MpiRuntime is held. A program that catches an
// error in main() has by then unwound its DeviceMesh, and abort_job() must still be able to end the
// peers' ranks; finalizing with the last holder would leave it nothing to abort with.
#pragma once

#include <memory>
#include <mutex>

namespace edit::comm {

class MpiRuntime {
 public:
  // Initializes MPI on first use; later calls return the same runtime while anyone holds it.
  // If the program already called MPI_Init_thread itself, libedit uses MPI and never finalizes it;
  // the program must then have asked for at least MPI_THREAD_SERIALIZED (plain MPI_Init gives
  // MPI_THREAD_SINGLE, which is refused with an edit::Error).
  static std::shared_ptr<MpiRuntime> acquire();

  ~MpiRuntime();
  MpiRuntime(const MpiRuntime&) = delete;
  MpiRuntime& operator=(const MpiRuntime&) = delete;

  int world_rank() const { return world_rank_; }
  int world_size() const { return world_size_; }
  // The process-wide lock around every MPI call libedit makes (one for all runtimes, as MPI is one).
  std::mutex& lock();

  // A collective failed or timed out: MPI can no longer be finalized cleanly (finalize would wait
  // for the dead peer), so it is never finalized and the launcher sees an abnormal exit.
  void mark_broken();
  bool broken() const;

  // Ends every rank of the job (MPI_Abort): for a rank that must not leave its peers waiting.
  // Safe in any state: where MPI was never started or is already finalized there is nothing to
  // abort, and it just exits with `exit_code`.
  [[noreturn]] static void abort_job(int exit_code);

  // Custom reduction ops for 16-bit floats (MPI has no bf16/fp16 types); MPI_Op as void*.
  void* bf16_sum_op() const { return bf16_sum_; }
  void* fp16_sum_op() const { return fp16_sum_; }

 private:
  MpiRuntime();
  int world_rank_ = 0;
  int world_size_ = 1;
  void* bf16_sum_ = nullptr;
  void* fp16_sum_ = nullptr;
};

}  // namespace edit::comm
