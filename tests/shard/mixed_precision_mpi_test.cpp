// Mixed precision in ShardedModel (ShardOptions::compute_dtype / reduce_dtype) against an
// independent reference: the unsharded model in the compute dtype, its weights the master weights
// cast, run on each rank's batch alone.
//
// The master dtype is float64 and the compute dtype float32 here (bf16 on a GPU works the same
// way, with coarser rounding): then the sharded forward and backward run exactly the reference's
// float32 arithmetic on the same float32 weights, so gradients agree bit for bit before the
// reduction, and the reduction (in float64, or in float32) adds one rounding of that dtype.
#include <gtest/gtest.h>
#include <c10/core/GradMode.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <string>

#include "edit/shard/flat_adamw.h"
#include "edit/shard/sharded_model.h"
#include "mpi_test_env.h"
#include "tiny_transformer.h"

namespace {

using edit::shard::FlatSgd;
using edit::shard::ShardedModel;
using edit::shard::ShardOptions;
using edit::testing_support::tiny_batch;
using edit::testing_support::TinyConfig;
using edit::testing_support::TinyTransformer;
using edit::testing_support::world;

constexpr double kLr = 0.1;

// The group the model is sharded over: the whole world (S = world size) or this rank alone (S = 1,
// where the master shard and the compute buffer are two tensors of one rank).
std::shared_ptr<edit::comm::Communicator> group(bool sharded) {
  return sharded ? std::static_pointer_cast<edit::comm::Communicator>(world())
                 : world()->split(world()->rank(), 0, "self");
}

struct Case {
  bool sharded;
  at::ScalarType reduce;
};

class MixedPrecision : public testing::TestWithParam<Case> {};

TEST_P(MixedPrecision, GradientsAndStepsAreTheComputeDtypeReferenceInTheMasterDtype) {
  const Case param = GetParam();
  const auto shard_group = group(param.sharded);
  const int S = shard_group->size();
  const int rank = shard_group->rank();
  TinyConfig config;
  at::manual_seed(0);
  auto model = std::make_shared<TinyTransformer>(config);
  model->to(at::kDouble);
  ShardOptions options;
  options.compute_dtype = at::kFloat;
  options.reduce_dtype = param.reduce;
  ShardedModel sharded(model, shard_group, options);
  ASSERT_TRUE(sharded.mixed_precision());
  FlatSgd sgd(sharded, kLr);

  // Reference weights: the float64 master, by name.
  std::map<std::string, at::Tensor> master;
  for (const auto& [name, full] : sharded.gather_full_parameters()) {
    ASSERT_EQ(full.scalar_type(), at::kDouble) << name;
    master[name] = full.clone();
  }
  for (int step = 0; step < 3; ++step) {
    // The reference: float32 weights cast from the master, each group rank's batch on its own.
    at::manual_seed(0);
    TinyTransformer reference(config);
    {
      c10::NoGradGuard no_grad;
      for (auto& item : reference.named_parameters()) item.value().copy_(master.at(item.key()).to(at::kFloat));
    }
    std::map<std::string, at::Tensor> expected_grad, abs_sum;
    double expected_loss = 0.0;
    for (int r = 0; r < S; ++r) {
      reference.zero_grad();
      auto [x, y] = tiny_batch(config, step, r, 2);
      at::Tensor loss = reference.loss(x, y);
      loss.backward();
      if (r == rank) expected_loss = loss.item<double>();
      for (auto& item : reference.named_parameters()) {
        const at::Tensor g = item.value().grad().to(param.reduce);
        auto found = expected_grad.find(item.key());
        if (found == expected_grad.end()) {
          expected_grad[item.key()] = g.clone();
          abs_sum[item.key()] = g.abs().to(at::kDouble);
        } else {
          found->second.add_(g);
          abs_sum[item.key()].add_(g.abs());
        }
      }
    }

    sharded.zero_grad();
    auto [x, y] = tiny_batch(config, step, rank, 2);
    at::Tensor loss = model->loss(x, y);
    EXPECT_EQ(loss.scalar_type(), at::kFloat) << "the forward computes in the compute dtype";
    sharded.backward(loss);
    EXPECT_EQ(loss.item<double>(), expected_loss) << "step " << step << ": the same float32 arithmetic";

    // This rank's gradient shard against the mean of the reference gradients, in the master dtype.
    for (int u = 0; u < sharded.num_units(); ++u) {
      auto& unit = sharded.unit(u);
      ASSERT_EQ(unit.grad_shard().scalar_type(), at::kDouble);
      at::Tensor full = at::zeros({unit.padded_numel()}, at::kDouble), full_abs = at::zeros_like(full);
      for (const auto& p : unit.params()) {
        full.narrow(0, p.offset, p.numel).copy_((expected_grad.at(p.name) / S).reshape({-1}));
        full_abs.narrow(0, p.offset, p.numel).copy_((abs_sum.at(p.name) / S).reshape({-1}));
      }
      const at::Tensor want = full.narrow(0, unit.shard_offset(), unit.shard_numel());
      // The sums differ in order only: each of the S - 1 additions rounds by at most one unit
      // roundoff of the running sum, bounded by the sum of |g_r| (float64: 1.1e-16, float32: 6e-8).
      const double roundoff = param.reduce == at::kDouble ? 1.2e-16 : 6e-8;
      const at::Tensor bound = roundoff * S * full_abs.narrow(0, unit.shard_offset(), unit.shard_numel()) + 1e-300;
      EXPECT_TRUE(((unit.grad_shard() - want).abs() <= bound).all().item<bool>())
          << "unit " << unit.name() << ", step " << step << ": largest difference "
          << (unit.grad_shard() - want).abs().max().item<double>();
    }
    sgd.step();
    // The master weights moved by exactly lr x gradient in float64.
    for (const auto& [name, full] : sharded.gather_full_parameters()) {
      const at::Tensor grad = expected_grad.at(name).to(at::kDouble) / S;
      const at::Tensor want = master.at(name) - kLr * grad;
      // The step moves by lr times the gradient's rounding (above), plus the float64 subtraction's.
      const double roundoff = param.reduce == at::kDouble ? 1.2e-16 : 6e-8;
      const double bound = 1e-15 + roundoff * S * kLr * (abs_sum.at(name) / S).max().item<double>();
      EXPECT_LE((full - want).abs().max().item<double>(), bound) << name << ", step " << step;
      master[name] = full.clone();
    }
  }
  if (S > 1) {
    EXPECT_EQ(sharded.memory().full_param_bytes, 0) << "no gathered unit outlives the step";
  }
}

INSTANTIATE_TEST_SUITE_P(Groups, MixedPrecision,
                         testing::Values(Case{true, at::kDouble}, Case{true, at::kFloat}, Case{false, at::kDouble},
                                         Case{false, at::kFloat}),
                         [](const testing::TestParamInfo<Case>& info) {
                           return std::string(info.param.sharded ? "Sharded" : "OneRank") +
                                  (info.param.reduce == at::kDouble ? "ReduceMaster" : "ReduceCompute");
                         });

// bf16 compute over float32 masters: the gathered buffers hold half the bytes, the loss is the
// float32 model's to bf16 precision, and the master weights stay float32.
TEST(MixedPrecisionBf16, HalfTheGatherBytesAndTheFloat32LossToBf16Precision) {
  const auto comm = world();
  TinyConfig config;
  at::manual_seed(0);
  auto model = std::make_shared<TinyTransformer>(config);
  at::manual_seed(0);
  TinyTransformer reference(config);
  ShardOptions options;
  options.compute_dtype = at::kBFloat16;
  ShardedModel sharded(model, comm, options);
  auto [x, y] = tiny_batch(config, 0, comm->rank(), 2);
  const double want = reference.loss(x, y).item<double>();
  sharded.reset_peak_memory();
  at::Tensor loss = model->loss(x, y);
  sharded.backward(loss);
  EXPECT_NEAR(loss.item<double>(), want, 0.02 * want);
  for (int u = 0; u < sharded.num_units(); ++u) {
    EXPECT_EQ(sharded.unit(u).shard().scalar_type(), at::kFloat);
    EXPECT_EQ(sharded.unit(u).grad_shard().scalar_type(), at::kFloat);
    EXPECT_TRUE(sharded.unit(u).grad_shard().isfinite().all().item<bool>());
  }
  std::int64_t largest_unit = 0;
  for (int u = 0; u < sharded.num_units(); ++u) largest_unit = std::max(largest_unit, sharded.unit(u).padded_numel());
  // Gathered in bf16: at most two units (this one and the prefetched next) at 2 bytes an element.
  if (comm->size() > 1) {
    EXPECT_LE(sharded.memory().peak_full_param_bytes, 2 * largest_unit * 2);
  }
}

}  // namespace
