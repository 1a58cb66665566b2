// OuterOptimizer: the optimizer Local SGD applies to the averaged pseudo-gradient (DESIGN.md 6).
//
// State per unit shard: the anchor phi (parameters at the last sync) and the outer momentum m.
//   Nesterov:      m = mu m + Delta;  phi -= lr (Delta + mu m)      (DiLoCo: lr 0.7, mu 0.9)
//   Average:       lr 1, mu 0, so phi -= Delta: phi becomes the (weighted) mean of the workers
//   SignMomentum:  m = mu m + Delta;  phi -= lr sign(m)             (use an inner-scale lr, ~1e-3)
// With `offload`, phi and m live in (pinned, where CUDA is present) host memory and move to the
// shard's device one unit at a time during the sync, as EDiT does to save device memory.
#pragma once

#include <ATen/core/Tensor.h>

#include <string>
#include <vector>

#include "edit/shard/sharded_model.h"

namespace edit::sync {

enum class OuterMethod { kNesterov, kAverage, kSignMomentum };
OuterMethod parse_outer_method(const std::string& name);  // "nesterov", "average", "sign"
const char* to_string(OuterMethod method);

struct OuterOptions {
  OuterMethod method = OuterMethod::kNesterov;
  double lr = 0.7;        // outer learning rate (forced to 1 for kAverage)
  double momentum = 0.9;  // outer momentum mu (forced to 0 for kAverage)
  bool offload = false;   // keep phi and m in host memory
};

class OuterOptimizer {
 public:
  // Anchors start as copies of the model's current shards.
  OuterOptimizer(shard::ShardedModel& model, OuterOptions options = {});

  // One outer step of `unit` from the aggregated pseudo-gradient `delta` (shaped like the shard).
  void step(int unit, const at::Tensor& delta);
  // theta = phi: the worker restarts from the anchor.
  void reset_to_anchor(int unit);

  const at::Tensor& anchor(int unit) const { return anchor_.at(static_cast<size_t>(unit)); }
  const at::Tensor& momentum(int unit) const { return momentum_.at(static_cast<size_t>(unit)); }
  at::Tensor& mutable_anchor(int unit) { return anchor_.at(static_cast<size_t>(unit)); }
  at::Tensor& mutable_momentum(int unit) { return momentum_.at(static_cast<size_t>(unit)); }
  const OuterOptions& options() const { return options_; }

 private:
  shard::ShardedModel& model_;
  OuterOptions options_;
  std::vector<at::Tensor> anchor_;
  std::vector<at::Tensor> momentum_;
};

}  // namespace edit::sync
