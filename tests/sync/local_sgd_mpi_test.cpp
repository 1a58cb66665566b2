// Local SGD strategies on real ranks: H = 1 plain averaging with SGD equals Ddp, EDiT (layer-wise)
// equals DiLoCo (bulk), the penalty keeps a blown-up or NaN worker out of the anchor and decides
// as the blocking reference does, EDiT's forward waits for no norm exchange, and evaluations see the
// anchors and give the local weights back.
// Runs on 2 ranks (S = 1, R = 2), 3 ranks (S = 1, R = 3) and 4 ranks (S = 2, R = 2).
#include <c10/core/GradMode.h>
#include <gtest/gtest.h>

#include <cmath>
#include <numeric>
#include <string>

#include "edit/comm/device_mesh.h"
#include "edit/core/check.h"
#include "edit/shard/flat_adamw.h"
#include "edit/shard/sharded_model.h"
#include "edit/sync/local_sgd.h"
#include "edit/sync/pseudo_grad.h"
#include "edit/sync/strategy.h"
#include "mpi_test_env.h"
#include "recording_communicator.h"
#include "tiny_transformer.h"

namespace {

using edit::comm::Communicator;
using edit::comm::WorkPtr;
using edit::shard::ShardedModel;
using edit::sync::LocalSgdOptions;
using edit::testing_support::CallLog;
using edit::testing_support::RecordingCommunicator;
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

// The same float64 model twice, with AdamW: `bulk` with DiLoCo, `layerwise` with EDiT (the
// penalty on in both), H = 2. Returns the EDiT.
edit::sync::EDiT* bulk_diloco_and_layerwise_edit(edit::comm::DeviceMesh& mesh, Worker& bulk, Worker& layerwise) {
  LocalSgdOptions options = edit::sync::EDiT::default_options();
  options.sync_every = 2;
  options.penalty.warmup_syncs = 1;
  for (Worker* w : {&bulk, &layerwise}) {
    w->inner = std::make_unique<edit::shard::FlatAdamW>(*w->model, edit::shard::AdamWOptions{1e-2});
  }
  bulk.strategy = std::make_unique<edit::sync::DiLoCo>(*bulk.model, mesh.sync_ptr(), options);
  auto* edit = new edit::sync::EDiT(*layerwise.model, mesh.sync_ptr(), options);
  layerwise.strategy.reset(edit);
  return edit;
}

TEST(LocalSgd, LayerwiseEditEqualsBulkDiloco) {
  edit::comm::DeviceMesh mesh = edit::comm::DeviceMesh::from_env({shard_size_for_world()});
  Worker bulk(mesh, 0, at::kDouble), layerwise(mesh, 0, at::kDouble);
  edit::sync::EDiT* edit = bulk_diloco_and_layerwise_edit(mesh, bulk, layerwise);
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

// Every evaluation runs inside with_global_model: there the model holds the anchors, the model
// every replica agrees on, and afterwards its own local weights again, bit for bit, also when the
// evaluation throws. Left in place, the anchors would turn Local SGD into averaging at each eval.
TEST(LocalSgd, WithGlobalModelShowsTheAnchorsAndGivesTheLocalWeightsBack) {
  edit::comm::DeviceMesh mesh = edit::comm::DeviceMesh::from_env({shard_size_for_world()});
  Worker w(mesh, 0, at::kDouble);
  w.inner = std::make_unique<edit::shard::FlatAdamW>(*w.model, edit::shard::AdamWOptions{1e-2});
  LocalSgdOptions options;
  options.sync_every = 4;
  auto* diloco = new edit::sync::DiLoCo(*w.model, mesh.sync_ptr(), options);
  w.strategy.reset(diloco);
  for (int s = 0; s < 6; ++s) w.step(mesh, s);  // a sync after step 3, then two local steps
  const int units = w.model->num_units();
  std::vector<at::Tensor> local;
  bool moved = false;
  for (int u = 0; u < units; ++u) {
    local.push_back(w.model->unit(u).shard().clone());
    moved = moved || !at::equal(local.back(), diloco->core().outer().anchor(u));
  }
  ASSERT_TRUE(moved) << "the test needs local weights away from the anchors";
  int calls = 0;
  w.strategy->with_global_model([&] {
    ++calls;
    for (int u = 0; u < units; ++u) {
      EXPECT_TRUE(at::equal(w.model->unit(u).shard(), diloco->core().outer().anchor(u))) << "unit " << u;
    }
  });
  EXPECT_EQ(calls, 1);
  for (int u = 0; u < units; ++u) EXPECT_TRUE(at::equal(w.model->unit(u).shard(), local[u])) << "unit " << u;
  EXPECT_THROW(w.strategy->with_global_model([] { EDIT_FAIL("the evaluation failed"); }), edit::Error);
  for (int u = 0; u < units; ++u) EXPECT_TRUE(at::equal(w.model->unit(u).shard(), local[u])) << "unit " << u;
}

// EDiT completes a pending layer-wise sync before it swaps the anchors in, from the very weights
// the next forward would have used: evaluations while a sync is pending (steps 1 and 5 here) leave
// the trajectory exactly as it was without them.
TEST(LocalSgd, EditEvaluatedWhileASyncIsPendingTakesTheSamePath) {
  edit::comm::DeviceMesh mesh = edit::comm::DeviceMesh::from_env({shard_size_for_world()});
  Worker evaluated(mesh, 0, at::kDouble), plain(mesh, 0, at::kDouble);
  const auto layerwise_edit = [&mesh](Worker& w) {
    LocalSgdOptions options = edit::sync::EDiT::default_options();
    options.sync_every = 2;
    options.penalty.warmup_syncs = 1;
    w.inner = std::make_unique<edit::shard::FlatAdamW>(*w.model, edit::shard::AdamWOptions{1e-2});
    auto* edit = new edit::sync::EDiT(*w.model, mesh.sync_ptr(), options);
    w.strategy.reset(edit);
    return edit;
  };
  edit::sync::EDiT* with_evals = layerwise_edit(evaluated);
  edit::sync::EDiT* without = layerwise_edit(plain);
  for (int s = 0; s < 8; ++s) {
    EXPECT_EQ(evaluated.step(mesh, s), plain.step(mesh, s)) << "step " << s;
    if (s == 1 || s == 5) {
      ASSERT_TRUE(with_evals->sync_pending()) << "step " << s;
      evaluated.strategy->with_global_model([&] {
        c10::NoGradGuard no_grad;
        auto [x, y] = tiny_batch(evaluated.config, 100 + s, mesh.rank(), 2);
        EXPECT_TRUE(std::isfinite(evaluated.module->loss(x, y).item<double>()));
      });
      EXPECT_FALSE(with_evals->sync_pending()) << "the evaluation completed the sync";
    }
  }
  with_evals->finish();
  without->finish();
  EXPECT_EQ(with_evals->stats().syncs, without->stats().syncs);
  EXPECT_TRUE(at::equal(evaluated.flat_params(), plain.flat_params()));
}

// A model may leave a unit out of some forwards. Where the forward that runs a sync skips one,
// EDiT syncs that unit in before_step (its shard has not moved since the sync was requested), so it
// still equals bulk DiLoCo, which syncs every unit at the sync step, and the next sync can be
// requested. The forwards that run the syncs (steps 2, 4, 6) skip block 1.
TEST(LocalSgd, LayerwiseEditSyncsAUnitItsForwardSkippedBeforeTheInnerStep) {
  edit::comm::DeviceMesh mesh = edit::comm::DeviceMesh::from_env({shard_size_for_world()});
  Worker bulk(mesh, 0, at::kDouble), layerwise(mesh, 0, at::kDouble);
  edit::sync::EDiT* edit = bulk_diloco_and_layerwise_edit(mesh, bulk, layerwise);
  for (int s = 0; s < 8; ++s) {
    bulk.module->skip_block = layerwise.module->skip_block = s % 2 == 0 ? 1 : -1;
    EXPECT_NEAR(bulk.step(mesh, s), layerwise.step(mesh, s), 1e-10) << "step " << s;
    EXPECT_EQ(edit->sync_pending(), s % 2 == 1) << "step " << s;
  }
  edit->finish();
  EXPECT_EQ(edit->stats().syncs, 4);
  const double difference = (bulk.flat_params() - layerwise.flat_params()).abs().max().item<double>();
  EXPECT_LT(difference, 1e-10);
}

// EDiT with the penalty: the forward that runs the layer-wise sync blocks in no host exchange, and
// only its first unit waits for norms. The norms of every unit go out in one all_gather per group
// when the first unit's sync begins (the shard group's sums a worker's shard norms, the sync
// group's gathers the R workers' norms); with S > 1 each aggregate's clip norm is an async
// all_gather issued when the aggregate lands. (The blocking sync made U all_gather_values over the
// sync group in that forward, and 2U more over the shard group with S > 1, each queued behind the
// all_reduce in flight.) The model is float, so every float64 collective is a norm exchange.
TEST(LocalSgd, EditForwardMakesOneNormExchangePerSync) {
  edit::comm::DeviceMesh mesh = edit::comm::DeviceMesh::from_env({shard_size_for_world()});
  auto log = std::make_shared<CallLog>();
  auto shard_group = std::make_shared<RecordingCommunicator>(mesh.shard_ptr(), log);
  auto sync_group = std::make_shared<RecordingCommunicator>(mesh.sync_ptr(), log);
  TinyConfig config;
  at::manual_seed(0);
  auto module = std::make_shared<TinyTransformer>(config);
  ShardedModel model(module, shard_group);
  edit::shard::FlatAdamW inner(model, edit::shard::AdamWOptions{1e-2});
  LocalSgdOptions options = edit::sync::EDiT::default_options();
  options.sync_every = 2;
  options.penalty.warmup_syncs = 1;
  edit::sync::EDiT edit(model, sync_group, options);
  for (int s = 0; s < 6; ++s) {
    auto [x, y] = tiny_batch(config, s, mesh.rank(), 2);
    model.zero_grad();
    log->phase = "forward " + std::to_string(s);
    at::Tensor loss = module->loss(x, y);
    log->phase = "backward " + std::to_string(s);
    model.backward(loss);
    edit.before_step(s);
    inner.step();
    log->phase = "after_step " + std::to_string(s);
    edit.after_step(s);
  }
  log->phase = "finish";
  edit.finish();
  EXPECT_EQ(edit.stats().syncs, 3);

  const std::int64_t units = model.num_units();
  const std::int64_t S = mesh.shard_size(), R = mesh.sync().size();
  const auto calls_in = [&](const std::string& group, const std::string& phase) {
    std::vector<CallLog::Call> found;
    for (const auto& c : log->calls) {
      if (c.group == group && c.issued_in == phase) found.push_back(c);
    }
    return found;
  };
  // Syncs at steps 1 and 3 run in the forwards of steps 2 and 4 (step 5's in finish()).
  for (int sync_step : {1, 3}) {
    const std::string at_sync = "after_step " + std::to_string(sync_step);
    const std::string forward = "forward " + std::to_string(sync_step + 1);
    EXPECT_TRUE(calls_in(mesh.sync().name(), at_sync).empty()) << "the sync runs in the next forward";
    EXPECT_TRUE(calls_in(mesh.shard().name(), at_sync).empty()) << "the sync runs in the next forward";
    // Over the sync group: every unit's norm in one all_gather, then the U weighted all_reduces.
    const auto sync_calls = calls_in(mesh.sync().name(), forward);
    ASSERT_EQ(static_cast<std::int64_t>(sync_calls.size()), 1 + units) << forward;
    EXPECT_EQ(sync_calls[0].op, "all_gather");
    EXPECT_EQ(sync_calls[0].dtype, at::kDouble);
    EXPECT_EQ(sync_calls[0].numel, R * units);
    for (size_t i = 1; i < sync_calls.size(); ++i) {
      EXPECT_EQ(sync_calls[i].op, "all_reduce");
      EXPECT_EQ(sync_calls[i].dtype, at::kFloat);
    }
    // Over the shard group, besides the parameter gathers (float): with S > 1, the sum of the
    // shard norms of every unit in one all_gather, then one clip norm per unit.
    std::vector<CallLog::Call> norms;
    for (const auto& c : calls_in(mesh.shard().name(), forward)) {
      if (c.dtype == at::kDouble) norms.push_back(c);
    }
    ASSERT_EQ(static_cast<std::int64_t>(norms.size()), S > 1 ? 1 + units : 0) << forward;
    for (size_t i = 0; i < norms.size(); ++i) {
      EXPECT_EQ(norms[i].op, "all_gather");
      EXPECT_EQ(norms[i].numel, i == 0 ? S * units : S);
    }
    for (const auto& c : log->calls) {
      if (c.issued_in == forward) {
        EXPECT_EQ(c.waited_in, forward) << c.group << " " << c.op << ": left in flight";
      }
    }
  }
  // No blocking host exchange anywhere in training: only the anchor check when EDiT was built.
  for (const auto& c : log->calls) {
    if (c.op == "all_gather_values") {
      EXPECT_EQ(c.issued_in, "") << c.group;
    }
  }
}

// The penalty, step by step, as the blocking code did it (the reference the async exchanges must
// match): each unit's ||delta_i|| summed over the shard group and all-gathered over the sync group
// with host exchanges, weights from a PseudoGradPenalty of the test's own, the weighted
// all_reduce, the clip norm summed over the shard group, and the average's step phi -= Delta.
struct Reference {
  std::vector<edit::sync::PenaltyDecision> decisions;  // per unit
  std::vector<at::Tensor> anchors;                     // per unit, after the sync
  int clipped = 0;
};

Reference blocking_reference(edit::comm::DeviceMesh& mesh, ShardedModel& model,
                             edit::sync::PseudoGradientSync& core, edit::sync::PseudoGradPenalty& penalty) {
  c10::NoGradGuard no_grad;
  Reference ref;
  for (int u = 0; u < model.num_units(); ++u) {
    double sqnorm = 0.0;
    at::Tensor delta = edit::sync::pseudo_gradient(core.outer().anchor(u), model.unit(u).shard(), &sqnorm);
    double total = 0.0;
    for (double part : mesh.shard().all_gather_values({sqnorm})) total += part;
    const auto decision = penalty.decide(u, mesh.sync().all_gather_values({std::sqrt(total)}));
    at::Tensor phi = core.outer().anchor(u).clone();
    if (!decision.skip) {
      const double weight = decision.weights.at(static_cast<size_t>(mesh.sync().rank()));
      if (weight == 0.0) delta.zero_();
      mesh.sync().all_reduce(delta, {edit::comm::ReduceOp::kSum, weight == 0.0 ? 1.0 : weight})->wait();
      double clip_sqnorm = 0.0;
      for (double part : mesh.shard().all_gather_values({edit::sync::squared_norm(delta)})) {
        clip_sqnorm += part;
      }
      const double scale = penalty.clip_scale(std::sqrt(clip_sqnorm));
      if (scale < 1.0) delta.mul_(scale);
      ref.clipped += scale < 1.0 ? 1 : 0;
      phi.sub_(delta);
    }
    ref.decisions.push_back(decision);
    ref.anchors.push_back(phi);
  }
  return ref;
}

void expect_as_reference(const Reference& ref, edit::sync::PseudoGradientSync& core,
                         const std::string& what) {
  for (int u = 0; u < static_cast<int>(ref.decisions.size()); ++u) {
    const auto& d = core.last_decision(u);
    EXPECT_EQ(d.weights, ref.decisions[static_cast<size_t>(u)].weights) << what << ", unit " << u;
    EXPECT_EQ(d.dropped, ref.decisions[static_cast<size_t>(u)].dropped) << what << ", unit " << u;
    EXPECT_EQ(d.skip, ref.decisions[static_cast<size_t>(u)].skip) << what << ", unit " << u;
    const at::Tensor& anchor = core.outer().anchor(u);
    ASSERT_TRUE(at::isfinite(anchor).all().item<bool>()) << what << ", unit " << u;
    EXPECT_LE((anchor - ref.anchors[static_cast<size_t>(u)]).abs().max().item<double>(), 1e-12)
        << what << ", unit " << u;
  }
}

// DiLoCo (bulk) and EDiT (layer-wise, inside the next forward) decide exactly as the blocking
// reference: same weights, same drops, same skips, same clip. Replica 1 blows up (x100) at one
// sync and turns NaN at another; every replica turns NaN in unit 0 at a third (its update is
// skipped); a small clip norm scales most aggregates. Float64, plain averaging.
TEST(LocalSgdPenalty, AsyncNormsDecideAsTheBlockingReference) {
  edit::comm::DeviceMesh mesh = edit::comm::DeviceMesh::from_env({shard_size_for_world()});
  Worker bulk(mesh, 0, at::kDouble), layerwise(mesh, 0, at::kDouble);
  LocalSgdOptions options = edit::sync::EDiT::default_options();
  options.sync_every = 1;
  options.outer.method = edit::sync::OuterMethod::kAverage;
  options.penalty.warmup_syncs = 2;
  options.penalty.clip_norm = 0.05;
  for (Worker* w : {&bulk, &layerwise}) {
    w->inner = std::make_unique<edit::shard::FlatAdamW>(*w->model, edit::shard::AdamWOptions{1e-2});
  }
  auto* diloco = new edit::sync::DiLoCo(*bulk.model, mesh.sync_ptr(), options);
  bulk.strategy.reset(diloco);
  auto* edit = new edit::sync::EDiT(*layerwise.model, mesh.sync_ptr(), options);
  layerwise.strategy.reset(edit);
  edit::sync::PseudoGradPenalty bulk_penalty(options.penalty), layerwise_penalty(options.penalty);

  const int replica = mesh.sync().rank();
  const auto damage = [&](Worker& w, int s) {
    c10::NoGradGuard no_grad;
    for (int u = 0; u < w.model->num_units(); ++u) {
      at::Tensor theta = w.model->unit(u).shard();
      if (s == 3 && replica == 1) theta.mul_(100.0);
      if (s == 5 && replica == 1) theta[0] = NAN;
      if (s == 7 && u == 0) theta[0] = NAN;
    }
  };
  const auto inner_step = [&](Worker& w, int s) {
    auto [x, y] = tiny_batch(w.config, s, mesh.rank(), 2);
    w.model->zero_grad();
    w.model->backward(w.module->loss(x, y));
    w.strategy->before_step(s);
    w.inner->step();
    damage(w, s);
  };
  Reference pending;
  int clipped = 0;
  std::int64_t dropped = 0, skipped = 0;
  const auto count = [&](const Reference& ref) {
    clipped += ref.clipped;
    for (const auto& d : ref.decisions) {
      dropped += d.dropped_count();
      skipped += d.skip ? 1 : 0;
    }
  };
  for (int s = 0; s < 9; ++s) {
    inner_step(bulk, s);
    const Reference ref = blocking_reference(mesh, *bulk.model, diloco->core(), bulk_penalty);
    count(ref);
    bulk.strategy->after_step(s);
    expect_as_reference(ref, diloco->core(), "diloco, step " + std::to_string(s));

    inner_step(layerwise, s);  // its forward ran the sync of step s - 1
    if (s > 0) expect_as_reference(pending, edit->core(), "edit, step " + std::to_string(s - 1));
    pending = blocking_reference(mesh, *layerwise.model, edit->core(), layerwise_penalty);
    layerwise.strategy->after_step(s);
  }
  edit->finish();
  expect_as_reference(pending, edit->core(), "edit, last step");
  EXPECT_EQ(diloco->stats().dropped_workers, dropped);
  EXPECT_EQ(diloco->stats().skipped_units, skipped);
  EXPECT_EQ(edit->stats().dropped_workers, diloco->stats().dropped_workers);
  EXPECT_EQ(edit->stats().skipped_units, diloco->stats().skipped_units);
  // The scenario covers what it claims: drops (x100, NaN), a skip (unit 0 NaN everywhere), clips.
  EXPECT_GE(dropped, 2 * bulk.model->num_units());
  EXPECT_GE(skipped, 1);
  EXPECT_GT(clipped, 0);
  EXPECT_LT((bulk.flat_params() - layerwise.flat_params()).abs().max().item<double>(), 1e-12);
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
