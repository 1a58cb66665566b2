// MpiCommunicator: collectives over an MPI communicator, progressed on a dedicated thread.
//
// The caller's thread only validates arguments and enqueues; the communication thread starts the
// nonblocking MPI collective and polls it (MPI_Test with back-off, see CommOptions) so the rank's
// compute runs while its collectives progress. Ops run one at a time in issue order, which is the
// order MPI requires anyway. CPU tensors are used in place when contiguous; non-contiguous and
// CUDA tensors go through a contiguous host buffer (pinned for CUDA) and are copied back on wait():
// that is the path for several ranks sharing one GPU, which NCCL refuses.
#pragma once

#include <memory>
#include <string>

#include "edit/comm/communicator.h"
#include "edit/comm/mpi_runtime.h"

namespace edit::comm {

class MpiCommunicator : public Communicator {
 public:
  // All ranks of MPI_COMM_WORLD, as group `name`.
  static std::shared_ptr<MpiCommunicator> world(std::shared_ptr<MpiRuntime> runtime,
                                                CommOptions options = CommOptions::from_env(),
                                                std::string name = "world");
  ~MpiCommunicator() override;

  // Collective over this group: ranks passing the same color form a new group, ordered by key.
  // Call it at setup, with no collective of this group in flight.
  std::shared_ptr<MpiCommunicator> split(int color, int key, std::string name) const;

  int rank() const override;
  int size() const override;
  const std::string& name() const override;

  WorkPtr all_reduce(at::Tensor tensor, AllReduceOptions options = {}) override;
  WorkPtr all_gather(at::Tensor output, at::Tensor input) override;
  WorkPtr reduce_scatter(at::Tensor output, at::Tensor input, ReduceScatterOptions options = {}) override;
  WorkPtr broadcast(at::Tensor tensor, int root) override;
  WorkPtr barrier() override;
  std::vector<double> all_gather_values(const std::vector<double>& mine) override;

  CommStats stats() const override;
  void reset_stats() override;

  const CommOptions& options() const;
  const std::shared_ptr<MpiRuntime>& runtime() const;

  struct Impl;  // public so the .cpp's helpers can name it; defined only there

 private:
  explicit MpiCommunicator(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace edit::comm
