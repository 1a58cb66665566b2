#include "edit/comm/device_mesh.h"

#include <cstdlib>
#include <string>

#include "edit/comm/mpi_communicator.h"
#include "edit/comm/mpi_runtime.h"
#include "edit/core/check.h"

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

}  // namespace

LaunchInfo detect_launch(const std::function<const char*(const char*)>& getenv) {
  struct Source {
    const char* launcher;
    const char* rank;
    const char* size;
    const char* local_rank;
  };
  for (const Source& source : {Source{"mpirun", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK"},
                               Source{"mpirun", "PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID"},
                               Source{"srun", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID"},
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

  auto world = MpiCommunicator::world(mesh.runtime_, options.comm, "world");
  mesh.shard_ = world->split(mesh.layout_.replica, mesh.layout_.shard_rank, "shard");
  mesh.sync_ = world->split(mesh.layout_.shard_rank, mesh.layout_.replica, "sync");
  mesh.world_ = std::move(world);
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
