// Trainer on real ranks: EDiT on the tiny transformer learns a fixed batch, and the JSONL metrics
// say what happened (sync bytes exactly on the steps whose forward carried a layer-wise sync).
#include <gtest/gtest.h>

#include <chrono>
#include <csignal>
#include <cstdio>
#include <thread>

#include <pthread.h>
#include <signal.h>
#include <unistd.h>
#include <fstream>
#include <map>
#include <sstream>
#include <nlohmann/json.hpp>

#include "edit/comm/device_mesh.h"
#include "edit/shard/flat_adamw.h"
#include "edit/sync/local_sgd.h"
#include "edit/sync/streaming.h"
#include "edit/comm/mpi_communicator.h"
#include "edit/train/stop_signal.h"
#include "edit/train/trainer.h"
#include "error_of.h"
#include "mpi_test_env.h"
#include "tiny_transformer.h"

namespace {

using edit::testing_support::tiny_batch;
using edit::testing_support::TinyConfig;
using edit::testing_support::TinyTransformer;
using edit::testing_support::world;

TEST(Trainer, EditLearnsAndTheMetricsRecordEachSync) {
  edit::comm::DeviceMesh mesh = edit::comm::DeviceMesh::from_env({world()->size() >= 4 ? 2 : 1});
  TinyConfig config;
  at::manual_seed(0);
  auto module = std::make_shared<TinyTransformer>(config);
  edit::shard::ShardedModel model(module, mesh.shard_ptr());
  edit::shard::FlatAdamW inner(model, {3e-3});
  edit::sync::LocalSgdOptions local = edit::sync::EDiT::default_options();
  local.sync_every = 4;
  edit::sync::EDiT strategy(model, mesh.sync_ptr(), local);
  const std::string path = "trainer_metrics_np" + std::to_string(mesh.world_size()) + ".jsonl";
  if (mesh.rank() == 0) std::remove(path.c_str());
  edit::train::TrainerOptions options;
  options.steps = 13;
  options.accumulation = 2;
  options.schedule = {1e-2, 2, 13, 1e-3};
  options.metrics_path = path;
  options.log_every = 4;
  options.profile_first = 5;  // steps 5 and 6, between two syncs
  options.profile_steps = 2;
  options.profile_dir = ".";
  const std::string profile = "profile_rank" + std::to_string(mesh.rank()) + ".csv";
  std::remove(profile.c_str());
  edit::train::Trainer trainer(mesh, model, inner, strategy, options);

  // The same two micro-batches every step: the loss must fall.
  const auto batch_of = [&](std::int64_t, int micro) {
    auto [x, y] = tiny_batch(config, 0, 2 * mesh.rank() + micro, 4);
    return edit::train::Batch{x, y};
  };
  const auto loss_of = [&](const edit::train::Batch& b) { return module->loss(b.inputs, b.targets); };
  const auto first = trainer.step(batch_of, loss_of);
  const auto last = trainer.run(batch_of, loss_of);
  EXPECT_EQ(trainer.current_step(), 13);
  EXPECT_FALSE(strategy.sync_pending()) << "run() must finish the pending sync";
  // Each replica fits its own two batches and the syncs pull the replicas together: the loss
  // falls, but not all the way in 13 steps.
  EXPECT_LT(last.loss_world, 0.9 * first.loss_world);
  EXPECT_DOUBLE_EQ(first.lr, 5e-3);  // warm-up: 1e-2 * 1/2

  // Every rank profiled exactly steps 5 and 6: two micro-batches each, a GELU per block in each
  // forward and backward.
  std::map<std::string, std::int64_t> calls;
  std::ifstream profile_in(profile);
  std::string row;
  ASSERT_TRUE(std::getline(profile_in, row)) << profile << " was not written";
  EXPECT_EQ(row, "name,kind,where,calls,total_us,us_per_step");
  while (std::getline(profile_in, row)) {
    const auto name_end = row.find("\",");
    ASSERT_NE(name_end, std::string::npos) << row;
    std::stringstream fields(row.substr(name_end + 2));
    std::string kind, where, count;
    std::getline(fields, kind, ',');
    std::getline(fields, where, ',');
    std::getline(fields, count, ',');
    calls[row.substr(1, name_end - 1)] = std::stoll(count);
  }
  EXPECT_EQ(calls["aten::gelu"], 2 * 2 * config.layers);
  EXPECT_EQ(calls["aten::gelu_backward"], 2 * 2 * config.layers);
  EXPECT_EQ(calls["edit::forward"], 2 * 2);
  EXPECT_EQ(calls["edit::backward"], 2 * 2);
  EXPECT_EQ(calls["edit::optimizer"], 2);

  mesh.world().barrier()->wait();
  if (mesh.rank() != 0) return;
  std::ifstream in(path);
  std::string text;
  std::vector<nlohmann::json> lines;
  while (std::getline(in, text)) lines.push_back(nlohmann::json::parse(text));
  ASSERT_EQ(lines.size(), 13u);
  for (const auto& line : lines) {
    const int step = line["step"].get<int>();
    // after_step(3), (7), (11) request a sync; it runs in the forward of steps 4, 8, 12.
    const bool sync_step = step == 4 || step == 8 || step == 12;
    if (mesh.num_replicas() > 1) {
      EXPECT_EQ(line["bytes_sync"].get<std::int64_t>() > 0, sync_step) << line.dump();
    }
    EXPECT_GT(line["tokens_per_s"].get<double>(), 0.0);
    EXPECT_EQ(line["strategy"], "edit");
    EXPECT_EQ(line.contains("loss_world"), step % 4 == 0 || step == 12) << line.dump();
    if (mesh.shard_size() == 1) {
      EXPECT_EQ(line["bytes_shard"].get<std::int64_t>(), 0) << "S = 1 must not use the shard group";
    }
  }
}

}  // namespace

