// MpiRuntime in the states a program can leave MPI in, one case per run, for mpi_lifetime_test.cmake:
//   mpirun -np N edit_mpi_lifetime <case>
// A rank that checked something prints "<case>: PASS" or "<case>: FAIL <why>"; the script also
// checks the job's exit status and what MPI itself printed.
#include <ATen/ATen.h>
#include <mpi.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <functional>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include "edit/comm/device_mesh.h"
#include "edit/comm/mpi_communicator.h"
#include "edit/core/check.h"

namespace {

// `why` is printed with a failure only.
void report(const std::string& which, bool ok, const std::string& why = "") {
  std::printf("%s: %s%s%s\n", which.c_str(), ok ? "PASS" : "FAIL", ok || why.empty() ? "" : " ",
              ok ? "" : why.c_str());
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

// A program whose main() catches an error and ends the job, as edit-train-gpt does: rank 0 fails
// right after building its mesh while the other ranks wait for it inside a collective. By the time
// the handler runs, rank 0's mesh has been unwound; abort_job must still end every rank at once
// (not print that MPI_Abort came after MPI_Finalize, nor leave the peers to their timeout).
int abort_after_error() {
  int rank = -1;
  try {
    edit::comm::MeshOptions options;
    options.comm.timeout = std::chrono::seconds(30);
    edit::comm::DeviceMesh mesh = edit::comm::DeviceMesh::from_env(options);
    rank = mesh.rank();
    EDIT_CHECK(rank != 0, "rank 0 refuses its input");
    at::Tensor one = at::ones({1});
    mesh.world().all_reduce(one)->wait();
    report("abort-after-error", false, "rank " + std::to_string(rank) + " finished a collective rank 0 never joined");
    return 0;
  } catch (const edit::Error& e) {
    if (rank == 0) {
      std::printf("abort-after-error: rank 0 ends the job after: %s\n", e.what());
      std::fflush(stdout);
      edit::comm::MpiRuntime::abort_job(3);
    }
    report("abort-after-error", false, "rank " + std::to_string(rank) + " was not ended by rank 0's abort: " + e.what());
    return 1;
  }
}

// The program finalized MPI itself before ending the job with an error code.
int abort_after_finalize() {
  int provided = 0;
  MPI_Init_thread(nullptr, nullptr, MPI_THREAD_SERIALIZED, &provided);
  {
    auto runtime = edit::comm::MpiRuntime::acquire();
    if (!world_sums(runtime)) report("abort-after-finalize", false, "all_reduce gave a wrong sum");
  }
  MPI_Finalize();
  std::printf("abort-after-finalize: ending the job\n");
  std::fflush(stdout);
  edit::comm::MpiRuntime::abort_job(5);
}

// A program that fails before it ever used MPI (bad command line).
int abort_without_mpi() {
  std::printf("abort-without-mpi: ending the job\n");
  std::fflush(stdout);
  edit::comm::MpiRuntime::abort_job(4);
}

// Rank 0's all_reduce times out because rank 1 joins late (alive, just slow). MPI cannot cancel the
// started collective and may still write into the tensor when rank 1 joins, so the memory must
// stay allocated after the error even when the caller drops every handle on it.
std::atomic<bool> late_write_freed{false};

int late_write() {
  auto runtime = edit::comm::MpiRuntime::acquire();
  edit::comm::CommOptions options;
  options.timeout = std::chrono::seconds(1);
  auto world = edit::comm::MpiCommunicator::world(runtime, options);
  world->barrier()->wait();
  if (world->rank() == 0) {
    static std::vector<float> memory(4096, 1.f);
    at::Tensor tensor =
        at::from_blob(memory.data(), {4096}, [](void*) { late_write_freed = true; }, at::kFloat);
    auto work = world->all_reduce(tensor);
    bool timed_out = false;
    try {
      work->wait();
    } catch (const edit::Error&) {
      timed_out = true;
    }
    work.reset();
    tensor.reset();
    // The communication thread has long finished with the op (it failed it before wait returned).
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    if (!timed_out) {
      report("late-write", false, "rank 0's all_reduce did not time out");
    } else {
      report("late-write", !late_write_freed, "the tensor was freed while MPI could still write into it");
    }
  } else {
    std::this_thread::sleep_for(std::chrono::seconds(3));  // well past rank 0's timeout
    at::Tensor tensor = at::ones({4096});
    try {
      world->all_reduce(tensor)->wait();
    } catch (const edit::Error&) {
    }
  }
  return 0;  // without MPI_Finalize (the runtime is broken): the job ends non-zero
}

}  // namespace

int main(int argc, char** argv) {
  const std::map<std::string, std::function<int()>> cases = {
      {"thread-single", thread_single},
      {"thread-serialized", thread_serialized},
      {"abort-after-error", abort_after_error},
      {"abort-after-finalize", abort_after_finalize},
      {"abort-without-mpi", abort_without_mpi},
      {"late-write", late_write},
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
