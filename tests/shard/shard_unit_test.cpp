// Single-process pieces of the shard layer: storage release/refill under autograd, one AdamW step
// in closed form, the LR schedule, wrap-time errors, and the S = 1 gradient path.
#include <gtest/gtest.h>
#include <torch/csrc/autograd/function.h>
#include <torch/nn/modules/linear.h>

#include <cmath>

#include "edit/core/check.h"
#include "edit/core/torch_compat.h"
#include "edit/shard/flat_adamw.h"
#include "edit/shard/lr_schedule.h"
#include "edit/shard/sharded_model.h"
#include "loopback_communicator.h"
#include "tiny_transformer.h"

namespace {

using edit::shard::ShardedModel;
using edit::testing_support::LoopbackCommunicator;

TEST(Storage, ReleasedAndRefilledStorageKeepsAutogradExact) {
  // w is a view into a flat buffer, as a sharded parameter is; backward runs after the buffer's
  // memory was released and refilled, through tensors autograd saved in between.
  // float64, so the bound below is about autograd, not about which GEMM kernel rounded how.
  at::Tensor flat = at::randn({12}, at::kDouble);
  at::Tensor w = flat.narrow(0, 2, 6).view({2, 3}).detach().requires_grad_(true);
  const at::Tensor x = at::randn({3, 4}, at::kDouble);
  at::Tensor y = at::matmul(w, x);
  at::Tensor loss = (y * y).sum();
  const at::Tensor saved_values = flat.clone();
  edit::compat::release_storage(flat);
  EXPECT_EQ(edit::compat::storage_nbytes(flat), 0u);
  edit::compat::reallocate_storage(flat, 12 * sizeof(double));
  flat.copy_(saved_values);
  loss.backward();
  // Reference: d/dw sum((w x)^2) = 2 (w x) x^T with the original values.
  const at::Tensor w_ref = saved_values.narrow(0, 2, 6).view({2, 3});
  EXPECT_TRUE(at::allclose(w.grad(), 2 * at::matmul(at::matmul(w_ref, x), x.t()), 1e-12, 1e-14));
}

struct OneLinear : torch::nn::Module {
  OneLinear() { layer = register_module("layer", edit::shard::Unit(torch::nn::Linear(1, 1))); }
  edit::shard::Unit layer{nullptr};
};

TEST(FlatAdamW, OneStepInClosedForm) {
  auto model = std::make_shared<OneLinear>();
  ShardedModel sharded(model, std::make_shared<LoopbackCommunicator>());
  edit::shard::FlatUnit& unit = sharded.unit(0);
  ASSERT_EQ(unit.numel(), 2);  // weight then bias
  unit.shard().fill_(1.0);
  unit.grad_shard().fill_(0.5);
  edit::shard::FlatAdamW optimizer(sharded, {0.1, 0.9, 0.95, 1e-8, 0.1});
  optimizer.step();
  // m = 0.05, v = 0.0125; step_size = 0.1 / (1 - 0.9) = 1; denom = sqrt(0.0125) / sqrt(0.05) + 1e-8 = 0.5
  // weight (decays): 1 * (1 - 0.1 * 0.1) - 1 * 0.05 / 0.5 = 0.89; bias (no decay): 1 - 0.1 = 0.9.
  EXPECT_NEAR(unit.shard()[0].item<float>(), 0.89f, 1e-6);
  EXPECT_NEAR(unit.shard()[1].item<float>(), 0.9f, 1e-6);
  // The module's parameters are views of the shard when S = 1: they moved too.
  EXPECT_NEAR(model->layer->inner().ptr()->parameters()[0].item<float>(), 0.89f, 1e-6);
}

TEST(FlatAdamW, FrozenElementsKeepTheirValuesAndMoments) {
  auto model = std::make_shared<OneLinear>();
  model->layer->inner().ptr()->named_parameters()["weight"].set_requires_grad(false);
  ShardedModel sharded(model, std::make_shared<LoopbackCommunicator>());
  edit::shard::FlatUnit& unit = sharded.unit(0);
  unit.shard().fill_(1.0);
  // A gradient and moments for the frozen weight too (left by a strategy, or by a checkpoint taken
  // before it was frozen): the optimizers must not read them.
  unit.grad_shard().fill_(0.5);
  edit::shard::FlatAdamW adamw(sharded, {0.1, 0.9, 0.95, 1e-8, 0.1});
  adamw.exp_avg(0).fill_(0.25);
  adamw.exp_avg_sq(0).fill_(0.5);
  adamw.step();
  EXPECT_EQ(unit.shard()[0].item<float>(), 1.0f) << "frozen weight updated or decayed";
  EXPECT_EQ(adamw.exp_avg(0)[0].item<float>(), 0.25f);
  EXPECT_EQ(adamw.exp_avg_sq(0)[0].item<float>(), 0.5f);
  // The bias trains: m = 0.275, v = 0.4875, step_size = 0.1 / (1 - 0.9) = 1, no decay.
  EXPECT_NEAR(unit.shard()[1].item<float>(), 1.0 - 0.275 / (std::sqrt(0.4875 / 0.05) + 1e-8), 1e-6);
  const float bias = unit.shard()[1].item<float>();
  edit::shard::FlatSgd sgd(sharded, 0.1);
  sgd.step();
  EXPECT_EQ(unit.shard()[0].item<float>(), 1.0f) << "frozen weight moved by SGD";
  EXPECT_NEAR(unit.shard()[1].item<float>(), bias - 0.05f, 1e-6);
}

// The one-pass CPU update against the ATen ops of the unfused path (AdamWOptions::fused = false),
// on a model with decaying and non-decaying runs in every unit and a frozen tensor, over steps
// whose gradients change sign and scale (so m and v move both ways).
TEST(FlatAdamW, OnePassCpuUpdateMatchesTheUnfusedOps) {
  const auto frozen_of = [](torch::nn::Module& module) {
    for (const auto& item : module.named_parameters()) {
      if (item.key().find("norm1.bias") != std::string::npos) return item.value();
    }
    ADD_FAILURE() << "no norm1.bias in the tiny transformer";
    return at::Tensor();
  };
  const auto make = [&] {
    at::manual_seed(3);
    auto module = std::make_shared<edit::testing_support::TinyTransformer>(edit::testing_support::TinyConfig{});
    frozen_of(*module).set_requires_grad(false);
    return module;
  };
  auto module_a = make();
  auto module_b = make();
  ShardedModel a(module_a, std::make_shared<LoopbackCommunicator>());
  ShardedModel b(module_b, std::make_shared<LoopbackCommunicator>());
  edit::shard::AdamWOptions options{3e-3, 0.9, 0.95, 1e-8, 0.1};
  edit::shard::FlatAdamW one_pass(a, options);
  options.fused = false;
  edit::shard::FlatAdamW unfused(b, options);
  std::vector<at::Tensor> initial;
  for (int u = 0; u < a.num_units(); ++u) initial.push_back(a.unit(u).shard().clone());
  const at::Tensor frozen_initial = frozen_of(*module_a).clone();
  for (int step = 0; step < 6; ++step) {
    for (int u = 0; u < a.num_units(); ++u) {
      const at::Tensor grad = at::randn_like(a.unit(u).grad_shard()) * std::pow(10.0, step % 3 - 1);
      a.unit(u).grad_shard().copy_(grad);
      b.unit(u).grad_shard().copy_(grad);
    }
    one_pass.set_lr(3e-3 * (step + 1));
    unfused.set_lr(3e-3 * (step + 1));
    one_pass.step();
    unfused.step();
  }
  EXPECT_TRUE(at::equal(frozen_of(*module_a), frozen_initial));
  EXPECT_TRUE(at::equal(frozen_of(*module_b), frozen_initial));
  for (int u = 0; u < a.num_units(); ++u) {
    SCOPED_TRACE("unit " + std::to_string(u));
    // Rounded in another order at most (ATen's vector kernels may fuse a multiply-add): within a
    // few float ulps of the tensor's scale (a moment that cancels to near zero keeps the absolute
    // error of its terms).
    const auto expect_close = [](const at::Tensor& got, const at::Tensor& want, const char* what) {
      const double scale = want.abs().max().item<double>();
      EXPECT_LE((got - want).abs().max().item<double>(), 1e-6 * scale) << what;
    };
    expect_close(a.unit(u).shard(), b.unit(u).shard(), "weights");
    expect_close(one_pass.exp_avg(u), unfused.exp_avg(u), "exp_avg");
    expect_close(one_pass.exp_avg_sq(u), unfused.exp_avg_sq(u), "exp_avg_sq");
    EXPECT_GT((a.unit(u).shard() - initial[static_cast<size_t>(u)]).abs().max().item<float>(), 1e-3) << "nothing moved";
  }
}

TEST(LrSchedule, WarmupThenCosineToTheFloor) {
  edit::shard::WarmupCosine schedule{1.0, 10, 110, 0.1};
  schedule.validate();
  EXPECT_DOUBLE_EQ(schedule.at(0), 0.1);
  EXPECT_DOUBLE_EQ(schedule.at(9), 1.0);
  EXPECT_DOUBLE_EQ(schedule.at(10), 1.0);
  EXPECT_NEAR(schedule.at(60), 0.55, 1e-12);  // half-way down the cosine
  EXPECT_DOUBLE_EQ(schedule.at(110), 0.1);
  EXPECT_DOUBLE_EQ(schedule.at(500), 0.1);
  EXPECT_THROW((edit::shard::WarmupCosine{1.0, 20, 10, 0.0}.validate()), edit::Error);
  EXPECT_THROW((edit::shard::WarmupCosine{1.0, 0, 10, 2.0}.validate()), edit::Error);
}

struct WithStrayParameter : torch::nn::Module {
  WithStrayParameter() {
    block = register_module("block", edit::shard::Unit(torch::nn::Linear(2, 2)));
    stray = register_module("stray", torch::nn::Linear(2, 1));
  }
  edit::shard::Unit block{nullptr};
  torch::nn::Linear stray{nullptr};
};

struct Nested : torch::nn::Module {
  Nested() { outer = register_module("outer", edit::shard::Unit(OuterBlock())); }
  struct OuterBlockImpl : torch::nn::Module {
    OuterBlockImpl() { inner = register_module("inner_unit", edit::shard::Unit(torch::nn::Linear(2, 2))); }
    at::Tensor forward(const at::Tensor& x) { return inner->forward(x); }
    edit::shard::Unit inner{nullptr};
  };
  TORCH_MODULE(OuterBlock);
  edit::shard::Unit outer{nullptr};
};

std::string wrap_error(std::shared_ptr<torch::nn::Module> model) {
  try {
    ShardedModel sharded(std::move(model), std::make_shared<LoopbackCommunicator>());
  } catch (const edit::Error& e) {
    return e.what();
  }
  return "<no error>";
}

TEST(ShardedWrap, ParametersOutsideUnitsAreNamed) {
  const std::string what = wrap_error(std::make_shared<WithStrayParameter>());
  EXPECT_NE(what.find("parameters outside every Unit"), std::string::npos) << what;
  EXPECT_NE(what.find("stray.weight"), std::string::npos) << what;
  EXPECT_NE(what.find("stray.bias"), std::string::npos) << what;
}

TEST(ShardedWrap, NestedUnitsAndUnitlessModelsAreRejected) {
  EXPECT_NE(wrap_error(std::make_shared<Nested>()).find("nested"), std::string::npos);
  EXPECT_NE(wrap_error(std::make_shared<torch::nn::Module>()).find("has no edit::shard::Unit"), std::string::npos);
}

TEST(ShardedWrap, SingleRankGradientsLandInTheFlatShardDirectly) {
  // float64: the two runs do the same arithmetic on the same values, but the sharded model's
  // parameters are views into one flat buffer, so a GEMM may take another (e.g. unaligned) kernel
  // path and round a sum differently. In float64 that is a few ulps (~1e-16 relative): 1e-12
  // holds on any CPU and still catches a gradient landing at the wrong offset.
  edit::testing_support::TinyConfig config;
  at::manual_seed(3);
  auto model = std::make_shared<edit::testing_support::TinyTransformer>(config);
  model->to(at::kDouble);
  at::manual_seed(3);
  auto reference = std::make_shared<edit::testing_support::TinyTransformer>(config);
  reference->to(at::kDouble);
  ShardedModel sharded(model, std::make_shared<LoopbackCommunicator>());
  auto [x, y] = edit::testing_support::tiny_batch(config, 0, 0, 3);
  sharded.backward(model->loss(x, y));
  reference->loss(x, y).backward();
  std::vector<at::Tensor> expected;
  for (const auto& p : reference->parameters()) expected.push_back(p.grad().reshape({-1}));
  std::vector<at::Tensor> actual;
  for (int u = 0; u < sharded.num_units(); ++u) actual.push_back(sharded.unit(u).grad_shard());
  EXPECT_EQ(at::cat(actual).scalar_type(), at::kDouble);
  EXPECT_TRUE(at::allclose(at::cat(actual), at::cat(expected), 1e-12, 1e-15));
  EXPECT_EQ(sharded.memory().peak_full_param_bytes, 0);
}

// Activation checkpointing recomputes the same arithmetic on the same values (one rank: the same
// flat buffers, the same kernels), so the gradients and the input's gradient are bit for bit those
// of the run that kept its activations; and the inner units' outputs come from the recomputing node.
TEST(ShardedWrap, ActivationCheckpointingGivesTheSameGradientsBitForBit) {
  edit::testing_support::TinyConfig config;
  config.layers = 3;
  std::vector<at::Tensor> grads[2];
  for (const bool recompute : {false, true}) {
    at::manual_seed(5);
    auto model = std::make_shared<edit::testing_support::TinyTransformer>(config);
    edit::shard::ShardOptions options;
    options.activation_checkpointing = recompute;
    ShardedModel sharded(model, std::make_shared<LoopbackCommunicator>(), options);
    for (int micro = 0; micro < 2; ++micro) {  // two backwards accumulate
      auto [x, y] = edit::testing_support::tiny_batch(config, 0, micro, 3);
      sharded.backward(model->loss(x, y));
    }
    for (int u = 0; u < sharded.num_units(); ++u) grads[recompute].push_back(sharded.unit(u).grad_shard().clone());
    EXPECT_FALSE(model->embed->recomputes());
    EXPECT_FALSE(model->head->recomputes());
    for (const auto& block : model->blocks) EXPECT_EQ(block->recomputes(), recompute);
    // A block's output: from the node that keeps only its input, or from the block's own last op.
    auto [x, y] = edit::testing_support::tiny_batch(config, 1, 0, 3);
    const at::Tensor out = model->blocks[0]->forward(model->embed->forward(x));
    EXPECT_EQ(out.grad_fn()->name().find("RecomputedForward") != std::string::npos, recompute) << out.grad_fn()->name();
  }
  ASSERT_EQ(grads[0].size(), grads[1].size());
  for (size_t u = 0; u < grads[0].size(); ++u) {
    EXPECT_GT(grads[0][u].abs().sum().item<double>(), 0.0) << "unit " << u;
    EXPECT_TRUE(at::equal(grads[0][u], grads[1][u])) << "unit " << u;
  }
}

}  // namespace
