// SyncStrategy: how replicas stay together. The Trainer calls, per step:
//   forward/backward (ShardedModel hooks fire; a strategy may act in them) ->
//   before_step(step) -> clip -> inner optimizer step -> after_step(step)
// and finish() once at the end (or before evaluation / a checkpoint) to complete pending work.
// Strategies talk to the sync group only through comm::Communicator.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "edit/comm/communicator.h"
#include "edit/core/state.h"
#include "edit/shard/sharded_model.h"

namespace edit::sync {

struct SyncStats {
  std::int64_t syncs = 0;         // outer syncs (or gradient reductions for Ddp) completed
  double blocked_seconds = 0.0;   // time the training thread spent inside the strategy
  // Pseudo-gradient penalty, summed over units and syncs (Local SGD with the penalty only):
  std::int64_t dropped_workers = 0;  // (unit, worker) pairs left out of an average
  std::int64_t skipped_units = 0;    // unit syncs whose outer update was skipped (no worker left)
  std::int64_t level_shifts = 0;     // unit syncs where every finite worker failed the z-test
  // Asynchronous Local SGD (A-EDiT) only: rounds agreed so far; of the last one, each worker's inner
  // steps since the round before, and each worker's wait for the round before it (a worker learns
  // its wait only once a round is agreed, so it reports it with the next one). Sync-group order.
  std::int64_t rounds = 0;
  std::vector<std::int64_t> round_steps;
  std::vector<double> round_waits;
};

// Makes every replica hold replica 0's parameters: broadcasts each unit's shard over the sync
// group (collective over it). Strategies call it when they are built, so replicas start equal
// even when ranks built their models from different seeds.
void make_replicas_equal(shard::ShardedModel& model, comm::Communicator& sync_group);

// Stateful: the default has no state (NoSync, Ddp); Local SGD strategies save their anchors,
// outer momenta, penalty detectors and a sync in flight.
class SyncStrategy : public Stateful {
 public:
  virtual ~SyncStrategy() = default;
  virtual std::string name() const = 0;
  // Before micro-batch `micro` (of `micro_batches`) of a step runs its forward. A trainer that
  // never calls it leaves strategies assuming every backward may be the step's last.
  virtual void before_micro_batch(std::int64_t /*step*/, int /*micro*/, int /*micro_batches*/) {}
  // Gradients of the step are final (all micro-batches done); before clipping and the inner step.
  virtual void before_step(std::int64_t /*step*/) {}
  // After the inner optimizer stepped (0-based step index).
  virtual void after_step(std::int64_t /*step*/) {}
  // Complete whatever is pending (e.g. a layer-wise sync waiting for the next forward).
  virtual void finish() {}
  virtual SyncStats stats() const { return stats_; }
  // False where replicas take different numbers of inner steps (A-EDiT): a trainer then makes no
  // collective beyond its replica on a step count of its own, and trains until should_stop().
  virtual bool replicas_in_lockstep() const { return true; }
  // Not in lockstep: every replica agreed (at a sync) that training ends; finish() completes it.
  virtual bool should_stop() const { return false; }
  // Every replica is at the same point after the last step, so collectives beyond a replica
  // (evaluation, a checkpoint, a vote to stop) may run here: each step in lockstep, else where
  // the replicas just met (A-EDiT: each agreed round).
  virtual bool replicas_meet() const { return true; }
  // Runs `fn` (evaluation, export) on the model the replicas agree on. Local SGD strategies
  // complete a pending sync and swap the anchor (the model of the last sync) into the shards for
  // the duration; the others run `fn` on the live model. Collective over the sync group.
  virtual void with_global_model(const std::function<void()>& fn) { fn(); }

  StateDict state_dict() override { return {}; }
  // The default has nothing to load, and refuses a checkpoint that holds a strategy's state
  // (a Local SGD run's anchors and outer momenta): resuming it as ddp or none would drop them.
  void load_state_dict(const StateDict& state) override;

 protected:
  SyncStats stats_;
};

// Replicas never talk: the reference for throughput (what communication costs).
class NoSync : public SyncStrategy {
 public:
  std::string name() const override { return "none"; }
};

// Data parallel: every step, gradient shards are averaged over the sync group (the every-step
// baseline; with S > 1 this is FSDP across replicas).
//
// The average of a unit's gradient is issued as soon as that unit's backward of the step's last
// micro-batch is done, so it travels while the units before it still compute their backward (as
// PyTorch's DDP overlaps its gradient buckets; here a unit is a bucket). before_step issues what
// is left and waits for all of it. Earlier micro-batches only accumulate.
class Ddp : public SyncStrategy {
 public:
  Ddp(shard::ShardedModel& model, std::shared_ptr<comm::Communicator> sync_group);
  ~Ddp() override;
  std::string name() const override { return "ddp"; }
  void before_micro_batch(std::int64_t step, int micro, int micro_batches) override;
  void before_step(std::int64_t step) override;
  // Unit averages issued during the last backward, before before_step (overlap, for tests).
  std::int64_t issued_during_backward() const { return issued_during_backward_; }

 private:
  void on_unit_backward_done(int unit);
  void issue(int unit);
  shard::ShardedModel& model_;
  std::shared_ptr<comm::Communicator> sync_;
  int hook_id_ = -1;
  bool last_micro_batch_ = true;
  std::vector<comm::WorkPtr> pending_;  // per unit: its average in flight this step
  std::int64_t issued_during_backward_ = 0;
};

}  // namespace edit::sync
