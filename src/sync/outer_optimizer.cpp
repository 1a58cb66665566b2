#include "edit/sync/outer_optimizer.h"

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>

#include "edit/core/check.h"

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

OuterOptimizer::OuterOptimizer(shard::ShardedModel& model, OuterOptions options) : model_(model), options_(options) {
  if (options_.method == OuterMethod::kAverage) {
    options_.lr = 1.0;
    options_.momentum = 0.0;
  }
  EDIT_CHECK(options_.lr > 0 && options_.momentum >= 0 && options_.momentum < 1, "outer lr ", options_.lr,
             " and momentum ", options_.momentum, " out of range; use lr > 0 and 0 <= momentum < 1");
  for (int u = 0; u < model.num_units(); ++u) {
    const at::Tensor& shard = model.unit(u).shard();
    // Pinned memory only makes sense (and only exists) next to a CUDA device.
    const bool pin = options_.offload && shard.is_cuda();
    const auto host = shard.options().device(at::kCPU).pinned_memory(pin);
    anchor_.push_back(options_.offload ? shard.to(host, /*non_blocking=*/false, /*copy=*/true) : shard.clone());
    momentum_.push_back(at::zeros_like(anchor_.back()));
  }
}

void OuterOptimizer::step(int unit, const at::Tensor& delta) {
  c10::NoGradGuard no_grad;
  at::Tensor& stored_phi = anchor_.at(static_cast<size_t>(unit));
  at::Tensor& stored_m = momentum_.at(static_cast<size_t>(unit));
  // Offloaded state comes in for this unit only, then goes back.
  at::Tensor phi = stored_phi.device() == delta.device() ? stored_phi : stored_phi.to(delta.device());
  at::Tensor m = stored_m.device() == delta.device() ? stored_m : stored_m.to(delta.device());
  const double lr = options_.lr;
  const double mu = options_.momentum;
  m.mul_(mu).add_(delta);
  if (options_.method == OuterMethod::kSignMomentum) {
    phi.add_(m.sign(), -lr);
  } else {
    phi.add_(delta, -lr).add_(m, -lr * mu);
  }
  if (!phi.is_same(stored_phi)) stored_phi.copy_(phi);
  if (!m.is_same(stored_m)) stored_m.copy_(m);
}

void OuterOptimizer::reset_to_anchor(int unit) {
  c10::NoGradGuard no_grad;
  model_.unit(unit).shard().copy_(anchor_.at(static_cast<size_t>(unit)));
}

}  // namespace edit::sync
