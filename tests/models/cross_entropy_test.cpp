// The fused cross-entropy against LibTorch's cross_entropy computed in double precision (loss and
// gradient through autograd), on the CPU twin; and the CUDA kernels against the twin on the same
// device tensors (skipped without kernels/ and a GPU). Logits include rows far from zero, rows
// dominated by one value, -inf entries, and a vocabulary that is not a multiple of the kernels'
// 16-byte packs.
#include "edit/models/cross_entropy.h"

#include <gtest/gtest.h>

#include <ATen/ATen.h>

#include <cmath>
#include <limits>

#include "edit/config.h"
#include "edit/core/device.h"
#if EDIT_HAS_KERNELS
#include <cuda_runtime.h>

#include "edit/kernels/cross_entropy.h"
#endif

namespace {

// EDIT_CROSS_ENTROPY set and not empty: the library takes LibTorch's path (any value but "aten",
// in any case, is refused).
bool aten_forced() {
  const char* value = std::getenv("EDIT_CROSS_ENTROPY");
  return value != nullptr && *value != '\0';
}

// Logits with awkward rows: shifted by +-60, one dominant entry, a row of equal values.
at::Tensor hard_logits(std::int64_t rows, std::int64_t vocab, std::uint64_t seed) {
  at::manual_seed(seed);
  at::Tensor x = at::randn({rows, vocab}, at::kDouble) * 5.0;
  x[0] += 60.0;
  x[1] -= 60.0;
  x[2][3] = 40.0;
  x[3].fill_(0.25);
  return x;
}

at::Tensor some_targets(std::int64_t rows, std::int64_t vocab) {
  return at::randint(0, vocab, {rows}, at::kLong);
}

struct Reference {
  double loss;
  at::Tensor grad;  // double
};

// LibTorch's cross_entropy on the logits' values in double, through autograd.
Reference reference(const at::Tensor& logits, const at::Tensor& targets, double upstream = 1.0) {
  const at::Tensor x = logits.to(at::kDouble).detach().requires_grad_(true);
  const at::Tensor loss = at::cross_entropy_loss(x.reshape({-1, x.size(-1)}), targets.reshape({-1}));
  (loss * upstream).backward();
  return {loss.item<double>(), x.grad()};
}

TEST(CrossEntropy, TwinMatchesDoublePrecisionLibTorch) {
  const at::Tensor x64 = hard_logits(37, 101, 1);
  const at::Tensor targets = some_targets(37, 101);
  const Reference ref = reference(x64, targets);
  const at::Tensor x = x64.to(at::kFloat).requires_grad_(true);
  const at::Tensor loss = edit::models::cross_entropy(x, targets);
  EXPECT_EQ(loss.scalar_type(), at::kFloat);
  loss.backward();
  EXPECT_NEAR(loss.item<double>(), ref.loss, 1e-5 * std::abs(ref.loss));
  EXPECT_EQ(x.grad().scalar_type(), at::kFloat);
  // Gradients are (probability - one-hot) / 37; fp32 exp and lse are good to ~1e-6 relative.
  EXPECT_LT((x.grad().to(at::kDouble) - ref.grad).abs().max().item<double>(), 2e-7);
}

TEST(CrossEntropy, DoubleLogitsAreExactToDoublePrecision) {
  const at::Tensor x = hard_logits(9, 50, 2).requires_grad_(true);
  const at::Tensor targets = some_targets(9, 50);
  const Reference ref = reference(x, targets);
  const at::Tensor loss = edit::models::cross_entropy(x, targets);
  EXPECT_EQ(loss.scalar_type(), at::kDouble);
  loss.backward();
  EXPECT_NEAR(loss.item<double>(), ref.loss, 1e-12 * std::abs(ref.loss));
  EXPECT_LT((x.grad() - ref.grad).abs().max().item<double>(), 1e-14);
}

TEST(CrossEntropy, Bf16LogitsGiveAnFp32LossAndBf16Gradients) {
  const at::Tensor x = hard_logits(16, 64, 3).to(at::kBFloat16).requires_grad_(true);
  const at::Tensor targets = some_targets(16, 64);
  const Reference ref = reference(x, targets);  // on the bf16 values, in double
  const at::Tensor loss = edit::models::cross_entropy(x, targets);
  EXPECT_EQ(loss.scalar_type(), at::kFloat);
  loss.backward();
  EXPECT_NEAR(loss.item<double>(), ref.loss, 1e-5 * std::abs(ref.loss));
  ASSERT_EQ(x.grad().scalar_type(), at::kBFloat16);
  // One rounding to bf16 (8 bits): within 2^-8 of the value, plus fp32's error before it.
  const at::Tensor error = (x.grad().to(at::kDouble) - ref.grad).abs();
  EXPECT_TRUE(error.le(ref.grad.abs() * std::ldexp(1.0, -8) + 1e-7).all().item<bool>())
      << "largest error " << error.max().item<double>();
}

TEST(CrossEntropy, BatchShapesAndTheIncomingGradient) {
  const at::Tensor x64 = hard_logits(12, 30, 4);
  const at::Tensor targets = some_targets(12, 30);
  const Reference ref = reference(x64, targets, 3.0);
  // (B, T, V) logits and (B, T) targets, and a loss scaled by 3 before backward.
  const at::Tensor x = x64.to(at::kFloat).reshape({3, 4, 30}).requires_grad_(true);
  const at::Tensor loss = edit::models::cross_entropy(x, targets.reshape({3, 4}));
  (loss * 3.0).backward();
  EXPECT_NEAR(loss.item<double>(), ref.loss, 1e-5 * std::abs(ref.loss));
  ASSERT_EQ(x.grad().sizes(), x.sizes());
  EXPECT_LT((x.grad().reshape({12, 30}).to(at::kDouble) - ref.grad).abs().max().item<double>(), 1e-6);
}

TEST(CrossEntropy, ATargetOutsideTheVocabularyMakesTheLossNaN) {
  const at::Tensor x = hard_logits(4, 10, 5).to(at::kFloat);
  at::Tensor targets = some_targets(4, 10);
  const auto [lse, row_loss] = edit::models::cross_entropy_rows(x, targets);
  targets[1] = 10;
  targets[2] = -1;
  const auto [lse_bad, row_loss_bad] = edit::models::cross_entropy_rows(x, targets);
  EXPECT_TRUE(at::equal(lse, lse_bad));
  EXPECT_EQ(row_loss_bad[0].item<float>(), row_loss[0].item<float>());
  EXPECT_TRUE(std::isnan(row_loss_bad[1].item<float>()));
  EXPECT_TRUE(std::isnan(row_loss_bad[2].item<float>()));
  EXPECT_TRUE(std::isnan(edit::models::cross_entropy(x, targets).item<float>()));
  // A row with a bad target has no -1 anywhere in its gradient: only the probabilities.
  const at::Tensor grad = edit::models::cross_entropy_rows_backward(x, targets, lse, at::ones({1}));
  EXPECT_TRUE(at::allclose(grad[1], at::softmax(x[1], 0)));
  // Probabilities sum to 1 up to fp32's error in a log-sum-exp of ~70 (row 0 is shifted by 60).
  EXPECT_NEAR(grad[0].sum().item<double>(), 0.0, 2e-5);
}

TEST(CrossEntropy, MisshapenInputsAreRefusedWithTheShapes) {
  const at::Tensor x = at::zeros({4, 10});
  EXPECT_THROW(edit::models::cross_entropy(x, at::zeros({3}, at::kLong)), std::exception);
  EXPECT_THROW(edit::models::cross_entropy(x, at::zeros({4}, at::kInt)), std::exception);
  EXPECT_STREQ(edit::models::cross_entropy_path(x), aten_forced() ? "aten" : "twin");
}

#if EDIT_HAS_KERNELS && EDIT_WITH_CUDA
// The kernels on (rows, vocab) CUDA logits against the twin on the same tensors.
void compare_kernels_with_twin(at::ScalarType dtype, std::int64_t rows, std::int64_t vocab) {
  SCOPED_TRACE(std::string(c10::toString(dtype)) + " rows " + std::to_string(rows) + " vocab " + std::to_string(vocab));
  const c10::Device cuda(c10::kCUDA, 0);
  at::Tensor x = hard_logits(rows, vocab, 6).to(dtype).to(cuda);
  x[4][7] = -std::numeric_limits<float>::infinity();
  at::Tensor targets = some_targets(rows, vocab).to(cuda);
  targets[5] = vocab;  // out of range: NaN
  const auto type = dtype == at::kBFloat16 ? edit::kernels::LogitsType::kBFloat16 : edit::kernels::LogitsType::kFloat32;
  at::Tensor lse = at::empty({rows}, x.options().dtype(at::kFloat)), row_loss = at::empty_like(lse);
  at::Tensor grad = at::empty_like(x);
  const at::Tensor scale = at::full({1}, 1.0 / static_cast<double>(rows), lse.options());
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  edit::kernels::cross_entropy_forward_cuda(x.data_ptr(), type, rows, vocab, targets.data_ptr<std::int64_t>(),
                                            lse.data_ptr<float>(), row_loss.data_ptr<float>(), nullptr);
  edit::kernels::cross_entropy_backward_cuda(x.data_ptr(), type, rows, vocab, targets.data_ptr<std::int64_t>(),
                                             lse.data_ptr<float>(), scale.data_ptr<float>(), grad.data_ptr(), nullptr);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  const auto [twin_lse, twin_loss] = edit::models::cross_entropy_rows(x, targets);
  // The gradient from the kernel's own lse: a log-sum-exp of ~83 (the row shifted by +60) is good
  // to an fp32 ulp there, 7.6e-6, which would move every probability of the row by as much, more
  // than the exp's own error that this compares.
  const at::Tensor twin_grad = edit::models::cross_entropy_rows_backward(x, targets, lse, scale);
  // __expf against the twin's expf: ~1e-6 relative on lse.
  EXPECT_LT(((lse - twin_lse).abs() / twin_lse.abs().clamp_min(1.0)).max().item<double>(), 2e-6);
  EXPECT_TRUE(std::isnan(row_loss[5].item<float>()));
  const at::Tensor good = at::ones({rows}, at::kBool).to(cuda).index_fill_(0, at::full({1}, 5, at::kLong).to(cuda), false);
  EXPECT_LT((row_loss - twin_loss).masked_select(good).abs().max().item<double>(), 2e-4);
  const at::Tensor error = (grad.to(at::kDouble) - twin_grad.to(at::kDouble)).abs();
  const double ulp = dtype == at::kBFloat16 ? std::ldexp(1.0, -7) : 1e-5;  // one bf16 step, or fp32 exp
  EXPECT_TRUE(error.le(twin_grad.to(at::kDouble).abs() * ulp + 1e-9).all().item<bool>())
      << "largest error " << error.max().item<double>();
}

TEST(CrossEntropyCuda, KernelsFollowTheTwin) {
  if (edit::cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device: runs on a GPU machine (scripts/gpu-check.sh)";
  for (const auto dtype : {at::kBFloat16, at::kFloat}) {
    compare_kernels_with_twin(dtype, 64, 50304);  // GPT-2's padded vocabulary: 16-byte packs
    compare_kernels_with_twin(dtype, 33, 1001);   // one value at a time
  }
}

TEST(CrossEntropyCuda, TrainingLossOnCudaMatchesDoublePrecision) {
  if (edit::cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device: runs on a GPU machine (scripts/gpu-check.sh)";
  const at::Tensor x64 = hard_logits(48, 50304, 7);
  const at::Tensor targets = some_targets(48, 50304);
  const Reference ref = reference(x64.to(at::kBFloat16), targets);
  const at::Tensor x = x64.to(at::kBFloat16).to(c10::Device(c10::kCUDA, 0)).requires_grad_(true);
  EXPECT_STREQ(edit::models::cross_entropy_path(x), aten_forced() ? "aten" : "fused");
  const at::Tensor loss = edit::models::cross_entropy(x, targets.to(x.device()));
  loss.backward();
  EXPECT_NEAR(loss.item<double>(), ref.loss, 1e-5 * std::abs(ref.loss));
  const at::Tensor error = (x.grad().cpu().to(at::kDouble) - ref.grad).abs();
  EXPECT_TRUE(error.le(ref.grad.abs() * std::ldexp(1.0, -7) + 1e-9).all().item<bool>())
      << "largest error " << error.max().item<double>();
}
#endif

}  // namespace
