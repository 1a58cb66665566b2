// ShardedModel: ZeRO-3-style sharding of a model's units over the shard group (docs/architecture.md, shard/).
//
// Each Unit's parameters become views into one flat buffer, padded to a multiple of S; rank s keeps
// only slice s (the shard) between uses. Around every unit's forward and backward the model
// gathers the full buffer (prefetching the next unit while this one computes), frees it again
// afterwards, and reduce-scatters the gradients into the shard's gradient. The inner optimizer
// then steps on flat shards only (FlatAdamW). With S = 1 the shard *is* the flat buffer: no
// gather, no scatter, no copies.
//
// Hooks: pre_forward(u), post_forward(u), pre_backward(u), post_backward(u) are public; strategies
// subscribe without the model knowing them. Order of one step with units 0..n-1:
//   pre_forward(0) ... post_forward(0), pre_forward(1) ... post_forward(n-1),
//   pre_backward(n-1), post_backward(n-1), pre_backward(n-2), ..., post_backward(0)
// pre_forward(u) hooks run before unit u's all-gather is awaited; post_backward(u) hooks run once
// unit u's gradient reduce-scatter is issued (wait_grad(u) waits for it); pre_gather: see HookPoint.
#pragma once

#include <ATen/core/Tensor.h>

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "edit/comm/communicator.h"
#include "edit/core/state.h"
#include "edit/shard/unit.h"

namespace edit::shard {

// kPreGather(u): unit u's parameters are about to be read for the forward: fired once per unit
// and forward, right before its all-gather is issued (which, with prefetch, happens during
// pre_forward(u-1)); with S = 1, right after pre_forward(u). A subscriber that rewrites the shard
// (EDiT's layer-wise outer step) does it here, so the gather sees the new values.
enum class HookPoint { kPreForward, kPostForward, kPreBackward, kPostBackward, kPreGather };
const char* to_string(HookPoint point);

struct ShardOptions {
  // Issue unit u+1's all-gather (u-1's in backward) while unit u computes.
  bool prefetch = true;
  // Mixed precision. The shards that optimizers and strategies see keep the parameters' own dtype
  // (fp32 master weights); the units are gathered and computed in `compute_dtype` (e.g. bf16), so
  // a gather moves half the bytes. Undefined: the parameters' dtype (no casts at all).
  at::ScalarType compute_dtype = at::ScalarType::Undefined;
  // Dtype in which gradients are reduce-scattered over the shard group: the master dtype (sums of
  // bf16 gradients without bf16 rounding) or the compute dtype (half the bytes). Undefined: master.
  at::ScalarType reduce_dtype = at::ScalarType::Undefined;
  // Activation checkpointing of the units between the first and the last (a GPT's blocks): each
  // keeps only its input through the forward and recomputes the rest in its backward (unit.h).
  // Saves most activation memory for about one more forward of compute. The first and last units
  // are left as they are: an embedding keeps little, and a head's logits are kept by the loss.
  bool activation_checkpointing = false;
  // Record every hook, gather, free and reduce-scatter in trace() (tests, debugging).
  bool trace = false;
};

// One unit's flat state on this rank: what optimizers and sync strategies work on.
class FlatUnit {
 public:
  struct Param {
    std::string name;  // as in model->named_parameters()
    at::Tensor param;  // the module's parameter (its data is a view into the flat buffer)
    std::int64_t offset = 0;
    std::int64_t numel = 0;
  };

  const std::string& name() const { return name_; }
  int index() const { return index_; }
  std::int64_t numel() const { return numel_; }              // real parameter elements
  std::int64_t padded_numel() const { return padded_numel_; }  // multiple of S
  std::int64_t shard_numel() const { return padded_numel_ / group_size_; }
  std::int64_t shard_offset() const { return shard_numel() * group_rank_; }  // of this rank's slice
  const std::vector<Param>& params() const { return params_; }

  // (shard_numel,) this rank's slice of the flat parameters; update it in place.
  at::Tensor& shard() { return shard_; }
  // (shard_numel,) the slice of the gradient, averaged over the shard group and accumulated over
  // micro-batches until zero_grad().
  at::Tensor& grad_shard() { return grad_shard_; }
  // (shard_numel,) 1 where `predicate(param name, param)` holds for the element's parameter, else
  // 0 (and 0 in the padding).
  at::Tensor shard_mask(const std::function<bool(const std::string&, const at::Tensor&)>& predicate) const;

