// A-EDiT on real ranks, through the Trainer: with equal speeds it is EDiT (bit for bit); rounds,
// steps per round and the end follow a hand-computed table when one worker's step outlasts the
// interval; a worker slowed 2x (the Trainer's straggler plan, on the wall clock) takes half the
// steps of a fast one, which never waits longer than one slow step; a resume mid-run is exact.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>

#include "edit/comm/device_mesh.h"
#include "edit/core/check.h"
#include "edit/shard/flat_adamw.h"
#include "edit/shard/sharded_model.h"
#include "edit/sync/aedit.h"
#include "edit/train/trainer.h"
#include "mpi_test_env.h"
#include "tiny_transformer.h"

namespace {

using edit::sync::AEDiT;
using edit::sync::AEDiTOptions;
using edit::testing_support::tiny_batch;
using edit::testing_support::TinyConfig;
using edit::testing_support::TinyTransformer;
using edit::testing_support::world;

int shard_size_for_world() { return world()->size() == 4 ? 2 : 1; }

// A clock driven by the steps, so every decision is deterministic: each step of this replica
// costs `cost` seconds, and a round moves the clock on to the round's agreed time (the latest
// replica's), as waiting for that replica would on a real clock.
// `warm_up` seconds more are spent in the first round (kernel selection, allocator warm-up).
struct StepClock {
  double cost = 1.0;
  double warm_up = 0.0;
  double base = 0.0;
  int steps = 0;  // completed since the last round
  bool first_round = true;
  // Read at the end of the current step.
  double now() const { return base + (steps + 1) * cost + (first_round ? warm_up : 0.0); }
  void after_step(const AEDiT& strategy) {
    if (strategy.round_agreed()) {
      base = strategy.round_time();
      steps = 0;
      first_round = false;
    } else {
      ++steps;
    }
  }
};

struct Replica {
  TinyConfig config;
  std::shared_ptr<TinyTransformer> module;
  std::unique_ptr<edit::shard::ShardedModel> model;
  std::unique_ptr<edit::shard::FlatAdamW> inner;
  std::unique_ptr<edit::sync::SyncStrategy> strategy;
  std::unique_ptr<edit::train::Trainer> trainer;
  StepClock clock;
  int replica = 0;

