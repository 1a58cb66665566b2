#include "cuda_check.cuh"
#include "edit/kernels/pseudo_grad.h"

namespace edit::kernels {
namespace {

constexpr int kThreads = 256;
constexpr int kMaxBlocks = 1024;

// Grid-stride pass: each thread writes its deltas and accumulates its squared sum; a block
// reduction in shared memory, then one atomicAdd per block into *sqnorm.
__global__ void pseudo_grad_sqnorm_kernel(const float* __restrict__ anchor,
                                          const float* __restrict__ local, float* __restrict__ delta,
                                          std::int64_t n, float* __restrict__ sqnorm) {
  __shared__ float partial[kThreads];
  float sum = 0.f;
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const float d = anchor[i] - local[i];
    delta[i] = d;
    sum += d * d;
  }
  partial[threadIdx.x] = sum;
  __syncthreads();
  for (int stride = blockDim.x / 2; stride > 0; stride /= 2) {
    if (threadIdx.x < stride) partial[threadIdx.x] += partial[threadIdx.x + stride];
    __syncthreads();
  }
  if (threadIdx.x == 0) atomicAdd(sqnorm, partial[0]);
}

}  // namespace

int cuda_device_count() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no driver" error so later calls start clean
    return 0;
  }
  return count;
}

void pseudo_grad_sqnorm_cuda(const float* anchor, const float* local, float* delta, std::int64_t n,
                             float* sqnorm, void* stream) {
  auto cuda_stream = static_cast<cudaStream_t>(stream);
  EDIT_CUDA_CHECK(cudaMemsetAsync(sqnorm, 0, sizeof(float), cuda_stream));
  if (n == 0) return;
  const std::int64_t wanted = (n + kThreads - 1) / kThreads;
  const int blocks = static_cast<int>(wanted < kMaxBlocks ? wanted : kMaxBlocks);
  pseudo_grad_sqnorm_kernel<<<blocks, kThreads, 0, cuda_stream>>>(anchor, local, delta, n, sqnorm);
  EDIT_CUDA_CHECK(cudaGetLastError());
}

}  // namespace edit::kernels
