// A DeviceMesh on NCCL across ranks, one GPU each: every collective on CUDA tensors of the world,
// shard and sync groups against a reference each rank rebuilds on the host (each rank's input is a
// pure function of its rank), in fp32 and bf16. Then CPU tensors on the same mesh, which must
// still go through MPI.
//
// Needs a CUDA LibTorch, NCCL, and as many GPUs as ranks on the node; skips with the reason
// otherwise (one GPU cannot hold two NCCL ranks). ctest's mpi.mesh cases run it (*Mesh*), and
// scripts/gpu-check.sh on machines with two or more GPUs.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <string>

#include "edit/comm/device_mesh.h"
#include "edit/config.h"
#include "edit/core/device.h"
#include "mpi_test_env.h"

namespace {

using edit::comm::CommBackend;
using edit::testing_support::world;

// Rank r's input: r + 1 + i / 1000 at index i, exact in fp32; in bf16 the sums stay integers.
at::Tensor rank_input(int rank, std::int64_t numel, at::ScalarType type, bool integers) {
  at::Tensor values = at::arange(numel, at::kDouble);
  values = integers ? at::full({numel}, rank + 1.0, at::kDouble) : values / 1000.0 + (rank + 1.0);
  return values.to(type);
}

std::string skip_reason() {
  if (!EDIT_WITH_CUDA || !EDIT_WITH_NCCL) return "needs a build with a CUDA LibTorch and NCCL";
  const int gpus = edit::cuda_device_count();
  if (gpus < world()->size()) {
    return "needs a GPU per rank: " + std::to_string(world()->size()) + " ranks, " + std::to_string(gpus) +
           " GPU(s) visible";
  }
  return "";
}

void check_group(edit::comm::Communicator& group, c10::Device device, at::ScalarType type, const std::string& name) {
  SCOPED_TRACE(name + " (" + std::to_string(group.size()) + " ranks), " + c10::toString(type));
  const bool integers = type == at::kBFloat16;
  const std::int64_t n = 4 * group.size() + 3;  // not a multiple of anything NCCL likes
  const auto on = at::TensorOptions().device(device);
  at::Tensor expected_sum = at::zeros({n}, at::kDouble);
  for (int r = 0; r < group.size(); ++r) expected_sum += rank_input(r, n, type, integers).to(at::kDouble);

  at::Tensor t = rank_input(group.rank(), n, type, integers).to(device);
  group.all_reduce(t)->wait();
  EXPECT_TRUE(t.is_cuda());
  EXPECT_TRUE(at::allclose(t.cpu().to(at::kDouble), expected_sum, 1e-6, 1e-6)) << "all_reduce";

  const std::int64_t chunk = 5;
  at::Tensor gathered = at::empty({chunk * group.size()}, on.dtype(type));
  group.all_gather(gathered, rank_input(group.rank(), chunk, type, integers).to(device))->wait();
  for (int r = 0; r < group.size(); ++r) {
    EXPECT_TRUE(at::equal(gathered.cpu().narrow(0, r * chunk, chunk), rank_input(r, chunk, type, integers)))
        << "all_gather, part of rank " << r;
  }

  const std::int64_t whole = chunk * group.size();
  at::Tensor mine = at::empty({chunk}, on.dtype(type));
  group.reduce_scatter(mine, rank_input(group.rank(), whole, type, integers).to(device))->wait();
  at::Tensor sum_whole = at::zeros({whole}, at::kDouble);
  for (int r = 0; r < group.size(); ++r) sum_whole += rank_input(r, whole, type, integers).to(at::kDouble);
  EXPECT_TRUE(at::allclose(mine.cpu().to(at::kDouble), sum_whole.narrow(0, group.rank() * chunk, chunk), 1e-6, 1e-6))
      << "reduce_scatter";

  at::Tensor b = rank_input(group.rank(), n, type, integers).to(device);
  group.broadcast(b, group.size() - 1)->wait();
  EXPECT_TRUE(at::equal(b.cpu(), rank_input(group.size() - 1, n, type, integers))) << "broadcast from the last rank";
}

TEST(NcclMesh, CollectivesOnCudaTensorsMatchHostReferences) {
  const std::string reason = skip_reason();
  if (!reason.empty()) GTEST_SKIP() << reason;
  edit::comm::MeshOptions options;
  options.backend = CommBackend::kNccl;
  options.shard_size = world()->size() % 2 == 0 ? 2 : 1;
  options.device = edit::resolve_device("cuda", edit::comm::detect_launch().local_rank);
  edit::comm::DeviceMesh mesh = edit::comm::DeviceMesh::from_env(options);
  ASSERT_EQ(mesh.backend(), CommBackend::kNccl);
  for (const auto type : {at::kFloat, at::kBFloat16}) {
    check_group(mesh.world(), mesh.device(), type, "world");
    check_group(mesh.shard(), mesh.device(), type, "shard group");
    check_group(mesh.sync(), mesh.device(), type, "sync group");
  }
  // CPU tensors on an NCCL mesh still reduce (through MPI).
  at::Tensor host = at::full({3}, mesh.rank() + 1.0);
  mesh.world().all_reduce(host)->wait();
  const double n = mesh.world_size();
  EXPECT_TRUE(at::allclose(host, at::full({3}, n * (n + 1) / 2)));
}

}  // namespace
