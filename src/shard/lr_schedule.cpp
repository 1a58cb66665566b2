#include "edit/shard/lr_schedule.h"

#include <algorithm>
#include <cmath>

#include "edit/core/check.h"

namespace edit::shard {

void WarmupCosine::validate() const {
  EDIT_CHECK(peak_lr >= 0 && min_lr >= 0 && min_lr <= peak_lr, "learning rates must satisfy 0 <= min_lr (", min_lr,
             ") <= peak_lr (", peak_lr, ")");
  EDIT_CHECK(total_steps > 0 && warmup_steps >= 0 && warmup_steps <= total_steps, "warm-up steps (", warmup_steps,
             ") must lie between 0 and the total steps (", total_steps, ")");
}

double WarmupCosine::at(std::int64_t step) const {
  if (step < warmup_steps) return peak_lr * static_cast<double>(step + 1) / static_cast<double>(warmup_steps);
  const double span = static_cast<double>(std::max<std::int64_t>(1, total_steps - warmup_steps));
  const double progress = std::min(1.0, static_cast<double>(step - warmup_steps) / span);
  return min_lr + 0.5 * (peak_lr - min_lr) * (1.0 + std::cos(M_PI * progress));
}

}  // namespace edit::shard
