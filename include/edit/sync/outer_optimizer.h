// OuterOptimizer: the optimizer Local SGD applies to the averaged pseudo-gradient
// (docs/architecture.md, sync/).
//
// State per unit shard: the anchor phi (parameters at the last sync) and the outer momentum m.
//   Nesterov:      m = mu m + Delta;  phi -= lr (Delta + mu m)      (DiLoCo: lr 0.7, mu 0.9)
//   Average:       lr 1, mu 0, so phi -= Delta: phi becomes the (weighted) mean of the workers
//   SignMomentum:  m = mu m + Delta;  phi -= lr sign(m)             (use an inner-scale lr, ~1e-3)
// With `offload`, phi and m live in (pinned, where CUDA is present) host memory and move to the
// shard's device one unit at a time during the sync, as EDiT does to save device memory.
//
// The sync calls step_and_reset(): for float shards (Nesterov, Average) the step and the restart
// theta = phi are one pass that reads delta, m, phi once and writes m, phi, theta once
// (edit/sync/outer_step.h on the CPU, edit/kernels/outer_step.h on CUDA) instead of 4+ passes.
#pragma once

#include <ATen/core/Tensor.h>

#include <memory>
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

  // Throws naming the option and its range: lr > 0 and 0 <= momentum < 1 (kAverage sets its own).
  void validate() const;
};

class OuterOptimizer {
 public:
  // Anchors start as copies of the model's current shards.
  OuterOptimizer(shard::ShardedModel& model, OuterOptions options = {});
  ~OuterOptimizer();
  OuterOptimizer(const OuterOptimizer&) = delete;
  OuterOptimizer& operator=(const OuterOptimizer&) = delete;

  // One outer step of `unit` from the aggregated pseudo-gradient `delta` (shaped like the shard).
  void step(int unit, const at::Tensor& delta);
  // theta = phi: the worker restarts from the anchor.
  void reset_to_anchor(int unit);
  // The same on the elements [begin, begin + delta.numel()) of the unit's (flat) shard only:
  // Streaming DiLoCo's fragments may cut a unit, and each part syncs on its own schedule. The
  // updates are elementwise, so two ranges give what one call on the whole shard gives.
  void step(int unit, const at::Tensor& delta, std::int64_t begin);
  void reset_to_anchor(int unit, std::int64_t begin, std::int64_t length);
  void step_and_reset(int unit, const at::Tensor& delta, std::int64_t begin);
  // step(unit, delta) then reset_to_anchor(unit), fused into one pass where the shard, delta and
  // the state are float and contiguous and the method is Nesterov or Average: the CPU twin, or the
  // CUDA kernel on LibTorch's current stream (offloaded state comes in and goes back with
  // non-blocking copies on that stream). The sign method and other dtypes run the two calls.
  // Results agree with them to float rounding (the fused pass computes lr (delta + mu m), the
  // ATen path lr delta + lr mu m).
  void step_and_reset(int unit, const at::Tensor& delta);

  // The stored state. Offloaded state of a CUDA shard may still be on its way back to the host
  // after step_and_reset(): these wait for it first, so the host never reads a half-copied anchor
  // nor overwrites one that is being copied.
  const at::Tensor& anchor(int unit) const;
  const at::Tensor& momentum(int unit) const;
  at::Tensor& mutable_anchor(int unit);
  at::Tensor& mutable_momentum(int unit);
  const OuterOptions& options() const { return options_; }

 private:
  // Blocks until the copies of `unit`'s offloaded state queued by step_and_reset() have landed.
  void wait_for_host_copies(int unit) const;

  struct HostCopies;  // CUDA events of those copies, one per unit (src/sync/outer_optimizer.cpp)

  shard::ShardedModel& model_;
  OuterOptions options_;
  std::vector<at::Tensor> anchor_;
  std::vector<at::Tensor> momentum_;
  std::unique_ptr<HostCopies> host_copies_;
};

}  // namespace edit::sync