  Replica(edit::comm::DeviceMesh& mesh, int seed) {
    at::manual_seed(static_cast<std::uint64_t>(seed));
    module = std::make_shared<TinyTransformer>(config);
    model = std::make_unique<edit::shard::ShardedModel>(module, mesh.shard_ptr());
    inner = std::make_unique<edit::shard::FlatAdamW>(*model, edit::shard::AdamWOptions{3e-3});
    replica = mesh.layout().replica;
  }
  AEDiT& aedit() { return static_cast<AEDiT&>(*strategy); }
  void make_aedit(edit::comm::DeviceMesh& mesh, AEDiTOptions options, bool step_clock) {
    if (step_clock) options.clock = [this] { return clock.now(); };
    strategy = std::make_unique<AEDiT>(*model, mesh.sync_ptr(), options);
  }
  // A-EDiT ends by its budget or time limit; `steps` ends the others.
  void make_trainer(edit::comm::DeviceMesh& mesh, const std::string& stragglers = "", std::int64_t steps = 1000) {
    edit::train::TrainerOptions options;
    options.steps = steps;
    options.schedule = {3e-3, 0, 1000, 3e-3};  // constant
    options.log_every = 0;
    options.stragglers = edit::train::StragglerPlan::parse(stragglers);
    trainer = std::make_unique<edit::train::Trainer>(mesh, *model, *inner, *strategy, options);
  }
  edit::train::StepMetrics step() {
    const auto batch_of = [&](std::int64_t step, int) {
      auto [x, y] = tiny_batch(config, static_cast<int>(step), replica, 2);  // each replica its own data
      return edit::train::Batch{x, y};
    };
    const auto loss_of = [&](const edit::train::Batch& b) { return module->loss(b.inputs, b.targets); };
    auto m = trainer->step(batch_of, loss_of);
    if (auto* a = dynamic_cast<AEDiT*>(strategy.get())) clock.after_step(*a);
    return m;
  }
  // Trainer::run's loop, one step at a time so the step clock can follow.
  std::vector<edit::train::StepMetrics> run() {
    std::vector<edit::train::StepMetrics> all;
    while (!strategy->should_stop()) all.push_back(step());
    strategy->finish();
    return all;
  }
  // run(), keeping each round's inner steps per replica.
  std::vector<std::vector<std::int64_t>> run_rounds() {
    std::vector<std::vector<std::int64_t>> rounds;
    for (const auto& m : run()) {
      if (m.round > 0) rounds.push_back(m.round_steps);
    }
    return rounds;
  }
  std::vector<at::Tensor> shards() const {
    std::vector<at::Tensor> out;
    for (int u = 0; u < model->num_units(); ++u) out.push_back(model->unit(u).shard().clone());
    return out;
  }
};

// Sum and sum of squares of this rank's shards, gathered over the sync group: equal on every
// replica when the replicas hold one model.
void expect_replicas_hold_one_model(edit::comm::DeviceMesh& mesh, const Replica& r) {
  double sum = 0.0, squares = 0.0;
  for (const at::Tensor& shard : r.shards()) {
    sum += shard.to(at::kDouble).sum().item<double>();
    squares += shard.to(at::kDouble).pow(2).sum().item<double>();
  }
  const auto all = mesh.sync().all_gather_values({sum, squares});
  for (int i = 1; i < mesh.num_replicas(); ++i) {
    EXPECT_EQ(all[2 * static_cast<size_t>(i)], all[0]) << "replica " << i;
    EXPECT_EQ(all[2 * static_cast<size_t>(i) + 1], all[1]) << "replica " << i;
  }
}

// Two replicas on the step clock for the tables worked out by hand below: replica 0's step takes
// 1 s, replica 1's `slow_step_s`.
std::unique_ptr<Replica> two_speeds(edit::comm::DeviceMesh& mesh, int seed, double slow_step_s,
                                    const AEDiTOptions& options) {
  auto r = std::make_unique<Replica>(mesh, seed + world()->rank());
  r->clock.cost = r->replica == 0 ? 1.0 : slow_step_s;
  r->make_aedit(mesh, options, /*step_clock=*/true);
  r->make_trainer(mesh);
  return r;
}

TEST(AEDiT, EqualSpeedsAreEDiTBitForBit) {
  edit::comm::DeviceMesh mesh = edit::comm::DeviceMesh::from_env({shard_size_for_world()});
  Replica edit_run(mesh, world()->rank()), aedit_run(mesh, world()->rank());
  auto local = edit::sync::EDiT::default_options();
  local.sync_every = 4;
  edit_run.strategy = std::make_unique<edit::sync::EDiT>(*edit_run.model, mesh.sync_ptr(), local);
  edit_run.make_trainer(mesh, "", 12);  // both runs end after step 11, where the last step lands the sync
  AEDiTOptions options;
  options.local = local;
  options.interval_s = 4.0;  // 4 steps of 1 s on the step clock
  options.step_share = 0.0;  // EDiT's weights
  options.time_limit_s = 12.0;
  aedit_run.make_aedit(mesh, options, /*step_clock=*/true);
  aedit_run.make_trainer(mesh);
  for (int s = 0; s < 12; ++s) {
    edit_run.step();
    const auto m = aedit_run.step();
    for (size_t u = 0; u < edit_run.shards().size(); ++u) {
      ASSERT_TRUE(at::equal(edit_run.shards()[u], aedit_run.shards()[u])) << "step " << s << " unit " << u;
    }
    EXPECT_EQ(m.round, (s + 1) % 4 == 0 ? (s + 1) / 4 : 0) << "step " << s;
    if (m.round > 0) {
      EXPECT_EQ(m.round_steps, std::vector<std::int64_t>(static_cast<size_t>(mesh.num_replicas()), 4));
    }
  }
  EXPECT_TRUE(aedit_run.strategy->should_stop()) << "the time limit of 12 s is reached at round 3";
  EXPECT_EQ(aedit_run.aedit().total_steps(), 12 * mesh.num_replicas());
}

// Replica 0 steps in 1 s, replica 1 in 10 s, T = 4 s, time limit 40 s. By hand:
//   round 1: replica 0 is due after 4 steps (clock 4), replica 1 after 1 (clock 10); the latest
//            clock, 10, is past deadline 2 (8): the next is 3 (12).
//   round 2: from 10, replica 0 needs 2 steps to 12, replica 1 one (20): next max(4, 20/4 + 1) = 6.
//   round 3: from 20, 4 steps (24) and one (30): next max(7, 8) = 8.
//   round 4: from 30, 2 steps (32) and one (40): next max(9, 11) = 11, 44 s > 40 s: the end.
TEST(AEDiT, AStepLongerThanTheIntervalSkipsRoundsAndTheEndIsCommon) {
  edit::comm::DeviceMesh mesh = edit::comm::DeviceMesh::from_env({shard_size_for_world()});
  ASSERT_EQ(mesh.num_replicas(), 2) << "the table is for 2 replicas";
  AEDiTOptions options;
  options.interval_s = 4.0;
  options.time_limit_s = 40.0;
  const auto r = two_speeds(mesh, 11, 10.0, options);
  const std::vector<std::vector<std::int64_t>> want = {{4, 1}, {2, 1}, {4, 1}, {2, 1}};
  EXPECT_EQ(r->run_rounds(), want);
  EXPECT_EQ(r->trainer->current_step(), r->replica == 0 ? 12 : 4);
  EXPECT_EQ(r->aedit().total_steps(), 16);
  EXPECT_EQ(r->strategy->stats().syncs, 4);
  EXPECT_FALSE(r->aedit().sync_pending()) << "the last round's sync is completed";
  expect_replicas_hold_one_model(mesh, *r);
}

// A step budget is met exactly. Replica 0 steps in 1 s, replica 1 in 2 s, T = 4 s, budget 20. By
// hand:
//   round 1: 4 and 2 steps (clock 4): 6 in all, 14 left, not under 1.5 x 6 = 9: on the clock.
//   round 2: 4 and 2 steps (clock 8): 12 in all, 8 left < 9: the last round, on step counts, the
//            8 steps shared 4:2, i.e. 5.33 and 2.67: 5 and 2, and the one left over goes to the
//            larger remainder (replica 1's 0.67): 5 and 3.
//   round 3: 5 and 3 steps: 20, the budget, and the end. (On the clock it would be 4 and 2 steps
//            twice more: 24, 4 past the budget.)
TEST(AEDiT, AStepBudgetIsMetExactlyByALastRoundOnStepCounts) {
  edit::comm::DeviceMesh mesh = edit::comm::DeviceMesh::from_env({shard_size_for_world()});
  ASSERT_EQ(mesh.num_replicas(), 2) << "the table is for 2 replicas";
  AEDiTOptions options;
  options.interval_s = 4.0;
  options.budget_steps = 20;
  const auto r = two_speeds(mesh, 17, 2.0, options);
  const std::vector<std::vector<std::int64_t>> want = {{4, 2}, {4, 2}, {5, 3}};
  EXPECT_EQ(r->run_rounds(), want);
  EXPECT_EQ(r->aedit().total_steps(), 20);
  EXPECT_EQ(r->trainer->current_step(), r->replica == 0 ? 13 : 7);
  expect_replicas_hold_one_model(mesh, *r);
}

// A budget below the first round: replica 0 steps in 1 s, replica 1 in 2 s, T = 10 s, budget 8.
// On the clock the first round alone would take 10 and 5 steps (15). Each replica's even share,
// 4, ends it instead: replica 0 at its 4th step (clock 4), replica 1 at its 4th (clock 8): 8, the end.
TEST(AEDiT, ABudgetBelowTheFirstRoundEndsItAtEachReplicasShare) {
  edit::comm::DeviceMesh mesh = edit::comm::DeviceMesh::from_env({shard_size_for_world()});
  ASSERT_EQ(mesh.num_replicas(), 2) << "the table is for 2 replicas";
  AEDiTOptions options;
  options.interval_s = 10.0;
  options.budget_steps = 8;
  const auto r = two_speeds(mesh, 19, 2.0, options);
  const std::vector<std::vector<std::int64_t>> want = {{4, 4}};
  EXPECT_EQ(r->run_rounds(), want);
  EXPECT_EQ(r->aedit().total_steps(), 8);
  expect_replicas_hold_one_model(mesh, *r);
}

// Replicas that speed up after the first round (it holds the warm-up) do not pass the budget.
// Both replicas step in 1 s; the first round costs 2 s more; T = 4 s, budget 10. By hand:
//   round 1: 2 steps each (clock 3, then 4): 4 in all, 6 left, not under 1.5 x 4 = 6: on the clock.
//            Shares of the 6: one step each, then 4 shared 2:2: 3 each.
//   round 2: each replica enters at its 3rd step (clock 7), before the clock's deadline at 8
//            (4 steps each, 12 in all, 2 past the budget): 10, the end.
TEST(AEDiT, ReplicasThatSpeedUpEnterTheRoundAtTheirShareOfTheBudget) {
  edit::comm::DeviceMesh mesh = edit::comm::DeviceMesh::from_env({shard_size_for_world()});
  ASSERT_EQ(mesh.num_replicas(), 2) << "the table is for 2 replicas";
  AEDiTOptions options;
  options.interval_s = 4.0;
  options.budget_steps = 10;
  auto r = std::make_unique<Replica>(mesh, 23 + world()->rank());
  r->clock.warm_up = 2.0;
  r->make_aedit(mesh, options, /*step_clock=*/true);
  r->make_trainer(mesh);
  const std::vector<std::vector<std::int64_t>> want = {{2, 2}, {3, 3}};
  EXPECT_EQ(r->run_rounds(), want);
  EXPECT_EQ(r->aedit().total_steps(), 10);
  EXPECT_EQ(r->trainer->current_step(), 5);
  expect_replicas_hold_one_model(mesh, *r);
}

// An odd budget below the first round is shared exactly: 5 and 4 steps of a budget of 9 (not 5
// each). Replica 0 steps in 1 s, replica 1 in 2 s, T = 20 s.
TEST(AEDiT, AnOddBudgetBelowTheFirstRoundIsSharedExactly) {
  edit::comm::DeviceMesh mesh = edit::comm::DeviceMesh::from_env({shard_size_for_world()});
  ASSERT_EQ(mesh.num_replicas(), 2) << "the table is for 2 replicas";
  AEDiTOptions options;
  options.interval_s = 20.0;
  options.budget_steps = 9;
  const auto r = two_speeds(mesh, 29, 2.0, options);
  const std::vector<std::vector<std::int64_t>> want = {{5, 4}};
  EXPECT_EQ(r->run_rounds(), want);
  EXPECT_EQ(r->aedit().total_steps(), 9);
  expect_replicas_hold_one_model(mesh, *r);
}

// On the wall clock: sleeps in the Trainer's straggler plan dominate the tiny model's compute, so
// a step takes ~100 ms on every rank, or ~200 ms on replica 1's ranks when it is slowed 2x.
std::string delays(const edit::comm::DeviceMesh& mesh, int slow_ms) {
  std::string plan;
  for (int rank = 0; rank < mesh.world_size(); ++rank) {
    const bool slow = rank / mesh.shard_size() == 1;
    plan += (plan.empty() ? "" : ",") + std::to_string(rank) + ":+" + std::to_string(slow ? slow_ms : 100) + "ms";
  }
  return plan;
}

TEST(AEDiT, OnTheWallClockEqualSpeedsTakeEqualStepsPerRound) {
  edit::comm::DeviceMesh mesh = edit::comm::DeviceMesh::from_env({shard_size_for_world()});
  Replica r(mesh, 21 + world()->rank());
  AEDiTOptions options;
  options.interval_s = 1.0;
  options.time_limit_s = 3.0;
  r.make_aedit(mesh, options, /*step_clock=*/false);
  r.make_trainer(mesh, delays(mesh, 100));
  int rounds = 0;
  for (const auto& m : r.run()) {
    if (m.round == 0) continue;
    ++rounds;
    const auto [fewest, most] = std::minmax_element(m.round_steps.begin(), m.round_steps.end());
    EXPECT_LE(*most - *fewest, 1) << "round " << m.round;
    EXPECT_GE(*fewest, 5) << "round " << m.round << ": ~10 steps of 100 ms fit in 1 s";
  }
  EXPECT_EQ(rounds, 3);
  expect_replicas_hold_one_model(mesh, r);
}

TEST(AEDiT, AFastWorkerTakesTwiceTheStepsOfOneSlowed2xAndWaitsAtMostOneSlowStep) {
  edit::comm::DeviceMesh mesh = edit::comm::DeviceMesh::from_env({shard_size_for_world()});
  ASSERT_EQ(mesh.num_replicas(), 2);
  Replica r(mesh, 31 + world()->rank());
  AEDiTOptions options;
  options.interval_s = 1.2;
  options.time_limit_s = 4.8;
  r.make_aedit(mesh, options, /*step_clock=*/false);
  r.make_trainer(mesh, delays(mesh, 200));
  std::vector<edit::train::StepMetrics> rounds;
  double slowest_step = 0.0;  // of this rank
  for (const auto& m : r.run()) {
    if (m.round > 0) rounds.push_back(m);
    slowest_step = std::max(slowest_step, m.seconds - m.sync_wait_s);
  }
  ASSERT_EQ(rounds.size(), 4u);
  const double slow_step = mesh.sync().all_gather_values({slowest_step}).at(1);
  for (const auto& m : rounds) {
    const double ratio = static_cast<double>(m.round_steps[0]) / static_cast<double>(m.round_steps[1]);
    EXPECT_GT(ratio, 1.5) << "round " << m.round << ": " << m.round_steps[0] << " and " << m.round_steps[1] << " steps";
    EXPECT_LT(ratio, 2.6) << "round " << m.round << ": " << m.round_steps[0] << " and " << m.round_steps[1] << " steps";
    if (m.round == 1) continue;  // waits are reported one round late
    // The fast replica waits for the slow one to end the step it is in: at most one slow step,
    // plus the exchange's latency and a loaded machine's scheduling; far below the 1.2 s window
    // that a synchronous round would make it wait out.
    EXPECT_LE(m.round_waits_s[0], slow_step + 0.15) << "round " << m.round - 1;
  }
  expect_replicas_hold_one_model(mesh, r);
}

// Penalty on, step shares on, unequal speeds: a checkpoint at a round resumes onto exactly the
// uninterrupted path.
TEST(AEDiT, ResumeAtARoundIsExact) {
  edit::comm::DeviceMesh mesh = edit::comm::DeviceMesh::from_env({shard_size_for_world()});
  AEDiTOptions options;
  options.interval_s = 4.0;
  options.time_limit_s = 24.0;
  options.step_share = 0.5;
  const auto make = [&](Replica& r) {
    r.clock.cost = r.replica == 0 ? 1.0 : 2.0;
    r.make_aedit(mesh, options, /*step_clock=*/true);
    r.make_trainer(mesh);
  };
  Replica straight(mesh, 41), first(mesh, 41), resumed(mesh, 41);
  make(straight);
  make(first);
  straight.run();
  while (first.aedit().rounds() < 3) first.step();
  ASSERT_TRUE(first.aedit().round_agreed());
  ASSERT_TRUE(first.aedit().sync_pending()) << "the test saves with the round's layer-wise sync ahead";
  auto copy = [](edit::StateDict state) {
    for (auto& [key, t] : state.tensors) t = t.clone();
    return state;
  };
  const auto model_state = copy(first.model->state_dict());
  const auto inner_state = copy(first.inner->state_dict());
  const auto strategy_state = copy(first.strategy->state_dict());
  const auto trainer_state = first.trainer->state_dict();
  make(resumed);
  resumed.model->load_state_dict(model_state);
  resumed.inner->load_state_dict(inner_state);
  resumed.strategy->load_state_dict(strategy_state);
  resumed.trainer->load_state_dict(trainer_state);
  resumed.clock.base = resumed.aedit().round_time();
  resumed.run();
  EXPECT_EQ(resumed.trainer->current_step(), straight.trainer->current_step());
  EXPECT_EQ(resumed.aedit().rounds(), straight.aedit().rounds());
  EXPECT_EQ(resumed.aedit().total_steps(), straight.aedit().total_steps());
  const auto a = straight.shards(), b = resumed.shards();
  for (size_t u = 0; u < a.size(); ++u) EXPECT_TRUE(at::equal(a[u], b[u])) << "unit " << u;
  // Equal (1, 2) s steps: 4 and 2 steps a round, 6 rounds to 24 s.
  EXPECT_EQ(straight.aedit().rounds(), 6);
  EXPECT_EQ(straight.trainer->current_step(), straight.replica == 0 ? 24 : 12);
}

// Without the penalty a worker's weight is 1 / R blended with its share of the round's steps:
// steps 4 and 2, r = 0.5: w = 0.5 / 2 + 0.5 * (4 / 6, 2 / 6).
TEST(AEDiT, StepSharesWeightTheRoundsSync) {
  edit::comm::DeviceMesh mesh = edit::comm::DeviceMesh::from_env({shard_size_for_world()});
  ASSERT_EQ(mesh.num_replicas(), 2);
  Replica r(mesh, 51);
  r.clock.cost = r.replica == 0 ? 1.0 : 2.0;
  AEDiTOptions options;
  options.local.use_penalty = false;
  options.interval_s = 4.0;
  options.time_limit_s = 8.0;
  options.step_share = 0.5;
  r.make_aedit(mesh, options, /*step_clock=*/true);
  r.make_trainer(mesh);
  while (r.aedit().rounds() < 1) r.step();
  r.step();  // the round's sync runs in this forward
  ASSERT_EQ(r.strategy->stats().syncs, 1);
  for (int u = 0; u < r.model->num_units(); ++u) {
    const auto& w = r.aedit().core().last_decision(u).weights;
    ASSERT_EQ(w.size(), 2u);
    EXPECT_NEAR(w[0], 0.25 + 0.5 * 4.0 / 6.0, 1e-12) << "unit " << u;
    EXPECT_NEAR(w[1], 0.25 + 0.5 * 2.0 / 6.0, 1e-12) << "unit " << u;
  }
}

TEST(AEDiT, BadOptionsSayWhatToDo) {
  AEDiTOptions options;
  EXPECT_THROW(options.validate(), edit::Error);  // no end
  options.budget_steps = 100;
  options.validate();
  options.interval_s = 0;
  EXPECT_THROW(options.validate(), edit::Error);
  options.interval_s = 10;
  options.time_limit_s = 5;
  EXPECT_THROW(options.validate(), edit::Error);  // shorter than one interval
  options.time_limit_s = 0;
  options.step_share = 1.5;
  EXPECT_THROW(options.validate(), edit::Error);
}

}  // namespace
