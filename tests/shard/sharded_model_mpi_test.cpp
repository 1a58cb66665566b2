// ShardedModel against the unsharded model (same seed, same data) on 1, 2 and 4 ranks: the shard
// group is the whole world, every rank trains on its own micro-batch, and the reference model on
// one rank trains on all of them at once with torch::optim::AdamW and clip_grad_norm_.
//
// The equivalence tests run in float64. Sharding changes the order of sums (a gradient is summed
// over S micro-batches by the reduce-scatter instead of inside one GEMM), and the GEMM kernel
// OpenBLAS picks for the CPU (OPENBLAS_CORETYPE) changes it again, so the two runs differ by
// rounding, which Adam's m / sqrt(v) turns into parameter differences of about lr times the
// gradient's relative error: large where a gradient nearly cancels. In float32 that reached 2e-4
// after 6 steps on one CPU, as large as a real bug's footprint. float64's unit roundoff is 2^-29
// times float32's: measured at most 3e-13 on 1, 2 and 4 ranks with the SkylakeX, Haswell, Zen and
// Sandybridge kernels, so a bound of 1e-9 passes on any CPU with room to spare, while a missed
// element, a stale gather or a mis-scaled gradient (>= 1e-4) still fails it.
#include <gtest/gtest.h>
#include <c10/core/GradMode.h>
#include <torch/types.h>  // clip_grad.h relies on it
#include <torch/nn/modules/linear.h>
#include <torch/nn/utils/clip_grad.h>
#include <torch/optim/adamw.h>
#include <torch/optim/sgd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <numeric>
#include <set>
#include <string>
#include <tuple>

#include "edit/models/gpt.h"
#include "edit/shard/flat_adamw.h"
#include "edit/shard/sharded_model.h"
#include "mpi_test_env.h"
#include "tiny_transformer.h"

