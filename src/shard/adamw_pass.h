// AdamW's update on fp32 values in one pass: the CPU path of FlatAdamW (AdamWOptions::fused).
// Plain C++ in a file of its own, built without errno from sqrt so that the loop vectorizes.
#pragma once

#include <cstdint>

namespace edit::shard::detail {

// The scalars of one AdamW step, as torch's AdamW uses them: the ATen ops of the unfused path take
// their double factors as floats on float tensors, and so does this loop.
struct AdamWFactors {
  float beta1, one_minus_beta1, beta2, one_minus_beta2, bias_correction2_sqrt, eps, minus_step_size;
};

// For i in [0, n): p *= decay (1 - lr wd, or 1 where nothing decays); m = beta1 m + (1 - beta1) g;
// v = beta2 v + (1 - beta2) g g; p += -step_size m / (sqrt(v) / sqrt(bc2) + eps). The unfused path
// reads and writes each element once per ATen op (nine passes over the shard, two temporaries);
// this reads p, g, m, v once and writes p, m, v once.
void adamw_pass(float* p, const float* g, float* m, float* v, std::int64_t n, float decay, const AdamWFactors& f);

}  // namespace edit::shard::detail
