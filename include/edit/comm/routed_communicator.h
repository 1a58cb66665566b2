// RoutedCommunicator: one group over two transports, chosen per collective by the tensor's device
// (docs/architecture.md, comm/): CUDA tensors go to the device communicator (NCCL), CPU tensors and host
// values to the host communicator (MPI), so code that reduces a CPU scalar on a GPU mesh just works.
//
// Both communicators span the same ranks in the same order. Ordering holds per transport: every
// rank issues the same collectives in the same order, so each transport sees them in one order.
#pragma once

#include <memory>

#include "edit/comm/communicator.h"

namespace edit::comm {

class RoutedCommunicator : public Communicator {
 public:
  RoutedCommunicator(std::shared_ptr<Communicator> host, std::shared_ptr<Communicator> device);

  int rank() const override { return host_->rank(); }
  int size() const override { return host_->size(); }
  const std::string& name() const override { return host_->name(); }

  WorkPtr all_reduce(at::Tensor tensor, AllReduceOptions options = {}) override;
  WorkPtr all_gather(at::Tensor output, at::Tensor input) override;
  WorkPtr reduce_scatter(at::Tensor output, at::Tensor input, ReduceScatterOptions options = {}) override;
  WorkPtr broadcast(at::Tensor tensor, int root) override;
  // The host barrier: every rank has issued everything before it (device ops may still run).
  WorkPtr barrier() override { return host_->barrier(); }
  std::vector<double> all_gather_values(const std::vector<double>& mine) override {
    return host_->all_gather_values(mine);
  }

  CommStats stats() const override;  // both transports together
  void reset_stats() override;

  Communicator& host() const { return *host_; }
  Communicator& device() const { return *device_; }

 private:
  Communicator& route(const at::Tensor& tensor) const;
  std::shared_ptr<Communicator> host_;
  std::shared_ptr<Communicator> device_;
};

}  // namespace edit::comm
