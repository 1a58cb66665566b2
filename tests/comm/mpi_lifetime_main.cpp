// MpiRuntime in the states a program can leave MPI in, one case per run, for mpi_lifetime_test.cmake:
//   mpirun -np N edit_mpi_lifetime <case>
// A rank that checked something prints "<case>: PASS" or "<case>: FAIL <why>"; the script also
// checks the job's exit status and what MPI itself printed.
#include <ATen/ATen.h>
#include <mpi.h>

#include <cstdio>
#include <functional>
#include <map>
#include <string>

#include "edit/comm/mpi_communicator.h"
#include "edit/core/check.h"

namespace {

void report(const std::string& which, bool ok, const std::string& why = "") {
  std::printf("%s: %s%s%s\n", which.c_str(), ok ? "PASS" : "FAIL", why.empty() ? "" : " ", why.c_str());
  std::fflush(stdout);
}

// One all_reduce on the world, to show MPI is usable.
bool world_sums(const std::shared_ptr<edit::comm::MpiRuntime>& runtime) {
  auto world = edit::comm::MpiCommunicator::world(runtime);
  at::Tensor one = at::ones({1});
  world->all_reduce(one)->wait();
  return one.item<float>() == static_cast<float>(world->size());
}

// The program initialized MPI itself with plain MPI_Init (MPI_THREAD_SINGLE): libedit must refuse
// with an error that names the level and the fix, not run its threads on an MPI that forbids them.
int thread_single() {
  MPI_Init(nullptr, nullptr);
  int provided = 0;
  MPI_Query_thread(&provided);
  if (provided >= MPI_THREAD_SERIALIZED) {
    report("thread-single", true, "(this MPI gives SERIALIZED to plain MPI_Init: nothing to refuse)");
  } else {
    try {
      edit::comm::MpiRuntime::acquire();
      report("thread-single", false, "no error for a program that initialized MPI with MPI_THREAD_SINGLE");
    } catch (const edit::Error& e) {
      const std::string what = e.what();
      const bool names_level = what.find("MPI_THREAD_SINGLE") != std::string::npos;
      const bool names_fix = what.find("MPI_Init_thread") != std::string::npos &&
                             what.find("MPI_THREAD_SERIALIZED") != std::string::npos;
      report("thread-single", names_level && names_fix, "message: " + what);
    }
  }
  MPI_Finalize();
  return 0;
}

// The program initialized MPI with MPI_THREAD_SERIALIZED: libedit works and leaves finalize to it.
int thread_serialized() {
  int provided = 0;
  MPI_Init_thread(nullptr, nullptr, MPI_THREAD_SERIALIZED, &provided);
  {
    auto runtime = edit::comm::MpiRuntime::acquire();
    report("thread-serialized", world_sums(runtime));
  }
  int finalized = 1;
  MPI_Finalized(&finalized);
  if (finalized) report("thread-serialized", false, "libedit finalized an MPI the program had started");
  MPI_Finalize();
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  const std::map<std::string, std::function<int()>> cases = {
      {"thread-single", thread_single},
      {"thread-serialized", thread_serialized},
  };
  const auto found = argc > 1 ? cases.find(argv[1]) : cases.end();
  if (found == cases.end()) {
    std::fprintf(stderr, "usage: edit_mpi_lifetime <case>; cases:");
    for (const auto& [name, run] : cases) std::fprintf(stderr, " %s", name.c_str());
    std::fprintf(stderr, "\n");
    return 2;
  }
  return found->second();
}
