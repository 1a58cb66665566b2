#include "edit/shard/unit.h"

#include <ATen/core/grad_mode.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/autograd/custom_function.h>

namespace edit::shard {
namespace {

// The unit's forward as one autograd node that keeps only its input. Its backward finds the
// unit's parameters gathered: the ShardedModel's pre-backward hook sits on this node's output, so
// it runs (and gathers) before the node does.
struct RecomputedForward : torch::autograd::Function<RecomputedForward> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& input, std::int64_t unit) {
    ctx->save_for_backward({input});
    ctx->saved_data["unit"] = unit;
    return reinterpret_cast<UnitImpl*>(unit)->inner().forward<at::Tensor>(input);  // (autograd off here)
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    auto* unit = reinterpret_cast<UnitImpl*>(ctx->saved_data["unit"].toInt());
    at::Tensor input = ctx->get_saved_variables().at(0).detach().requires_grad_(true);
    at::Tensor output;
    {
      at::AutoGradMode with_autograd(true);
      output = unit->inner().forward<at::Tensor>(input);
    }
    // Into the parameters' .grad (the flat gradient's views) and the input's.
    torch::autograd::backward({output}, {grads.at(0)});
    return {input.grad(), at::Tensor()};
  }
};

}  // namespace

at::Tensor UnitImpl::forward(const at::Tensor& input) {
  if (listener_ == nullptr) return inner_.forward<at::Tensor>(input);
  listener_->before_unit_forward(index_, input);
  // Only where a backward will come through the input: a unit whose input needs no gradient
  // (after a frozen one) keeps its activations, as its parameters' gradients need them.
  at::Tensor output = recompute_ && at::GradMode::is_enabled() && input.requires_grad()
                          ? RecomputedForward::apply(input, reinterpret_cast<std::int64_t>(this))
                          : inner_.forward<at::Tensor>(input);
  return listener_->after_unit_forward(index_, std::move(output));
}

}  // namespace edit::shard
