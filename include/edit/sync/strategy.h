// SyncStrategy: how replicas stay together. The Trainer calls, per step:
//   forward/backward (ShardedModel hooks fire; a strategy may act in them) ->
//   before_step(step) -> clip -> inner optimizer step -> after_step(step)
// and finish() once at the end (or before evaluation / a checkpoint) to complete pending work.
// Strategies talk to the sync group only through comm::Communicator.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "edit/comm/communicator.h"
#include "edit/shard/sharded_model.h"

namespace edit::sync {

struct SyncStats {
  std::int64_t syncs = 0;         // outer syncs (or gradient reductions for Ddp) completed
  double blocked_seconds = 0.0;   // time the training thread spent inside the strategy
};

class SyncStrategy {
 public:
  virtual ~SyncStrategy() = default;
  virtual std::string name() const = 0;
  // Gradients of the step are final (all micro-batches done); before clipping and the inner step.
  virtual void before_step(std::int64_t /*step*/) {}
  // After the inner optimizer stepped (0-based step index).
  virtual void after_step(std::int64_t /*step*/) {}
  // Complete whatever is pending (e.g. a layer-wise sync waiting for the next forward).
  virtual void finish() {}
  virtual SyncStats stats() const { return stats_; }

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
class Ddp : public SyncStrategy {
 public:
  Ddp(shard::ShardedModel& model, std::shared_ptr<comm::Communicator> sync_group);
  std::string name() const override { return "ddp"; }
  void before_step(std::int64_t step) override;

 private:
  shard::ShardedModel& model_;
  std::shared_ptr<comm::Communicator> sync_;
};

}  // namespace edit::sync
