// Unit: the module wrapper that marks one block of a model as a sharded unit (docs/architecture.md, shard/).
//
// LibTorch's C++ modules have no forward hooks, so the model calls its blocks through Units and
// each Unit tells its ShardedModel when it starts and ends, which is where parameters are
// gathered, freed and synced:
//
//   struct Gpt : torch::nn::Module {
//     Gpt() {
//       embed = register_module("embed", edit::shard::Unit(Embedding(...)));
//       for (...) blocks.push_back(register_module("block" + i, edit::shard::Unit(Block(...))));
//       head = register_module("head", edit::shard::Unit(Head(...)));
//     }
//     at::Tensor forward(at::Tensor tokens) {       // (B, T) -> (B, T, V)
//       at::Tensor x = embed->forward(tokens);
//       for (auto& block : blocks) x = block->forward(x);
//       return head->forward(x);
//     }
//     edit::shard::Unit embed{nullptr}, head{nullptr};
//     std::vector<edit::shard::Unit> blocks;
//   };
//
// A Unit wraps any module whose forward takes one tensor and returns one. Until a ShardedModel
// adopts it, a Unit simply calls its inner module.
//
// Activation checkpointing: a recomputing unit runs its forward without autograd, keeping only its
// input, and runs it again in its backward, from that input, with autograd, then back through it.
// Its activations live only during its own backward, for one more forward's compute. The inner
// module must compute the same thing twice (no dropout or other randomness).
#pragma once

#include <torch/nn/module.h>
#include <torch/nn/modules/container/any.h>
#include <torch/nn/pimpl.h>

namespace edit::shard {

class UnitListener {
 public:
  virtual ~UnitListener() = default;
  // Called by Unit::forward around the inner module; `output` may be modified (hooked).
  virtual void before_unit_forward(int unit, const at::Tensor& input) = 0;
  virtual at::Tensor after_unit_forward(int unit, at::Tensor output) = 0;
};

class UnitImpl : public torch::nn::Module {
 public:
  template <typename ModuleType>
  explicit UnitImpl(ModuleType inner) : inner_(std::move(inner)) {
    register_module("inner", inner_.ptr());
  }

  at::Tensor forward(const at::Tensor& input);

  torch::nn::AnyModule& inner() { return inner_; }

  // Set by ShardedModel when it adopts the model; index = position in execution order.
  // `recompute`: activation checkpointing (ShardOptions::activation_checkpointing).
  void attach(UnitListener* listener, int index, bool recompute = false) {
    listener_ = listener;
    index_ = index;
    recompute_ = recompute;
  }
  int index() const { return index_; }
  bool recomputes() const { return recompute_; }

 private:
  torch::nn::AnyModule inner_;
  UnitListener* listener_ = nullptr;
  int index_ = -1;
  bool recompute_ = false;
};
TORCH_MODULE(Unit);

}  // namespace edit::shard
