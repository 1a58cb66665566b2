#include "edit/sync/pseudo_grad.h"

namespace edit::sync {

double pseudo_grad_sqnorm_cpu(const float* anchor, const float* local, float* delta, std::int64_t n) {
  double sum = 0.0;
  for (std::int64_t i = 0; i < n; ++i) {
    const float d = anchor[i] - local[i];
    delta[i] = d;
    sum += static_cast<double>(d) * d;
  }
  return sum;
}

}  // namespace edit::sync
