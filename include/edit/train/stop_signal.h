// Stopping a run cleanly on a signal, so that a cluster's preemption or time limit costs no work.
//
// Schedulers warn a job before they kill it: SLURM sends SIGTERM to every task (and SIGKILL
// KillWait seconds later, 30 by default), or any signal chosen with `--signal=USR1@120`; OpenMPI's
// mpirun forwards SIGUSR1 and SIGUSR2 to every rank, but answers its own SIGTERM by killing the
// ranks within a second. A signal reaches the ranks at different steps, or only some of them,
// while a checkpoint is a collective of every rank at one step. StopOnSignal turns the signal into
// a stop that every rank agrees on at the same call of poll():
//  - a thread of its own takes the watched signals (sigtimedwait) and notes which arrived;
//  - each poll() posts this rank's vote (the signals it has seen) as a small all-reduce on its own
//    communicator, and reads the votes posted `lag` polls earlier; every rank reads the same
//    sums at the same poll, so all stop together.
// The vote is asynchronous: with lag >= 1 a poll waits for nothing unless a peer is more than
// `lag` polls behind, and then only until it catches up to there.
//
// Why a thread, and block() first thing in main(): the kernel writes a signal's frame below the
// stack pointer of whatever thread it picks, in the middle of whatever that thread computes.
// oneDNN's JIT GEMM kernels (libedit's CPU matrix products) point the stack pointer into the heap
// while they run (oneDNN issue 4845, fixed in 2026 releases; Debian's 2.6 has it), so a signal
// there corrupts the heap: NaN losses, Inf gradient norms and allocator crashes here, whatever
// the handler does. Signals that every thread blocks are only ever taken by the waiting thread.
#pragma once

#include <atomic>
#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <ATen/core/Tensor.h>

#include "edit/comm/communicator.h"

namespace edit::train {

class StopOnSignal {
 public:
  // Blocks `signals` in the calling thread, and so in every thread it starts from now on. Call it
  // first thing in main(), before MPI or LibTorch start their threads. Until a StopOnSignal takes
  // them, these signals wait (a signal that came during set-up stops the run at its first polls).
  static void block(const std::vector<int>& signals);
  // Undoes block() in the calling thread: a signal it takes from then on has its usual effect.
  static void unblock(const std::vector<int>& signals);

  // Watches `signals` and votes over `group`, which every rank of the run must be in and which
  // takes CPU tensors (an MpiCommunicator of its own suits best: the votes then never queue behind
  // other collectives). One StopOnSignal per process at a time. A thread that does not block the signals (block() was
  // not called first) may still take one: a handler then notes it. The constructor warns when the
  // thread constructing it does not block them (it cannot see the other threads' masks).
  StopOnSignal(std::shared_ptr<comm::Communicator> group, std::vector<int> signals, int lag = 1);
  ~StopOnSignal();
  StopOnSignal(const StopOnSignal&) = delete;
  StopOnSignal& operator=(const StopOnSignal&) = delete;

  // Call at points that every rank reaches the same number of times, in the same order as its
  // other collectives on `group` (each step of a lockstep run; each agreed round of A-EDiT).
  // Returns the first watched signal (in the constructor's order) that some rank had seen when it
  // posted its vote `lag` polls ago, or 0. Every rank gets the same answer at the same poll.
  int poll();
  // Waits for the votes still in flight (every rank must call it, after the same number of
  // polls), so that no collective is left on `group`. Not needed after poll() returned non-zero.
  void finish();

  // How many ranks had seen the signal poll() returned, when they voted.
  int ranks_that_saw() const { return ranks_that_saw_; }
  // A signal seen by this process since construction (0: none), without any vote.
  int seen_here() const;
  // "SIGUSR1", "SIGTERM", ... or "signal N".
  static std::string name(int signal);

 private:
  std::shared_ptr<comm::Communicator> group_;
  std::vector<int> signals_;
  int lag_;
  int ranks_that_saw_ = 0;
  std::atomic<bool> stopping_{false};
  std::thread watcher_;
  struct Vote {
    at::Tensor counts;  // per watched signal: how many ranks had seen it
    comm::WorkPtr work;
  };
  std::deque<Vote> in_flight_;
};

}  // namespace edit::train