namespace {

using edit::shard::FlatAdamW;
using edit::shard::ShardedModel;
using edit::testing_support::tiny_batch;
using edit::testing_support::TinyConfig;
using edit::testing_support::TinyTransformer;
using edit::testing_support::world;

constexpr double kLr = 1e-2;
constexpr double kClip = 1.0;
constexpr int kBatch = 2;
// float64 bounds (see the top of the file): losses and norms relative to their size, parameters
// absolute (they are O(1)).
constexpr double kLossBound = 1e-11;
constexpr double kParamBound = 1e-9;

// The same model twice (same seed), in float64: one to shard, one as the reference.
template <typename Model, typename Config>
std::pair<std::shared_ptr<Model>, std::shared_ptr<Model>> model_and_reference(const Config& config) {
  std::pair<std::shared_ptr<Model>, std::shared_ptr<Model>> out;
  for (auto* slot : {&out.first, &out.second}) {
    at::manual_seed(0);
    *slot = std::make_shared<Model>(config);
    (*slot)->to(at::kDouble);
  }
  return out;
}

// Largest |sharded - reference| over every parameter, matched by name (the same on every rank:
// each gathers the full parameters).
double largest_difference(ShardedModel& sharded, torch::nn::Module& reference) {
  double worst = 0.0;
  auto ref_params = reference.named_parameters();
  for (const auto& [name, full] : sharded.gather_full_parameters()) {
    const at::Tensor* ref = ref_params.find(name);
    EXPECT_NE(ref, nullptr) << name;
    if (ref == nullptr) continue;
    EXPECT_EQ(full.scalar_type(), at::kDouble) << name;
    worst = std::max(worst, (full - *ref).abs().max().item<double>());
  }
  return worst;
}

void report(const char* test, int S, double loss_error, double param_error) {
  if (world()->rank() == 0) {
    std::printf("[equivalence] %s S=%d: max loss error %.3g, max parameter error %.3g\n", test, S, loss_error,
                param_error);
  }
}

// One step of the unsharded reference on the batches of every rank of the group together (the
// data the sharded model saw at this step); returns (mean of the ranks' `local_loss`, the
// reference's loss). `batch_of(rank)` gives a rank's (inputs, targets).
template <typename Model, typename Optimizer, typename BatchOf>
std::pair<double, double> reference_step(Model& reference, Optimizer& optimizer, double local_loss, BatchOf batch_of) {
  const auto comm = world();
  const auto losses = comm->all_gather_values({local_loss});
  std::vector<at::Tensor> xs, ys;
  for (int r = 0; r < comm->size(); ++r) {
    auto [x, y] = batch_of(r);
    xs.push_back(x);
    ys.push_back(y);
  }
  optimizer.zero_grad();
  at::Tensor ref_loss = reference.loss(at::cat(xs), at::cat(ys));
  ref_loss.backward();
  optimizer.step();
  return {std::accumulate(losses.begin(), losses.end(), 0.0) / comm->size(), ref_loss.item<double>()};
}

torch::optim::AdamW reference_optimizer(TinyTransformer& model) {
  std::vector<at::Tensor> decay, no_decay;
  for (auto& p : model.parameters()) (p.dim() >= 2 ? decay : no_decay).push_back(p);
  auto options = [](double wd) { return torch::optim::AdamWOptions(kLr).betas({0.9, 0.95}).eps(1e-8).weight_decay(wd); };
  return torch::optim::AdamW({torch::optim::OptimizerParamGroup(decay, std::make_unique<torch::optim::AdamWOptions>(options(0.1))),
                              torch::optim::OptimizerParamGroup(no_decay, std::make_unique<torch::optim::AdamWOptions>(options(0.0)))},
                             options(0.1));
}

// (micro-batches per step, activation checkpointing)
class ShardedEquivalence : public testing::TestWithParam<std::tuple<int, bool>> {};

TEST_P(ShardedEquivalence, TenStepsMatchTheUnshardedModel) {
  const auto comm = world();
  const int S = comm->size();
  const auto [accumulation, recompute] = GetParam();
  TinyConfig config;
  config.layers = 3;
  auto [model, reference] = model_and_reference<TinyTransformer>(config);
  edit::shard::ShardOptions options;
  options.activation_checkpointing = recompute;
  ShardedModel sharded(model, comm, options);
  FlatAdamW optimizer(sharded, {kLr, 0.9, 0.95, 1e-8, 0.1});
  auto ref_optimizer = reference_optimizer(*reference);

  double loss_error = 0.0;
  for (int step = 0; step < 10; ++step) {
    sharded.zero_grad();
    double local_loss = 0.0;
    for (int micro = 0; micro < accumulation; ++micro) {
      auto [x, y] = tiny_batch(config, step, micro * S + comm->rank(), kBatch);
      at::Tensor loss = model->loss(x, y) / accumulation;
      sharded.backward(loss);
      local_loss += loss.item<double>();
    }
    const double norm = sharded.clip_grad_norm(kClip);
    optimizer.step();
    const auto losses = comm->all_gather_values({local_loss});
    const double mean_loss = std::accumulate(losses.begin(), losses.end(), 0.0) / S;

    // The reference sees every rank's micro-batches of this step as one batch.
    std::vector<at::Tensor> xs, ys;
    for (int i = 0; i < accumulation * S; ++i) {
      auto [x, y] = tiny_batch(config, step, i, kBatch);
      xs.push_back(x);
      ys.push_back(y);
    }
    ref_optimizer.zero_grad();
    at::Tensor ref_loss = reference->loss(at::cat(xs), at::cat(ys));
    ref_loss.backward();
    const double ref_norm = torch::nn::utils::clip_grad_norm_(reference->parameters(), kClip);
    ref_optimizer.step();
    loss_error = std::max(loss_error, std::abs(mean_loss - ref_loss.item<double>()));
    EXPECT_NEAR(mean_loss, ref_loss.item<double>(), kLossBound * ref_loss.item<double>())
        << "step " << step << ", S=" << S;
    EXPECT_NEAR(norm, ref_norm, kLossBound * ref_norm) << "step " << step;
  }

  const double worst = largest_difference(sharded, *reference);
  const std::string what = std::string(accumulation == 1 ? "adamw" : "adamw, 2 micro-batches") +
                           (recompute ? ", activation checkpointing" : "");
  report(what.c_str(), S, loss_error, worst);
  EXPECT_LT(worst, kParamBound) << "largest parameter difference after 10 steps, S=" << S;
}

INSTANTIATE_TEST_SUITE_P(Accumulation, ShardedEquivalence, testing::Combine(testing::Values(1, 2), testing::Bool()),
                         [](const testing::TestParamInfo<std::tuple<int, bool>>& info) {
                           return std::to_string(std::get<0>(info.param)) + "_micro" +
                                  (std::get<1>(info.param) ? "_recompute" : "");
                         });

// A weight shared by the first and last unit (tied embeddings): it lives in the embedding unit, the
// head borrows it, and its gradient gets both contributions before the one reduce-scatter.
TEST(ShardedTied, TiedEmbeddingsMatchTheUnshardedModel) {
  const auto comm = world();
  const int S = comm->size();
  auto config = edit::models::GptConfig::preset("tiny");
  config.style = edit::models::GptStyle::kLlama;  // no biases (see tiny_transformer.h on qkv bias)
  config.tie_embeddings = true;
  auto [model, reference] = model_and_reference<edit::models::GptImpl>(config);
  ShardedModel sharded(model, comm);
  FlatAdamW optimizer(sharded, {kLr, 0.9, 0.95, 1e-8, 0.1});
  std::vector<at::Tensor> decay, no_decay;
  std::set<const void*> seen;
  for (auto& p : reference->parameters()) {
    if (seen.insert(p.unsafeGetTensorImpl()).second) (p.dim() >= 2 ? decay : no_decay).push_back(p);
  }
  auto adamw = [](double wd) { return torch::optim::AdamWOptions(kLr).betas({0.9, 0.95}).eps(1e-8).weight_decay(wd); };
  torch::optim::AdamW ref_optimizer(
      {torch::optim::OptimizerParamGroup(decay, std::make_unique<torch::optim::AdamWOptions>(adamw(0.1))),
       torch::optim::OptimizerParamGroup(no_decay, std::make_unique<torch::optim::AdamWOptions>(adamw(0.0)))},
      adamw(0.1));
  const auto batch = [&](int step, int index) {
    at::manual_seed(1000 * step + index);
    const at::Tensor data = at::randint(0, config.vocab_size, {2, 17}, at::kLong);
    return std::make_pair(data.narrow(1, 0, 16), data.narrow(1, 1, 16));
  };
  double loss_error = 0.0;
  for (int step = 0; step < 6; ++step) {
    sharded.zero_grad();
    auto [x, y] = batch(step, comm->rank());
    at::Tensor loss = model->loss(x, y);
    sharded.backward(loss);
    optimizer.step();
    const auto [mean_loss, ref_loss] =
        reference_step(*reference, ref_optimizer, loss.item<double>(), [&](int r) { return batch(step, r); });
    loss_error = std::max(loss_error, std::abs(mean_loss - ref_loss));
    EXPECT_NEAR(mean_loss, ref_loss, kLossBound * ref_loss) << "step " << step;
  }
  EXPECT_EQ(static_cast<int64_t>(sharded.gather_full_parameters().size()), static_cast<int64_t>(seen.size()))
      << "the tied weight is held once";
  const double worst = largest_difference(sharded, *reference);
  report("tied", S, loss_error, worst);
  EXPECT_LT(worst, kParamBound) << "largest parameter difference after 6 steps, S=" << S;
}

// A frozen parameter (requires_grad false) stays bit-identical under FlatAdamW: no update and no
// weight decay (it is a matrix, so it would decay), while every other parameter trains as
// torch::optim::AdamW trains it on the unsharded model with the same parameter frozen (torch
// skips a parameter that has no gradient). The frozen weight's elements straddle shards for S > 1.
TEST(ShardedFrozen, FrozenParameterStaysPutAndTheOthersMatchAdamW) {
  const auto comm = world();
  const int S = comm->size();
  TinyConfig config;
  auto [model, reference] = model_and_reference<TinyTransformer>(config);
  const std::string frozen = "block0.inner.qkv.weight";
  model->named_parameters()[frozen].set_requires_grad(false);
  reference->named_parameters()[frozen].set_requires_grad(false);
  const at::Tensor initial = model->named_parameters()[frozen].detach().clone();
  ShardedModel sharded(model, comm);
  FlatAdamW optimizer(sharded, {kLr, 0.9, 0.95, 1e-8, 0.1});
  auto ref_optimizer = reference_optimizer(*reference);
  double loss_error = 0.0;
  for (int step = 0; step < 6; ++step) {
    sharded.zero_grad();
    auto [x, y] = tiny_batch(config, step, comm->rank(), kBatch);
    at::Tensor loss = model->loss(x, y);
    sharded.backward(loss);
    optimizer.step();
    const auto [mean_loss, ref_loss] = reference_step(*reference, ref_optimizer, loss.item<double>(),
                                                      [&](int r) { return tiny_batch(config, step, r, kBatch); });
    loss_error = std::max(loss_error, std::abs(mean_loss - ref_loss));
  }
  bool found = false;
  for (const auto& [name, full] : sharded.gather_full_parameters()) {
    if (name != frozen) continue;
    found = true;
    EXPECT_TRUE(at::equal(full, initial))
        << "frozen " << name << " moved by up to " << (full - initial).abs().max().item<double>();
  }
  EXPECT_TRUE(found) << frozen;
  const double worst = largest_difference(sharded, *reference);
  report("frozen parameter", S, loss_error, worst);
  EXPECT_LT(loss_error, kLossBound * std::log(double(config.vocab)));
  EXPECT_LT(worst, kParamBound) << "largest parameter difference after 6 steps, S=" << S;
}

// A unit whose output needs no grad (a frozen embedding, with nothing trainable before it) has no
// backward, so nothing may be gathered for one: a gather issued during the backward would keep
// its full buffer alive after the step, and the next forward would take that gather, made before
// the step, for its own: the shard as it was, and no pre_gather for a strategy that rewrites the
// shard there. Trained with SGD against the unsharded model (float64), with the frozen unit's
// shard rewritten between steps, as loading a checkpoint or an outer step would.
TEST(ShardedFrozen, FrozenFirstUnitLeavesNoGatherBehind) {
  const auto comm = world();
  const int S = comm->size();
  TinyConfig config;
  auto [model, reference] = model_and_reference<TinyTransformer>(config);
  for (auto& p : model->embed->parameters()) p.set_requires_grad(false);
  for (auto& p : reference->embed->parameters()) p.set_requires_grad(false);
  edit::shard::ShardOptions options;
  options.trace = true;
  ShardedModel sharded(model, comm, options);
  int embed_pre_gathers = 0;
  sharded.add_hook(edit::shard::HookPoint::kPreGather,
                   [&embed_pre_gathers](int u) { embed_pre_gathers += u == 0; });
  edit::shard::FlatSgd optimizer(sharded, 0.1);
  torch::optim::SGD ref_optimizer(reference->parameters(), torch::optim::SGDOptions(0.1));
  double loss_error = 0.0;
  for (int step = 0; step < 4; ++step) {
    sharded.zero_grad();
    sharded.clear_trace();
    embed_pre_gathers = 0;
    auto [x, y] = tiny_batch(config, step, comm->rank(), kBatch);
    at::Tensor loss = model->loss(x, y);
    EXPECT_EQ(embed_pre_gathers, 1) << "pre_gather of the frozen unit in the forward of step " << step;
    sharded.backward(loss);
    EXPECT_EQ(sharded.memory().full_param_bytes, 0)
        << "full parameters alive after the backward of step " << step;
    const auto& trace = sharded.trace();
    EXPECT_EQ(std::count(trace.begin(), trace.end(), "gather 0"), S > 1 ? 1 : 0)
        << "the frozen unit is gathered for its forward only, step " << step;
    optimizer.step();
    const auto [mean_loss, ref_loss] = reference_step(*reference, ref_optimizer, loss.item<double>(),
                                                      [&](int r) { return tiny_batch(config, step, r, kBatch); });
    loss_error = std::max(loss_error, std::abs(mean_loss - ref_loss));
    EXPECT_NEAR(mean_loss, ref_loss, kLossBound * ref_loss) << "step " << step;
    c10::NoGradGuard no_grad;
    sharded.unit(0).shard().mul_(0.5);
    for (auto& p : reference->embed->parameters()) p.mul_(0.5);
  }
  const double worst = largest_difference(sharded, *reference);
  report("frozen first unit, sgd", S, loss_error, worst);
  EXPECT_LT(worst, kParamBound) << "largest parameter difference after 4 steps, S=" << S;
}

// Two units side by side on one input; the loss uses only the second one's output, so the first
// one's backward never comes although its output required grad and the second one's backward
// prefetched it. Nothing of it may be left after the backward.
struct TwoBranches : torch::nn::Module {
  TwoBranches() {
    unused = register_module("unused", edit::shard::Unit(torch::nn::Linear(4, 4)));
    used = register_module("used", edit::shard::Unit(torch::nn::Linear(4, 4)));
  }
  at::Tensor loss(const at::Tensor& x) {  // (B, 4) -> ()
    unused->forward(x);  // e.g. a probe whose output is only logged
    return used->forward(x).pow(2).sum();
  }
  edit::shard::Unit unused{nullptr}, used{nullptr};
};

TEST(ShardedFrozen, UnitWithoutBackwardLeavesNoGatherBehind) {
  const auto comm = world();
  at::manual_seed(0);
  auto model = std::make_shared<TwoBranches>();
  ShardedModel sharded(model, comm);
  int unused_pre_gathers = 0;
  sharded.add_hook(edit::shard::HookPoint::kPreGather,
                   [&unused_pre_gathers](int u) { unused_pre_gathers += u == 0; });
  for (int step = 0; step < 3; ++step) {
    unused_pre_gathers = 0;
    at::Tensor loss = model->loss(at::ones({2, 4}));
    EXPECT_EQ(unused_pre_gathers, 1) << "step " << step;
    sharded.backward(loss);
    EXPECT_EQ(sharded.memory().full_param_bytes, 0)
        << "full parameters alive after the backward of step " << step;
  }
}

TEST(ShardedMemory, AboutOneUnitPlusOneSthOfTheModel) {
  const auto comm = world();
  const int S = comm->size();
  TinyConfig config;
  config.layers = 6;
  at::manual_seed(0);
  auto model = std::make_shared<TinyTransformer>(config);
  ShardedModel sharded(model, comm);
  std::int64_t largest_unit = 0, padded_total = 0;
  for (int u = 0; u < sharded.num_units(); ++u) {
    largest_unit = std::max(largest_unit, sharded.unit(u).padded_numel() * 4);
    padded_total += sharded.unit(u).padded_numel() * 4;
  }
  comm->reset_stats();
  sharded.reset_peak_memory();
  auto [x, y] = tiny_batch(config, 0, comm->rank(), kBatch);
  sharded.backward(model->loss(x, y));
  const auto memory = sharded.memory();
  // Kept between steps: 1/S of the (padded) parameters and of the gradients.
  EXPECT_EQ(memory.shard_bytes, 2 * padded_total / S);
  EXPECT_EQ(memory.full_param_bytes, 0) << "full buffers left alive after the step";
  EXPECT_EQ(memory.full_grad_bytes, 0);
  if (S == 1) {
    // S = 1 costs nothing extra: no full buffers, no communication at all.
    EXPECT_EQ(memory.peak_full_param_bytes, 0);
    EXPECT_EQ(comm->stats().ops, 0);
  } else {
    // At most the unit computing and the one being prefetched.
    EXPECT_LE(memory.peak_full_param_bytes, 2 * largest_unit);
    EXPECT_GE(memory.peak_full_param_bytes, largest_unit);
    EXPECT_LE(memory.peak_full_grad_bytes, 2 * largest_unit);
  }
  if (comm->rank() == 0) {
    std::printf("[memory] S=%d: model %lld B, shard params %lld B, peak full params %lld B (largest unit %lld B), "
                "peak param memory %.2f x model\n",
                S, static_cast<long long>(memory.model_param_bytes), static_cast<long long>(memory.shard_bytes / 2),
                static_cast<long long>(memory.peak_full_param_bytes), static_cast<long long>(largest_unit),
                double(memory.shard_bytes / 2 + memory.peak_full_param_bytes) / double(memory.model_param_bytes));
  }
}

int position(const std::vector<std::string>& trace, const std::string& event) {
  auto it = std::find(trace.begin(), trace.end(), event);
  return it == trace.end() ? -1 : static_cast<int>(it - trace.begin());
}

TEST(ShardedHooks, OrderOfHooksGathersAndScatters) {
  const auto comm = world();
  const int S = comm->size();
  TinyConfig config;
  at::manual_seed(0);
  auto model = std::make_shared<TinyTransformer>(config);
  edit::shard::ShardOptions options;
  options.trace = true;
  ShardedModel sharded(model, comm, options);
  std::vector<std::string> seen;  // what a subscriber observes
  for (auto point : {edit::shard::HookPoint::kPreForward, edit::shard::HookPoint::kPostForward,
                     edit::shard::HookPoint::kPreBackward, edit::shard::HookPoint::kPostBackward}) {
    sharded.add_hook(point, [&seen, point](int u) { seen.push_back(std::string(to_string(point)) + " " + std::to_string(u)); });
  }
  auto [x, y] = tiny_batch(config, 0, comm->rank(), kBatch);
  sharded.backward(model->loss(x, y));
  const auto& trace = sharded.trace();
  const int n = sharded.num_units();
  std::vector<std::string> expected_seen;
  for (int u = 0; u < n; ++u) {
    expected_seen.push_back("pre_forward " + std::to_string(u));
    expected_seen.push_back("post_forward " + std::to_string(u));
  }
  for (int u = n - 1; u >= 0; --u) {
    expected_seen.push_back("pre_backward " + std::to_string(u));
    expected_seen.push_back("post_backward " + std::to_string(u));
  }
  EXPECT_EQ(seen, expected_seen);
  for (int u = 0; u < n; ++u) {
    const std::string id = " " + std::to_string(u);
    const int pre = position(trace, "pre_forward" + id), post = position(trace, "post_forward" + id);
    if (S == 1) {
      EXPECT_EQ(position(trace, "gather" + id), -1) << "S = 1 must not gather";
      continue;
    }
    // pre_gather fires right before the unit's gather is issued; for u > 0 that is the prefetch
    // during unit u-1, so before the unit's own pre_forward ...
    const int gather = position(trace, "gather" + id);
    EXPECT_EQ(position(trace, "pre_gather" + id), gather - 1);
    if (u > 0) {
      EXPECT_LT(gather, pre);
    }
    // ... and the next unit's is issued while this one computes: one ahead.
    if (u + 1 < n) {
      const int next_gather = position(trace, "gather " + std::to_string(u + 1));
      EXPECT_GT(next_gather, pre);
      EXPECT_LT(next_gather, post);
    }
    // Full parameters are freed at the end of the forward, before post_forward's subscribers.
    const int freed = position(trace, "free" + id);
    EXPECT_GT(freed, pre);
    EXPECT_LT(freed, post);
    EXPECT_NE(position(trace, "reduce_scatter" + id), -1);
  }
}

}  // namespace
