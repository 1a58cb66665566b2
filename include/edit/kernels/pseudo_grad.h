// CUDA entry points of kernels/ for the pseudo-gradient (docs/architecture.md, sync/).
//
// Raw device pointers and a cudaStream_t (passed as void* so this header compiles without CUDA):
// the caller owns the memory and the ordering. The CPU twin with the same contract is
// edit::sync::pseudo_grad_sqnorm_cpu (edit/sync/pseudo_grad.h); tests compare the two.
#pragma once

#include <cstdint>

namespace edit::kernels {

// Number of CUDA devices visible to this process; 0 when there is no driver or no device.
int cuda_device_count();

// One pass over n floats: delta[i] = anchor[i] - local[i]; *sqnorm = sum_i delta[i]^2.
// `sqnorm` is one float in device memory, overwritten (not accumulated into). Asynchronous on
// `stream`; errors from the launch are thrown as edit::Error.
void pseudo_grad_sqnorm_cuda(const float* anchor, const float* local, float* delta, std::int64_t n,
                             float* sqnorm, void* stream);

}  // namespace edit::kernels
