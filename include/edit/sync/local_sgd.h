// Local SGD: DiLoCo (bulk outer step between inner steps) and EDiT (the same outer step done
// layer by layer inside the next forward pass), DESIGN.md section 6.
//
// Every H inner steps each worker i computes its pseudo-gradient delta_i = phi - theta_i per
// unit shard; the sync group sums w_i delta_i (w from the penalty, else 1/R); the aggregate is
// clipped (penalty), the OuterOptimizer moves the anchor phi, and every worker restarts from it.
#pragma once

#include <memory>
#include <vector>

#include "edit/sync/outer_optimizer.h"
#include "edit/sync/penalty.h"
#include "edit/sync/strategy.h"

namespace edit::sync {

struct LocalSgdOptions {
  int sync_every = 100;        // H: inner steps between syncs
  OuterOptions outer;          // Nesterov, lr 0.7, momentum 0.9
  bool use_penalty = false;    // PseudoGradPenalty (DiLoCo: off; EDiT turns it on)
  PenaltyOptions penalty;

  void validate() const;
};

// The per-unit outer sync both strategies share: begin() computes the pseudo-gradient and the
// weights and issues the weighted all_reduce; finish() waits for it, clips, steps the outer
// optimizer and resets the worker to the new anchor. Units are independent, so callers choose
// the order and how many are in flight.
class PseudoGradientSync {
 public:
  PseudoGradientSync(shard::ShardedModel& model, std::shared_ptr<comm::Communicator> sync_group,
                     const LocalSgdOptions& options);

  void begin(int unit);
  void finish(int unit);
  bool begun(int unit) const { return slots_.at(static_cast<size_t>(unit)).begun; }

  OuterOptimizer& outer() { return outer_; }
  PseudoGradPenalty* penalty() { return penalty_.get(); }
  // The last decision per unit (empty weights before the first sync): for tests and metrics.
  const PenaltyDecision& last_decision(int unit) const { return slots_.at(static_cast<size_t>(unit)).decision; }

 private:
  // Sum over the shard group of a per-rank double, added in rank order so every rank gets the
  // bit-identical total (an all_reduce does not promise that).
  double shard_group_sum(double local);

  struct Slot {
    at::Tensor delta;
    comm::WorkPtr work;
    PenaltyDecision decision;
    bool begun = false;
  };
  shard::ShardedModel& model_;
  std::shared_ptr<comm::Communicator> sync_;
  OuterOptimizer outer_;
  std::unique_ptr<PseudoGradPenalty> penalty_;
  std::vector<Slot> slots_;
};

class DiLoCo : public SyncStrategy {
 public:
  DiLoCo(shard::ShardedModel& model, std::shared_ptr<comm::Communicator> sync_group, LocalSgdOptions options);
  std::string name() const override { return "diloco"; }
  void after_step(std::int64_t step) override;
  PseudoGradientSync& core() { return sync_; }

 private:
  LocalSgdOptions options_;
  shard::ShardedModel& model_;
  PseudoGradientSync sync_;
};

// EDiT: after a sync step the outer step is not done in bulk; it runs in the next forward, unit
// by unit, from the pre_gather hook (before the unit's parameters are gathered), with the next
// unit's exchange already in flight while the current unit computes. Penalty on by default.
class EDiT : public SyncStrategy {
 public:
  static LocalSgdOptions default_options();  // LocalSgdOptions with use_penalty = true
  EDiT(shard::ShardedModel& model, std::shared_ptr<comm::Communicator> sync_group,
       LocalSgdOptions options = default_options());
  ~EDiT() override;
  std::string name() const override { return "edit"; }
  void after_step(std::int64_t step) override;
  void finish() override;
  bool sync_pending() const { return pending_; }
  PseudoGradientSync& core() { return sync_; }

 private:
  void on_pre_gather(int unit);

  LocalSgdOptions options_;
  shard::ShardedModel& model_;
  PseudoGradientSync sync_;
  std::vector<bool> done_;
  bool pending_ = false;
  int hook_id_ = -1;
};

}  // namespace edit::sync
