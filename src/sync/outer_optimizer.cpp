#include "edit/sync/outer_optimizer.h"

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>

#include <cmath>

#include "edit/core/check.h"
#include "edit/sync/outer_step.h"
#include "fused_cuda.h"

#if EDIT_SYNC_CUDA_KERNELS
#include <c10/core/DeviceGuard.h>

#include "edit/comm/cuda_stream.h"
#include "edit/kernels/cuda_event.h"
#include "edit/kernels/outer_step.h"
#endif

namespace edit::sync {

OuterMethod parse_outer_method(const std::string& name) {
  if (name == "nesterov") return OuterMethod::kNesterov;
  if (name == "average") return OuterMethod::kAverage;
  if (name == "sign") return OuterMethod::kSignMomentum;
  EDIT_FAIL("unknown outer optimizer '", name, "'; use nesterov, average or sign");
}

const char* to_string(OuterMethod method) {
  switch (method) {
    case OuterMethod::kNesterov:
      return "nesterov";
    case OuterMethod::kAverage:
      return "average";
    case OuterMethod::kSignMomentum:
      return "sign";
  }
  return "?";
}

struct OuterOptimizer::HostCopies {
#if EDIT_SYNC_CUDA_KERNELS
  // Recorded after the device-to-host copies of a unit's phi and m; made at its first such copy.
  std::vector<std::unique_ptr<kernels::CudaEvent>> landed;
#endif
};

void OuterOptions::validate() const {
  if (method == OuterMethod::kAverage) return;  // lr 1 and momentum 0, whatever was set
  EDIT_CHECK(std::isfinite(lr) && lr > 0, "outer lr ", lr, " out of range; use a positive --outer-lr");
  EDIT_CHECK(momentum >= 0 && momentum < 1, "outer momentum ", momentum,
             " out of range; use 0 <= --outer-momentum < 1");
}

OuterOptimizer::OuterOptimizer(shard::ShardedModel& model, OuterOptions options)
    : model_(model), options_(options), host_copies_(std::make_unique<HostCopies>()) {
  if (options_.method == OuterMethod::kAverage) {
    options_.lr = 1.0;
    options_.momentum = 0.0;
  }
  options_.validate();
  for (int u = 0; u < model.num_units(); ++u) {
    const at::Tensor& shard = model.unit(u).shard();
    if (!options_.offload) {
      anchor_.push_back(shard.clone());
      momentum_.push_back(at::zeros_like(shard));
      continue;
    }
    // Pinned memory only makes sense (and only exists) next to a CUDA device. Allocated here
    // rather than by shard.to(host options): to() pins only non-blocking copies and ignores
    // pinned_memory otherwise, and zeros_like() never pins.
    const auto host = shard.options().device(at::kCPU).pinned_memory(shard.is_cuda());
    anchor_.push_back(at::empty(shard.sizes(), host).copy_(shard));
    momentum_.push_back(at::zeros(shard.sizes(), host));
  }
#if EDIT_SYNC_CUDA_KERNELS
  host_copies_->landed.resize(anchor_.size());
#endif
}

OuterOptimizer::~OuterOptimizer() = default;

void OuterOptimizer::wait_for_host_copies(int unit) const {
#if EDIT_SYNC_CUDA_KERNELS
  const auto& landed = host_copies_->landed.at(static_cast<size_t>(unit));
  if (landed) landed->synchronize();
#else
  (void)unit;  // nothing is ever copied back asynchronously
#endif
}

const at::Tensor& OuterOptimizer::anchor(int unit) const {
  wait_for_host_copies(unit);
  return anchor_.at(static_cast<size_t>(unit));
}

const at::Tensor& OuterOptimizer::momentum(int unit) const {
  wait_for_host_copies(unit);
  return momentum_.at(static_cast<size_t>(unit));
}

at::Tensor& OuterOptimizer::mutable_anchor(int unit) {
  wait_for_host_copies(unit);
  return anchor_.at(static_cast<size_t>(unit));
}

at::Tensor& OuterOptimizer::mutable_momentum(int unit) {
  wait_for_host_copies(unit);
  return momentum_.at(static_cast<size_t>(unit));
}

void OuterOptimizer::step(int unit, const at::Tensor& delta) { step(unit, delta, 0); }

namespace {

// Elements [begin, begin + length) of a flat state or shard tensor, checked.
at::Tensor range_of(const at::Tensor& t, int unit, std::int64_t begin, std::int64_t length) {
  EDIT_CHECK(begin >= 0 && length >= 0 && begin + length <= t.numel(), "outer step of unit ", unit,
             " on elements [", begin, ", ", begin + length, ") of a shard of ", t.numel(),
             "; pass a range inside the unit's shard");
  return t.view({-1}).narrow(0, begin, length);
}

}  // namespace

void OuterOptimizer::step(int unit, const at::Tensor& delta, std::int64_t begin) {
  c10::NoGradGuard no_grad;
  wait_for_host_copies(unit);
  const std::int64_t n = delta.numel();
  at::Tensor stored_phi = range_of(anchor_.at(static_cast<size_t>(unit)), unit, begin, n);
  at::Tensor stored_m = range_of(momentum_.at(static_cast<size_t>(unit)), unit, begin, n);
  const at::Tensor flat_delta = delta.reshape({-1});
  // Offloaded state comes in for this unit only, then goes back.
  at::Tensor phi = stored_phi.device() == delta.device() ? stored_phi : stored_phi.to(delta.device());
  at::Tensor m = stored_m.device() == delta.device() ? stored_m : stored_m.to(delta.device());
  const double lr = options_.lr;
  const double mu = options_.momentum;
  m.mul_(mu).add_(flat_delta);
  if (options_.method == OuterMethod::kSignMomentum) {
    phi.add_(m.sign(), -lr);
  } else {
    phi.add_(flat_delta, -lr).add_(m, -lr * mu);
  }
  if (!phi.is_same(stored_phi)) stored_phi.copy_(phi);
  if (!m.is_same(stored_m)) stored_m.copy_(m);
}

void OuterOptimizer::reset_to_anchor(int unit) {
  c10::NoGradGuard no_grad;
  model_.unit(unit).shard().copy_(anchor(unit));
}

void OuterOptimizer::reset_to_anchor(int unit, std::int64_t begin, std::int64_t length) {
  c10::NoGradGuard no_grad;
  range_of(model_.unit(unit).shard(), unit, begin, length).copy_(range_of(anchor(unit), unit, begin, length));
}

void OuterOptimizer::step_and_reset(int unit, const at::Tensor& delta) {
  const std::int64_t shard = model_.unit(unit).shard().numel();
  EDIT_CHECK(delta.numel() == shard, "outer step of unit ", unit, " with a pseudo-gradient of ",
             delta.numel(), " elements for a shard of ", shard,
             "; pass the aggregated delta of this unit's shard");
  step_and_reset(unit, delta, 0);
}

void OuterOptimizer::step_and_reset(int unit, const at::Tensor& delta, std::int64_t begin) {
  c10::NoGradGuard no_grad;
  const std::int64_t n = delta.numel();
  at::Tensor theta = range_of(model_.unit(unit).shard(), unit, begin, n);
  EDIT_CHECK(delta.device() == theta.device(), "outer step of unit ", unit, " with a pseudo-gradient on ",
             delta.device(), " for a shard on ", theta.device(),
             "; pass the aggregated delta on the shard's device");
  wait_for_host_copies(unit);
  at::Tensor stored_phi = range_of(anchor_.at(static_cast<size_t>(unit)), unit, begin, n);
  at::Tensor stored_m = range_of(momentum_.at(static_cast<size_t>(unit)), unit, begin, n);
  auto float_contiguous = [](const at::Tensor& t) {
    return t.scalar_type() == at::kFloat && t.is_contiguous();
  };
  const bool fusable = options_.method != OuterMethod::kSignMomentum && float_contiguous(delta) &&
                       float_contiguous(theta) && float_contiguous(stored_phi) &&
                       float_contiguous(stored_m) && stored_phi.device() == stored_m.device();
  // The same float lr and mu as the ATen path, which rounds its double scalars to the tensor's dtype.
  const auto lr = static_cast<float>(options_.lr);
  const auto mu = static_cast<float>(options_.momentum);
  if (fusable && theta.device().is_cpu() && stored_phi.device().is_cpu()) {
    nesterov_outer_step_cpu(stored_m.data_ptr<float>(), stored_phi.data_ptr<float>(), theta.data_ptr<float>(),
                            delta.data_ptr<float>(), theta.numel(), lr, mu);
    return;
  }
#if EDIT_SYNC_CUDA_KERNELS
  const bool offloaded = stored_phi.device().is_cpu();
  if (fusable && theta.is_cuda() && (offloaded || stored_phi.device() == theta.device())) {
    const c10::DeviceGuard guard(theta.device());  // the launch and the current stream: the shard's device
    void* stream = comm::torch_current_stream()();
    // Offloaded state comes in on the current stream, ahead of the kernel; from pinned memory the
    // copies do not block the host.
    at::Tensor phi =
        offloaded ? stored_phi.to(theta.device(), at::kFloat, /*non_blocking=*/true) : stored_phi;
    at::Tensor m = offloaded ? stored_m.to(theta.device(), at::kFloat, /*non_blocking=*/true) : stored_m;
    kernels::nesterov_outer_step_cuda(m.data_ptr<float>(), phi.data_ptr<float>(), theta.data_ptr<float>(),
                                      delta.data_ptr<float>(), theta.numel(), lr, mu, stream);
    if (offloaded) {
      // Back to the host without blocking it; the event tells the accessors when they have landed.
      // The device copies phi and m go back to the caching allocator at the end of this scope,
      // which reuses them only for work queued later on this stream.
      stored_phi.copy_(phi, /*non_blocking=*/true);
      stored_m.copy_(m, /*non_blocking=*/true);
      auto& landed = host_copies_->landed.at(static_cast<size_t>(unit));
      if (!landed) landed = std::make_unique<kernels::CudaEvent>();
      landed->record(stream);
    }
    return;
  }
#endif
  step(unit, delta, begin);
  reset_to_anchor(unit, begin, n);
}

}  // namespace edit::sync
