// main() of the multi-rank test binary, run as `mpirun -np N edit_mpi_tests`.
// Every rank runs every test; ranks above 0 print only failures, so the log reads like one run.
#include <ATen/Parallel.h>
#include <gtest/gtest.h>

#include "edit/comm/device_mesh.h"
#include "edit/comm/mpi_runtime.h"
#include "edit/core/log.h"
#include "mpi_test_env.h"

namespace edit::testing_support {

std::shared_ptr<comm::MpiCommunicator>& world_slot() {
  static std::shared_ptr<comm::MpiCommunicator> world;
  return world;
}

std::shared_ptr<comm::MpiCommunicator> world() { return world_slot(); }

}  // namespace edit::testing_support

int main(int argc, char** argv) {
  // Before InitGoogleTest, which picks the result printer (the launcher's rank: MPI starts later).
  if (edit::comm::detect_launch().rank > 0) GTEST_FLAG_SET(brief, true);
  testing::InitGoogleTest(&argc, argv);
  at::set_num_threads(1);
  auto runtime = edit::comm::MpiRuntime::acquire();
  edit::log::init(runtime->world_rank(), "warn");
  edit::comm::CommOptions options = edit::comm::CommOptions::from_env();
  edit::testing_support::world_slot() = edit::comm::MpiCommunicator::world(runtime, options);
  const int local = RUN_ALL_TESTS();
  // A rank that failed must fail the mpirun: agree on the worst result before leaving.
  at::Tensor status = at::full({1}, local, at::kInt);
  edit::testing_support::world()->all_reduce(status)->wait();
  edit::testing_support::world_slot().reset();
  return status.item<int>() == 0 ? 0 : 1;
}
