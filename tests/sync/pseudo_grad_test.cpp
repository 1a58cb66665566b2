#include "edit/sync/pseudo_grad.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <limits>

#include "edit/core/check.h"

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
  // Without delta (the penalty's norm pass): the same sum, bit for bit.
  EXPECT_EQ(edit::sync::pseudo_grad_sqnorm_cpu(anchor.data_ptr<float>(), local.data_ptr<float>(), nullptr, n), sqnorm);
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

INSTANTIATE_TEST_SUITE_P(Sizes, PseudoGrad, testing::Values(0, 1, 255, 256, 1000, 1 << 20, 3 * (1 << 16) + 7));

// The twin sums fixed blocks and adds them in order: the same bits with one thread or several.
TEST(PseudoGradient, CpuTwinNormDoesNotDependOnTheThreadCount) {
  const std::int64_t n = 5 * (1 << 16) + 3;
  at::manual_seed(3);
  const at::Tensor anchor = at::randn({n});
  const at::Tensor local = anchor + 0.01 * at::randn({n});
  at::Tensor delta = at::empty({n});
  const int threads = at::get_num_threads();
  at::set_num_threads(1);
  const double one = edit::sync::pseudo_grad_sqnorm_cpu(anchor.data_ptr<float>(), local.data_ptr<float>(),
                                                        delta.data_ptr<float>(), n);
  at::set_num_threads(std::max(threads, 3));
  const double several = edit::sync::pseudo_grad_sqnorm_cpu(anchor.data_ptr<float>(), local.data_ptr<float>(),
                                                            delta.data_ptr<float>(), n);
  at::set_num_threads(threads);
  EXPECT_EQ(one, several);
}

// pseudo_gradient() on the CPU: the fused twin for float contiguous shards, ATen for the rest;
// each gives anchor - local exactly and the norm to double rounding.
TEST(PseudoGradient, DispatchOnTheCpuGivesTheSameDeltaAndNorm) {
  at::manual_seed(4);
  const at::Tensor anchor = at::randn({2 * 1001});
  const at::Tensor local = anchor + 0.01 * at::randn({2 * 1001});
  struct Case {
    const char* name;
    at::Tensor anchor, local;
  };
  const Case cases[] = {
      {"float contiguous (fused)", anchor, local},
      {"double", anchor.to(at::kDouble), local.to(at::kDouble)},
      {"strided views", anchor.slice(0, 0, 2 * 1001, 2), local.slice(0, 0, 2 * 1001, 2)},
  };
  for (const Case& c : cases) {
    double sqnorm = -1.0;
    const at::Tensor delta = edit::sync::pseudo_gradient(c.anchor, c.local, &sqnorm);
    const at::Tensor expected = c.anchor - c.local;
    EXPECT_TRUE(at::equal(delta, expected)) << c.name;
    const double reference = expected.to(at::kDouble).pow(2).sum().item<double>();
    EXPECT_NEAR(sqnorm, reference, 1e-10 * reference) << c.name;
    // The float contiguous case sums in double; the others reduce in their dtype with ATen.
    const bool twin = c.local.scalar_type() == at::kFloat && c.local.is_contiguous();
    EXPECT_NEAR(edit::sync::squared_norm(delta), reference, (twin ? 1e-10 : 1e-6) * reference) << c.name;
    EXPECT_TRUE(at::equal(edit::sync::pseudo_gradient(c.anchor, c.local, nullptr), expected)) << c.name;
    // The norm alone, as the penalty's norm pass asks for it: pseudo_gradient()'s, bit for bit.
    EXPECT_EQ(edit::sync::pseudo_grad_sqnorm(c.anchor, c.local), sqnorm) << c.name;
  }
  EXPECT_THROW(edit::sync::pseudo_gradient(anchor, local.slice(0, 0, 10), nullptr), edit::Error);
  EXPECT_THROW(edit::sync::pseudo_grad_sqnorm(anchor, local.slice(0, 0, 10)), edit::Error);
}

// pseudo_gradient() on CUDA shards, with the anchor on the device or offloaded to pinned memory:
// the same delta as the CPU, bit for bit, and the norm to float-sum rounding.
TEST(PseudoGradient, CudaShardsMatchTheCpu) {
#if !EDIT_WITH_CUDA || !EDIT_HAS_KERNELS
  GTEST_SKIP() << "needs a CUDA LibTorch (EDIT_WITH_CUDA) and kernels/ (EDIT_BUILD_KERNELS)";
#else
  if (edit::kernels::cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device on this machine";
  const std::int64_t n = (1 << 20) + 5;
  at::manual_seed(5);
  const at::Tensor anchor = at::randn({n});
  const at::Tensor local = anchor + 0.01 * at::randn({n});
  double cpu_sqnorm = -1.0;
  const at::Tensor cpu_delta = edit::sync::pseudo_gradient(anchor, local, &cpu_sqnorm);
  const at::Tensor local_gpu = local.to(at::kCUDA);
  for (const at::Tensor& anchor_where : {anchor.to(at::kCUDA), anchor.pin_memory()}) {
    double sqnorm = -1.0;
    const at::Tensor delta = edit::sync::pseudo_gradient(anchor_where, local_gpu, &sqnorm);
    EXPECT_TRUE(delta.is_cuda());
    EXPECT_TRUE(at::equal(delta.cpu(), cpu_delta)) << "anchor on " << anchor_where.device();
    EXPECT_NEAR(sqnorm, cpu_sqnorm, 1e-5 * cpu_sqnorm) << "anchor on " << anchor_where.device();
    EXPECT_NEAR(edit::sync::squared_norm(delta), cpu_sqnorm, 1e-5 * cpu_sqnorm);
  }
#endif
}

}  // namespace
