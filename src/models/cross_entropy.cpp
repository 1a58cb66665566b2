#include "edit/models/cross_entropy.h"

#include <ATen/ATen.h>
#include <torch/csrc/autograd/custom_function.h>

#include <cstdlib>
#include <cstring>
#include <limits>
#include <tuple>

#include "backend_choice.h"
#include "edit/config.h"
#include "edit/core/check.h"
#include "edit/core/profile_scope.h"

#if EDIT_HAS_KERNELS && EDIT_WITH_CUDA
#define EDIT_MODELS_CUDA_KERNELS 1
#include <c10/core/DeviceGuard.h>

#include "edit/comm/cuda_stream.h"
#include "edit/kernels/cross_entropy.h"
#else
#define EDIT_MODELS_CUDA_KERNELS 0
#endif

namespace edit::models {
namespace {

bool aten_forced() {
  static const bool forced = detail::env_selects_aten("EDIT_CROSS_ENTROPY");
  return forced;
}

bool use_kernels(const at::Tensor& logits) {
  return EDIT_MODELS_CUDA_KERNELS && logits.is_cuda() &&
         (logits.scalar_type() == at::kFloat || logits.scalar_type() == at::kBFloat16);
}

// The twin computes in fp32, or fp64 for fp64 logits.
at::Tensor widened(const at::Tensor& logits) {
  return logits.scalar_type() == at::kDouble ? logits : logits.to(at::kFloat);
}

#if EDIT_MODELS_CUDA_KERNELS
kernels::LogitsType logits_type(const at::Tensor& logits) {
  return logits.scalar_type() == at::kBFloat16 ? kernels::LogitsType::kBFloat16 : kernels::LogitsType::kFloat32;
}
#endif

// Saves the logits, not a softmax: the backward recomputes exp(x - lse) from them, so the only
// extra memory is one float per row.
struct FusedCrossEntropy : public torch::autograd::Function<FusedCrossEntropy> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& logits, const at::Tensor& targets) {
    const ProfileScope scope("models::cross_entropy");
    at::Tensor lse, row_loss;
#if EDIT_MODELS_CUDA_KERNELS
    if (use_kernels(logits)) {
      const c10::DeviceGuard guard(logits.device());
      lse = at::empty({logits.size(0)}, logits.options().dtype(at::kFloat));
      row_loss = at::empty_like(lse);
      kernels::cross_entropy_forward_cuda(logits.data_ptr(), logits_type(logits), logits.size(0), logits.size(1),
                                          targets.data_ptr<std::int64_t>(), lse.data_ptr<float>(),
                                          row_loss.data_ptr<float>(), comm::torch_current_stream()());
    }
#endif
    if (!lse.defined()) std::tie(lse, row_loss) = cross_entropy_rows(logits, targets);
    ctx->save_for_backward({logits, targets, lse});
    return row_loss.mean();
  }

  static torch::autograd::tensor_list backward(torch::autograd::AutogradContext* ctx, torch::autograd::tensor_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &logits = saved[0], &targets = saved[1], &lse = saved[2];
    // d mean / d row_loss = 1 / rows, times the incoming gradient: kept on the device.
    const at::Tensor scale = (grads[0].to(lse.scalar_type()) / static_cast<double>(logits.size(0))).reshape({1});
#if EDIT_MODELS_CUDA_KERNELS
    if (use_kernels(logits)) {
      const c10::DeviceGuard guard(logits.device());
      at::Tensor grad = at::empty_like(logits);
      kernels::cross_entropy_backward_cuda(logits.data_ptr(), logits_type(logits), logits.size(0), logits.size(1),
                                           targets.data_ptr<std::int64_t>(), lse.data_ptr<float>(),
                                           scale.contiguous().data_ptr<float>(), grad.data_ptr(),
                                           comm::torch_current_stream()());
      return {grad, at::Tensor()};
    }
#endif
    return {cross_entropy_rows_backward(logits, targets, lse, scale), at::Tensor()};
  }
};

// {targets in [0, vocab), the targets with the others replaced by 0}: a bad target reads column 0,
// and its row is then made NaN (forward) or left without its -1 (backward), as the kernels do.
std::pair<at::Tensor, at::Tensor> checked_targets(const at::Tensor& targets, std::int64_t vocab) {
  const at::Tensor valid = targets.ge(0).logical_and(targets.lt(vocab));
  return {valid, at::where(valid, targets, at::zeros_like(targets))};
}

}  // namespace

std::pair<at::Tensor, at::Tensor> cross_entropy_rows(const at::Tensor& logits, const at::Tensor& targets) {
  const at::Tensor x = widened(logits);
  const at::Tensor lse = at::logsumexp(x, 1);
  const auto [valid, safe] = checked_targets(targets, logits.size(1));
  const at::Tensor picked = x.gather(1, safe.unsqueeze(1)).squeeze(1);
  const at::Tensor nan = at::full({}, std::numeric_limits<double>::quiet_NaN(), lse.options());
  return {lse, at::where(valid, lse - picked, nan)};
}

at::Tensor cross_entropy_rows_backward(const at::Tensor& logits, const at::Tensor& targets, const at::Tensor& lse,
                                       const at::Tensor& scale) {
  at::Tensor grad = at::exp(widened(logits) - lse.unsqueeze(1));
  const auto [valid, safe] = checked_targets(targets, logits.size(1));
  grad.scatter_add_(1, safe.unsqueeze(1), valid.to(grad.scalar_type()).neg().unsqueeze(1));
  return grad.mul_(scale.to(grad.scalar_type())).to(logits.scalar_type());
}

at::Tensor cross_entropy(const at::Tensor& logits, const at::Tensor& targets) {
  const std::int64_t vocab = logits.size(-1);
  EDIT_CHECK(targets.scalar_type() == at::kLong, "cross_entropy takes int64 targets, got ", targets.scalar_type());
  EDIT_CHECK(targets.numel() * vocab == logits.numel(), "cross_entropy: ", targets.numel(), " targets for logits of shape ",
             logits.sizes(), "; there must be one target per row of ", vocab, " logits");
  EDIT_CHECK(targets.device() == logits.device(), "cross_entropy: the targets are on ", targets.device(),
             " and the logits on ", logits.device(), "; move the batch to the model's device");
  const at::Tensor rows = logits.reshape({-1, vocab});
  const at::Tensor flat_targets = targets.reshape({-1});
  if (aten_forced()) {
    // Softmax and log over the vocabulary in fp32 at least (bf16 logits lose the small probabilities).
    return at::cross_entropy_loss(widened(rows), flat_targets);
  }
  return FusedCrossEntropy::apply(rows.contiguous(), flat_targets.contiguous());
}

const char* cross_entropy_path(const at::Tensor& logits) {
  if (aten_forced()) return "aten";
  return use_kernels(logits) ? "fused" : "twin";
}

}  // namespace edit::models
