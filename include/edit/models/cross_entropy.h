// The language-model loss: softmax cross-entropy averaged over the tokens, with its fused kernels.
//
// On CUDA (libedit built with kernels/ and a CUDA LibTorch) fp32 and bf16 logits go through
// kernels/cross_entropy.cu: one pass for the loss, one for the gradient, fp32 arithmetic, no fp32
// copy of the logits (edit/kernels/cross_entropy.h has the byte counts). Everywhere else the CPU
// twin below runs the same contract in ATen ops (fp32, or fp64 for fp64 logits). The environment
// variable EDIT_CROSS_ENTROPY=aten (read once) takes LibTorch's cross_entropy over an fp32 copy of
// the logits instead, for comparisons.
//
// Targets must lie in [0, vocab): a row whose target does not has a NaN loss (no index is ignored),
// which a trainer's non-finite check stops on before any update.
#pragma once

#include <ATen/core/Tensor.h>

#include <utility>

namespace edit::models {

// logits (..., V) and int64 targets (...) -> the mean loss over the rows, an fp32 scalar (fp64
// for fp64 logits). Differentiable in the logits; their gradient has their dtype.
at::Tensor cross_entropy(const at::Tensor& logits, const at::Tensor& targets);

// The CPU twin's two halves, on (rows, V) logits and (rows) targets (any device):
//   {lse, row_loss}: lse[r] = log sum_j exp(x[r, j]); row_loss[r] = lse[r] - x[r, t[r]]
//   backward: (exp(x - lse) - one_hot(t)) * scale, in the logits' dtype; `scale` a 1-element tensor
// lse and row_loss are fp32 (fp64 for fp64 logits).
std::pair<at::Tensor, at::Tensor> cross_entropy_rows(const at::Tensor& logits, const at::Tensor& targets);
at::Tensor cross_entropy_rows_backward(const at::Tensor& logits, const at::Tensor& targets, const at::Tensor& lse,
                                       const at::Tensor& scale);

// "fused" where cross_entropy() takes kernels/ for these logits, "twin" for the CPU twin, "aten"
// for LibTorch's (EDIT_CROSS_ENTROPY=aten).
const char* cross_entropy_path(const at::Tensor& logits);

}  // namespace edit::models
