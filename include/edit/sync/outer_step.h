// The Nesterov outer step of one flat float shard and the workers' restart, in one pass
// (docs/architecture.md, sync/). This is the CPU twin of edit::kernels::nesterov_outer_step_cuda.
#pragma once

#include <cstdint>

namespace edit::sync {

// For i < n, with the new m[i] in the second line:
//   m[i]      = mu * m[i] + delta[i]
//   anchor[i] = anchor[i] - lr * (delta[i] + mu * m[i])
//   param[i]  = anchor[i]
// Each multiply and add rounded on its own, in this order (libedit compiles in ISO C++ mode, where
// GCC does not contract a * b + c into an FMA), so the CUDA kernel gives the same bits. Model
// averaging is lr 1, mu 0. The arrays must not overlap. Elements are independent, so the result
// does not depend on the number of threads (at::parallel_for over chunks).
void nesterov_outer_step_cpu(float* momentum, float* anchor, float* param, const float* delta, std::int64_t n,
                             float lr, float mu);

}  // namespace edit::sync
