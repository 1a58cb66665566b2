#include "edit/comm/routed_communicator.h"

#include "edit/core/check.h"

namespace edit::comm {

RoutedCommunicator::RoutedCommunicator(std::shared_ptr<Communicator> host, std::shared_ptr<Communicator> device)
    : host_(std::move(host)), device_(std::move(device)) {
  EDIT_CHECK(host_ && device_ && host_->size() == device_->size() && host_->rank() == device_->rank(),
             "RoutedCommunicator: the host and device communicators must span the same ranks in the same order");
}

Communicator& RoutedCommunicator::route(const at::Tensor& tensor) const {
  return tensor.is_cuda() ? *device_ : *host_;
}

WorkPtr RoutedCommunicator::all_reduce(at::Tensor tensor, AllReduceOptions options) {
  return route(tensor).all_reduce(std::move(tensor), options);
}

WorkPtr RoutedCommunicator::all_gather(at::Tensor output, at::Tensor input) {
  EDIT_CHECK(output.device() == input.device(), "all_gather on group ", name(), ": input on ", input.device(),
             " but output on ", output.device(), "; put both on one device");
  Communicator& target = route(input);
  return target.all_gather(std::move(output), std::move(input));
}

WorkPtr RoutedCommunicator::reduce_scatter(at::Tensor output, at::Tensor input, ReduceScatterOptions options) {
  EDIT_CHECK(output.device() == input.device(), "reduce_scatter on group ", name(), ": input on ", input.device(),
             " but output on ", output.device(), "; put both on one device");
  Communicator& target = route(input);
  return target.reduce_scatter(std::move(output), std::move(input), options);
}

WorkPtr RoutedCommunicator::broadcast(at::Tensor tensor, int root) {
  return route(tensor).broadcast(std::move(tensor), root);
}

CommStats RoutedCommunicator::stats() const {
  CommStats total = host_->stats();
  const CommStats device = device_->stats();
  total.ops += device.ops;
  total.bytes_sent += device.bytes_sent;
  total.wait_seconds += device.wait_seconds;
  total.busy_seconds += device.busy_seconds;
  return total;
}

void RoutedCommunicator::reset_stats() {
  host_->reset_stats();
  device_->reset_stats();
}

}  // namespace edit::comm
