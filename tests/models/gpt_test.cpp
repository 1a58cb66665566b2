// GPT models: attention against a loop-by-loop reference, causality, RoPE's relative-position
// property, parameter counts against the closed form, learning, and configuration errors.
#include <gtest/gtest.h>

#include <cmath>
#include <set>

#include "edit/core/check.h"
#include "edit/core/torch_compat.h"
#include "edit/models/gpt.h"
#include "edit/shard/flat_adamw.h"
#include "edit/shard/sharded_model.h"
#include "loopback_communicator.h"

namespace {

using edit::models::Gpt;
using edit::models::GptConfig;
using edit::models::GptStyle;
using edit::models::apply_rope;

GptConfig tiny(GptStyle style) {
  GptConfig c = GptConfig::preset("tiny");
  c.style = style;
  return c;
}

// Attention written position by position in float64: out[t] = sum_{s <= t} softmax_s(q_t.k_s / sqrt d) v_s.
at::Tensor attention_by_loops(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
  const at::Tensor q64 = q.to(at::kDouble), k64 = k.to(at::kDouble), v64 = v.to(at::kDouble);
  at::Tensor out = at::zeros_like(q64);
  const auto T = q.size(2);
  for (int64_t t = 0; t < T; ++t) {
    const at::Tensor scores = (q64.narrow(2, t, 1) * k64.narrow(2, 0, t + 1)).sum(-1) / std::sqrt(double(q.size(3)));
    const at::Tensor w = at::softmax(scores, -1).unsqueeze(-1);  // (B, H, t+1, 1)
    out.narrow(2, t, 1).copy_((w * v64.narrow(2, 0, t + 1)).sum(2, true));
  }
  return out;
}

TEST(Attention, CausalAttentionMatchesThePositionByPositionReference) {
  // In float64 on both sides: what is compared is the formula, not how a float32 GEMM kernel
  // rounds. Sums of 8 products of O(1) values are exact to ~1e-15, so 1e-12 holds on any CPU.
  at::manual_seed(1);
  const auto options = at::TensorOptions().dtype(at::kDouble);
  const at::Tensor q = at::randn({2, 3, 7, 8}, options), k = at::randn({2, 3, 7, 8}, options),
                   v = at::randn({2, 3, 7, 8}, options);
  const at::Tensor expected = attention_by_loops(q, k, v);
  EXPECT_TRUE(at::allclose(edit::compat::causal_attention(q, k, v), expected, 1e-12, 1e-12))
      << (edit::compat::has_fused_attention() ? "fused" : "fallback") << " path";
  EXPECT_TRUE(at::allclose(edit::compat::causal_attention_reference(q, k, v), expected, 1e-12, 1e-12));
}

class GptStyles : public testing::TestWithParam<GptStyle> {};

TEST_P(GptStyles, ParameterCountMatchesTheClosedForm) {
  for (const char* preset : {"tiny", "small"}) {
    for (bool tie : {false, true}) {
      GptConfig c = GptConfig::preset(preset);
      c.style = GetParam();
      c.tie_embeddings = tie;
      Gpt model(c);
      int64_t counted = 0;
      std::set<const void*> seen;  // a tied weight is registered twice but counts once
      for (const auto& p : model->parameters()) {
        if (seen.insert(p.unsafeGetTensorImpl()).second) counted += p.numel();
      }
      EXPECT_EQ(counted, c.num_parameters()) << preset << (tie ? " tied" : "");
    }
  }
}

TEST(GptTied, HeadUsesTheTokenEmbeddingAndItsGradientHasBothContributions) {
  GptConfig c = tiny(GptStyle::kGpt2);
  c.tie_embeddings = true;
  at::manual_seed(5);
  Gpt model(c);
  const at::Tensor embedding = model->embed->inner().ptr()->named_parameters()["tokens.weight"];
  const at::Tensor head = model->head->inner().ptr()->named_parameters()["weight"];
  EXPECT_TRUE(embedding.is_same(head));
  const at::Tensor data = at::randint(0, 256, {2, 9}, at::kLong);
  model->loss(data.narrow(1, 0, 8), data.narrow(1, 1, 8)).backward();
  // Every row gets a gradient from the head (softmax over the whole vocabulary), so rows of tokens
  // absent from the input are non-zero too.
  EXPECT_GT(embedding.grad().abs().sum(1).min().item<float>(), 0.f);
}

TEST_P(GptStyles, FutureTokensDoNotChangePastLogits) {
  at::manual_seed(2);
  Gpt model(tiny(GetParam()));
  at::Tensor tokens = at::randint(0, 256, {2, 16}, at::kLong);
  const at::Tensor before = model->forward(tokens);
  at::Tensor changed = tokens.clone();
  changed.narrow(1, 10, 6).random_(0, 256);
  const at::Tensor after = model->forward(changed);
  EXPECT_TRUE(at::allclose(before.narrow(1, 0, 10), after.narrow(1, 0, 10), 1e-5, 1e-6));
  EXPECT_FALSE(at::allclose(before.narrow(1, 10, 6), after.narrow(1, 10, 6)));
}

TEST_P(GptStyles, LearnsARepeatedBatchWhenSharded) {
  at::manual_seed(3);
  auto model = std::make_shared<edit::models::GptImpl>(tiny(GetParam()));
  edit::shard::ShardedModel sharded(model, std::make_shared<edit::testing_support::LoopbackCommunicator>());
  EXPECT_EQ(sharded.num_units(), 2 + model->config().layers);
  EXPECT_EQ(sharded.num_units(), model->config().num_units()) << "the count the strategies' checks use";
  edit::shard::FlatAdamW optimizer(sharded, {3e-3});
  const at::Tensor data = at::randint(0, 256, {4, 33}, at::kLong);
  const at::Tensor x = data.narrow(1, 0, 32), y = data.narrow(1, 1, 32);
  double first = 0, last = 0;
  for (int step = 0; step < 40; ++step) {
    sharded.zero_grad();
    at::Tensor loss = model->loss(x, y);
    sharded.backward(loss);
    optimizer.step();
    (step == 0 ? first : last) = loss.item<double>();
  }
  EXPECT_NEAR(first, std::log(256.0), 0.3) << "an untrained model should be near uniform";
  EXPECT_LT(last, 0.5 * first);
}

INSTANTIATE_TEST_SUITE_P(Styles, GptStyles, testing::Values(GptStyle::kGpt2, GptStyle::kLlama),
                         [](const testing::TestParamInfo<GptStyle>& info) { return edit::models::to_string(info.param); });

TEST(Rope, ScoresDependOnlyOnTheRelativePosition) {
  // q at position m and k at position n: <rope(q)_m, rope(k)_n> is the same for (m, n) and
  // (m + 5, n + 5), and differs from (m, n + 1).
  at::manual_seed(4);
  const auto [cos, sin] = edit::models::rope_tables(32, 16, 10000.0);
  const at::Tensor q = at::randn({16}), k = at::randn({16});
  // Place q and k at every position of a (1, 1, 32, 16) sequence, then rotate.
  const at::Tensor qs = apply_rope(q.expand({1, 1, 32, 16}).contiguous(), cos, sin)[0][0];
  const at::Tensor ks = apply_rope(k.expand({1, 1, 32, 16}).contiguous(), cos, sin)[0][0];
  const auto score = [&](int m, int n) { return (qs[m] * ks[n]).sum().item<double>(); };
  EXPECT_NEAR(score(3, 1), score(8, 6), 1e-4);
  EXPECT_NEAR(score(20, 20), score(0, 0), 1e-4);
  EXPECT_NEAR(score(20, 20), (q * k).sum().item<double>(), 1e-4);  // no rotation between equal positions
  EXPECT_GT(std::abs(score(3, 1) - score(3, 2)), 1e-3);
}

// The convention, written out element by element (rotate-half, as Llama and Hugging Face): the pair
// (i, i + d/2) at position t turns by t theta^(-2i/d). Interleaved pairs (2i, 2i + 1) would fail.
TEST(Rope, RotatesHalvesByPositionTimesInverseFrequencyByHand) {
  at::manual_seed(5);
  const std::int64_t T = 6, d = 8;
  const double theta = 500.0;
  const auto [cos, sin] = edit::models::rope_tables(T, d, theta);
  const at::Tensor x = at::randn({1, 1, T, d});
  const at::Tensor y = apply_rope(x, cos, sin);
  for (std::int64_t t = 0; t < T; ++t) {
    for (std::int64_t i = 0; i < d / 2; ++i) {
      const double angle = static_cast<double>(t) * std::pow(theta, -2.0 * static_cast<double>(i) / d);
      const double a = x[0][0][t][i].item<double>(), b = x[0][0][t][i + d / 2].item<double>();
      const double c = std::cos(angle), s = std::sin(angle);
      EXPECT_NEAR(y[0][0][t][i].item<double>(), a * c - b * s, 1e-5) << t << ", " << i;
      EXPECT_NEAR(y[0][0][t][i + d / 2].item<double>(), a * s + b * c, 1e-5) << t << ", " << i;
    }
  }
}

// y = x / sqrt(mean(x^2) + eps) * w, element by element in double: eps inside the root.
TEST(RmsNorm, IsTheFormulaByHand) {
  at::manual_seed(7);
  const std::int64_t rows = 3, n = 5;
  const double eps = 0.25;  // large, so eps outside the root (or left out) would show
  const at::Tensor x = at::randn({rows, n}) * 0.3, w = at::randn({n});
  const at::Tensor y = edit::models::rms_norm(x, w, eps);
  for (std::int64_t r = 0; r < rows; ++r) {
    double mean_square = 0.0;
    for (std::int64_t j = 0; j < n; ++j) mean_square += std::pow(x[r][j].item<double>(), 2) / n;
    for (std::int64_t j = 0; j < n; ++j) {
      const double want = x[r][j].item<double>() / std::sqrt(mean_square + eps) * w[j].item<double>();
      EXPECT_NEAR(y[r][j].item<double>(), want, 1e-6 * (1.0 + std::abs(want))) << r << ", " << j;
    }
  }
}

// The fused fp32 CPU rotation against the formula in double (the ATen path), values and gradient,
// on the (B, H, T, d) strided view the model hands it, with T shorter than the tables.
TEST(Rope, CpuPathMatchesTheFormulaInDouble) {
  at::manual_seed(6);
  const std::int64_t B = 2, T = 5, H = 3, d = 8;
  const auto [cos, sin] = edit::models::rope_tables(12, d, 10000.0);
  const at::Tensor base = at::randn({B, T, 3 * H * d});
  const auto heads = [&](const at::Tensor& t) { return t.narrow(-1, H * d, H * d).reshape({B, T, H, d}).transpose(1, 2); };
  const at::Tensor x = heads(base).detach().requires_grad_(true);
  const at::Tensor x64 = heads(base.to(at::kDouble)).detach().requires_grad_(true);
  ASSERT_FALSE(x.is_contiguous());
  const at::Tensor y = apply_rope(x, cos, sin);
  const at::Tensor y64 = apply_rope(x64, cos.to(at::kDouble), sin.to(at::kDouble));
  EXPECT_LT((y.to(at::kDouble) - y64).abs().max().item<double>(), 1e-6);
  const at::Tensor dy = at::randn(y.sizes());
  y.backward(dy);
  y64.backward(dy.to(at::kDouble));
  EXPECT_LT((x.grad().to(at::kDouble) - x64.grad()).abs().max().item<double>(), 1e-6);
}

// The fused fp32 CPU RMSNorm against the formula in double (the ATen path): values and the
// gradients of x and the weight, on a strided x with rows far from unit scale.
TEST(RmsNorm, CpuPathMatchesTheFormulaInDouble) {
  at::manual_seed(8);
  const at::Tensor base = at::randn({24, 3, 16}) * at::linspace(0.01, 30.0, 24).reshape({24, 1, 1});
  const at::Tensor w = at::randn({16});
  const at::Tensor x = base.transpose(0, 1).detach().requires_grad_(true);  // (3, 24, 16), strided
  const at::Tensor x64 = base.transpose(0, 1).to(at::kDouble).detach().requires_grad_(true);
  const at::Tensor w32 = w.clone().requires_grad_(true), w64 = w.to(at::kDouble).requires_grad_(true);
  const at::Tensor y = edit::models::rms_norm(x, w32, 1e-5);
  const at::Tensor y64 = edit::models::rms_norm(x64, w64, 1e-5);
  const auto relative = [](const at::Tensor& got, const at::Tensor& want) {
    return ((got.to(at::kDouble) - want).abs().max() / want.abs().max()).item<double>();
  };
  EXPECT_LT(relative(y, y64), 1e-6);
  const at::Tensor dy = at::randn(y.sizes());
  y.backward(dy);
  y64.backward(dy.to(at::kDouble));
  EXPECT_LT(relative(x.grad(), x64.grad()), 1e-5);
  EXPECT_LT(relative(w32.grad(), w64.grad()), 1e-6);
}

TEST(GptConfig, PresetsAndErrorsNameTheFix) {
  EXPECT_EQ(GptConfig::preset("124m").dim, 768);
  GptConfig c = GptConfig::preset("small");
  EXPECT_EQ(c.hidden(), 1024);
  c.style = GptStyle::kLlama;
  EXPECT_EQ(c.hidden(), 704);  // 8/3 x 256 = 682.7, rounded up to a multiple of 64
  c.heads = 7;
  EXPECT_THROW(c.validate(), edit::Error);
  EXPECT_THROW(GptConfig::preset("huge"), edit::Error);
  GptConfig llama = GptConfig::preset("small");
  llama.style = GptStyle::kLlama;
  llama.rope_theta = 500000.0;
  const GptConfig back = GptConfig::from_json(llama.to_json());
  EXPECT_EQ(back.style, GptStyle::kLlama);
  EXPECT_EQ(back.dim, 256);
  EXPECT_EQ(back.hidden(), llama.hidden());
  EXPECT_DOUBLE_EQ(back.rope_theta, 500000.0);
  EXPECT_THROW(GptConfig::from_json("{\"style\": \"gpt2\"}"), edit::Error);
  EXPECT_THROW(edit::models::parse_style("bert"), edit::Error);
}

// Other heads split the same weight matrices differently: the shapes match, the meaning does not.
TEST(GptConfig, ResumeDifferencesNameWhatChangesTheWeightsMeaning) {
  const GptConfig saved = GptConfig::preset("tiny");
  EXPECT_EQ(saved.resume_differences(saved), "");
  GptConfig other_heads = saved;
  other_heads.heads = 2;
  EXPECT_EQ(other_heads.resume_differences(saved), "heads 4 -> 2");
  GptConfig several = saved;
  several.layers = 3;
  several.tie_embeddings = !saved.tie_embeddings;
  const std::string tie = saved.tie_embeddings ? "true -> false" : "false -> true";
  EXPECT_EQ(several.resume_differences(saved), "layers 2 -> 3, tie_embeddings " + tie);
  // GPT-2 trains a table of seq_len positions; Llama computes RoPE for any length.
  GptConfig longer = saved;
  longer.seq_len = 2 * saved.seq_len;
  EXPECT_EQ(longer.resume_differences(saved), "seq_len 64 -> 128");
  GptConfig llama = saved;
  llama.style = GptStyle::kLlama;
  GptConfig llama_longer = llama;
  llama_longer.seq_len = 2 * saved.seq_len;
  EXPECT_EQ(llama_longer.resume_differences(llama), "");
  EXPECT_EQ(llama.resume_differences(saved), "style gpt2 -> llama, mlp_hidden 256 -> 192");
}

}  // namespace
