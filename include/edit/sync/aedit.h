// A-EDiT: EDiT whose syncs follow a wall clock, not a step count (docs/architecture.md, sync/), for
// clusters whose workers run at different speeds.
//
// Rounds. Round k is due once a replica's clock passes k * T (the interval). A replica that is due
// enters the round's exchange at the end of its step; the exchange completes once every replica is
// due, so a fast replica waits at most for the step the slowest one is in, and takes more inner
// steps per round than a slow one. The round is identified by its number, never by a step: each
// replica joins rounds 1, 2, 3, ... in order. The exchange (a few values per worker over the sync
// group) carries each replica's clock, its inner steps since the last round and its wait for the
// previous round; from the identical gathered values every rank derives the same next deadline, the
// same weights and the same decision to stop. The sync itself is EDiT's layer-wise sync, in the
// next forward.
//
// Clocks. Every rank measures seconds since a shared epoch: a barrier over its groups at the first
// step, after which each takes its own steady clock (no clock of another machine is ever read, so
// skew between machines does not matter). The ranks of a replica's shard group agree on the
// replica's clock every step (the latest of theirs), so they decide together.
//
// A step longer than T. If the slowest replica's clock at a round is already past the next
// deadline, the rounds in between are skipped: the next deadline is the first multiple of T after
// it. A worker slower than T syncs after every step of its own; the others wait for it.
//
// The end. Training ends at the first round where all replicas together have taken budget_steps
// inner steps, or whose successor's deadline would pass time_limit_s; every replica learns it from
// the same round, so all of them leave together, after the round's sync (finish()). So that the
// budget is met exactly, not overshot by up to a round, each replica has a share of the steps left:
// one step (every replica takes a step before it can join a round), then the rest in proportion
// to its steps in the last round (largest remainders round up; before the first round, an even
// share). A replica enters a round on the clock or once it took its share, whichever is first, so
// a round never takes more than the steps left, even when the replicas speed up (the first round
// holds the warm-up). Once the steps left are fewer than 1.5 times the last round's, the next
// round is the last one and ends on the shares alone, not on the clock, so the replicas still
// arrive at about the same time and no short round is left over. The budget can be passed only
// when fewer steps are left than replicas, by at most replicas - 1. A last round on step counts may
// end up to half an interval past time_limit_s.
//
// Weights. With r > 0, a worker's weight blends in its share of the round's inner steps (since the
// last sync, not since the start): w_i = (1 - r) w_i + r s_i / sum_j s_j
// (PseudoGradientSync::set_step_shares).
//
// Checkpoints are taken where a round was just agreed (round_agreed()): every replica is then at
// the same point. A resumed run continues its clock from the round's time.
#pragma once

#include <functional>
#include <memory>
#include <vector>

#include "edit/sync/local_sgd.h"

namespace edit::sync {

// The steps `left` of a budget, shared among workers as A-EDiT does: one each first (when that
// many are left), then the rest in proportion to `weights` (the last round's steps; all 1 before
// the first round), floors first and the steps still left to the largest remainders (ties: the
// lower worker). Sums to `left`. Exact integers, so alike on every rank.
std::vector<std::int64_t> share_steps(std::int64_t left, const std::vector<std::int64_t>& weights);

struct AEDiTOptions {
  LocalSgdOptions local = EDiT::default_options();  // sync_every is not used: the interval is
  double interval_s = 10.0;        // T: seconds between rounds
  double step_share = 0.5;         // r: weight of the step shares in a worker's weight; 0: none
  std::int64_t budget_steps = 0;   // end at the round where all replicas' inner steps reach it; 0: none
  double time_limit_s = 0.0;       // end at the last round whose deadline fits in it; 0: none
  // Seconds since the start, per rank; empty: the steady clock from the shared epoch. Tests pass a
  // clock driven by the step count, which makes every decision deterministic.
  std::function<double()> clock;

  void validate() const;
};

class AEDiT : public EDiT {
 public:
  AEDiT(shard::ShardedModel& model, std::shared_ptr<comm::Communicator> sync_group, AEDiTOptions options);
  std::string name() const override { return "aedit"; }
  void before_micro_batch(std::int64_t step, int micro, int micro_batches) override;
  void after_step(std::int64_t step) override;
  bool replicas_in_lockstep() const override { return false; }
  bool should_stop() const override { return stop_; }
  bool replicas_meet() const override { return round_agreed_; }
  SyncStats stats() const override;
  StateDict state_dict() override;
  void load_state_dict(const StateDict& state) override;

  // The last after_step() agreed a round: every replica is at the same point (evaluate or save).
  bool round_agreed() const { return round_agreed_; }
  std::int64_t rounds() const { return rounds_; }
  // Inner steps of all replicas together, as of the last round (identical on every rank).
  std::int64_t total_steps() const { return total_steps_; }
  // The agreed clock of the last round: the latest replica's, in seconds since the shared epoch.
  double round_time() const { return round_time_; }
  // Seconds since the shared epoch on this rank's clock.
  double elapsed();

 private:
  void start_clock();
  // This replica enters the next round after this step: by the clock, or once it took its share
  // of the budget left.
  bool due(double now) const;
  // The budget or the time limit is reached, as of the last round.
  bool reached_end() const;
  // Sets budget_share_ and last_round_ from the last round's values, so alike on every rank.
  void share_budget();

  AEDiTOptions options_;
  std::shared_ptr<comm::Communicator> sync_;
  bool clock_started_ = false;
  double clock_origin_ = 0.0;  // steady-clock seconds at the shared epoch
  double clock_offset_ = 0.0;  // seconds already run before a resume
  std::int64_t next_deadline_ = 1;  // in intervals: round due once the clock passes it * T
  std::int64_t rounds_ = 0;
  std::int64_t total_steps_ = 0;
  std::int64_t steps_since_round_ = 0;
  // This replica's share of the budget steps left (0: no budget): it enters the next round once it
  // took that many, so no round passes the budget.
  std::int64_t budget_share_ = 0;
  bool last_round_ = false;  // the next round is the last one: it ends on budget_share_ alone
  double round_time_ = 0.0;  // the agreed clock of the last round (the latest replica's)
  double last_wait_ = 0.0;   // seconds this rank waited in the last round's exchange
  bool round_agreed_ = false;
  bool stop_ = false;
  std::vector<std::int64_t> round_steps_;
  std::vector<double> round_waits_;
};

}  // namespace edit::sync
