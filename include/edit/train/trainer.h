// Trainer: the inner loop glue (docs/architecture.md, train/).
//   per step: for each micro-batch: batch -> forward -> backward (ShardedModel hooks fire, EDiT
//   syncs inside the first forward after a sync step) -> strategy.before_step -> clip -> lr from
//   the schedule -> inner step -> strategy.after_step -> metrics.
// Metrics: one JSON object per step and line (rank 0 writes): step, loss (this rank), lr,
// grad_norm, tokens_per_s (all ranks), bytes sent per group in the step, sync wait, and the
// pseudo-gradient penalty's dropped workers, skipped units and level shifts in the step (with the
// penalty on), "skipped": true on a step whose update was left out (NonFinitePolicy::kSkip); every
// log_every steps also loss_world (mean over all ranks) and a readable log line (step, loss, lr,
// tokens/s, sync wait, drops and skips since the last line, time to go).
// Resuming at step s drops the lines of steps >= s from the metrics file first, so a step never
// appears twice.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <fstream>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "edit/comm/device_mesh.h"
#include "edit/shard/flat_adamw.h"
#include "edit/shard/lr_schedule.h"
#include "edit/shard/sharded_model.h"
#include "edit/sync/strategy.h"
#include "edit/train/profiler.h"
#include "edit/train/straggler.h"

namespace edit::train {

class StopOnSignal;  // stop_signal.h

// What a step does when its loss or the global gradient norm is NaN or Inf. The norm is global over
// the ranks that hold one model (the shard group; under Ddp the gradients are already averaged over
// the replicas), so they all decide alike; replicas of Local SGD decide each for their own.
enum class NonFinitePolicy {
  kStop,    // throw before the update: the weights, the anchors and every checkpoint stay intact
  // Leave the update out (weights and optimizer moments stay as they were; the step counts, so the
  // schedule and the syncs go on), warn, and throw once a replica would skip more than
  // max_skipped_steps steps in the run. A rank whose loss alone is non-finite (its gradient norm
  // finite) cannot skip without its peers: it throws. This is for non-finite gradients: weights
  // that an update made non-finite (finite gradients, an overflowing step) are not repaired by
  // skipping (only a Local SGD sync puts a replica back on its anchor), and the Checkpointer
  // refuses to save them, which ends the run.
  kSkip,
  kIgnore,  // apply the update anyway (benchmarks that show what a NaN does)
};

struct TrainerOptions {
  std::int64_t steps = 100;     // inner steps to run
  int accumulation = 1;         // micro-batches per step (the loss is averaged over them)
  double clip_norm = 1.0;       // global gradient-norm clip; 0 turns it off
  shard::WarmupCosine schedule;  // learning rate per step
  std::string metrics_path;     // JSONL file written by rank 0; empty: none
  int log_every = 10;           // readable line + world-mean loss every N steps; 0: never
  // A NaN/Inf loss or global gradient norm: stop, or skip the step (the norm is taken even without
  // a clip, unless kIgnore).
  NonFinitePolicy on_nonfinite = NonFinitePolicy::kStop;
  // kSkip: skipped steps a replica may take in the whole run (resumes included; a count, not a run
  // of steps in a row: Local SGD's sync puts a diverged replica back on the anchor for a step or
  // two, and it diverges again). The next non-finite step throws.
  int max_skipped_steps = 10;
  StragglerPlan stragglers;       // simulated slow ranks (tests, benchmarks); empty: none
  // Profile steps [profile_first, profile_first + profile_steps) with LibTorch's profiler (0 steps:
  // off; train/profiler.h). Rank 0 logs the report; with a profile_dir every rank writes
  // profile_rank<r>.csv there, and the Chrome trace trace_rank<r>.json where LibTorch writes one.
  std::int64_t profile_first = 0;
  std::int64_t profile_steps = 0;
  std::string profile_dir;
  // run() polls it after every step (A-EDiT: after every step that agreed a round; give it lag 0
  // there) and returns once every rank agreed to stop on a signal, with StepMetrics::stop_signal
  // set: save a checkpoint then, and call the strategy's finish() before the program ends
  // (stop_signal.h). Not owned; null: signals are not watched.
  StopOnSignal* stop_on_signal = nullptr;
};

struct Batch {
  at::Tensor inputs;   // (B, T) token ids
  at::Tensor targets;  // (B, T) next tokens
};
using BatchFn = std::function<Batch(std::int64_t step, int micro_batch)>;
using LossFn = std::function<at::Tensor(const Batch& batch)>;

struct StepMetrics {
  std::int64_t step = 0;
  double loss = 0.0;        // this rank's mean over its micro-batches
  // Mean over all ranks whose loss is finite (log steps only; A-EDiT: over the replica's ranks).
  double loss_world = NAN;
  double lr = 0.0;
  double grad_norm = 0.0;   // global, before the clip (NaN with no clip under kIgnore)
  bool skipped = false;     // kSkip: the update was left out (a non-finite gradient norm)
  double seconds = 0.0;
  double tokens_per_s = 0.0;       // all ranks together
  std::int64_t bytes_shard = 0;    // sent by this rank in the step, per group
  std::int64_t bytes_sync = 0;
  double sync_wait_s = 0.0;        // time this rank was blocked in the strategy
  double straggler_delay_s = 0.0;  // simulated slowness added to this rank's step
  std::int64_t dropped_workers = 0;  // penalty, in this step (summed over units)
  std::int64_t skipped_units = 0;
  std::int64_t level_shifts = 0;
  // A-EDiT, on steps that agreed a round: its number, each worker's inner steps in it and each
  // worker's wait for the round before (sync-group order; SyncStats).
  std::int64_t round = 0;
  std::vector<std::int64_t> round_steps;
  std::vector<double> round_waits_s;
  // run() with TrainerOptions::stop_on_signal: the signal every rank stopped on (0: none). The
  // strategy's finish() has not run: the state is as at this step, to be saved and resumed.
  int stop_signal = 0;
};

// Stateful: the next step ("step") and the steps skipped so far ("skipped_steps").
class Trainer : public Stateful {
 public:
  Trainer(comm::DeviceMesh& mesh, shard::ShardedModel& model, shard::FlatOptimizer& inner,
          sync::SyncStrategy& strategy, TrainerOptions options);

