// Training on a CUDA device (skipped without one): the fused AdamW against the unfused update, the
// clip against the CPU's, and a bf16 run against the fp32 run on the CPU. Each is an independent
// reference: the unfused update is the closed-form AdamW the CPU tests check against
// torch::optim::AdamW.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "edit/core/device.h"
#include "edit/core/torch_compat.h"
#include "edit/shard/flat_adamw.h"
#include "edit/shard/sharded_model.h"
#include "loopback_communicator.h"
#include "tiny_transformer.h"

namespace {

using edit::shard::AdamWOptions;
using edit::shard::FlatAdamW;
using edit::shard::ShardedModel;
using edit::shard::ShardOptions;
using edit::testing_support::LoopbackCommunicator;
using edit::testing_support::tiny_batch;
using edit::testing_support::TinyConfig;
using edit::testing_support::TinyTransformer;

#define SKIP_WITHOUT_CUDA()                                                         \
  if (edit::cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device: runs on a GPU machine " \
                                                      "(scripts/gpu-check.sh)"

struct TrainingRun {
  std::shared_ptr<TinyTransformer> model;
  std::unique_ptr<ShardedModel> sharded;
  std::unique_ptr<FlatAdamW> adamw;
};

TrainingRun make_run(const TinyConfig& config, c10::Device device, at::ScalarType compute, bool fused) {
  TrainingRun run;
  at::manual_seed(0);
  run.model = std::make_shared<TinyTransformer>(config);
  run.model->to(device);
  ShardOptions options;
  options.compute_dtype = compute;
  run.sharded = std::make_unique<ShardedModel>(run.model, std::make_shared<LoopbackCommunicator>(), options);
  AdamWOptions adamw;
  adamw.lr = 3e-3;
  adamw.fused = fused;
  run.adamw = std::make_unique<FlatAdamW>(*run.sharded, adamw);
  return run;
}

// One fixed batch every step: the loss falls as the model memorises it, so a run that does not
// learn shows.
double train_step(TrainingRun& run, const TinyConfig& config, c10::Device device) {
  run.sharded->zero_grad();
  auto [x, y] = tiny_batch(config, 0, 0, 8);
  at::Tensor loss = run.model->loss(x.to(device), y.to(device));
  run.sharded->backward(loss);
  run.sharded->clip_grad_norm(1.0);
  run.adamw->step();
  return loss.item<double>();
}

TEST(CudaFusedAdamW, TwentyStepsMatchTheUnfusedUpdate) {
  SKIP_WITHOUT_CUDA();
  TinyConfig config;
  const c10::Device cuda(c10::kCUDA, 0);
  TrainingRun fused = make_run(config, cuda, at::kFloat, true);
  TrainingRun plain = make_run(config, cuda, at::kFloat, false);
  ASSERT_EQ(plain.adamw->fused(), false);
#if EDIT_TORCH_AT_LEAST(2, 1)
  ASSERT_TRUE(fused.adamw->fused()) << "LibTorch 2.1+ on CUDA has the fused kernel";
#endif
  for (int step = 0; step < 20; ++step) {
    const double a = train_step(fused, config, cuda);
    const double b = train_step(plain, config, cuda);
    // The same update in another rounding order: float32 differences of ~1e-7 relative, which
    // Adam's normalisation carries through 20 steps as ~1e-5 at most.
    EXPECT_NEAR(a, b, 1e-4 * std::abs(b)) << "step " << step;
  }
  for (int u = 0; u < fused.sharded->num_units(); ++u) {
    const at::Tensor diff = (fused.sharded->unit(u).shard() - plain.sharded->unit(u).shard()).abs().max();
    EXPECT_LT(diff.item<double>(), 1e-4) << "unit " << u;
  }
}

// A rank with nothing to step (every parameter frozen): the fused step launches nothing and moves
// nothing. It used to read the first slice of an empty list for the step tensor's options.
TEST(CudaFusedAdamW, EveryParameterFrozenStepsNothing) {
  SKIP_WITHOUT_CUDA();
  TinyConfig config;
  at::manual_seed(0);
  auto model = std::make_shared<TinyTransformer>(config);
  model->to(c10::Device(c10::kCUDA, 0));
  for (at::Tensor& p : model->parameters()) p.set_requires_grad(false);
  ShardedModel sharded(model, std::make_shared<LoopbackCommunicator>(), ShardOptions{});
  AdamWOptions options;
  options.fused = true;
  FlatAdamW adamw(sharded, options);
  std::vector<at::Tensor> before;
  for (int u = 0; u < sharded.num_units(); ++u) {
    sharded.unit(u).grad_shard().fill_(0.5);
    before.push_back(sharded.unit(u).shard().clone());
  }
  adamw.step();
  for (int u = 0; u < sharded.num_units(); ++u) {
    EXPECT_TRUE(at::equal(sharded.unit(u).shard(), before[static_cast<size_t>(u)])) << "unit " << u;
  }
}

// The clip on a GPU keeps its factor on the device (clip_grad_norm_queued): the same gradients on
// the CPU, where the host reads the norm and decides, are the reference. Under the limit nothing
// moves, bit for bit; over it, both scale by max / (norm + 1e-6).
TEST(CudaClip, MatchesTheCpuClipOnTheSameGradients) {
  SKIP_WITHOUT_CUDA();
  TinyConfig config;
  const c10::Device cuda(c10::kCUDA, 0), cpu(c10::kCPU);
  TrainingRun gpu = make_run(config, cuda, at::kFloat, true);
  TrainingRun reference = make_run(config, cpu, at::kFloat, false);
  for (const double max_norm : {1e6, 0.5}) {
    SCOPED_TRACE("max norm " + std::to_string(max_norm));
    std::vector<at::Tensor> grads;
    for (int u = 0; u < reference.sharded->num_units(); ++u) {
      grads.push_back(at::randn_like(reference.sharded->unit(u).grad_shard()));
      reference.sharded->unit(u).grad_shard().copy_(grads.back());
      gpu.sharded->unit(u).grad_shard().copy_(grads.back());
    }
    const at::Tensor gpu_norm = gpu.sharded->clip_grad_norm_queued(max_norm);
    EXPECT_TRUE(gpu_norm.is_cuda());
    const double cpu_norm = reference.sharded->clip_grad_norm(max_norm);
    EXPECT_NEAR(gpu_norm.item<double>(), cpu_norm, 1e-6 * cpu_norm);
    ASSERT_GT(cpu_norm, 0.5) << "the second round must clip";
    for (int u = 0; u < reference.sharded->num_units(); ++u) {
      const at::Tensor on_gpu = gpu.sharded->unit(u).grad_shard().cpu();
      const at::Tensor on_cpu = reference.sharded->unit(u).grad_shard();
      if (max_norm > cpu_norm) {
        EXPECT_TRUE(at::equal(on_gpu, grads[static_cast<size_t>(u)])) << "unit " << u << " moved under the limit";
      } else {
        EXPECT_TRUE(at::allclose(on_gpu, on_cpu, 1e-6, 1e-9)) << "unit " << u;
      }
    }
  }
}

TEST(CudaBf16Training, TracksTheFp32RunOnTheCpu) {
  SKIP_WITHOUT_CUDA();
  TinyConfig config;
  const c10::Device cuda(c10::kCUDA, 0), cpu(c10::kCPU);
  TrainingRun gpu = make_run(config, cuda, at::kBFloat16, true);
  TrainingRun reference = make_run(config, cpu, at::kFloat, false);
  ASSERT_TRUE(gpu.sharded->mixed_precision());
  double first = 0.0, gpu_last = 0.0, cpu_last = 0.0;
  for (int step = 0; step < 40; ++step) {
    gpu_last = train_step(gpu, config, cuda);
    cpu_last = train_step(reference, config, cpu);
    if (step == 0) first = cpu_last;
    // bf16 has 8 bits of mantissa: the losses agree to a few percent, step after step.
    EXPECT_NEAR(gpu_last, cpu_last, 0.05 * cpu_last) << "step " << step;
  }
  EXPECT_LT(cpu_last, 0.8 * first) << "the reference run must learn for the comparison to mean anything";
  EXPECT_LT(gpu_last, 0.8 * first);
  EXPECT_EQ(gpu.sharded->unit(0).shard().scalar_type(), at::kFloat) << "master weights stay fp32";
}

}  // namespace
