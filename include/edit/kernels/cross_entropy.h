// CUDA entry points of kernels/ for the language-model loss: softmax cross-entropy over the rows
// of the logits, fused.
//
// The unfused loss of a bf16 model upcasts the (rows, vocab) logits to fp32 and runs log-softmax,
// the NLL and their backward over fp32 copies: about 36 bytes of memory traffic per logit. GPT-2
// 124M at 16 x 1024 tokens has 0.82e9 logits a step, so ~30 GB, ~7 ms on an H100. These kernels
// read a bf16 logit twice and write its gradient once: 6 bytes per logit. All arithmetic is fp32.
//
// Raw device pointers and a cudaStream_t passed as void*, like pseudo_grad.h: the caller owns the
// memory and the ordering. The CPU twin with the same contract is edit::models::cross_entropy_rows
// and cross_entropy_rows_backward (edit/models/cross_entropy.h); tests compare the two.
#pragma once

#include <cstdint>

namespace edit::kernels {

enum class LogitsType { kFloat32, kBFloat16 };

// For each row r of the contiguous (rows, vocab) logits x:
//   lse[r]      = log sum_j exp(x[r, j])
//   row_loss[r] = lse[r] - x[r, targets[r]]     (NaN when targets[r] is outside [0, vocab))
// 16-byte loads when `logits` is 16-byte aligned and vocab a multiple of the values in 16 bytes,
// else one value at a time. Asynchronous on `stream`; a failed launch throws edit::Error.
void cross_entropy_forward_cuda(const void* logits, LogitsType type, std::int64_t rows, std::int64_t vocab,
                                const std::int64_t* targets, float* lse, float* row_loss, void* stream);

// grad[r, j] = (exp(x[r, j] - lse[r]) - (j == targets[r])) * scale[0], rounded once to the logits'
// type; grad is contiguous (rows, vocab) like the logits. `scale` is one float in device memory
// (the loss's incoming gradient over the rows that were averaged), so no host read is needed.
void cross_entropy_backward_cuda(const void* logits, LogitsType type, std::int64_t rows, std::int64_t vocab,
                                 const std::int64_t* targets, const float* lse, const float* scale, void* grad,
                                 void* stream);

}  // namespace edit::kernels
