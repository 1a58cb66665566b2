// Outer optimizer steps and the pseudo-gradient penalty against hand-computed values.
#include <gtest/gtest.h>
#include <torch/nn/modules/linear.h>

#include <cmath>

#include "edit/config.h"
#include "edit/core/check.h"
#include "edit/shard/sharded_model.h"
#include "edit/sync/aedit.h"
#include "edit/sync/local_sgd.h"
#include "edit/sync/outer_optimizer.h"
#include "edit/sync/penalty.h"
#include "edit/sync/streaming.h"
#include "loopback_communicator.h"
#if EDIT_HAS_KERNELS
#include "edit/kernels/pseudo_grad.h"  // cuda_device_count()
#endif

namespace {

using edit::sync::OuterMethod;
using edit::sync::OuterOptimizer;
using edit::sync::PenaltyOptions;
using edit::sync::PseudoGradPenalty;
using edit::testing_support::LoopbackCommunicator;

struct OneUnit : torch::nn::Module {
  OneUnit() { layer = register_module("layer", edit::shard::Unit(torch::nn::Linear(1, 1))); }
  edit::shard::Unit layer{nullptr};
};

struct OuterFixture {
  std::shared_ptr<OneUnit> module = std::make_shared<OneUnit>();
  edit::shard::ShardedModel model{module, std::make_shared<LoopbackCommunicator>()};
  OuterFixture() { model.unit(0).shard().fill_(1.0); }
};

TEST(OuterOptimizer, NesterovTwoStepsInClosedForm) {
  OuterFixture f;
  OuterOptimizer outer(f.model, {OuterMethod::kNesterov, 0.7, 0.9, false});
  const at::Tensor delta = at::full({2}, 0.5);
  outer.step(0, delta);
  // m = 0.5; phi = 1 - 0.7 (0.5 + 0.9 * 0.5) = 0.335
  EXPECT_NEAR(outer.anchor(0)[0].item<float>(), 0.335f, 1e-6);
  EXPECT_NEAR(outer.momentum(0)[0].item<float>(), 0.5f, 1e-7);
  outer.step(0, delta);
  // m = 0.9 * 0.5 + 0.5 = 0.95; phi = 0.335 - 0.7 (0.5 + 0.9 * 0.95) = -0.6135
  EXPECT_NEAR(outer.anchor(0)[1].item<float>(), -0.6135f, 1e-6);
  outer.reset_to_anchor(0);
  EXPECT_NEAR(f.model.unit(0).shard()[0].item<float>(), -0.6135f, 1e-6);
}

TEST(OuterOptimizer, AveragingMovesTheAnchorByTheMeanDelta) {
  OuterFixture f;
  OuterOptimizer outer(f.model, {OuterMethod::kAverage, 0.3, 0.5, false});  // lr, momentum forced to 1, 0
  outer.step(0, at::full({2}, 0.25));
  EXPECT_NEAR(outer.anchor(0)[0].item<float>(), 0.75f, 1e-7);
  outer.step(0, at::full({2}, 0.25));
  EXPECT_NEAR(outer.anchor(0)[0].item<float>(), 0.5f, 1e-7) << "momentum must be 0 for averaging";
}

TEST(OuterOptimizer, SignMomentumStepsByLrTimesTheSign) {
  OuterFixture f;
  OuterOptimizer outer(f.model, {OuterMethod::kSignMomentum, 0.01, 0.9, true});
  outer.step(0, at::tensor({0.5f, -2.0f}));
  EXPECT_NEAR(outer.anchor(0)[0].item<float>(), 0.99f, 1e-7);
  EXPECT_NEAR(outer.anchor(0)[1].item<float>(), 1.01f, 1e-7);
  // The second step follows the momentum, m = 0.9 (0.5, -2) + (-1, 1) = (-0.55, -0.8), not the new
  // delta alone: without mu the second element would step back down to 1.00.
  outer.step(0, at::tensor({-1.0f, 1.0f}));
  EXPECT_NEAR(outer.momentum(0)[0].item<float>(), -0.55f, 1e-6);
  EXPECT_NEAR(outer.momentum(0)[1].item<float>(), -0.8f, 1e-6);
  EXPECT_NEAR(outer.anchor(0)[0].item<float>(), 1.00f, 1e-6);
  EXPECT_NEAR(outer.anchor(0)[1].item<float>(), 1.02f, 1e-6);
  EXPECT_THROW(edit::sync::parse_outer_method("adam"), edit::Error);
}

TEST(Penalty, WarmupEwmaZScoreAndSoftmaxWeightsByHand) {
  PenaltyOptions options;
  options.ema_alpha = 0.5;
  options.warmup_syncs = 2;
  PseudoGradPenalty penalty(options);
  // Sync 1 (warm-up): both kept; w = softmax(-1, -3).
  auto d = penalty.decide(0, {1.0, 3.0});
  EXPECT_FALSE(d.skip);
  EXPECT_NEAR(d.weights[0], 1.0 / (1.0 + std::exp(-2.0)), 1e-12);
  EXPECT_NEAR(d.weights[1], std::exp(-2.0) / (1.0 + std::exp(-2.0)), 1e-12);
  // Detector: x=1 -> mean 1, var 0; x=3 -> mean 2, var 0.5 (0 + 0.5 (3-1)(3-2)) = 0.5.
  EXPECT_DOUBLE_EQ(penalty.detector(0).mean, 2.0);
  EXPECT_DOUBLE_EQ(penalty.detector(0).var, 0.5);
  // Sync 2 (still warm-up): x=2 twice -> mean 2, var 0.25 then 0.125.
  penalty.decide(0, {2.0, 2.0});
  EXPECT_DOUBLE_EQ(penalty.detector(0).var, 0.125);
  // Sync 3: 4 observations, bias-corrected variance 0.125 / (1 - 0.5^3) = 0.1429;
  // z(10) = 8 / sqrt(0.1429) = 21.2 > 3: dropped; the other keeps all the weight.
  d = penalty.decide(0, {2.0, 10.0});
  EXPECT_FALSE(d.dropped[0]);
  EXPECT_TRUE(d.dropped[1]);
  EXPECT_DOUBLE_EQ(d.weights[0], 1.0);
  EXPECT_DOUBLE_EQ(d.weights[1], 0.0);
  // Detectors are per unit: unit 1 is still warming up and keeps the same outlier.
  EXPECT_FALSE(penalty.decide(1, {2.0, 10.0}).dropped[1]);
}

TEST(Penalty, NonFiniteNormsAreAlwaysDroppedAndAllDroppedSkips) {
  PenaltyOptions options;
  options.anomaly_elimination = false;
  options.weighted_average = false;
  PseudoGradPenalty penalty(options);
  auto d = penalty.decide(0, {NAN, 1.0, 3.0});
  EXPECT_TRUE(d.dropped[0]);
  EXPECT_DOUBLE_EQ(d.weights[1], 0.5);
  EXPECT_DOUBLE_EQ(d.weights[2], 0.5);
  d = penalty.decide(0, {INFINITY, NAN});
  EXPECT_TRUE(d.skip);
}

// An LR warm-up over 10 syncs, then a constant LR: the common norm level of every worker rises
// 10x and then holds. A detector fed only with kept workers froze here (every later sync skipped).
TEST(Penalty, RisingCommonNormNeverLeavesAUnitSkipped) {
  PseudoGradPenalty penalty;  // the defaults: z 3, alpha 0.02, warm-up 3
  int skips = 0, drops = 0;
  for (int sync = 1; sync <= 60; ++sync) {
    const double level = 0.1 * std::min(sync, 10);
    // Workers differ by a few percent, as with different data per rank.
    const std::vector<double> norms = {level * (1.0 + 0.02 * (sync % 3)), level * (1.0 - 0.01 * (sync % 5))};
    const auto d = penalty.decide(0, norms);
    skips += d.skip;
    drops += d.dropped_count();
    EXPECT_FALSE(d.skip) << "sync " << sync;
    if (sync > 30) {  // long after the rise the detector has caught up: ordinary z-tests pass
      EXPECT_FALSE(d.level_shift) << "sync " << sync;
    }
  }
  EXPECT_EQ(skips, 0);
  EXPECT_EQ(drops, 0);
  // The detector follows the level (an EWMA with alpha 0.02 lags it by a few percent here).
  EXPECT_GT(penalty.detector(0).mean, 0.85);
}

TEST(Penalty, ATenfoldSpikeOfOneWorkerIsDroppedWhileTheOthersGoThrough) {
  PseudoGradPenalty penalty;
  for (int sync = 0; sync < 20; ++sync) {
    const auto d = penalty.decide(
        0, {1.0 + 0.01 * (sync % 4), 1.02 - 0.01 * (sync % 3), 0.99, 1.01 + 0.01 * (sync % 2)});
    ASSERT_EQ(d.dropped_count(), 0) << "sync " << sync;
  }
  const auto d = penalty.decide(0, {1.0, 1.01, 10.0, 0.98});
  EXPECT_FALSE(d.skip);
  EXPECT_FALSE(d.level_shift);
  EXPECT_EQ(d.dropped, (std::vector<bool>{false, false, true, false}));
  EXPECT_DOUBLE_EQ(d.weights[2], 0.0);
  EXPECT_NEAR(d.weights[0] + d.weights[1] + d.weights[3], 1.0, 1e-12);
  // The dropped norm did not move the detector (mean stays near 1): the next spike is dropped too.
  EXPECT_LT(penalty.detector(0).mean, 1.05);
  EXPECT_TRUE(penalty.decide(0, {1.0, 1.0, 1.0, 10.0}).dropped[3]);
}

TEST(Penalty, ASpikeDuringALevelShiftIsStillDropped) {
  PenaltyOptions options;
  options.warmup_syncs = 1;
  PseudoGradPenalty penalty(options);
  penalty.decide(0, {0.1, 0.1});
  // The level jumped 4x (both fail the z-test) and worker 1 spiked another 10x on top.
  const auto d = penalty.decide(0, {0.4, 4.0});
  EXPECT_TRUE(d.level_shift);
  EXPECT_EQ(d.dropped, (std::vector<bool>{false, true}));
  EXPECT_DOUBLE_EQ(d.weights[0], 1.0);
}

TEST(Penalty, WarmupOfZeroSyncsIsRefused) {
  PenaltyOptions options;
  options.warmup_syncs = 0;
  try {
    PseudoGradPenalty penalty(options);
    FAIL() << "no error";
  } catch (const edit::Error& e) {
    EXPECT_NE(std::string(e.what()).find("--penalty-warmup >= 1"), std::string::npos) << e.what();
  }
}

// A unit whose aggregate pseudo-gradient exceeds the clip norm moves by exactly clip / ||Delta||
// of it: one worker, plain averaging (lr 1, momentum 0), so phi_new = phi - scale * Delta.
TEST(Penalty, ClipScalesTheAggregateOfAUnit) {
  OuterFixture f;  // one unit: Linear(1, 1), weight and bias = 1
  edit::sync::LocalSgdOptions options;
  options.use_penalty = true;
  options.outer.method = OuterMethod::kAverage;
  options.penalty.clip_norm = 1.0;
  edit::sync::PseudoGradientSync sync(f.model, std::make_shared<LoopbackCommunicator>(), options);
  // theta = (4, -2): Delta = phi - theta = (-3, 3), ||Delta|| = 3 sqrt(2) = 4.243 > 1.
  f.model.unit(0).shard().copy_(at::tensor({4.0f, -2.0f}));
  sync.begin(0);
  sync.finish(0);
  const double scale = 1.0 / (3.0 * std::sqrt(2.0) + 1e-6);
  EXPECT_NEAR(sync.outer().anchor(0)[0].item<double>(), 1.0 + 3.0 * scale, 1e-6);
  EXPECT_NEAR(sync.outer().anchor(0)[1].item<double>(), 1.0 - 3.0 * scale, 1e-6);
  // Below the clip norm nothing is scaled: theta = (1.3, 1.4), Delta = phi - theta.
  const at::Tensor phi = sync.outer().anchor(0).clone();
  f.model.unit(0).shard().copy_(phi + at::tensor({0.3f, 0.4f}));
  sync.begin(0);
  sync.finish(0);
  EXPECT_NEAR(sync.outer().anchor(0)[0].item<double>(), phi[0].item<double>() + 0.3, 1e-6);
  EXPECT_NEAR(sync.outer().anchor(0)[1].item<double>(), phi[1].item<double>() + 0.4, 1e-6);
  EXPECT_EQ(sync.skipped_units(), 0);
}

// One sync of a unit on a CUDA shard (the fused pseudo-gradient and its norm, the clip norm, the
// fused outer step with the state on the device or offloaded to pinned memory) against the same
// sync on the CPU. The GPU's norm is a float sum, so the clip scale and with it phi differ by float
// rounding only.
TEST(PseudoGradientSyncCuda, MatchesTheCpuToRounding) {
#if !EDIT_WITH_CUDA || !EDIT_HAS_KERNELS
  GTEST_SKIP() << "needs a CUDA LibTorch (EDIT_WITH_CUDA) and kernels/ (EDIT_BUILD_KERNELS)";
#else
  if (edit::kernels::cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device on this machine";
  struct Wide : torch::nn::Module {
    Wide() { layer = register_module("layer", edit::shard::Unit(torch::nn::Linear(300, 7))); }
    edit::shard::Unit layer{nullptr};
  };
  for (const bool offload : {false, true}) {
    edit::sync::LocalSgdOptions options;
    options.use_penalty = true;
    options.outer.offload = offload;
    options.penalty.clip_norm = 0.2;  // below ||Delta|| ~ 0.46: the clip scales every sync
    auto cpu_module = std::make_shared<Wide>();
    auto gpu_module = std::make_shared<Wide>();
    gpu_module->to(at::Device(at::kCUDA, 0));
    edit::shard::ShardedModel cpu_model(cpu_module, std::make_shared<LoopbackCommunicator>());
    edit::shard::ShardedModel gpu_model(gpu_module, std::make_shared<LoopbackCommunicator>());
    gpu_model.unit(0).shard().copy_(cpu_model.unit(0).shard());
    edit::sync::PseudoGradientSync cpu(cpu_model, std::make_shared<LoopbackCommunicator>(), options);
    edit::sync::PseudoGradientSync gpu(gpu_model, std::make_shared<LoopbackCommunicator>(), options);
    EXPECT_EQ(gpu.outer().anchor(0).is_cuda(), !offload);
    at::manual_seed(31);
    for (int s = 0; s < 3; ++s) {
      const at::Tensor drift = 0.01 * at::randn({cpu_model.unit(0).shard().numel()});
      cpu_model.unit(0).shard().add_(drift);
      gpu_model.unit(0).shard().add_(drift.to(at::kCUDA));
      cpu.begin(0);
      gpu.begin(0);
      cpu.finish(0);
      gpu.finish(0);
      const at::Tensor phi = gpu.outer().anchor(0).cpu();
      EXPECT_TRUE(at::allclose(phi, cpu.outer().anchor(0), 1e-5, 1e-6))
          << "offload " << offload << ", sync " << s;
      EXPECT_TRUE(at::allclose(gpu.outer().momentum(0).cpu(), cpu.outer().momentum(0), 1e-5, 1e-6));
      EXPECT_TRUE(at::equal(gpu_model.unit(0).shard().cpu(), phi)) << "theta = phi after the sync";
    }
  }
#endif
}

// Streaming DiLoCo on CUDA shards quantizes and dequantizes with the kernels of kernels/ (only the
// packets cross to the host) and must follow the same run on the CPU: the packets are the CPU's
// bit for bit (QuantizeCuda tests that), so the anchors and workers differ by the rounding of the
// fused outer step and the merge at most. One worker (a loopback group), 2 units, fp4 and int8,
// exchanges overlapped by one step.
TEST(StreamingDiLoCoCuda, FollowsTheCpuRun) {
#if !EDIT_WITH_CUDA || !EDIT_HAS_KERNELS
  GTEST_SKIP() << "needs a CUDA LibTorch (EDIT_WITH_CUDA) and kernels/ (EDIT_BUILD_KERNELS)";
#else
  if (edit::kernels::cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device on this machine";
  struct Two : torch::nn::Module {
    Two() {
      a = register_module("a", edit::shard::Unit(torch::nn::Linear(300, 7)));
      b = register_module("b", edit::shard::Unit(torch::nn::Linear(50, 40)));
    }
    edit::shard::Unit a{nullptr}, b{nullptr};
  };
  for (const char* format : {"fp4", "int8"}) {
    edit::sync::StreamingOptions options;
    options.local.sync_every = 4;
    options.fragments = 2;
    options.overlap = 1;
    options.quant = {edit::sync::parse_quant_format(format), 64};
    auto cpu_module = std::make_shared<Two>();
    auto gpu_module = std::make_shared<Two>();
    gpu_module->to(at::Device(at::kCUDA, 0));
    edit::shard::ShardedModel cpu_model(cpu_module, std::make_shared<LoopbackCommunicator>());
    edit::shard::ShardedModel gpu_model(gpu_module, std::make_shared<LoopbackCommunicator>());
    for (int u = 0; u < 2; ++u) gpu_model.unit(u).shard().copy_(cpu_model.unit(u).shard());
    edit::sync::StreamingDiLoCo cpu(cpu_model, std::make_shared<LoopbackCommunicator>(), options);
    edit::sync::StreamingDiLoCo gpu(gpu_model, std::make_shared<LoopbackCommunicator>(), options);
    at::manual_seed(5);
    for (std::int64_t step = 0; step < 12; ++step) {
      for (int u = 0; u < 2; ++u) {
        const at::Tensor drift = 0.01 * at::randn({cpu_model.unit(u).shard().numel()});
        cpu_model.unit(u).shard().add_(drift);
        gpu_model.unit(u).shard().add_(drift.to(at::kCUDA));
      }
      cpu.after_step(step);
      gpu.after_step(step);
      for (int u = 0; u < 2; ++u) {
        EXPECT_TRUE(
            at::allclose(gpu.core().outer().anchor(u).cpu(), cpu.core().outer().anchor(u), 1e-6, 1e-7))
            << format << ", unit " << u << ", step " << step;
        EXPECT_TRUE(at::allclose(gpu_model.unit(u).shard().cpu(), cpu_model.unit(u).shard(), 1e-6, 1e-7))
            << format << ", unit " << u << ", step " << step;
      }
    }
    EXPECT_EQ(gpu.streaming_stats().merged, 5);  // issued after steps 1, 3, ..., 11; the last merges at 12
    EXPECT_EQ(gpu.streaming_stats().payload_bytes, cpu.streaming_stats().payload_bytes);
  }
#endif
}

// A-EDiT's budget shares with three workers, by hand.
TEST(AEDiTShares, OneStepEachThenByTheLastRoundLargestRemaindersFirst) {
  using edit::sync::share_steps;
  using Shares = std::vector<std::int64_t>;
  // 10 left after a round of 3, 2 and 1 steps: one each, then 7 x (3, 2, 1) / 6 = (3.5, 2.33, 1.17)
  // floored to (3, 2, 1): (4, 3, 2) is 9, and the 10th goes to the largest remainder, worker 0.
  EXPECT_EQ(share_steps(10, {3, 2, 1}), (Shares{5, 3, 2}));
  // Equal remainders: the lower workers first.
  EXPECT_EQ(share_steps(5, {1, 1, 1}), (Shares{2, 2, 1}));
  // Fewer steps left than workers: no step each first, and the budget is never passed.
  EXPECT_EQ(share_steps(2, {1, 1, 1}), (Shares{1, 1, 0}));
  // Two left: one each, whatever the speeds.
  EXPECT_EQ(share_steps(2, {8, 4}), (Shares{1, 1}));
  EXPECT_EQ(share_steps(7, {0, 2, 0}), (Shares{1, 5, 1}));
  EXPECT_THROW(share_steps(0, {1, 1}), edit::Error);
  EXPECT_THROW(share_steps(3, {0, 0}), edit::Error);
}

TEST(Penalty, ClipScale) {
  PseudoGradPenalty penalty;  // clip 10
  EXPECT_DOUBLE_EQ(penalty.clip_scale(5.0), 1.0);
  EXPECT_DOUBLE_EQ(penalty.clip_scale(20.0), 10.0 / (20.0 + 1e-6));
  PenaltyOptions off;
  off.clip = false;
  EXPECT_DOUBLE_EQ(PseudoGradPenalty(off).clip_scale(1e9), 1.0);
}

TEST(LocalSgdOptions, InvalidValuesNameTheFix) {
  edit::sync::LocalSgdOptions options;
  options.sync_every = 0;
  try {
    options.validate();
    FAIL() << "no error";
  } catch (const edit::Error& e) {
    EXPECT_NE(std::string(e.what()).find("use H >= 1"), std::string::npos) << e.what();
  }
}

}  // namespace
