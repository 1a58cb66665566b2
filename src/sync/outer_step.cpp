#include "edit/sync/outer_step.h"

#include <ATen/Parallel.h>

namespace edit::sync {

void nesterov_outer_step_cpu(float* momentum, float* anchor, float* param, const float* delta, std::int64_t n,
                             float lr, float mu) {
  // 64 KiB of each array per task: big enough that the thread pool's overhead vanishes.
  constexpr std::int64_t kGrain = 1 << 14;
  at::parallel_for(0, n, kGrain, [=](std::int64_t begin, std::int64_t end) {
    // __restrict: the arrays do not overlap (the contract), so the compiler vectorizes without
    // run-time overlap checks.
    float* __restrict m = momentum;
    float* __restrict phi = anchor;
    float* __restrict theta = param;
    const float* __restrict d = delta;
    for (std::int64_t i = begin; i < end; ++i) {
      const float m_new = mu * m[i] + d[i];
      const float phi_new = phi[i] - lr * (d[i] + mu * m_new);
      m[i] = m_new;
      phi[i] = phi_new;
      theta[i] = phi_new;
    }
  });
}

}  // namespace edit::sync
