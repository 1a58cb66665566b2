// Local SGD strategies on real ranks: H = 1 plain averaging with SGD equals Ddp, EDiT (layer-wise)
// equals DiLoCo (bulk), and the penalty keeps a blown-up or NaN worker out of the anchor.
// Runs on 2 ranks (S = 1, R = 2) and 4 ranks (S = 2, R = 2).
#include <gtest/gtest.h>

#include <cmath>
#include <numeric>

#include "edit/comm/device_mesh.h"
#include "edit/core/check.h"
#include "edit/shard/flat_adamw.h"
#include "edit/shard/sharded_model.h"
#include "edit/sync/local_sgd.h"
#include "edit/sync/strategy.h"
#include "mpi_test_env.h"
#include "tiny_transformer.h"

namespace {

using edit::shard::ShardedModel;
using edit::sync::LocalSgdOptions;
using edit::testing_support::tiny_batch;
using edit::testing_support::TinyConfig;
using edit::testing_support::TinyTransformer;
using edit::testing_support::world;

int shard_size_for_world() { return world()->size() >= 4 ? 2 : 1; }

// One replica-worker: a model, its shards, an inner optimizer and a strategy.
struct Worker {
  TinyConfig config;
  std::shared_ptr<TinyTransformer> module;
  std::unique_ptr<ShardedModel> model;
  std::unique_ptr<edit::shard::FlatOptimizer> inner;
  std::unique_ptr<edit::sync::SyncStrategy> strategy;