  // One inner step and the strategy's sync work after it. The run's last step (options().steps,
  // or the strategy's stop) ends with strategy.finish(), so what follows it (evaluation, a
  // checkpoint, an export) sees every exchange of the run landed.
  StepMetrics step(const BatchFn& next_batch, const LossFn& loss);
  // Runs the remaining steps (replicas not in lockstep: until the strategy says stop), then
  // strategy.finish(); returns the last step's metrics. With TrainerOptions::stop_on_signal it
  // may return earlier, at a step every rank agreed on, with stop_signal set and no finish().
  StepMetrics run(const BatchFn& next_batch, const LossFn& loss);

  // The run is over: options().steps taken, or (replicas not in lockstep) the strategy says stop.
  bool finished() const;
  std::int64_t current_step() const { return step_; }
  // Continue from `step` (after loading a checkpoint saved at that step).
  void set_step(std::int64_t step) { step_ = step; }
  const TrainerOptions& options() const { return options_; }
  StateDict state_dict() override;
  void load_state_dict(const StateDict& state) override;

 private:
  void write_metrics(const StepMetrics& metrics);
  void open_metrics();
  void finish_profile();

  comm::DeviceMesh& mesh_;
  shard::ShardedModel& model_;
  shard::FlatOptimizer& inner_;
  sync::SyncStrategy& strategy_;
  TrainerOptions options_;
  std::int64_t step_ = 0;
  double run_seconds_ = 0.0;     // steps taken by this process (for the time-to-go estimate)
  std::int64_t run_steps_ = 0;
  std::int64_t logged_dropped_ = 0;  // penalty counters at the last log line
  std::int64_t logged_skipped_ = 0;
  std::int64_t skipped_steps_ = 0;   // kSkip: this replica's skipped steps in the run (checkpointed)
  std::int64_t skipped_since_log_ = 0;
  std::unique_ptr<std::ofstream> metrics_;
  std::unique_ptr<StepProfiler> profiler_;
};

}  // namespace edit::train
