// NcclCommunicator: the Communicator for CUDA tensors (docs/architecture.md, comm/).
//
// Built only when edit/config.h says EDIT_WITH_NCCL 1. This header pulls in neither nccl.h nor the
// CUDA headers (streams travel as void*), so code that merely names the class compiles anywhere.
//
// Ordering: every op records an event on the caller's stream and runs on this communicator's own
// non-blocking stream once that event fires, so the op sees everything the caller queued before
// it, and compute queued after it overlaps the transfer. Work::wait() makes the caller's stream
// wait for the op (and the host too), so results are safe to use afterwards on either.
//
//   auto world = MpiCommunicator::world(runtime);         // bootstrap: carries NCCL's unique id
//   NcclCommunicator nccl(world, local_rank);              // collective over world's ranks
//   auto work = nccl.all_reduce(grad, {ReduceOp::kAvg});  // grad: contiguous CUDA tensor
//   work->wait();
//
// Tensors stay alive until their op completes even when its Work is dropped unwaited, so the
// caching allocator cannot hand their memory to the caller while NCCL still writes into it.
// AllReduceOptions::prescale is applied by NCCL itself (a PreMulSum reduction): no extra pass over
// the tensor, and no ATen kernel on it, so this works with a CPU-only LibTorch as well.
//
// Timeouts (CommOptions::timeout) cover each op from issue to completion; on expiry the NCCL
// communicator is aborted. They do not cover ncclCommInitRank in the constructor, nor an issue
// call that blocks while NCCL connects to a peer for the first time: both use NCCL's blocking mode.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "edit/comm/communicator.h"

namespace edit::comm {

namespace detail {
class NcclGroup;  // NCCL and CUDA handles, defined in src/comm/nccl_communicator.cpp
}

class NcclCommunicator : public Communicator {
 public:
  // Returns the cudaStream_t the caller computes on (nullptr: the legacy default stream). Called
  // at every issue and every wait, so it may follow a "current stream" that changes.
  using StreamFn = std::function<void*()>;

  // A collective over bootstrap's ranks: bootstrap rank 0 makes NCCL's unique id, bootstrap
  // broadcasts it, then every rank joins the NCCL communicator on `cuda_device` (an index of the
  // devices this process sees). The NCCL group has bootstrap's ranks, size and name.
  NcclCommunicator(std::shared_ptr<Communicator> bootstrap, int cuda_device,
                   CommOptions options = CommOptions::from_env(), StreamFn caller_stream = {});
  // Once this object and every Work of it are gone: waits up to options.timeout for ops still in
  // flight, then frees NCCL's resources (aborting instead if ops are stuck). Never throws.
  ~NcclCommunicator() override;

  NcclCommunicator(const NcclCommunicator&) = delete;
  NcclCommunicator& operator=(const NcclCommunicator&) = delete;

  int rank() const override;
  int size() const override;
  const std::string& name() const override;

  // Tensors: contiguous CUDA tensors on device(), dtype float, double, half, bfloat16, int32,
  // int64 or uint8. prescale must be 1 for integer dtypes.
  WorkPtr all_reduce(at::Tensor tensor, AllReduceOptions options = {}) override;
  WorkPtr all_gather(at::Tensor output, at::Tensor input) override;
  WorkPtr reduce_scatter(at::Tensor output, at::Tensor input, ReduceScatterOptions options = {}) override;
  WorkPtr broadcast(at::Tensor tensor, int root) override;
  WorkPtr barrier() override;
  // Host values: travel over the bootstrap communicator.
  std::vector<double> all_gather_values(const std::vector<double>& mine) override;

  CommStats stats() const override;
  void reset_stats() override;

  int device() const;
  void* comm_stream() const;  // the cudaStream_t every op of this communicator runs on
  // True once an op timed out or NCCL reported an error: the NCCL communicator was aborted and
  // every later op throws at once. Build a new communicator (in practice: restart the job).
  bool broken() const;

 private:
  // Shared with the Work handles, which may outlive this object.
  std::shared_ptr<detail::NcclGroup> group_;
};

}  // namespace edit::comm
