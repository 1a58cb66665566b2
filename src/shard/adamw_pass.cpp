#include "adamw_pass.h"

#include <cmath>

namespace edit::shard::detail {

void adamw_pass(float* __restrict p, const float* __restrict g, float* __restrict m, float* __restrict v,
                std::int64_t n, float decay, const AdamWFactors& f) {
  const AdamWFactors k = f;  // locals, so the compiler need not reload them after every store
  for (std::int64_t i = 0; i < n; ++i) {
    const float grad = g[i];
    const float exp_avg = m[i] * k.beta1 + k.one_minus_beta1 * grad;
    const float exp_avg_sq = v[i] * k.beta2 + k.one_minus_beta2 * grad * grad;
    const float denom = std::sqrt(exp_avg_sq) / k.bias_correction2_sqrt + k.eps;
    m[i] = exp_avg;
    v[i] = exp_avg_sq;
    p[i] = p[i] * decay + k.minus_step_size * (exp_avg / denom);
  }
}

}  // namespace edit::shard::detail
