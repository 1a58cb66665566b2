// Outer optimizer steps and the pseudo-gradient penalty against hand-computed values.
#include <gtest/gtest.h>
#include <torch/nn/modules/linear.h>

#include <cmath>

#include "edit/core/check.h"
#include "edit/shard/sharded_model.h"
#include "edit/sync/local_sgd.h"
#include "edit/sync/outer_optimizer.h"
#include "edit/sync/penalty.h"
#include "loopback_communicator.h"

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
  // Sync 3: z(10) = 8 / sqrt(0.125) = 22.6 > 3: dropped; the other keeps all the weight.
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
