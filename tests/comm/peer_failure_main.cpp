// A job in which one rank dies (SIGKILL) or hangs (SIGSTOP) mid-run, for the peer-failure test.
//   mpirun -np 2 edit_peer_failure kill|hang
// The survivors keep issuing all_reduces; they must turn the lost peer into an edit::Error that
// names the group and the op within EDIT_COMM_TIMEOUT_S, print it and end the job non-zero.
#include <ATen/ATen.h>

#include <csignal>
#include <cstdlib>
#include <cstdio>
#include <string>

#include "edit/comm/mpi_communicator.h"
#include "edit/core/check.h"
#include "edit/core/log.h"

int main(int argc, char** argv) {
  const std::string mode = argc > 1 ? argv[1] : "kill";
  auto runtime = edit::comm::MpiRuntime::acquire();
  edit::log::init(runtime->world_rank());
  auto world = edit::comm::MpiCommunicator::world(runtime);
  const int victim = world->size() - 1;
  try {
    for (int step = 0; step < 1000; ++step) {
      if (step == 3 && world->rank() == victim) std::raise(mode == "hang" ? SIGSTOP : SIGKILL);
      at::Tensor tensor = at::ones({1024});
      world->all_reduce(tensor)->wait();
    }
  } catch (const edit::Error& e) {
    std::fprintf(stderr, "rank %d detected the lost peer: %s\n", world->rank(), e.what());
    std::fflush(stderr);
    // A hung peer must not outlive the job: MPI_Abort kills it. A dead one has nothing to kill, and
    // under `mpirun --enable-recovery` only a plain non-zero exit reaches mpirun's exit status.
    // mpirun --enable-recovery reports 0 whatever the ranks return, so the exit code also goes
    // to the file the test names.
    if (const char* path = std::getenv("EDIT_PEER_FAILURE_STATUS")) {
      if (std::FILE* file = std::fopen(path, "w")) {
        std::fprintf(file, "3\n");
        std::fclose(file);
      }
    }
    if (mode == "hang") edit::comm::MpiRuntime::abort_job(3);
    std::_Exit(3);
  }
  std::fprintf(stderr, "rank %d finished without noticing the lost peer\n", world->rank());
  return 0;
}
