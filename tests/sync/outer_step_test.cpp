// The fused Nesterov outer step (docs/architecture.md, sync/): the CPU twin against an independent float64
// closed form and against the unfused ATen ops it replaces, the CUDA kernel against the twin, and
// OuterOptimizer::step_and_reset() against step() + reset_to_anchor().
//
// Why the bounds are what they are: the twin rounds every multiply and add to float on its own, so
// it must equal ATen float32 ops in the same order bit for bit, and the CUDA kernel (which uses
// __fmul_rn/__fadd_rn, never an FMA) must equal the twin bit for bit. Against float64 and against
// the old op order (lr delta + lr mu m instead of lr (delta + mu m)) the difference is rounding
// only: a few float ulps of the magnitudes involved, which first-order error analysis bounds by
// 4u (mu |m0| + |delta|) for m and 8u (|phi1| + lr (|delta| + mu |m1| + mu (mu |m0| + |delta|)))
// for phi, u = 2^-24, each element on its own (about twice the worst case, far below any real
// error). None of this touches BLAS, so it holds on every CPU and OPENBLAS_CORETYPE.
#include "edit/sync/outer_step.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <torch/nn/modules/linear.h>

#include <cmath>
#include <limits>
#include <tuple>

#include "edit/config.h"
#include "edit/shard/sharded_model.h"
#include "edit/sync/outer_optimizer.h"
#include "loopback_communicator.h"
#if EDIT_HAS_KERNELS
#include <cuda_runtime.h>

#include "edit/kernels/outer_step.h"
#include "edit/kernels/pseudo_grad.h"  // cuda_device_count()
#endif

namespace {

using edit::sync::OuterMethod;
using edit::sync::OuterOptimizer;

constexpr double kUnitRoundoff = 1.0 / (1 << 24);  // u of float32

struct Hyper {
  const char* name;
  double lr;
  double mu;
};
// DiLoCo's defaults, a small-H setting (docs/architecture.md, sync/), and model averaging (lr 1, mu 0).
const Hyper kHypers[] = {{"diloco", 0.7, 0.9}, {"small_h", 0.5, 0.5}, {"average", 1.0, 0.0}};

// One unit's state as the outer step sees it: anchor ~ N(0, 1), momentum a few deltas, delta
// small, theta poisoned with NaN so a missing write shows.
struct StepState {
  at::Tensor m, phi, theta, delta;

  static StepState random(std::int64_t n, std::uint64_t seed) {
    at::manual_seed(seed);
    StepState s;
    s.phi = at::randn({n});
    s.m = 0.05 * at::randn({n});
    s.delta = 0.01 * at::randn({n});
    s.theta = at::full({n}, std::numeric_limits<float>::quiet_NaN());
    return s;
  }
  StepState clone() const { return {m.clone(), phi.clone(), theta.clone(), delta.clone()}; }
  void step_cpu_twin(const Hyper& h) {
    edit::sync::nesterov_outer_step_cpu(m.data_ptr<float>(), phi.data_ptr<float>(), theta.data_ptr<float>(),
                                        delta.data_ptr<float>(), m.numel(), static_cast<float>(h.lr),
                                        static_cast<float>(h.mu));
  }
};

// The exact result in float64 from the same float inputs, and the per-element error bounds.
struct Reference {
  at::Tensor m, phi, m_bound, phi_bound;

