// The pseudo-gradient of one flat shard: delta = anchor - local, and its squared L2 norm, in one
// pass (DESIGN.md section 6). This is the CPU twin of edit::kernels::pseudo_grad_sqnorm_cuda.
#pragma once

#include <cstdint>

namespace edit::sync {

// delta[i] = anchor[i] - local[i] for i < n; returns sum_i delta[i]^2 accumulated in double, so
// the result does not depend on n's size the way a float running sum would.
double pseudo_grad_sqnorm_cpu(const float* anchor, const float* local, float* delta, std::int64_t n);

}  // namespace edit::sync
