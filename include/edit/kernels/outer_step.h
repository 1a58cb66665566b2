// CUDA entry points of kernels/ for the outer optimizer (docs/architecture.md, sync/).
//
// Raw device pointers and a cudaStream_t passed as void*, like pseudo_grad.h: the caller owns the
// memory and the ordering. The CPU twin with the same contract is
// edit::sync::nesterov_outer_step_cpu (edit/sync/outer_step.h); tests compare the two.
#pragma once

#include <cstdint>

namespace edit::kernels {

// One pass over n floats of a unit's shard, the Nesterov outer step and the restart together:
//   m[i]     = mu * m[i] + delta[i]
//   anchor[i] = anchor[i] - lr * (delta[i] + mu * m[i])      (with the new m[i])
//   param[i]  = anchor[i]
// Every multiply and add is rounded on its own (no fused multiply-add), in this order, so the
// result is bit-identical to the CPU twin. Model averaging is lr 1, mu 0. The four arrays must not
// overlap. float4 loads and stores when all four are 16-byte aligned, else one float at a time.
// Asynchronous on `stream`; a failed launch throws edit::Error.
void nesterov_outer_step_cuda(float* momentum, float* anchor, float* param, const float* delta,
                              std::int64_t n, float lr, float mu, void* stream);

}  // namespace edit::kernels
