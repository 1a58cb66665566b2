// Learning-rate schedule: linear warm-up, then cosine decay to a floor (the usual LLM recipe).
#pragma once

#include <cstdint>

namespace edit::shard {

struct WarmupCosine {
  double peak_lr = 1e-3;
  std::int64_t warmup_steps = 0;   // lr rises linearly to peak over these steps
  std::int64_t total_steps = 1;    // cosine reaches min_lr here and stays there
  double min_lr = 0.0;

  // Learning rate for 0-based `step`: warm-up gives peak * (step + 1) / warmup_steps.
  double at(std::int64_t step) const;
  // Throws edit::Error for inconsistent settings (negative, warm-up longer than the run, ...).
  void validate() const;
};

}  // namespace edit::shard