 private:
  friend class ShardedModel;
  std::string name_;
  int index_ = 0;
  int group_size_ = 1;
  int group_rank_ = 0;
  std::int64_t numel_ = 0;
  std::int64_t padded_numel_ = 0;
  std::vector<Param> params_;
  std::shared_ptr<UnitImpl> module_;
  // Compute dtype: full_, full_grad_, shard_compute_. Master dtype: shard_, grad_shard_.
  // reduce_dtype: scatter_in_ (a cast of full_grad_, when the dtypes differ) and scatter_out_.
  at::Tensor full_;        // (padded,) storage released while not gathered (S > 1)
  at::Tensor full_grad_;   // (padded,) storage released outside backward (S > 1)
  at::Tensor shard_;       // (padded / S,) == full_ when S == 1 and no mixed precision
  at::Tensor grad_shard_;  // (padded / S,) == full_grad_ when S == 1 and no mixed precision
  at::Tensor shard_compute_;  // (padded / S,) the shard cast for the gather (mixed precision, S > 1)
  at::Tensor scatter_in_;   // (padded,) the gradient cast for the reduce-scatter, until it lands
  at::Tensor scatter_out_;  // (padded / S,) reduce-scatter landing zone (S > 1)
  comm::WorkPtr gather_work_;
  comm::WorkPtr scatter_work_;
  bool full_allocated_ = false;
  bool gathered_ = false;
  bool in_backward_ = false;
  bool pre_gather_fired_ = false;  // this forward
  // The last forward's output required grad, i.e. this unit's backward will run. A unit whose
  // output does not (frozen, and nothing trainable before it) is not prefetched for a backward.
  bool output_requires_grad_ = true;
  std::vector<int> borrows_;       // earlier units whose (tied) parameters this unit also uses
};

struct ShardMemory {
  std::int64_t shard_bytes = 0;              // params + grads kept between steps (1/S of the model)
  std::int64_t full_param_bytes = 0;         // full unit buffers alive now
  std::int64_t peak_full_param_bytes = 0;    // ... at most since reset_peak_memory()
  std::int64_t full_grad_bytes = 0;          // full gradient buffers alive now
  std::int64_t peak_full_grad_bytes = 0;
  std::int64_t model_param_bytes = 0;        // the unsharded model, for comparison
};

class ShardedModel : public UnitListener, public Stateful {
 public:
  using Hook = std::function<void(int unit)>;

  // Adopts every Unit inside `model` (in registration order = execution order) and shards it over
  // `shard_group`. Collective over the group: shard rank 0's initial weights win. Throws naming
  // them when a parameter of `model` is in no Unit, or when Units nest. A parameter used by two
  // units (tied weights) belongs to the first; the later one gathers it for its forward and
  // backward, and its gradient goes into the first unit's.
  ShardedModel(std::shared_ptr<torch::nn::Module> model, std::shared_ptr<comm::Communicator> shard_group,
               ShardOptions options = {});
  ~ShardedModel() override;
  ShardedModel(const ShardedModel&) = delete;
  ShardedModel& operator=(const ShardedModel&) = delete;

  int num_units() const { return static_cast<int>(units_.size()); }
  FlatUnit& unit(int index) { return *units_.at(static_cast<size_t>(index)); }
  torch::nn::Module& module() { return *model_; }
  comm::Communicator& shard_group() { return *group_; }

  // Subscribe to a hook point; returns an id for remove_hook(). Hooks run in subscription order.
  int add_hook(HookPoint point, Hook hook);
  void remove_hook(int id);

  // loss.backward(), then the reduce-scatter of every unit still pending, then waits for all of
  // them: afterwards every grad_shard() holds this micro-batch's gradient added in, and no full
  // parameter buffer or gather is left (memory().full_param_bytes is 0).
  void backward(const at::Tensor& loss);
  // Waits for unit u's gradient reduce-scatter and adds it into grad_shard() (idempotent).
  void wait_grad(int unit);
  void zero_grad();
  // Clips the global gradient norm (all shards of the group) to max_norm, as
  // torch::nn::utils::clip_grad_norm_ does on the unsharded model; returns the norm before.
  double clip_grad_norm(double max_norm);
  // The same, without making the host wait for a GPU: the norm comes back as a one-element double
  // tensor on the gradients' device, and on a GPU the gradients are scaled there by
  // min(1, max_norm / (norm + 1e-6)). (The Trainer reads it with the loss, in one read a step.)
  at::Tensor clip_grad_norm_queued(double max_norm);
  // The global gradient norm alone, queued likewise (one element, double, the gradients' device).
  at::Tensor grad_norm_queued();

  // Full parameters by name, gathered over the shard group (collective): evaluation, export, tests.
  std::vector<std::pair<std::string, at::Tensor>> gather_full_parameters();

  ShardMemory memory() const;
  void reset_peak_memory();
  // True when units compute in another dtype than their shards (ShardOptions::compute_dtype).
  bool mixed_precision() const { return mixed_; }
  at::Device device() const;
  const std::vector<std::string>& trace() const { return trace_; }
  void clear_trace() { trace_.clear(); }

  // Stateful: this rank's parameter shard of every unit ("unit<i>.shard").
  StateDict state_dict() override;
  void load_state_dict(const StateDict& state) override;

  // UnitListener (called by Unit::forward).
  void before_unit_forward(int unit, const at::Tensor& input) override;
  at::Tensor after_unit_forward(int unit, at::Tensor output) override;

 private:
  void fire(HookPoint point, int unit);
  void note(const char* event, int unit);
  void allocate_full(FlatUnit& unit);
  void issue_gather(FlatUnit& unit, bool for_forward);
  void ensure_gathered(FlatUnit& unit);
  void release_full(FlatUnit& unit);
  void on_pre_backward(int unit);
  void start_backward(FlatUnit& unit);
  void post_backward(FlatUnit& unit);
  void finish_pending_backward(int above_unit);
  void cast_shard_for_compute(FlatUnit& unit);
  std::vector<at::Tensor> grad_shards() const;
  at::Tensor norm_of(const std::vector<at::Tensor>& grads);  // grad_norm_queued() of these shards

  std::shared_ptr<torch::nn::Module> model_;
  std::shared_ptr<comm::Communicator> group_;
  ShardOptions options_;
  bool mixed_ = false;  // compute dtype != master dtype: shard_ and full_ are separate buffers
  std::vector<std::unique_ptr<FlatUnit>> units_;
  struct Subscription {
    int id;
    HookPoint point;
    Hook hook;
  };
  std::vector<Subscription> hooks_;
  int next_hook_id_ = 0;
  ShardMemory memory_;
  std::vector<std::string> trace_;
};

}  // namespace edit::shard
