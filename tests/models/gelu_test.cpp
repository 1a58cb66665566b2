// GELU (tanh approximation) against the formula in double precision, values and derivative, on a
// dense grid through the bend and far into both tails, for whichever path this build takes (oneDNN
// or at::gelu); and the autograd op against at::gelu in double on a strided input.
#include "edit/models/gelu.h"

#include <gtest/gtest.h>

#include <ATen/ATen.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>

#include "edit/config.h"
#if EDIT_HAS_ONEDNN
#include <oneapi/dnnl/dnnl_version.h>
#endif

namespace {

constexpr double kK = 0.7978845608028654;  // sqrt(2 / pi)
constexpr double kC = 0.044715;

// x sigmoid(2u), the same function as 0.5 x (1 + tanh(u)) without its cancellation in the left
// tail; the test also checks the two forms agree where both are exact.
double gelu(double x) { return x / (1.0 + std::exp(-2.0 * kK * (x + kC * x * x * x))); }
double gelu_tanh_form(double x) { return 0.5 * x * (1.0 + std::tanh(kK * (x + kC * x * x * x))); }
double gelu_derivative(double x) {
  const double t = std::tanh(kK * (x + kC * x * x * x));
  return 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * kK * (1.0 + 3.0 * kC * x * x);
}

at::Tensor grid() {
  at::Tensor dense = at::arange(-20000, 20001, at::kFloat) * 1e-3f;  // [-20, 20] in steps of 1e-3
  const at::Tensor far = at::tensor({1e-30f, -1e-30f, 1e-7f, -1e-7f, 50.0f, -50.0f, 1e4f, -1e4f});
  return at::cat({dense, far});
}

TEST(GeluTanh, ValuesMatchTheDoubleFormula) {
  const at::Tensor x = grid();
  const at::Tensor y = edit::models::gelu_tanh(x);
  ASSERT_EQ(y.scalar_type(), at::kFloat);
  const float* xs = x.data_ptr<float>();
  const float* ys = y.data_ptr<float>();
  for (std::int64_t i = 0; i < x.numel(); ++i) {
    const double want = gelu(xs[i]);
    if (std::abs(xs[i]) <= 5.0f) {
      ASSERT_NEAR(want, gelu_tanh_form(xs[i]), 1e-14);
    }
    // The tanh form in fp32 (LibTorch's and oneDNN's alike) is good to ~1e-5 relative near 0, and
    // to ~1e-6 absolute where 1 + tanh(u) cancels (its left tail, where the value is tiny).
    const double tolerance = std::max(3e-5 * std::abs(want), 1e-6);
    ASSERT_NEAR(ys[i], want, tolerance) << "x = " << xs[i] << " (" << edit::models::gelu_backend() << ")";
  }
}

TEST(GeluTanh, DerivativeMatchesTheClosedForm) {
  const at::Tensor x = grid().requires_grad_(true);
  const at::Tensor dy = at::arange(x.numel(), at::kFloat).remainder(7) * 0.25 + 1.0;
  edit::models::gelu_tanh(x).backward(dy);
  const float* xs = x.data_ptr<float>();
  const float* dys = dy.data_ptr<float>();
  const float* dxs = x.grad().data_ptr<float>();
  for (std::int64_t i = 0; i < x.numel(); ++i) {
    const double want = dys[i] * gelu_derivative(xs[i]);
    ASSERT_NEAR(dxs[i], want, 3e-5 * std::max(1.0, std::abs(want))) << "x = " << xs[i];
  }
}

TEST(GeluTanh, AutogradOpMatchesAtGeluInDouble) {
  at::manual_seed(11);
  const at::Tensor base = at::randn({6, 40}) * 4.0;
  const at::Tensor x = base.t().detach().requires_grad_(true);  // strided, as read by a transpose
  const at::Tensor x64 = base.t().to(at::kDouble).detach().requires_grad_(true);
  const at::Tensor y = edit::models::gelu_tanh(x);
  const at::Tensor y64 = at::gelu(x64, "tanh");
  ASSERT_EQ(y.sizes(), x.sizes());
  EXPECT_LT((y.to(at::kDouble) - y64).abs().max().item<double>(), 2e-5);
  const at::Tensor dy = at::randn(y.sizes());
  y.backward(dy);
  y64.backward(dy.to(at::kDouble));
  EXPECT_LT((x.grad().to(at::kDouble) - x64.grad()).abs().max().item<double>(), 1e-4);
  // Empty tensors, and anything but fp32 on the CPU, which is at::gelu itself.
  EXPECT_EQ(edit::models::gelu_tanh(at::empty({0, 3})).sizes(), (std::vector<std::int64_t>{0, 3}));
  const at::Tensor d = at::randn({9}, at::kDouble);
  EXPECT_TRUE(at::equal(edit::models::gelu_tanh(d), at::gelu(d, "tanh")));
}

// The fast path is the one taken where it exists (a build that lost it would still pass the
// tests above, only slower).
TEST(GeluTanh, BackendIsOneDnnWhereBuiltWithOneDnn2) {
#if EDIT_HAS_ONEDNN
  const char* choice = std::getenv("EDIT_CPU_GEMM");
  const bool aten = choice != nullptr && std::strcmp(choice, "aten") == 0;
  EXPECT_STREQ(edit::models::gelu_backend(), aten || DNNL_VERSION_MAJOR != 2 ? "aten" : "onednn");
#else
  EXPECT_STREQ(edit::models::gelu_backend(), "aten");
#endif
}

}  // namespace
