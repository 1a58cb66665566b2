#include <cuda_bf16.h>

#include <cfloat>
#include <cstdint>

#include "cuda_check.cuh"
#include "edit/kernels/cross_entropy.h"

namespace edit::kernels {
namespace {

constexpr int kThreads = 256;  // one block per row; a multiple of the warp size

__device__ __forceinline__ float widen(float v) { return v; }
__device__ __forceinline__ float widen(__nv_bfloat16 v) { return __bfloat162float(v); }
template <typename T>
__device__ __forceinline__ T narrow(float v);
template <>
__device__ __forceinline__ float narrow<float>(float v) {
  return v;
}
template <>
__device__ __forceinline__ __nv_bfloat16 narrow<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

// W values of T moved as one access (16 bytes for W = 16 / sizeof(T)).
template <typename T, int W>
struct alignas(sizeof(T) * W) Pack {
  T v[W];
};

// The online softmax's running state: the largest value seen and the sum of exp(x - max). It
// starts at (-FLT_MAX, 0), not -inf, so a -inf logit adds exp(-inf) = 0 instead of exp(nan). A NaN
// logit passes fmaxf unseen but makes the sum NaN, and so the row's loss.
struct MaxSum {
  float m;
  float s;
};

__device__ __forceinline__ MaxSum merge(MaxSum a, MaxSum b) {
  const float m = fmaxf(a.m, b.m);
  return {m, a.s * __expf(a.m - m) + b.s * __expf(b.m - m)};
}

// The block's merged state, valid in thread 0.
__device__ MaxSum block_merge(MaxSum v) {
  __shared__ MaxSum per_warp[kThreads / 32];
  for (int offset = 16; offset > 0; offset /= 2) {
    v = merge(v, {__shfl_xor_sync(0xffffffffu, v.m, offset), __shfl_xor_sync(0xffffffffu, v.s, offset)});
  }
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  if (lane == 0) per_warp[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = lane < kThreads / 32 ? per_warp[lane] : MaxSum{-FLT_MAX, 0.f};
    for (int offset = 16; offset > 0; offset /= 2) {
      v = merge(v, {__shfl_xor_sync(0xffffffffu, v.m, offset), __shfl_xor_sync(0xffffffffu, v.s, offset)});
    }
  }
  return v;
}

template <typename T, int W>
__global__ void __launch_bounds__(kThreads)
    cross_entropy_forward_kernel(const T* __restrict__ logits, std::int64_t vocab, const std::int64_t* __restrict__ targets,
                                 float* __restrict__ lse, float* __restrict__ row_loss) {
  const std::int64_t row = blockIdx.x;
  const T* x = logits + row * vocab;
  const auto* packs = reinterpret_cast<const Pack<T, W>*>(x);
  MaxSum acc{-FLT_MAX, 0.f};
  for (std::int64_t p = threadIdx.x; p < vocab / W; p += kThreads) {
    const Pack<T, W> pack = packs[p];
    float v[W];
    float pack_max = -FLT_MAX;
#pragma unroll
    for (int k = 0; k < W; ++k) {
      v[k] = widen(pack.v[k]);
      pack_max = fmaxf(pack_max, v[k]);
    }
    const float m = fmaxf(acc.m, pack_max);
    float s = acc.s * __expf(acc.m - m);
#pragma unroll
    for (int k = 0; k < W; ++k) s += __expf(v[k] - m);
    acc = {m, s};
  }
  acc = block_merge(acc);
  if (threadIdx.x == 0) {
    const float l = acc.m + logf(acc.s);
    lse[row] = l;
    const std::int64_t t = targets[row];
    row_loss[row] = t >= 0 && t < vocab ? l - widen(x[t]) : __int_as_float(0x7fc00000);  // NaN: a bad target
  }
}

template <typename T, int W>
__global__ void __launch_bounds__(kThreads)
    cross_entropy_backward_kernel(const T* __restrict__ logits, std::int64_t vocab,
                                  const std::int64_t* __restrict__ targets, const float* __restrict__ lse,
                                  const float* __restrict__ scale, T* __restrict__ grad) {
  const std::int64_t row = blockIdx.x;
  const auto* in = reinterpret_cast<const Pack<T, W>*>(logits + row * vocab);
  auto* out = reinterpret_cast<Pack<T, W>*>(grad + row * vocab);
  const float l = lse[row], factor = *scale;
  const std::int64_t t = targets[row];
  for (std::int64_t p = threadIdx.x; p < vocab / W; p += kThreads) {
    const Pack<T, W> pack = in[p];
    Pack<T, W> g;
#pragma unroll
    for (int k = 0; k < W; ++k) {
      const float probability = __expf(widen(pack.v[k]) - l);
      g.v[k] = narrow<T>((probability - (p * W + k == t ? 1.f : 0.f)) * factor);
    }
    out[p] = g;
  }
}

bool aligned16(const void* p) { return reinterpret_cast<std::uintptr_t>(p) % 16 == 0; }

void check_shape(std::int64_t rows, std::int64_t vocab) {
  EDIT_CHECK(rows >= 0 && rows < (std::int64_t{1} << 31), "the fused cross-entropy takes up to 2^31 - 1 rows (one block each), got ",
             rows, "; split the batch into micro-batches (--grad-accum)");
  EDIT_CHECK(vocab >= 1, "the fused cross-entropy needs a vocabulary of at least 1, got ", vocab);
}

template <typename T>
void forward(const void* logits, std::int64_t rows, std::int64_t vocab, const std::int64_t* targets, float* lse,
             float* row_loss, cudaStream_t stream) {
  constexpr int kW = 16 / sizeof(T);
  const auto* x = static_cast<const T*>(logits);
  const auto grid = static_cast<unsigned>(rows);
  if (aligned16(logits) && vocab % kW == 0) {
    cross_entropy_forward_kernel<T, kW><<<grid, kThreads, 0, stream>>>(x, vocab, targets, lse, row_loss);
  } else {
    cross_entropy_forward_kernel<T, 1><<<grid, kThreads, 0, stream>>>(x, vocab, targets, lse, row_loss);
  }
}

template <typename T>
void backward(const void* logits, std::int64_t rows, std::int64_t vocab, const std::int64_t* targets, const float* lse,
              const float* scale, void* grad, cudaStream_t stream) {
  constexpr int kW = 16 / sizeof(T);
  const auto* x = static_cast<const T*>(logits);
  auto* g = static_cast<T*>(grad);
  const auto grid = static_cast<unsigned>(rows);
  if (aligned16(logits) && aligned16(grad) && vocab % kW == 0) {
    cross_entropy_backward_kernel<T, kW><<<grid, kThreads, 0, stream>>>(x, vocab, targets, lse, scale, g);
  } else {
    cross_entropy_backward_kernel<T, 1><<<grid, kThreads, 0, stream>>>(x, vocab, targets, lse, scale, g);
  }
}

}  // namespace

void cross_entropy_forward_cuda(const void* logits, LogitsType type, std::int64_t rows, std::int64_t vocab,
                                const std::int64_t* targets, float* lse, float* row_loss, void* stream) {
  check_shape(rows, vocab);
  if (rows == 0) return;
  const auto cuda_stream = static_cast<cudaStream_t>(stream);
  if (type == LogitsType::kBFloat16) {
    forward<__nv_bfloat16>(logits, rows, vocab, targets, lse, row_loss, cuda_stream);
  } else {
    forward<float>(logits, rows, vocab, targets, lse, row_loss, cuda_stream);
  }
  EDIT_CUDA_CHECK(cudaGetLastError());
}

void cross_entropy_backward_cuda(const void* logits, LogitsType type, std::int64_t rows, std::int64_t vocab,
                                 const std::int64_t* targets, const float* lse, const float* scale, void* grad,
                                 void* stream) {
  check_shape(rows, vocab);
  if (rows == 0) return;
  const auto cuda_stream = static_cast<cudaStream_t>(stream);
  if (type == LogitsType::kBFloat16) {
    backward<__nv_bfloat16>(logits, rows, vocab, targets, lse, scale, grad, cuda_stream);
  } else {
    backward<float>(logits, rows, vocab, targets, lse, scale, grad, cuda_stream);
  }
  EDIT_CUDA_CHECK(cudaGetLastError());
}

}  // namespace edit::kernels