  Reference(const StepState& before, const Hyper& h) {
    const at::Tensor m0 = before.m.to(at::kDouble), phi0 = before.phi.to(at::kDouble);
    const at::Tensor d = before.delta.to(at::kDouble);
    m = h.mu * m0 + d;
    phi = phi0 - h.lr * (d + h.mu * m);
    const at::Tensor m_scale = h.mu * m0.abs() + d.abs();
    m_bound = 4 * kUnitRoundoff * m_scale;
    phi_bound = 8 * kUnitRoundoff * (phi.abs() + h.lr * (d.abs() + h.mu * m.abs() + h.mu * m_scale));
  }
};

// |actual - expected| <= bound elementwise, in float64; on failure, the worst element.
testing::AssertionResult within(const at::Tensor& actual, const at::Tensor& expected,
                                const at::Tensor& bound) {
  if (actual.numel() == 0) return testing::AssertionSuccess();
  const at::Tensor gap = (actual.to(at::kDouble) - expected.to(at::kDouble)).abs();
  const at::Tensor excess = gap - bound;
  const std::int64_t worst = excess.argmax().item<std::int64_t>();
  if (excess[worst].item<double>() <= 0.0) return testing::AssertionSuccess();
  return testing::AssertionFailure() << "element " << worst << " of " << actual.numel() << ": got "
                                     << actual[worst].item<double>() << ", expected "
                                     << expected[worst].item<double>() << ", gap "
                                     << gap[worst].item<double>() << " > bound "
                                     << bound[worst].item<double>();
}

class OuterStepTwin : public testing::TestWithParam<std::tuple<std::int64_t, Hyper>> {
 protected:
  std::int64_t n() const { return std::get<0>(GetParam()); }
  const Hyper& hyper() const { return std::get<1>(GetParam()); }
};

TEST_P(OuterStepTwin, MatchesTheFloat64ClosedForm) {
  const StepState before = StepState::random(n(), static_cast<std::uint64_t>(n()) + 11);
  StepState after = before.clone();
  after.step_cpu_twin(hyper());
  const Reference ref(before, hyper());
  EXPECT_TRUE(within(after.m, ref.m, ref.m_bound));
  EXPECT_TRUE(within(after.phi, ref.phi, ref.phi_bound));
  EXPECT_TRUE(at::equal(after.theta, after.phi)) << "theta must be the new anchor, bit for bit";
  EXPECT_TRUE(at::equal(after.delta, before.delta)) << "delta is read only";
}

TEST_P(OuterStepTwin, EqualsAtenFloatOpsInTheSameOrderBitForBit) {
  const StepState before = StepState::random(n(), static_cast<std::uint64_t>(n()) + 12);
  StepState after = before.clone();
  after.step_cpu_twin(hyper());
  // One ATen op per rounding of the twin; a Scalar multiplier is rounded to float like the twin's.
  const at::Tensor m = at::add(at::mul(before.m, hyper().mu), before.delta);
  const at::Tensor phi =
      at::sub(before.phi, at::mul(at::add(before.delta, at::mul(m, hyper().mu)), hyper().lr));
  EXPECT_TRUE(at::equal(after.m, m));
  EXPECT_TRUE(at::equal(after.phi, phi));
}

TEST_P(OuterStepTwin, AgreesWithTheUnfusedAtenSequenceToRounding) {
  const StepState before = StepState::random(n(), static_cast<std::uint64_t>(n()) + 13);
  StepState after = before.clone();
  after.step_cpu_twin(hyper());
  // What OuterOptimizer::step() + reset_to_anchor() did before the fused pass.
  at::Tensor m = before.m.clone(), phi = before.phi.clone();
  const double lr = hyper().lr, mu = hyper().mu;
  m.mul_(mu).add_(before.delta);
  phi.add_(before.delta, -lr).add_(m, -lr * mu);
  // m is computed the same way by both (mu m, then + delta): identical.
  EXPECT_TRUE(at::equal(after.m, m));
  // phi: lr (delta + mu m) against lr delta + (lr mu) m, both within the bound of the exact value.
  const Reference ref(before, hyper());
  EXPECT_TRUE(within(phi, ref.phi, ref.phi_bound)) << "the old sequence";
  EXPECT_TRUE(within(after.phi, phi, 2 * ref.phi_bound)) << "fused against the old sequence";
}

std::string twin_name(const testing::TestParamInfo<std::tuple<std::int64_t, Hyper>>& info) {
  return "n" + std::to_string(std::get<0>(info.param)) + "_" + std::get<1>(info.param).name;
}

// 0, 1, odd, one float4 and a tail, several parallel_for chunks of 2^14, and 2^20 + 3.
INSTANTIATE_TEST_SUITE_P(SizesAndHypers, OuterStepTwin,
                         testing::Combine(testing::Values(0, 1, 7, 1001, 3 * (1 << 14) + 5, (1 << 20) + 3),
                                          testing::ValuesIn(kHypers)),
                         twin_name);

// --- CUDA kernel against the CPU twin --------------------------------------------------------------

class OuterStepKernel : public testing::TestWithParam<std::int64_t> {};

// offset (in floats) of each array inside its allocation: 0 everywhere takes the float4 path,
// any other the one-float-at-a-time path.
void expect_kernel_equals_twin(std::int64_t n, std::int64_t offset) {
#if !EDIT_HAS_KERNELS
  (void)n;
  (void)offset;
  GTEST_SKIP() << "built without kernels/ (EDIT_BUILD_KERNELS=OFF)";
#else
  if (edit::kernels::cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device on this machine";
  const Hyper h = kHypers[0];
  const StepState before = StepState::random(n, static_cast<std::uint64_t>(n) + 14);
  StepState twin = before.clone();
  twin.step_cpu_twin(h);
  // Device buffers straight from the CUDA runtime, so this runs with a CPU-only LibTorch too.
  const size_t bytes = static_cast<size_t>(n + offset + 1) * sizeof(float);  // never 0
  const size_t payload = static_cast<size_t>(n) * sizeof(float);
  float *d_m = nullptr, *d_phi = nullptr, *d_theta = nullptr, *d_delta = nullptr;
  ASSERT_EQ(cudaMalloc(&d_m, bytes), cudaSuccess);
  ASSERT_EQ(cudaMalloc(&d_phi, bytes), cudaSuccess);
  ASSERT_EQ(cudaMalloc(&d_theta, bytes), cudaSuccess);
  ASSERT_EQ(cudaMalloc(&d_delta, bytes), cudaSuccess);
  float *m = d_m + offset, *phi = d_phi + offset, *theta = d_theta + offset, *delta = d_delta + offset;
  ASSERT_EQ(cudaMemcpy(m, before.m.data_ptr<float>(), payload, cudaMemcpyHostToDevice), cudaSuccess);
  ASSERT_EQ(cudaMemcpy(phi, before.phi.data_ptr<float>(), payload, cudaMemcpyHostToDevice), cudaSuccess);
  ASSERT_EQ(cudaMemcpy(delta, before.delta.data_ptr<float>(), payload, cudaMemcpyHostToDevice), cudaSuccess);
  ASSERT_EQ(cudaMemset(d_theta, 0xff, bytes), cudaSuccess);  // poison: NaN bit patterns
  edit::kernels::nesterov_outer_step_cuda(m, phi, theta, delta, n, static_cast<float>(h.lr),
                                          static_cast<float>(h.mu), nullptr);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  StepState gpu = before.clone();
  ASSERT_EQ(cudaMemcpy(gpu.m.data_ptr<float>(), m, payload, cudaMemcpyDeviceToHost), cudaSuccess);
  ASSERT_EQ(cudaMemcpy(gpu.phi.data_ptr<float>(), phi, payload, cudaMemcpyDeviceToHost), cudaSuccess);
  ASSERT_EQ(cudaMemcpy(gpu.theta.data_ptr<float>(), theta, payload, cudaMemcpyDeviceToHost), cudaSuccess);
  // The element after the shard stays untouched (still the poison).
  float after_end = 0.f;
  ASSERT_EQ(cudaMemcpy(&after_end, theta + n, sizeof(float), cudaMemcpyDeviceToHost), cudaSuccess);
  for (float* p : {d_m, d_phi, d_theta, d_delta}) cudaFree(p);
  EXPECT_TRUE(std::isnan(after_end)) << "the kernel wrote past the end";
  EXPECT_TRUE(at::equal(gpu.m, twin.m));
  EXPECT_TRUE(at::equal(gpu.phi, twin.phi));
  EXPECT_TRUE(at::equal(gpu.theta, twin.theta));
#endif
}

TEST_P(OuterStepKernel, AlignedMatchesCpuTwinBitForBit) { expect_kernel_equals_twin(GetParam(), 0); }
TEST_P(OuterStepKernel, UnalignedMatchesCpuTwinBitForBit) { expect_kernel_equals_twin(GetParam(), 1); }

INSTANTIATE_TEST_SUITE_P(Sizes, OuterStepKernel, testing::Values(0, 1, 3, 4, 5, 1001, 256 * 2048 * 4 + 7));

// --- OuterOptimizer::step_and_reset ----------------------------------------------------------------

// One unit of 1000 x 7 + 7 = 7007 parameters (odd, several float4s and a tail).
struct OneUnit : torch::nn::Module {
  OneUnit() { layer = register_module("layer", edit::shard::Unit(torch::nn::Linear(1000, 7))); }
  edit::shard::Unit layer{nullptr};
};

struct Replica {
  std::shared_ptr<OneUnit> module = std::make_shared<OneUnit>();
  std::unique_ptr<edit::shard::ShardedModel> model;

  explicit Replica(at::Device device, at::ScalarType dtype = at::kFloat) {
    module->to(device, dtype);
    model = std::make_unique<edit::shard::ShardedModel>(
        module, std::make_shared<edit::testing_support::LoopbackCommunicator>());
    at::manual_seed(21);
    model->unit(0).shard().copy_(at::randn({model->unit(0).shard().numel()}));
  }
  at::Tensor& theta() { return model->unit(0).shard(); }
};

// Three outer steps with fresh deltas, as three syncs would run them.
std::vector<at::Tensor> deltas_for(std::int64_t n) {
  at::manual_seed(22);
  return {0.01 * at::randn({n}), 0.02 * at::randn({n}), -0.01 * at::randn({n})};
}

class StepAndReset : public testing::TestWithParam<std::tuple<OuterMethod, bool>> {};

TEST_P(StepAndReset, CpuMatchesStepThenResetToRounding) {
  const auto [method, offload] = GetParam();
  const edit::sync::OuterOptions options{method, 0.7, 0.9, offload};
  Replica fused_replica(at::kCPU), plain_replica(at::kCPU);
  OuterOptimizer fused(*fused_replica.model, options), plain(*plain_replica.model, options);
  const Hyper h{"", fused.options().lr, fused.options().momentum};  // Average forces lr 1, mu 0
  for (const at::Tensor& delta : deltas_for(fused_replica.theta().numel())) {
    StepState before{fused.momentum(0).clone(), fused.anchor(0).clone(), fused_replica.theta().clone(),
                     delta};
    fused.step_and_reset(0, delta);
    plain.step(0, delta);
    plain.reset_to_anchor(0);
    EXPECT_TRUE(at::equal(fused_replica.theta(), fused.anchor(0))) << "theta = phi after the restart";
    if (method == OuterMethod::kSignMomentum) {  // m = mu m + delta; phi -= lr sign(m), in float64
      const at::Tensor m = h.mu * before.m.to(at::kDouble) + delta.to(at::kDouble);
      const at::Tensor phi = before.phi.to(at::kDouble) - h.lr * m.sign();
      EXPECT_TRUE(within(fused.momentum(0), m, 4 * kUnitRoundoff * (h.mu * before.m.to(at::kDouble).abs() +
                                                                    delta.to(at::kDouble).abs())));
      EXPECT_TRUE(within(fused.anchor(0), phi, 4 * kUnitRoundoff * (phi.abs() + h.lr)));
    } else {
      const Reference ref(before, h);
      EXPECT_TRUE(within(fused.anchor(0), ref.phi, ref.phi_bound));
      EXPECT_TRUE(within(fused.anchor(0), plain.anchor(0), 2 * ref.phi_bound));
    }
    EXPECT_TRUE(at::equal(fused.momentum(0), plain.momentum(0)));
    // Both continue from the fused state, so the comparison stays per step.
    plain.mutable_anchor(0).copy_(fused.anchor(0));
    plain.reset_to_anchor(0);
  }
}

// A unit synced in parts (Streaming DiLoCo's split fragments) ends where the whole-unit calls end,
// bit for bit: every update is elementwise. Three ranges of odd lengths, in an order that is not
// the storage order, for step(), step_and_reset() and reset_to_anchor().
TEST_P(StepAndReset, RangesOfAUnitEqualTheWholeUnit) {
  const auto [method, offload] = GetParam();
  const edit::sync::OuterOptions options{method, 0.7, 0.9, offload};
  Replica whole_replica(at::kCPU), parts_replica(at::kCPU);
  OuterOptimizer whole(*whole_replica.model, options), parts(*parts_replica.model, options);
  const std::int64_t n = whole_replica.theta().numel();
  const std::vector<std::pair<std::int64_t, std::int64_t>> ranges = {{3001, n - 3001}, {0, 1999}, {1999, 1002}};
  int round = 0;
  for (const at::Tensor& delta : deltas_for(n)) {
    const bool restart = round++ % 2 == 0;  // step_and_reset, then step + reset_to_anchor
    if (restart) {
      whole.step_and_reset(0, delta);
    } else {
      whole.step(0, delta);
      whole.reset_to_anchor(0);
    }
    for (const auto& [begin, length] : ranges) {
      const at::Tensor part = delta.narrow(0, begin, length).clone();  // a delta of the range alone
      if (restart) {
        parts.step_and_reset(0, part, begin);
      } else {
        parts.step(0, part, begin);
        parts.reset_to_anchor(0, begin, length);
      }
    }
    EXPECT_TRUE(at::equal(whole.anchor(0), parts.anchor(0))) << "round " << round;
    EXPECT_TRUE(at::equal(whole.momentum(0), parts.momentum(0))) << "round " << round;
    EXPECT_TRUE(at::equal(whole_replica.theta(), parts_replica.theta())) << "round " << round;
  }
  EXPECT_THROW(parts.step(0, at::zeros({10}), n - 5), edit::Error);  // past the shard's end
}

std::string step_and_reset_name(const testing::TestParamInfo<std::tuple<OuterMethod, bool>>& info) {
  return std::string(edit::sync::to_string(std::get<0>(info.param))) +
         (std::get<1>(info.param) ? "_offload" : "");
}

INSTANTIATE_TEST_SUITE_P(Methods, StepAndReset,
                         testing::Combine(testing::Values(OuterMethod::kNesterov, OuterMethod::kAverage,
                                                          OuterMethod::kSignMomentum),
                                          testing::Bool()),
                         step_and_reset_name);

// Double shards are not fused: step_and_reset() is step() + reset_to_anchor(), bit for bit.
TEST(StepAndResetFallback, DoubleShardsTakeTheAtenPath) {
  Replica fused_replica(at::kCPU, at::kDouble), plain_replica(at::kCPU, at::kDouble);
  OuterOptimizer fused(*fused_replica.model), plain(*plain_replica.model);
  for (const at::Tensor& delta : deltas_for(fused_replica.theta().numel())) {
    fused.step_and_reset(0, delta.to(at::kDouble));
    plain.step(0, delta.to(at::kDouble));
    plain.reset_to_anchor(0);
    EXPECT_TRUE(at::equal(fused.anchor(0), plain.anchor(0)));
    EXPECT_TRUE(at::equal(fused.momentum(0), plain.momentum(0)));
    EXPECT_TRUE(at::equal(fused_replica.theta(), plain_replica.theta()));
  }
}

TEST(StepAndResetFallback, ADeltaOfAnotherShapeIsRefused) {
  Replica replica(at::kCPU);
  OuterOptimizer outer(*replica.model);
  try {
    outer.step_and_reset(0, at::zeros({3}));
    FAIL() << "no error";
  } catch (const edit::Error& e) {
    EXPECT_NE(std::string(e.what()).find("pass the aggregated delta of this unit's shard"), std::string::npos)
        << e.what();
  }
}

// On a CUDA shard (fused kernel where libedit has it, else ATen), with the state on the device or
// offloaded to pinned host memory: the same anchors as the CPU twin, to rounding, and the
// accessors see the offloaded copies only once they have landed.
TEST(StepAndResetCuda, MatchesTheCpuTwinWithAndWithoutOffload) {
#if !EDIT_WITH_CUDA || !EDIT_HAS_KERNELS
  GTEST_SKIP() << "needs a CUDA LibTorch (EDIT_WITH_CUDA) and kernels/ (EDIT_BUILD_KERNELS)";
#else
  if (edit::kernels::cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device on this machine";
  for (const bool offload : {false, true}) {
    const edit::sync::OuterOptions options{OuterMethod::kNesterov, 0.7, 0.9, offload};
    Replica cpu_replica(at::kCPU), gpu_replica(at::Device(at::kCUDA, 0));
    OuterOptimizer cpu(*cpu_replica.model, options), gpu(*gpu_replica.model, options);
    EXPECT_EQ(gpu.anchor(0).is_cuda(), !offload);
    if (offload) {
      EXPECT_TRUE(gpu.anchor(0).is_pinned()) << "offloaded state of a CUDA shard lives in pinned memory";
    }
    for (const at::Tensor& delta : deltas_for(cpu_replica.theta().numel())) {
      StepState before{cpu.momentum(0).clone(), cpu.anchor(0).clone(), cpu_replica.theta().clone(), delta};
      cpu.step_and_reset(0, delta);
      gpu.step_and_reset(0, delta.to(at::kCUDA));
      // Read straight after the non-blocking copies were queued: anchor() must wait for them.
      const at::Tensor gpu_phi = gpu.anchor(0).cpu();
      const Reference ref(before, {"", 0.7, 0.9});
      EXPECT_TRUE(within(gpu_phi, ref.phi, ref.phi_bound)) << "offload " << offload;
      EXPECT_TRUE(within(gpu_phi, cpu.anchor(0), 2 * ref.phi_bound)) << "offload " << offload;
      EXPECT_TRUE(within(gpu.momentum(0).cpu(), cpu.momentum(0), 2 * ref.m_bound)) << "offload " << offload;
      EXPECT_TRUE(at::equal(gpu_replica.theta().cpu(), gpu_phi)) << "offload " << offload;
      // Continue both from the CPU state so the comparison stays per step.
      gpu.mutable_anchor(0).copy_(cpu.anchor(0));
      gpu.mutable_momentum(0).copy_(cpu.momentum(0));
    }
  }
#endif
}

}  // namespace