  // Equivalence tests run in float64, where a tight bound holds whatever BLAS kernel the CPU uses.
  explicit Worker(edit::comm::DeviceMesh& mesh, int seed = 0, at::ScalarType dtype = at::kFloat) {
    at::manual_seed(static_cast<std::uint64_t>(seed));
    module = std::make_shared<TinyTransformer>(config);
    module->to(dtype);
    model = std::make_unique<ShardedModel>(module, mesh.shard_ptr());
  }
  double step(edit::comm::DeviceMesh& mesh, int step_index) {
    auto [x, y] = tiny_batch(config, step_index, mesh.rank(), 2);  // every rank its own data
    model->zero_grad();
    at::Tensor loss = module->loss(x, y);
    model->backward(loss);
    strategy->before_step(step_index);
    inner->step();
    strategy->after_step(step_index);
    return loss.item<double>();
  }
  at::Tensor flat_params() {
    std::vector<at::Tensor> parts;
    for (auto& [name, t] : model->gather_full_parameters()) parts.push_back(t.reshape({-1}));
    return at::cat(parts);
  }
};

TEST(LocalSgd, OneStepAveragingWithSgdEqualsDdp) {
  edit::comm::DeviceMesh mesh = edit::comm::DeviceMesh::from_env({shard_size_for_world()});
  Worker ddp(mesh, 0, at::kDouble), averaging(mesh, 0, at::kDouble);
  ddp.inner = std::make_unique<edit::shard::FlatSgd>(*ddp.model, 0.1);
  ddp.strategy = std::make_unique<edit::sync::Ddp>(*ddp.model, mesh.sync_ptr());
  averaging.inner = std::make_unique<edit::shard::FlatSgd>(*averaging.model, 0.1);
  LocalSgdOptions options;
  options.sync_every = 1;
  options.outer.method = edit::sync::OuterMethod::kAverage;
  averaging.strategy = std::make_unique<edit::sync::DiLoCo>(*averaging.model, mesh.sync_ptr(), options);
  for (int s = 0; s < 6; ++s) {
    EXPECT_NEAR(ddp.step(mesh, s), averaging.step(mesh, s), 1e-10) << "step " << s;
  }
  const double difference = (ddp.flat_params() - averaging.flat_params()).abs().max().item<double>();
  EXPECT_LT(difference, 1e-10);
  // And it really is synced: every replica holds the same parameters.
  const double checksum = averaging.flat_params().to(at::kDouble).sum().item<double>();
  for (double other : mesh.world().all_gather_values({checksum})) EXPECT_EQ(other, checksum);
}

// Ddp averages each unit's gradient as soon as its backward of the step's last micro-batch is
// done, overlapped with the backward of the units before it; earlier micro-batches only add up.
// With SGD it must still equal H = 1 parameter averaging, micro-batches and all.
TEST(LocalSgd, OverlappedDdpWithMicroBatchesEqualsOneStepAveraging) {
  edit::comm::DeviceMesh mesh = edit::comm::DeviceMesh::from_env({shard_size_for_world()});
  Worker ddp(mesh, 0, at::kDouble), averaging(mesh, 0, at::kDouble);
  ddp.inner = std::make_unique<edit::shard::FlatSgd>(*ddp.model, 0.1);
  auto* overlapped = new edit::sync::Ddp(*ddp.model, mesh.sync_ptr());
  ddp.strategy.reset(overlapped);
  averaging.inner = std::make_unique<edit::shard::FlatSgd>(*averaging.model, 0.1);
  LocalSgdOptions options;
  options.sync_every = 1;
  options.outer.method = edit::sync::OuterMethod::kAverage;
  averaging.strategy = std::make_unique<edit::sync::DiLoCo>(*averaging.model, mesh.sync_ptr(), options);
  constexpr int kMicro = 3;
  for (int s = 0; s < 4; ++s) {
    for (Worker* w : {&ddp, &averaging}) {
      w->model->zero_grad();
      const auto sync_ops_before = mesh.sync().stats().ops;
      for (int m = 0; m < kMicro; ++m) {
        w->strategy->before_micro_batch(s, m, kMicro);
        auto [x, y] = tiny_batch(w->config, s, kMicro * mesh.rank() + m, 2);
        w->model->backward(w->module->loss(x, y) / kMicro);
        if (m + 1 < kMicro) {
          EXPECT_EQ(mesh.sync().stats().ops, sync_ops_before) << "micro-batch " << m << " only accumulates";
        }
      }
      w->strategy->before_step(s);
      w->inner->step();
      w->strategy->after_step(s);
    }
    // S = 1: every unit went out during the backward; S > 1: all but the first unit, whose
    // shard-group reduce-scatter is the last to land.
    const int units = ddp.model->num_units();
    EXPECT_EQ(overlapped->issued_during_backward(), mesh.shard_size() > 1 ? units - 1 : units) << "step " << s;
  }
  EXPECT_LT((ddp.flat_params() - averaging.flat_params()).abs().max().item<double>(), 1e-10);
}

TEST(LocalSgd, LayerwiseEditEqualsBulkDiloco) {
  edit::comm::DeviceMesh mesh = edit::comm::DeviceMesh::from_env({shard_size_for_world()});
  Worker bulk(mesh, 0, at::kDouble), layerwise(mesh, 0, at::kDouble);
  LocalSgdOptions options = edit::sync::EDiT::default_options();  // penalty on, in both
  options.sync_every = 2;
  options.penalty.warmup_syncs = 1;
  bulk.inner = std::make_unique<edit::shard::FlatAdamW>(*bulk.model, edit::shard::AdamWOptions{1e-2});
  layerwise.inner = std::make_unique<edit::shard::FlatAdamW>(*layerwise.model, edit::shard::AdamWOptions{1e-2});
  bulk.strategy = std::make_unique<edit::sync::DiLoCo>(*bulk.model, mesh.sync_ptr(), options);
  auto* edit = new edit::sync::EDiT(*layerwise.model, mesh.sync_ptr(), options);
  layerwise.strategy.reset(edit);
  for (int s = 0; s < 8; ++s) {
    // EDiT's sync of step s-1 happens inside this forward: the losses must already agree.
    EXPECT_NEAR(bulk.step(mesh, s), layerwise.step(mesh, s), 1e-10) << "step " << s;
  }
  EXPECT_TRUE(edit->sync_pending());
  edit->finish();
  EXPECT_FALSE(edit->sync_pending());
  EXPECT_EQ(edit->stats().syncs, 4);
  const double difference = (bulk.flat_params() - layerwise.flat_params()).abs().max().item<double>();
  EXPECT_LT(difference, 1e-10);
}

// A checksum of this rank's anchors (or parameters), the same on every replica when they agree.
double sum_of(const std::vector<at::Tensor>& parts) {
  double total = 0.0;
  for (const auto& t : parts) total += t.to(at::kDouble).sum().item<double>() + t.to(at::kDouble).pow(2).sum().item<double>();
  return total;
}

std::vector<double> per_replica(edit::comm::DeviceMesh& mesh, double mine) { return mesh.sync().all_gather_values({mine}); }

// Ranks that build their model from different seeds train one model once a strategy is built.
TEST(LocalSgd, ReplicasSeededDifferentlyStartAndStayEqual) {
  edit::comm::DeviceMesh mesh = edit::comm::DeviceMesh::from_env({shard_size_for_world()});
  for (const std::string kind : {"ddp", "diloco", "edit"}) {
    Worker worker(mesh, 100 + mesh.rank());  // every rank its own initial weights
    std::vector<at::Tensor> before;
    for (int u = 0; u < worker.model->num_units(); ++u) before.push_back(worker.model->unit(u).shard().clone());
    ASSERT_NE(per_replica(mesh, sum_of(before)).front(), per_replica(mesh, sum_of(before)).back())
        << "the seeds should have given the replicas different weights";
    worker.inner = std::make_unique<edit::shard::FlatAdamW>(*worker.model, edit::shard::AdamWOptions{1e-2});
    LocalSgdOptions options = edit::sync::EDiT::default_options();
    options.sync_every = 2;
    options.check_replicas_every = 1;
    if (kind == "ddp") worker.strategy = std::make_unique<edit::sync::Ddp>(*worker.model, mesh.sync_ptr());
    if (kind == "diloco") worker.strategy = std::make_unique<edit::sync::DiLoCo>(*worker.model, mesh.sync_ptr(), options);
    if (kind == "edit") worker.strategy = std::make_unique<edit::sync::EDiT>(*worker.model, mesh.sync_ptr(), options);
    // Replica 0's weights everywhere, before any step.
    std::vector<at::Tensor> start;
    for (int u = 0; u < worker.model->num_units(); ++u) start.push_back(worker.model->unit(u).shard());
    const auto start_sums = per_replica(mesh, sum_of(start));
    for (double other : start_sums) EXPECT_EQ(other, start_sums.front()) << kind;
    if (mesh.sync().rank() == 0) {
      EXPECT_EQ(sum_of(start), sum_of(before)) << kind << ": replica 0 keeps its own weights";
    }
    for (int s = 0; s < 6; ++s) worker.step(mesh, s);
    worker.strategy->finish();
    std::vector<at::Tensor> end;
    for (int u = 0; u < worker.model->num_units(); ++u) {
      if (kind == "ddp") {
        end.push_back(worker.model->unit(u).shard());
      } else if (kind == "diloco") {
        end.push_back(static_cast<edit::sync::DiLoCo&>(*worker.strategy).core().outer().anchor(u));
      } else {
        end.push_back(static_cast<edit::sync::EDiT&>(*worker.strategy).core().outer().anchor(u));
      }
    }
    const auto end_sums = per_replica(mesh, sum_of(end));
    for (double other : end_sums) EXPECT_EQ(other, end_sums.front()) << kind;
  }
}

TEST(LocalSgd, ReplicaCheckNamesTheReplicaThatDrifted) {
  edit::comm::DeviceMesh mesh = edit::comm::DeviceMesh::from_env({shard_size_for_world()});
  Worker worker(mesh);
  LocalSgdOptions options;
  options.sync_every = 2;
  auto diloco = std::make_unique<edit::sync::DiLoCo>(*worker.model, mesh.sync_ptr(), options);
  diloco->core().check_replicas();  // equal: no error
  if (mesh.sync().rank() == 1) diloco->core().outer().mutable_anchor(0).add_(1e-3);
  try {
    diloco->core().check_replicas();
    ADD_FAILURE() << "a drifted replica went unnoticed";
  } catch (const edit::Error& e) {
    EXPECT_NE(std::string(e.what()).find("replica(s) 1 disagree with replica 0"), std::string::npos) << e.what();
  }
}

// Trains R workers a few normal syncs, then worker 1 blows up (params x 100, or a NaN) right
// before a sync. Plain averaging (lr 1, momentum 0) makes the anchor a weighted mean of workers.
struct BlowUpResult {
  at::Tensor anchor;        // concatenated over units, this rank's shard
  at::Tensor others_mean;   // mean of the healthy workers' theta (same layout)
  at::Tensor blown;         // worker 1's theta
};

BlowUpResult run_blow_up(bool penalty, bool nan) {
  edit::comm::DeviceMesh mesh = edit::comm::DeviceMesh::from_env({shard_size_for_world()});
  Worker worker(mesh);
  worker.inner = std::make_unique<edit::shard::FlatAdamW>(*worker.model, edit::shard::AdamWOptions{1e-2});
  LocalSgdOptions options;
  options.sync_every = 1;
  options.outer.method = edit::sync::OuterMethod::kAverage;
  options.use_penalty = penalty;
  options.penalty.warmup_syncs = 2;
  options.penalty.clip = false;  // anomaly elimination alone must keep the worker out
  auto* diloco = new edit::sync::DiLoCo(*worker.model, mesh.sync_ptr(), options);
  worker.strategy.reset(diloco);
  for (int s = 0; s < 4; ++s) worker.step(mesh, s);

  // Step 4 by hand, so the damage lands between the inner step and the sync.
  auto [x, y] = tiny_batch(worker.config, 4, mesh.rank(), 2);
  worker.model->zero_grad();
  worker.model->backward(worker.module->loss(x, y));
  worker.inner->step();
  const int replica = mesh.sync().rank();
  if (replica == 1) {
    for (int u = 0; u < worker.model->num_units(); ++u) {
      if (nan) {
        worker.model->unit(u).shard()[0] = NAN;
      } else {
        worker.model->unit(u).shard().mul_(100.0);
      }
    }
  }
  std::vector<at::Tensor> thetas;
  for (int u = 0; u < worker.model->num_units(); ++u) thetas.push_back(worker.model->unit(u).shard().clone());
  const at::Tensor theta = at::cat(thetas);
  at::Tensor all = at::empty({theta.numel() * mesh.sync().size()});
  mesh.sync().all_gather(all, theta)->wait();
  at::Tensor per_worker = all.view({mesh.sync().size(), theta.numel()});
  std::vector<int64_t> healthy;
  for (int r = 0; r < mesh.sync().size(); ++r) {
    if (r != 1) healthy.push_back(r);
  }
  BlowUpResult result;
  result.others_mean = per_worker.index_select(0, at::tensor(healthy)).mean(0);
  result.blown = per_worker[1].clone();
  diloco->after_step(4);
  std::vector<at::Tensor> anchors;
  for (int u = 0; u < worker.model->num_units(); ++u) anchors.push_back(diloco->core().outer().anchor(u));
  result.anchor = at::cat(anchors);
  return result;
}

TEST(LocalSgdPenalty, BlownUpWorkerIsExcludedAndTheAnchorStaysWithTheOthers) {
  const BlowUpResult with = run_blow_up(/*penalty=*/true, /*nan=*/false);
  const double spread = (with.blown - with.others_mean).abs().max().item<double>();
  ASSERT_TRUE(at::isfinite(with.anchor).all().item<bool>());
  const double off = (with.anchor - with.others_mean).abs().max().item<double>();
  // With R = 2 the anchor is the healthy worker's theta exactly; with more, a weighted mean of theirs.
  EXPECT_LT(off, 1e-2 * spread) << "anchor moved towards the blown-up worker";

  const BlowUpResult without = run_blow_up(/*penalty=*/false, /*nan=*/false);
  const double dragged = (without.anchor - without.others_mean).abs().max().item<double>();
  EXPECT_GT(dragged, 0.2 * spread) << "without the penalty the blown-up worker should drag the anchor";
}

TEST(LocalSgdPenalty, NanInOneWorkerNeverReachesTheAnchor) {
  const BlowUpResult result = run_blow_up(/*penalty=*/true, /*nan=*/true);
  EXPECT_TRUE(at::isfinite(result.anchor).all().item<bool>());
  EXPECT_LT((result.anchor - result.others_mean).abs().max().item<double>(), 1e-2);
}

}  // namespace
