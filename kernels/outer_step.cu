#include <cstdint>

#include "cuda_check.cuh"
#include "edit/kernels/outer_step.h"

namespace edit::kernels {
namespace {

constexpr int kThreads = 256;
// Enough blocks to fill a Hopper's 132 SMs several times over; each thread strides the rest.
constexpr int kMaxBlocks = 2048;

// The element step. __fmul_rn/__fadd_rn/__fsub_rn are never contracted into an FMA, so the
// rounding matches the CPU twin's separate multiply and add (nvcc contracts a * b + c by default).
__device__ __forceinline__ void nesterov_element(float& m, float& phi, float d, float lr, float mu) {
  m = __fadd_rn(__fmul_rn(mu, m), d);
  phi = __fsub_rn(phi, __fmul_rn(lr, __fadd_rn(d, __fmul_rn(mu, m))));
}

// Grid-stride over n floats; kVec4: the first n/4*4 as float4 (all pointers 16-byte aligned),
// the remaining n % 4 one at a time.
template <bool kVec4>
__global__ void nesterov_outer_step_kernel(float* __restrict__ momentum, float* __restrict__ anchor,
                                           float* __restrict__ param, const float* __restrict__ delta,
                                           std::int64_t n, float lr, float mu) {
  const std::int64_t first = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x;
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  std::int64_t scalar_start = 0;
  if (kVec4) {
    const std::int64_t n4 = n / 4;
    auto* m4 = reinterpret_cast<float4*>(momentum);
    auto* phi4 = reinterpret_cast<float4*>(anchor);
    auto* param4 = reinterpret_cast<float4*>(param);
    const auto* d4 = reinterpret_cast<const float4*>(delta);
    for (std::int64_t i = first; i < n4; i += stride) {
      float4 m = m4[i];
      float4 phi = phi4[i];
      const float4 d = d4[i];
      nesterov_element(m.x, phi.x, d.x, lr, mu);
      nesterov_element(m.y, phi.y, d.y, lr, mu);
      nesterov_element(m.z, phi.z, d.z, lr, mu);
      nesterov_element(m.w, phi.w, d.w, lr, mu);
      m4[i] = m;
      phi4[i] = phi;
      param4[i] = phi;
    }
    scalar_start = n4 * 4;
  }
  for (std::int64_t i = scalar_start + first; i < n; i += stride) {
    float m = momentum[i];
    float phi = anchor[i];
    nesterov_element(m, phi, delta[i], lr, mu);
    momentum[i] = m;
    anchor[i] = phi;
    param[i] = phi;
  }
}

bool aligned16(const void* p) { return reinterpret_cast<std::uintptr_t>(p) % 16 == 0; }

}  // namespace

void nesterov_outer_step_cuda(float* momentum, float* anchor, float* param, const float* delta,
                              std::int64_t n, float lr, float mu, void* stream) {
  if (n == 0) return;
  auto cuda_stream = static_cast<cudaStream_t>(stream);
  const bool vec4 = aligned16(momentum) && aligned16(anchor) && aligned16(param) && aligned16(delta);
  const std::int64_t items = vec4 ? (n + 3) / 4 : n;
  const std::int64_t wanted = (items + kThreads - 1) / kThreads;
  const int blocks = static_cast<int>(wanted < kMaxBlocks ? wanted : kMaxBlocks);
  if (vec4) {
    nesterov_outer_step_kernel<true>
        <<<blocks, kThreads, 0, cuda_stream>>>(momentum, anchor, param, delta, n, lr, mu);
  } else {
    nesterov_outer_step_kernel<false>
        <<<blocks, kThreads, 0, cuda_stream>>>(momentum, anchor, param, delta, n, lr, mu);
  }
  EDIT_CUDA_CHECK(cudaGetLastError());
}

}  // namespace edit::kernels