namespace {

std::shared_ptr<TinyTransformer> seeded_tiny_transformer(const TinyConfig& config) {
  at::manual_seed(0);
  return std::make_shared<TinyTransformer>(config);
}

// The tiny transformer under Ddp (or another strategy) and AdamW on a mesh of shard size S, for the
// tests below, each with the tiny batches of its step and rank.
template <typename Strategy = edit::sync::Ddp>
struct TinyRun {
  template <typename... StrategyArgs>
  explicit TinyRun(int shard_size, StrategyArgs&&... strategy_args)
      : mesh(edit::comm::DeviceMesh::from_env({shard_size})),
        module(seeded_tiny_transformer(config)),
        model(module, mesh.shard_ptr()),
        inner(model, {1e-3}),
        strategy(model, mesh.sync_ptr(), std::forward<StrategyArgs>(strategy_args)...) {}
  edit::train::Batch batch(std::int64_t step) const {
    auto [x, y] = tiny_batch(config, static_cast<int>(step), mesh.rank(), 2);
    return edit::train::Batch{x, y};
  }

  edit::comm::DeviceMesh mesh;
  TinyConfig config;
  std::shared_ptr<TinyTransformer> module;
  edit::shard::ShardedModel model;
  edit::shard::FlatAdamW inner;
  Strategy strategy;
};
using DdpRun = TinyRun<>;

// The straggler plan slows exactly the ranks and steps it names, inside the step, and Ddp makes
// every rank wait for it.
TEST(Trainer, StragglerPlanSlowsTheNamedRankAndStepsOnly) {
  DdpRun run(1);
  edit::train::TrainerOptions options;
  options.steps = 6;
  options.schedule = {1e-3, 0, 6, 1e-3};
  options.log_every = 0;
  options.stragglers = edit::train::StragglerPlan::parse("1:+40ms@2-4,1:2x@5-6");
  edit::train::Trainer trainer(run.mesh, run.model, run.inner, run.strategy, options);
  const auto batch_of = [&](std::int64_t step, int) { return run.batch(step); };
  const auto loss_of = [&](const edit::train::Batch& b) { return run.module->loss(b.inputs, b.targets); };
  double total = 0.0;
  for (std::int64_t step = 0; step < 6; ++step) {
    const auto m = trainer.step(batch_of, loss_of);
    const bool slowed_rank = run.mesh.rank() == 1;
    if (slowed_rank && (step == 2 || step == 3)) {
      EXPECT_DOUBLE_EQ(m.straggler_delay_s, 0.040) << "step " << step;
    } else if (slowed_rank && step == 5) {
      EXPECT_GT(m.straggler_delay_s, 0.0) << "2x: the step's own compute time again";
    } else {
      EXPECT_EQ(m.straggler_delay_s, 0.0) << "step " << step << " rank " << run.mesh.rank();
    }
    total += m.seconds;
  }
  // Every rank waits for the straggler at Ddp's gradient averages. Ddp issues them during the
  // backward, before the straggler's delay, so a fast rank's wait for a delay of step s comes in
  // step s + 1: in all, at least the 80 ms of the two delays of rank 1 (a little less for the
  // rank that started first).
  EXPECT_GE(total, 0.070) << "rank " << run.mesh.rank();
}
// A copy of every tensor the model and the optimizer hold, to compare after a refused step.
std::vector<at::Tensor> snapshot(edit::shard::ShardedModel& model, edit::shard::FlatOptimizer& inner) {
  std::vector<at::Tensor> saved;
  for (int u = 0; u < model.num_units(); ++u) saved.push_back(model.unit(u).shard().clone());
  for (const auto& [key, tensor] : inner.state_dict().tensors) saved.push_back(tensor.clone());
  return saved;
}

// Every tensor of `after` bit for bit equal to its counterpart in `before`.
void expect_bitwise_equal(const std::vector<at::Tensor>& after, const std::vector<at::Tensor>& before) {
  ASSERT_EQ(after.size(), before.size());
  for (size_t i = 0; i < before.size(); ++i) EXPECT_TRUE(at::equal(after[i], before[i])) << "tensor " << i;
}

// A NaN loss on one rank stops every rank in the same step, before the update: the bad rank by its
// loss, the others by the global gradient norm, which the NaN reaches through the gradient average
// (Ddp, S = 1) or the reduce-scatter (one replica sharded over all ranks: there a rank that stopped
// at its loss before the clip's all-reduce would leave its peers waiting in it). Weights and AdamW
// moments stay bit for bit as they were. Without a clip the norm is checked all the same.
void expect_a_nan_loss_on_one_rank_stops_every_rank(int shard_size, double clip) {
  SCOPED_TRACE("shard size " + std::to_string(shard_size) + (clip > 0 ? ", clip on" : ", clip off"));
  DdpRun run(shard_size);
  edit::train::TrainerOptions options;
  options.steps = 4;
  options.schedule = {1e-3, 0, 4, 1e-3};
  options.log_every = 0;
  options.clip_norm = clip;
  edit::train::Trainer trainer(run.mesh, run.model, run.inner, run.strategy, options);
  const int rank = run.mesh.rank();
  const int bad_rank = run.mesh.world_size() - 1;
  const auto batch_of = [&](std::int64_t step, int) { return run.batch(step); };
  const auto loss_of = [&](const edit::train::Batch& b) {
    const at::Tensor loss = run.module->loss(b.inputs, b.targets);
    return trainer.current_step() == 2 && rank == bad_rank ? loss * std::nan("") : loss;
  };
  for (int step = 0; step < 2; ++step) {
    const auto m = trainer.step(batch_of, loss_of);
    ASSERT_TRUE(std::isfinite(m.loss) && std::isfinite(m.grad_norm) && m.grad_norm > 0) << "step " << step;
  }
  const std::vector<at::Tensor> before = snapshot(run.model, run.inner);
  const std::string error = edit::testing_support::error_of([&] { trainer.step(batch_of, loss_of); });
  // ("nan" or "-nan": a NaN's sign depends on where it was made.)
  const std::string what = rank == bad_rank ? "step 2: the loss is " : "step 2: the gradient norm is ";
  const size_t at = error.find(what);
  ASSERT_NE(at, std::string::npos) << error;
  EXPECT_NE(error.find("nan", at + what.size()), std::string::npos) << error;
  if (rank == bad_rank) {
    EXPECT_NE(error.find("on rank " + std::to_string(bad_rank)), std::string::npos) << error;
  }
  EXPECT_NE(error.find("training stopped before the update"), std::string::npos) << error;
  EXPECT_EQ(trainer.current_step(), 2);
  expect_bitwise_equal(snapshot(run.model, run.inner), before);
}

TEST(Trainer, ANonFiniteLossOnOneRankStopsEveryRankBeforeTheUpdate) {
  expect_a_nan_loss_on_one_rank_stops_every_rank(1, 1.0);
  expect_a_nan_loss_on_one_rank_stops_every_rank(world()->size(), 1.0);
  expect_a_nan_loss_on_one_rank_stops_every_rank(1, 0.0);
}

// --on-nonfinite skip: a NaN loss on one rank at step 2 leaves that step's update out on every rank
// of its model (the gradient norm the NaN reaches is global), and training goes on. Reference: the
// same run that never took step 2 (steps 0, 1, then 3, 4 at their own learning rates and batches),
// which must end bit for bit where the skipping run ends: a skipped step changes neither the weights
// nor AdamW's moments and step count.
void expect_a_nan_step_to_be_skipped_by_every_rank(int shard_size, double clip) {
  SCOPED_TRACE("shard size " + std::to_string(shard_size) + (clip > 0 ? ", clip on" : ", clip off"));
  edit::train::TrainerOptions options;
  options.steps = 5;
  options.schedule = {1e-3, 2, 5, 1e-4};
  options.log_every = 2;  // the log line's world mean and skip count run on the skipping step
  options.clip_norm = clip;
  options.on_nonfinite = edit::train::NonFinitePolicy::kSkip;
  std::vector<at::Tensor> skipped_run, reference;
  {
    DdpRun run(shard_size);
    edit::train::Trainer trainer(run.mesh, run.model, run.inner, run.strategy, options);
    const int bad_rank = run.mesh.world_size() - 1;
    const auto batch_of = [&](std::int64_t step, int) { return run.batch(step); };
    const auto loss_of = [&](const edit::train::Batch& b) {
      const at::Tensor loss = run.module->loss(b.inputs, b.targets);
      return trainer.current_step() == 2 && run.mesh.rank() == bad_rank ? loss * std::nan("") : loss;
    };
    for (int step = 0; step < 2; ++step) EXPECT_FALSE(trainer.step(batch_of, loss_of).skipped);
    const std::vector<at::Tensor> before = snapshot(run.model, run.inner);
    const edit::train::StepMetrics m = trainer.step(batch_of, loss_of);
    EXPECT_TRUE(m.skipped) << "rank " << run.mesh.rank();
    EXPECT_FALSE(std::isfinite(m.grad_norm));
    EXPECT_EQ(std::isfinite(m.loss), run.mesh.rank() != bad_rank);
    // The world mean is over the finite losses: the bad rank's NaN is left out.
    EXPECT_TRUE(std::isfinite(m.loss_world));
    expect_bitwise_equal(snapshot(run.model, run.inner), before);
    for (int step = 3; step < 5; ++step) {
      const auto later = trainer.step(batch_of, loss_of);
      EXPECT_FALSE(later.skipped);
      EXPECT_TRUE(std::isfinite(later.loss) && std::isfinite(later.grad_norm));
    }
    skipped_run = snapshot(run.model, run.inner);
  }
  {
    DdpRun run(shard_size);
    edit::train::Trainer trainer(run.mesh, run.model, run.inner, run.strategy, options);
    const auto batch_of = [&](std::int64_t step, int) { return run.batch(step); };
    const auto loss_of = [&](const edit::train::Batch& b) { return run.module->loss(b.inputs, b.targets); };
    for (int step = 0; step < 2; ++step) trainer.step(batch_of, loss_of);
    trainer.set_step(3);
    for (int step = 3; step < 5; ++step) trainer.step(batch_of, loss_of);
    reference = snapshot(run.model, run.inner);
  }
  expect_bitwise_equal(skipped_run, reference);
}

TEST(Trainer, ANonFiniteStepIsSkippedByEveryRankOfItsModelWhenAsked) {
  expect_a_nan_step_to_be_skipped_by_every_rank(1, 1.0);
  expect_a_nan_step_to_be_skipped_by_every_rank(world()->size(), 1.0);
  expect_a_nan_step_to_be_skipped_by_every_rank(1, 0.0);
}

// A short run at a constant learning rate that skips the steps whose gradients are non-finite.
edit::train::TrainerOptions skipping(std::int64_t steps) {
  edit::train::TrainerOptions options;
  options.steps = steps;
  options.schedule = {1e-3, 0, steps, 1e-3};
  options.log_every = 0;
  options.on_nonfinite = edit::train::NonFinitePolicy::kSkip;
  return options;
}

// Local SGD replicas decide each for their own: DiLoCo with one replica per rank, a NaN on the last
// replica at step 1; that replica alone skips, the others update, and the sync at step 3 (H = 2)
// brings every replica to the same finite anchor.
TEST(Trainer, EachLocalSgdReplicaSkipsItsOwnNonFiniteStep) {
  edit::sync::LocalSgdOptions local;
  local.sync_every = 2;
  TinyRun<edit::sync::DiLoCo> run(1, local);
  edit::train::Trainer trainer(run.mesh, run.model, run.inner, run.strategy, skipping(4));
  const int bad_rank = run.mesh.world_size() - 1;
  const bool bad = run.mesh.rank() == bad_rank;
  const auto batch_of = [&](std::int64_t step, int) { return run.batch(step); };
  const auto loss_of = [&](const edit::train::Batch& b) {
    const at::Tensor loss = run.module->loss(b.inputs, b.targets);
    return trainer.current_step() == 2 && bad ? loss * std::nan("") : loss;
  };
  for (int step = 0; step < 2; ++step) trainer.step(batch_of, loss_of);  // the first sync after step 1
  const std::vector<at::Tensor> before = snapshot(run.model, run.inner);
  EXPECT_EQ(trainer.step(batch_of, loss_of).skipped, bad);
  const std::vector<at::Tensor> after = snapshot(run.model, run.inner);
  EXPECT_EQ(at::equal(after.front(), before.front()), bad) << "rank " << run.mesh.rank();
  EXPECT_FALSE(trainer.step(batch_of, loss_of).skipped);  // step 3: the replicas sync
  const at::Tensor mine = run.model.unit(0).shard().clone();
  at::Tensor all = at::empty({run.mesh.world_size() * mine.numel()});
  run.mesh.world().all_gather(all, mine)->wait();
  EXPECT_TRUE(at::all(at::isfinite(all)).item<bool>());
  for (int r = 0; r < run.mesh.world_size(); ++r) {
    EXPECT_TRUE(at::equal(all.narrow(0, r * mine.numel(), mine.numel()), mine)) << "replica " << r;
  }
}

// The run's last step lands what is in flight. Streaming DiLoCo with tau = 2 issues fragment 0's
// exchange after step 7 (H = 8), to be merged after step 9; a run of 8 steps ends right after the
// issue. Its last step() merges it: nothing is left in flight, every anchor holds it, and a
// finish() after the run changes nothing. A step before the last leaves its exchange in flight.
TEST(Trainer, TheLastStepLandsTheExchangesStillInFlight) {
  edit::sync::StreamingOptions streaming;
  streaming.local.sync_every = 8;
  streaming.fragments = 2;
  streaming.overlap = 2;
  TinyRun<edit::sync::StreamingDiLoCo> run(1, streaming);
  edit::train::TrainerOptions options;
  options.steps = 8;
  options.schedule = {1e-3, 0, 8, 1e-3};
  options.log_every = 0;
  edit::train::Trainer trainer(run.mesh, run.model, run.inner, run.strategy, options);
  const auto batch_of = [&](std::int64_t step, int) { return run.batch(step); };
  const auto loss_of = [&](const edit::train::Batch& b) { return run.module->loss(b.inputs, b.targets); };
  for (int step = 0; step < 4; ++step) trainer.step(batch_of, loss_of);
  EXPECT_EQ(run.strategy.in_flight(), 1) << "fragment 1's exchange, issued after step 3, merges after step 5";
  while (!trainer.finished()) trainer.step(batch_of, loss_of);
  EXPECT_EQ(run.strategy.in_flight(), 0);
  EXPECT_EQ(run.strategy.streaming_stats().issued, 2);
  EXPECT_EQ(run.strategy.streaming_stats().merged, 2);
  std::vector<at::Tensor> anchors;
  for (int u = 0; u < run.model.num_units(); ++u) anchors.push_back(run.strategy.core().outer().anchor(u).clone());
  run.strategy.finish();
  for (int u = 0; u < run.model.num_units(); ++u) {
    EXPECT_TRUE(at::equal(run.strategy.core().outer().anchor(u), anchors[static_cast<size_t>(u)])) << "unit " << u;
  }
}

// Trainer::run with a StopOnSignal: a signal that reaches the last rank during step 3 stops every
// rank after step 3 + lag = 5 (DiLoCo: the replicas meet only every 8 steps, so nothing else makes
// them stop together), with the signal in the metrics and the strategy's finish() not yet run.
TEST(Trainer, RunStopsEveryRankAtOneStepOnASignalToOneRank) {
  edit::sync::LocalSgdOptions local;
  local.sync_every = 8;
  TinyRun<edit::sync::DiLoCo> run(1, local);
  sigset_t before;
  pthread_sigmask(SIG_BLOCK, nullptr, &before);
  edit::train::StopOnSignal::block({SIGUSR1});
  {
    edit::train::StopOnSignal stop(
        edit::comm::MpiCommunicator::world(world()->runtime(), world()->options(), "votes"), {SIGUSR1}, 2);
    edit::train::TrainerOptions options;
    options.steps = 20;
    options.log_every = 0;
    options.stop_on_signal = &stop;
    edit::train::Trainer trainer(run.mesh, run.model, run.inner, run.strategy, options);
    const bool signalled = run.mesh.rank() == run.mesh.world_size() - 1;
    const auto batch_of = [&](std::int64_t step, int) { return run.batch(step); };
    const auto loss_of = [&](const edit::train::Batch& b) {
      if (signalled && trainer.current_step() == 3 && stop.seen_here() == 0) {
        ::kill(::getpid(), SIGUSR1);
        // Bounded: a signal that never arrives fails below instead of hanging until ctest's timeout.
        const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
        while (stop.seen_here() == 0 && std::chrono::steady_clock::now() < deadline) {
          std::this_thread::sleep_for(std::chrono::milliseconds(1));
        }
      }
      return run.module->loss(b.inputs, b.targets);
    };
    const auto last = trainer.run(batch_of, loss_of);
    EXPECT_EQ(last.stop_signal, SIGUSR1);
    EXPECT_EQ(last.step, 5);
    EXPECT_EQ(trainer.current_step(), 6);
    EXPECT_EQ(stop.ranks_that_saw(), 1);
    run.strategy.finish();
  }
  pthread_sigmask(SIG_SETMASK, &before, nullptr);
  world()->barrier()->wait();
}

// Skips are bounded by a count over the run, not a run of steps in a row: with at most 2, NaN
// steps 1 and 3 are skipped (step 2 updates), and step 5 stops every rank before its update. The
// count is part of the trainer's checkpointed state: a trainer that loads it stops at its next skip.
TEST(Trainer, ReplicasStopOnceTheyWouldSkipMoreThanTheMostStepsAllowed) {
  DdpRun run(1);
  edit::train::TrainerOptions options = skipping(8);
  options.max_skipped_steps = 2;
  edit::train::Trainer trainer(run.mesh, run.model, run.inner, run.strategy, options);
  const auto batch_of = [&](std::int64_t step, int) { return run.batch(step); };
  const auto loss_of = [&](const edit::train::Batch& b) {
    const at::Tensor loss = run.module->loss(b.inputs, b.targets);
    return trainer.current_step() % 2 == 1 && run.mesh.rank() == 0 ? loss * std::nan("") : loss;
  };
  for (int step = 0; step < 4; ++step) EXPECT_EQ(trainer.step(batch_of, loss_of).skipped, step % 2 == 1);
  EXPECT_EQ(trainer.state_dict().integer("the trainer", "skipped_steps"), 2);
  EXPECT_FALSE(trainer.step(batch_of, loss_of).skipped);
  const std::vector<at::Tensor> before = snapshot(run.model, run.inner);
  const std::string error = edit::testing_support::error_of([&] { trainer.step(batch_of, loss_of); });
  EXPECT_NE(error.find("step 5: the gradient norm is"), std::string::npos) << error;
  EXPECT_NE(error.find("has skipped 2 steps already (--max-skipped-steps 2)"), std::string::npos) << error;
  EXPECT_NE(error.find("training stopped before the update"), std::string::npos) << error;
  expect_bitwise_equal(snapshot(run.model, run.inner), before);

  edit::train::Trainer resumed(run.mesh, run.model, run.inner, run.strategy, options);
  resumed.load_state_dict(trainer.state_dict());
  EXPECT_EQ(resumed.current_step(), 5);
  const auto nan_loss = [&](const edit::train::Batch& b) {
    const at::Tensor loss = run.module->loss(b.inputs, b.targets);
    return run.mesh.rank() == 0 ? loss * std::nan("") : loss;
  };
  EXPECT_NE(edit::testing_support::error_of([&] { resumed.step(batch_of, nan_loss); })
                .find("has skipped 2 steps already"),
            std::string::npos);
}

// A loss that is NaN while the gradients are finite (a NaN added after the graph, so the backward
// never sees it) cannot be skipped by one rank alone: it stops, and says why.
TEST(Trainer, ANonFiniteLossWithAFiniteGradientNormStopsEvenWhenSkipping) {
  DdpRun run(1);
  edit::train::Trainer trainer(run.mesh, run.model, run.inner, run.strategy, skipping(2));
  const auto batch_of = [&](std::int64_t step, int) { return run.batch(step); };
  const auto loss_of = [&](const edit::train::Batch& b) { return run.module->loss(b.inputs, b.targets) + std::nan(""); };
  const std::string error = edit::testing_support::error_of([&] { trainer.step(batch_of, loss_of); });
  EXPECT_NE(error.find("step 0: the loss is"), std::string::npos) << error;
  EXPECT_NE(error.find("while the gradient norm is finite"), std::string::npos) << error;
}

}  // namespace
