// DeviceMesh: who am I in the 2D mesh W = R x S (docs/architecture.md, comm/).
//
// Ranks are laid out replica-major: world rank = replica * S + shard_rank, so the S ranks of one
// replica are consecutive (normally one node, as mpirun/srun place them). The shard group (size S)
// holds one model replica, sharded ZeRO-3 style; the sync group (size R) holds the ranks with the
// same shard index in every replica and carries the Local SGD sync. S = 1: plain replicas (DiLoCo);
// R = 1: plain FSDP.
#pragma once

#include <c10/core/Device.h>

#include <functional>
#include <memory>
#include <string>

#include "edit/comm/communicator.h"

namespace edit::comm {

class MpiRuntime;

// What the launcher told this process. Every field is -1 when unknown.
struct LaunchInfo {
  std::string launcher = "none";  // "mpirun", "srun", "torchrun" or "none" (a single process)
  int rank = -1;
  int world_size = -1;
  int local_rank = -1;
};

// Reads OpenMPI's OMPI_COMM_WORLD_*, then MPICH/Hydra's PMI_RANK/PMI_SIZE/MPI_LOCALRANKID (both
// "mpirun"), then srun's SLURM_PROCID/SLURM_STEP_NUM_TASKS/SLURM_LOCALID, then torchrun's
// RANK/WORLD_SIZE/LOCAL_RANK. Slurm's step size, not SLURM_NTASKS: a batch script
// (sbatch, salloc) has SLURM_PROCID=0 and the allocation's SLURM_NTASKS without being a task of a
// step, so a plain single process there is no launch of SLURM_NTASKS. `getenv` is a parameter so
// tests can feed an environment.
LaunchInfo detect_launch(const std::function<const char*(const char*)>& getenv);
LaunchInfo detect_launch();

// The mesh coordinates of one rank; throws edit::Error for an impossible layout.
struct MeshLayout {
  int world_size = 1;
  int shard_size = 1;    // S
  int num_replicas = 1;  // R
  int rank = 0;
  int shard_rank = 0;  // s: index inside the shard group = rank in the shard group
  int replica = 0;     // r: which replica = rank in the sync group

  static MeshLayout make(int world_size, int shard_size, int rank);
};

// Which transport carries the collectives of CUDA tensors. CPU tensors always go through MPI.
//   kMpi:  MPI for everything; CUDA tensors are staged through pinned host memory. Works when
//          ranks share a GPU, and with any build.
//   kNccl: NCCL for CUDA tensors (MPI bootstraps it and carries CPU tensors and host values).
//          Needs a build with NCCL and CUDA, and every rank on a GPU of its own.
//   kAuto: kNccl where all of that holds, else kMpi.
enum class CommBackend { kAuto, kMpi, kNccl };
CommBackend parse_comm_backend(const std::string& name);  // "auto", "mpi", "nccl"
const char* to_string(CommBackend backend);

struct MeshOptions {
  int shard_size = 1;  // S: ranks that share one model replica (ZeRO-3 shard group)
  CommOptions comm = CommOptions::from_env();
  CommBackend backend = CommBackend::kAuto;
  // The device this rank computes on (see edit::resolve_device); a CUDA device is made current.
  c10::Device device = c10::Device(c10::kCPU);
};

class DeviceMesh {
 public:
  // Initializes MPI if needed, checks the launcher's view against MPI's, splits the groups.
  static DeviceMesh from_env(const MeshOptions& options = {});

  const MeshLayout& layout() const { return layout_; }
  int rank() const { return layout_.rank; }
  int world_size() const { return layout_.world_size; }
  int shard_size() const { return layout_.shard_size; }
  int num_replicas() const { return layout_.num_replicas; }
  int local_rank() const { return local_rank_; }  // GPU index on this node
  c10::Device device() const { return device_; }
  CommBackend backend() const { return backend_; }  // resolved: kMpi or kNccl
  const LaunchInfo& launch() const { return launch_; }

  Communicator& world() const { return *world_; }
  Communicator& shard() const { return *shard_; }
  Communicator& sync() const { return *sync_; }
  std::shared_ptr<Communicator> world_ptr() const { return world_; }
  std::shared_ptr<Communicator> shard_ptr() const { return shard_; }
  std::shared_ptr<Communicator> sync_ptr() const { return sync_; }

  // Swap a group for a wrapped one (e.g. a LinkEmulator over it, to model a slow inter-node link).
  void set_shard(std::shared_ptr<Communicator> shard);
  void set_sync(std::shared_ptr<Communicator> sync);

 private:
  DeviceMesh() = default;
  std::shared_ptr<MpiRuntime> runtime_;  // declared first: destroyed after the communicators
  MeshLayout layout_;
  LaunchInfo launch_;
  int local_rank_ = 0;
  c10::Device device_ = c10::Device(c10::kCPU);
  CommBackend backend_ = CommBackend::kMpi;
  std::shared_ptr<Communicator> world_;
  std::shared_ptr<Communicator> shard_;
  std::shared_ptr<Communicator> sync_;
};

}  // namespace edit::comm
