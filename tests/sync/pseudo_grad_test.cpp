#include "edit/sync/pseudo_grad.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "edit/config.h"
#if EDIT_HAS_KERNELS
#include <cuda_runtime.h>

#include "edit/kernels/pseudo_grad.h"
#endif

namespace {

class PseudoGrad : public testing::TestWithParam<std::int64_t> {};

// The CPU twin against ATen in float64: delta exactly, the squared norm to double rounding.
TEST_P(PseudoGrad, CpuTwinMatchesAtenReference) {
  const std::int64_t n = GetParam();
  at::manual_seed(n + 1);
  const at::Tensor anchor = at::randn({n});
  const at::Tensor local = anchor + 0.01 * at::randn({n});
  at::Tensor delta = at::full({n}, std::numeric_limits<float>::quiet_NaN());  // poisoned
  const double sqnorm = edit::sync::pseudo_grad_sqnorm_cpu(
      anchor.data_ptr<float>(), local.data_ptr<float>(), delta.data_ptr<float>(), n);
  const at::Tensor expected = anchor - local;
  EXPECT_TRUE(at::equal(delta, expected));
  const double reference = expected.to(at::kDouble).pow(2).sum().item<double>();
  EXPECT_NEAR(sqnorm, reference, 1e-10 * (1.0 + reference));  // a float sum would miss by ~1e-4
}

TEST_P(PseudoGrad, CudaKernelMatchesCpuTwin) {
#if !EDIT_HAS_KERNELS
  GTEST_SKIP() << "built without kernels/ (EDIT_BUILD_KERNELS=OFF)";
#else
  if (edit::kernels::cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device on this machine";
  const std::int64_t n = GetParam();
  at::manual_seed(n + 2);
  const at::Tensor anchor = at::randn({n});
  const at::Tensor local = anchor + 0.01 * at::randn({n});
  at::Tensor delta_cpu = at::empty({n});
  const double expected = edit::sync::pseudo_grad_sqnorm_cpu(
      anchor.data_ptr<float>(), local.data_ptr<float>(), delta_cpu.data_ptr<float>(), n);
  // Device buffers straight from the CUDA runtime, so this runs with a CPU-only LibTorch too.
  float *d_anchor = nullptr, *d_local = nullptr, *d_delta = nullptr, *d_sqnorm = nullptr;
  const size_t bytes = static_cast<size_t>(n) * sizeof(float) + sizeof(float);  // never 0
  ASSERT_EQ(cudaMalloc(&d_anchor, bytes), cudaSuccess);
  ASSERT_EQ(cudaMalloc(&d_local, bytes), cudaSuccess);
  ASSERT_EQ(cudaMalloc(&d_delta, bytes), cudaSuccess);
  ASSERT_EQ(cudaMalloc(&d_sqnorm, sizeof(float)), cudaSuccess);
  ASSERT_EQ(cudaMemcpy(d_anchor, anchor.data_ptr<float>(), n * sizeof(float), cudaMemcpyHostToDevice), cudaSuccess);
  ASSERT_EQ(cudaMemcpy(d_local, local.data_ptr<float>(), n * sizeof(float), cudaMemcpyHostToDevice), cudaSuccess);
  ASSERT_EQ(cudaMemset(d_delta, 0xff, bytes), cudaSuccess);  // poison: NaN bit patterns
  edit::kernels::pseudo_grad_sqnorm_cuda(d_anchor, d_local, d_delta, n, d_sqnorm, nullptr);
  at::Tensor delta_gpu = at::empty({n});
  float sqnorm_gpu = -1.f;
  ASSERT_EQ(cudaMemcpy(delta_gpu.data_ptr<float>(), d_delta, n * sizeof(float), cudaMemcpyDeviceToHost), cudaSuccess);
  ASSERT_EQ(cudaMemcpy(&sqnorm_gpu, d_sqnorm, sizeof(float), cudaMemcpyDeviceToHost), cudaSuccess);
  for (float* p : {d_anchor, d_local, d_delta, d_sqnorm}) cudaFree(p);
  EXPECT_TRUE(at::equal(delta_gpu, delta_cpu));
  // float atomics in arbitrary order vs a double sum: relative error well under 1e-5.
  EXPECT_NEAR(sqnorm_gpu, expected, 1e-5 * (1.0 + expected));
#endif
}

INSTANTIATE_TEST_SUITE_P(Sizes, PseudoGrad, testing::Values(0, 1, 255, 256, 1000, 1 << 20));

}  // namespace
