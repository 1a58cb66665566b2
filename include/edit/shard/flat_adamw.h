// FlatAdamW: AdamW with decoupled weight decay, stepping on the flat shards of a ShardedModel.
//
// The arithmetic is torch::optim::AdamW's, element for element, so a sharded run and an unsharded
// run with torch::optim::AdamW agree to float rounding. Parameters for which `decay` is false
// (by default: vectors, i.e. biases and norm gains) get no weight decay, as a second param group
// would. Elements of frozen parameters (requires_grad false) are skipped, as torch skips a
// parameter without a gradient. State is 2 floats per element of this rank's shard only.
#pragma once

#include <ATen/core/Tensor.h>

#include <functional>
#include <initializer_list>
#include <string>
#include <utility>
#include <vector>

#include "edit/shard/sharded_model.h"

namespace edit::shard {

// The elements of every unit's shard whose parameter is frozen (requires_grad false when the
// optimizer is built; build a new optimizer after freezing or unfreezing). An optimizer leaves
// them and their state exactly as they were: no update, no weight decay, moments untouched.
class FrozenElements {
 public:
  explicit FrozenElements(ShardedModel& model);
  // Every real element of the unit's shard is frozen: skip the unit.
  bool whole_unit(int unit) const { return whole_unit_.at(static_cast<size_t>(unit)); }
  // Copies of the frozen elements of `tensors` (each shaped like the unit's shard), for put_back()
  // after an update that ran over the whole shard; empty when none of the unit's are frozen.
  std::vector<at::Tensor> keep(int unit, std::initializer_list<at::Tensor> tensors) const;
  void put_back(int unit, std::initializer_list<at::Tensor> tensors,
                const std::vector<at::Tensor>& kept) const;

 private:
  std::vector<at::Tensor> positions_;  // per unit: (k,) int64 positions in the shard; undefined if k = 0
  std::vector<bool> whole_unit_;
};

struct AdamWOptions {
  double lr = 1e-3;             // peak learning rate (a schedule may change it per step: set_lr)
  double beta1 = 0.9;
  double beta2 = 0.95;          // LLM pretraining default (torch's default is 0.999)
  double eps = 1e-8;
  double weight_decay = 0.1;    // decoupled: p -= lr * weight_decay * p
  // One pass over the state per step instead of one per ATen op: on CUDA fp32 shards LibTorch's
  // fused kernel where it has one (2.1 and later: the kernel behind torch.optim.AdamW(fused=True)),
  // on CPU fp32 shards a loop of libedit's. The same update, rounded in another order at most.
  bool fused = true;

  // Throws naming the option and its range: lr >= 0, betas in [0, 1), eps > 0, weight decay >= 0.
  void validate() const;
};

// An inner optimizer that steps on a ShardedModel's flat shards from their grad_shard().
class FlatOptimizer : public Stateful {
 public:
  virtual ~FlatOptimizer() = default;
  virtual void step() = 0;
  virtual void set_lr(double lr) = 0;
  virtual double lr() const = 0;
};

// Plain SGD, p -= lr * g: the linear inner optimizer for which Local SGD with H = 1 and plain
// averaging is exactly data-parallel SGD (the equivalence the tests check).
class FlatSgd : public FlatOptimizer {
 public:
  FlatSgd(ShardedModel& model, double lr);
  void step() override;
  void set_lr(double lr) override { lr_ = lr; }
  double lr() const override { return lr_; }
  StateDict state_dict() override { return {}; }  // stateless
  void load_state_dict(const StateDict& /*state*/) override {}

 private:
  ShardedModel& model_;
  double lr_;
  FrozenElements frozen_;
};

using DecayPredicate = std::function<bool(const std::string& name, const at::Tensor& param)>;
// Matrices and embeddings decay; biases and norm weights (dim < 2) do not.
bool decay_matrices_only(const std::string& name, const at::Tensor& param);

class FlatAdamW : public FlatOptimizer {
 public:
  FlatAdamW(ShardedModel& model, AdamWOptions options = {}, DecayPredicate decay = decay_matrices_only);

  void step() override;  // one update of every unit's shard from its grad_shard()
  void set_lr(double lr) override { options_.lr = lr; }
  double lr() const override { return options_.lr; }
  std::int64_t steps() const { return steps_; }
  bool fused() const { return use_fused_; }  // LibTorch's fused CUDA kernel steps (see AdamWOptions::fused)
  const AdamWOptions& options() const { return options_; }

  // Per-unit state, e.g. for checkpoints: exp_avg and exp_avg_sq of this rank's shard.
  at::Tensor& exp_avg(int unit) { return exp_avg_.at(static_cast<size_t>(unit)); }
  at::Tensor& exp_avg_sq(int unit) { return exp_avg_sq_.at(static_cast<size_t>(unit)); }
  void set_steps(std::int64_t steps) { steps_ = steps; }
  // Stateful: the step count and both moments of every unit shard.
  StateDict state_dict() override;
  void load_state_dict(const StateDict& state) override;

 private:
  ShardedModel& model_;
  AdamWOptions options_;
  std::int64_t steps_ = 0;
  std::vector<at::Tensor> exp_avg_;
  std::vector<at::Tensor> exp_avg_sq_;
  // Per unit: the runs [begin, begin + length) of the shard whose elements decay. A parameter is
  // one run, so a few per unit: no per-element mask or factor is kept.
  std::vector<std::vector<std::pair<std::int64_t, std::int64_t>>> decay_runs_;
  FrozenElements frozen_;
  bool use_fused_ = false;
  void fused_step();
};

}  // namespace edit::shard
