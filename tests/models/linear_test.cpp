// edit::models::linear against at::linear in double precision: values and all three gradients,
// for 2-D and 3-D inputs, with and without a bias, a non-contiguous input and no rows at all; and
// everything that is not fp32 on the CPU going to at::linear itself.
#include "edit/models/linear.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cstring>

#include "edit/config.h"
#include "edit/core/torch_compat.h"

namespace {

struct Case {
  std::vector<std::int64_t> x_shape;  // (..., in)
  std::int64_t out;
  bool bias;
  bool transposed_input;  // x given as a transposed view (non-contiguous)
};

// Relative to the reference's largest magnitude: fp32 products of length <= 64 stay well inside.
void expect_close(const at::Tensor& got, const at::Tensor& want, const std::string& what) {
  ASSERT_EQ(got.sizes(), want.sizes()) << what;
  if (want.numel() == 0) return;
  const double scale = std::max(1.0, want.abs().max().item<double>());
  const double diff = (got.to(at::kDouble) - want).abs().max().item<double>();
  EXPECT_LT(diff, 2e-6 * scale) << what << ": max difference " << diff;
}

TEST(Linear, MatchesDoublePrecisionValuesAndGradients) {
  at::manual_seed(3);
  const std::vector<Case> cases = {{{5, 7}, 3, true, false},
                                   {{2, 4, 16}, 24, false, false},
                                   {{3, 6, 64}, 10, true, true},
                                   {{0, 8}, 5, true, false}};
  for (const Case& c : cases) {
    const std::int64_t in = c.x_shape.back();
    at::Tensor x = at::randn(c.x_shape);
    if (c.transposed_input) x = x.transpose(0, 1).contiguous().transpose(0, 1);  // same values, strided
    EXPECT_EQ(x.is_contiguous(), !c.transposed_input);
    const at::Tensor w = at::randn({c.out, in});
    const at::Tensor b = c.bias ? at::randn({c.out}) : at::Tensor();
    // libedit's, in fp32
    const at::Tensor x32 = x.detach().requires_grad_(true);
    const at::Tensor w32 = w.clone().requires_grad_(true);
    const at::Tensor b32 = c.bias ? b.clone().requires_grad_(true) : at::Tensor();
    const at::Tensor y = edit::models::linear(x32, w32, b32);
    // the reference, in double
    const at::Tensor x64 = x.to(at::kDouble).requires_grad_(true);
    const at::Tensor w64 = w.to(at::kDouble).requires_grad_(true);
    const at::Tensor b64 = c.bias ? b.to(at::kDouble).requires_grad_(true) : at::Tensor();
    const at::Tensor y64 = at::linear(x64, w64, b64);
    const std::string what = "x " + c10::str(c.x_shape) + ", out " + std::to_string(c.out);
    EXPECT_EQ(y.scalar_type(), at::kFloat);
    expect_close(y, y64, what + ": y");
    const at::Tensor dy = at::randn(y.sizes());
    y.backward(dy);
    y64.backward(dy.to(at::kDouble));
    expect_close(x32.grad(), x64.grad(), what + ": dx");
    expect_close(w32.grad(), w64.grad(), what + ": dw");
    if (c.bias) expect_close(b32.grad(), b64.grad(), what + ": db");
  }
}

// The attention's batched products: (B, H, T, d) operands as the model makes them (a transposed
// view of a strided tensor, k^T as a view), and plain 3-D ones, against at::matmul in double.
TEST(Matmul, BatchedProductsMatchDoublePrecision) {
  at::manual_seed(5);
  const std::int64_t B = 2, T = 6, H = 3, d = 4;
  const at::Tensor qkv = at::randn({B, T, 3 * H * d});
  const auto parts = qkv.chunk(3, -1);
  const auto heads = [&](const at::Tensor& t) { return t.reshape({B, T, H, d}).transpose(1, 2); };
  struct Pair {
    at::Tensor a, b;
    std::string what;
  };
  const std::vector<Pair> pairs = {
      {heads(parts[0]), heads(parts[1]).transpose(-2, -1), "q k^T (strided, transposed view)"},
      {at::randn({B, H, T, T}), heads(parts[2]), "p v"},
      {at::randn({5, 3, 7}), at::randn({5, 7, 2}), "3-D contiguous"},
      {at::randn({4, 0, 3}), at::randn({4, 3, 2}), "no rows"},
  };
  for (const Pair& p : pairs) {
    const at::Tensor a32 = p.a.detach().requires_grad_(true), b32 = p.b.detach().requires_grad_(true);
    const at::Tensor a64 = p.a.to(at::kDouble).requires_grad_(true),
                     b64 = p.b.to(at::kDouble).requires_grad_(true);
    const at::Tensor c = edit::models::matmul(a32, b32);
    const at::Tensor c64 = at::matmul(a64, b64);
    expect_close(c, c64, p.what + ": c");
    const at::Tensor dc = at::randn(c.sizes());
    c.backward(dc);
    c64.backward(dc.to(at::kDouble));
    expect_close(a32.grad(), a64.grad(), p.what + ": da");
    expect_close(b32.grad(), b64.grad(), p.what + ": db");
  }
  // Broadcasting leading dimensions is not taken: at::matmul does it.
  const at::Tensor a = at::randn({2, 3, 4}), b = at::randn({4, 5});
  EXPECT_TRUE(at::equal(edit::models::matmul(a, b), at::matmul(a, b)));
}

// Causal attention with the scale and mask in the scores' sgemm, on (B, H, T, d) views as the
// model makes them, against the reference formula in double: values and the gradients of q, k, v.
TEST(CausalAttention, MatchesTheReferenceInDoublePrecision) {
  at::manual_seed(7);
  for (const std::int64_t T : {1, 5, 33}) {
    const std::int64_t B = 2, H = 3, d = 8;
    const at::Tensor qkv = at::randn({B, T, 3 * H * d});
    const auto parts = qkv.chunk(3, -1);
    const auto heads = [&](const at::Tensor& t) { return t.reshape({B, T, H, d}).transpose(1, 2); };
    std::vector<at::Tensor> ours, reference;
    for (const auto& part : parts) {
      ours.push_back(heads(part).detach().requires_grad_(true));
      reference.push_back(heads(part).to(at::kDouble).detach().requires_grad_(true));
    }
    const at::Tensor y = edit::models::causal_attention(ours[0], ours[1], ours[2]);
    const at::Tensor y64 = edit::compat::causal_attention_reference(reference[0], reference[1], reference[2]);
    const std::string what = "T " + std::to_string(T);
    expect_close(y, y64, what + ": y");
    const at::Tensor dy = at::randn(y.sizes());
    y.backward(dy);
    y64.backward(dy.to(at::kDouble));
    expect_close(ours[0].grad(), reference[0].grad(), what + ": dq");
    expect_close(ours[1].grad(), reference[1].grad(), what + ": dk");
    expect_close(ours[2].grad(), reference[2].grad(), what + ": dv");
  }
}

TEST(Linear, OtherDtypesAreAtLinearItself) {
  at::manual_seed(4);
  const at::Tensor x = at::randn({6, 9}, at::kDouble);
  const at::Tensor w = at::randn({4, 9}, at::kDouble);
  const at::Tensor b = at::randn({4}, at::kDouble);
  EXPECT_TRUE(at::equal(edit::models::linear(x, w, b), at::linear(x, w, b)));
  EXPECT_TRUE(at::equal(edit::models::linear(x.to(at::kBFloat16), w.to(at::kBFloat16)),
                        at::linear(x.to(at::kBFloat16), w.to(at::kBFloat16))));
}

TEST(Linear, BackendIsOneDnnWhereBuiltWithIt) {
  const char* forced = std::getenv("EDIT_CPU_GEMM");
  const bool aten = forced != nullptr && *forced != '\0';  // any value but "aten" (any case) is refused
  EXPECT_STREQ(edit::models::cpu_gemm_backend(), EDIT_HAS_ONEDNN && !aten ? "onednn" : "aten");
}

}  // namespace
