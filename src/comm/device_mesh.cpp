#include "edit/comm/device_mesh.h"

#include <unistd.h>

#include <cstdlib>
#include <functional>
#include <set>
#include <string>
#include <utility>

#include "edit/comm/mpi_communicator.h"
#include "edit/comm/mpi_runtime.h"
#include "edit/comm/routed_communicator.h"
#include "edit/config.h"
#include "edit/core/check.h"
#include "edit/core/device.h"
#include "edit/core/log.h"

#if EDIT_WITH_NCCL && EDIT_WITH_CUDA
#include "edit/comm/cuda_stream.h"
#include "edit/comm/nccl_communicator.h"
#endif

namespace edit::comm {
namespace {

int env_int(const std::function<const char*(const char*)>& getenv, const char* name) {
  const char* value = getenv(name);
  if (value == nullptr || *value == '\0') return -1;
  char* end = nullptr;
  const long parsed = std::strtol(value, &end, 10);
  EDIT_CHECK(end != value && *end == '\0' && parsed >= 0, "environment variable ", name, "='", value,
             "' is not a non-negative integer; the launcher sets it, so check how the job was started");
  return static_cast<int>(parsed);
}

std::string divisors(int n) {
  std::string text;
  for (int d = 1; d <= n; ++d) {
    if (n % d == 0) text += (text.empty() ? "" : ", ") + std::to_string(d);
  }
  return text;
}

constexpr bool kNcclBuilt = EDIT_WITH_NCCL && EDIT_WITH_CUDA;

// Why NCCL cannot carry this mesh's CUDA collectives; empty when it can. The same on every rank:
// decided from values all ranks exchanged.
std::string nccl_obstacle(Communicator& world, c10::Device device) {
  char host[256] = {};
  gethostname(host, sizeof(host) - 1);
  // 52 bits of the host name's hash: exact in a double.
  const double host_key = static_cast<double>(std::hash<std::string>{}(host) & ((std::uint64_t{1} << 52) - 1));
  const auto all = world.all_gather_values({host_key, device.is_cuda() ? static_cast<double>(device.index()) : -1.0});
  std::set<std::pair<double, double>> seen;
  for (int r = 0; r < world.size(); ++r) {
    const double gpu = all[2 * static_cast<size_t>(r) + 1];
    if (gpu < 0) return "rank " + std::to_string(r) + " computes on the CPU";
    if (!seen.insert({all[2 * static_cast<size_t>(r)], gpu}).second) {
      return "rank " + std::to_string(r) + " shares cuda:" + std::to_string(static_cast<int>(gpu)) +
             " with another rank of its node (NCCL refuses two ranks on one GPU)";
    }
  }
  if (!kNcclBuilt) return "libedit was built without NCCL or without a CUDA LibTorch";
  return "";
}

}  // namespace

CommBackend parse_comm_backend(const std::string& name) {
  if (name == "auto") return CommBackend::kAuto;
  if (name == "mpi") return CommBackend::kMpi;
  if (name == "nccl") return CommBackend::kNccl;
  EDIT_FAIL("unknown communication backend '", name, "'; use auto, mpi or nccl");
}

const char* to_string(CommBackend backend) {
  switch (backend) {
    case CommBackend::kAuto:
      return "auto";
    case CommBackend::kMpi:
      return "mpi";
    case CommBackend::kNccl:
      return "nccl";
  }
  return "?";
}

LaunchInfo detect_launch(const std::function<const char*(const char*)>& getenv) {
  struct Source {
    const char* launcher;
    const char* rank;
    const char* size;
    const char* local_rank;
  };
  for (const Source& source : {Source{"mpirun", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK"},
                               Source{"mpirun", "PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID"},
                               Source{"srun", "SLURM_PROCID", "SLURM_STEP_NUM_TASKS", "SLURM_LOCALID"},
                               Source{"torchrun", "RANK", "WORLD_SIZE", "LOCAL_RANK"}}) {
    const int rank = env_int(getenv, source.rank);
    const int size = env_int(getenv, source.size);
    if (rank < 0 || size < 0) continue;
    EDIT_CHECK(size > 0 && rank < size, source.rank, "=", rank, " is not below ", source.size, "=", size,
               "; the launcher environment is inconsistent");
    return LaunchInfo{source.launcher, rank, size, env_int(getenv, source.local_rank)};
  }
  return LaunchInfo{};
}

LaunchInfo detect_launch() {
  return detect_launch([](const char* name) { return std::getenv(name); });
}

MeshLayout MeshLayout::make(int world_size, int shard_size, int rank) {
  EDIT_CHECK(world_size > 0, "world size must be positive, got ", world_size);
  EDIT_CHECK(shard_size > 0, "shard size must be positive, got ", shard_size, "; use --shard-size 1 for plain replicas");
  EDIT_CHECK(world_size % shard_size == 0, "world size ", world_size, " is not divisible by shard size ", shard_size,
             "; use a shard size that divides the number of ranks (", divisors(world_size),
             ") or launch a multiple of ", shard_size, " ranks");
  EDIT_CHECK(rank >= 0 && rank < world_size, "rank ", rank, " is outside the world of ", world_size, " ranks");
  MeshLayout layout;
  layout.world_size = world_size;
  layout.shard_size = shard_size;
  layout.num_replicas = world_size / shard_size;
  layout.rank = rank;
  layout.shard_rank = rank % shard_size;
  layout.replica = rank / shard_size;
  return layout;
}

DeviceMesh DeviceMesh::from_env(const MeshOptions& options) {
  DeviceMesh mesh;
  mesh.launch_ = detect_launch();
  mesh.runtime_ = MpiRuntime::acquire();
  const int rank = mesh.runtime_->world_rank();
  const int size = mesh.runtime_->world_size();
  // torchrun starts N independent processes: MPI then sees N worlds of one. Say so, not "rank 0 of 1".
  EDIT_CHECK(mesh.launch_.world_size < 0 || mesh.launch_.world_size == size, "the launcher (",
             mesh.launch_.launcher, ") started ", mesh.launch_.world_size, " processes but MPI sees a world of ",
             size, "; libedit bootstraps through MPI: launch with `mpirun -np N` or `srun --mpi=pmix`");
  mesh.layout_ = MeshLayout::make(size, options.shard_size, rank);
  mesh.local_rank_ = mesh.launch_.local_rank >= 0 ? mesh.launch_.local_rank : 0;

  mesh.device_ = options.device;
  use_device(mesh.device_);

  auto world = MpiCommunicator::world(mesh.runtime_, options.comm, "world");
  std::shared_ptr<Communicator> shard = world->split(mesh.layout_.replica, mesh.layout_.shard_rank, "shard");
  std::shared_ptr<Communicator> sync = world->split(mesh.layout_.shard_rank, mesh.layout_.replica, "sync");
  mesh.backend_ = CommBackend::kMpi;
  if (options.backend != CommBackend::kMpi && mesh.device_.is_cuda()) {
    const std::string obstacle = nccl_obstacle(*world, mesh.device_);
    EDIT_CHECK(options.backend != CommBackend::kNccl || obstacle.empty(), "--comm-backend nccl: ", obstacle,
               "; use --comm-backend mpi (CUDA tensors staged through host memory) or one GPU per rank");
    if (obstacle.empty()) {
      mesh.backend_ = CommBackend::kNccl;
    } else if (rank == 0) {
      spdlog::info("collectives of CUDA tensors go through MPI with host staging: {}", obstacle);
    }
  } else {
    EDIT_CHECK(options.backend != CommBackend::kNccl, "--comm-backend nccl needs CUDA tensors; pass --device cuda "
               "(or auto on a GPU machine), or use --comm-backend mpi");
  }
#if EDIT_WITH_NCCL && EDIT_WITH_CUDA
  if (mesh.backend_ == CommBackend::kNccl) {
    // Each group gets an NCCL communicator of its own, bootstrapped over its MPI twin, which keeps
    // carrying CPU tensors and host values.
    const int gpu = mesh.device_.index();
    const auto routed = [&](std::shared_ptr<Communicator> host) -> std::shared_ptr<Communicator> {
      auto nccl = std::make_shared<NcclCommunicator>(host, gpu, options.comm, torch_current_stream());
      return std::make_shared<RoutedCommunicator>(std::move(host), std::move(nccl));
    };
    shard = routed(shard);
    sync = routed(sync);
    mesh.world_ = routed(world);
  }
#endif
  if (!mesh.world_) mesh.world_ = std::move(world);
  mesh.shard_ = std::move(shard);
  mesh.sync_ = std::move(sync);
  return mesh;
}

void DeviceMesh::set_shard(std::shared_ptr<Communicator> shard) {
  EDIT_CHECK(shard && shard->size() == layout_.shard_size, "set_shard: the new group must have the shard size ",
             layout_.shard_size);
  shard_ = std::move(shard);
}

void DeviceMesh::set_sync(std::shared_ptr<Communicator> sync) {
  EDIT_CHECK(sync && sync->size() == layout_.num_replicas, "set_sync: the new group must have ",
             layout_.num_replicas, " ranks (one per replica)");
  sync_ = std::move(sync);
}

}  // namespace edit::comm
