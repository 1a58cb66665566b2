// Local SGD: DiLoCo (bulk outer step between inner steps) and EDiT (the same outer step done
// layer by layer inside the next forward pass), docs/architecture.md, sync/.
//
// Every H inner steps each worker i computes its pseudo-gradient delta_i = phi - theta_i per
// unit shard; the sync group sums w_i delta_i (w from the penalty, else 1/R); the aggregate is
// clipped (penalty), the OuterOptimizer moves the anchor phi, and every worker restarts from it.
#pragma once

#include <functional>
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
  // Compare a checksum of every replica's anchors every N syncs (0: only when the strategy is
  // built): a guard against replicas drifting apart silently, e.g. from non-deterministic kernels.
  int check_replicas_every = 0;

  void validate() const;
};

// The per-unit outer sync both strategies share, in four calls per unit:
//   prepare(units)  this worker's pseudo-gradient norms of several units at once, exchanged in
//                   one all_gather per group, the sync group's left in flight (penalty only;
//                   optional: begin() of a unit not prepared exchanges its norm alone);
//   begin(u)        the pseudo-gradient, the penalty's weights, and the weighted all_reduce issued;
//   land(u)         waits for the aggregate and issues the exchange of its norm (clip) over the
//                   shard group;
//   finish(u)       waits for that norm, clips, steps the outer optimizer and resets the worker to
//                   the new anchor.
// The penalty needs every worker's norm before a unit's all_reduce can go out, and the clip needs
// the aggregate's norm before the outer step: the exchanges behind both are small collectives on
// Work handles (no blocking host exchange), so callers overlap them with compute by what they do
// between the calls. Units are independent, so callers choose the order and how many are in
// flight; every rank must make the same calls in the same order (they issue collectives).
//
// Building one makes the replicas equal (replica 0's parameters, make_replicas_equal) and checks
// that every replica's anchors agree. Stateful: anchors, outer momenta, penalty detectors.
class PseudoGradientSync : public Stateful {
 public:
  PseudoGradientSync(shard::ShardedModel& model, std::shared_ptr<comm::Communicator> sync_group,
                     const LocalSgdOptions& options);

  // Computes the pseudo-gradients of `units` now (their parameters and anchors must not change
  // before their begin()) and, with the penalty, issues the exchange of their norms: one
  // all_gather over the shard group (waited here: it sums a worker's shard norms), then one over
  // the sync group (not waited: begin() of the first of these units takes it). keep_deltas holds
  // the deltas for begin() (bulk: they all live at once anyway); otherwise begin() computes them
  // (layer-wise: one unit's buffers at a time), and this pass only yields the norms: on the host
  // it reads the shards and anchors and writes nothing (pseudo_grad_sqnorm).
  void prepare(const std::vector<int>& units, bool keep_deltas);
  void begin(int unit);
  void land(int unit);
  void finish(int unit);
  bool begun(int unit) const { return slots_.at(static_cast<size_t>(unit)).begun; }
  bool prepared(int unit) const { return slots_.at(static_cast<size_t>(unit)).prepared; }
  // True once land() would not wait: the unit's aggregate is here (or its update is skipped).
  bool arrived(int unit) const;
  // Call once all units of a sync are finished: counts it, and checks the replicas every
  // check_replicas_every syncs.
  void end_sync();
  // Collective over the sync group: throws naming the replicas whose anchors differ from replica
  // 0's (beyond float rounding of the sum).
  void check_replicas();
  // Runs fn with the anchors in place of the local parameters, then puts those back.
  void with_anchors(const std::function<void()>& fn);
  // A-EDiT: the units begun from now on blend their weights with each worker's share of the inner
  // steps since the last sync: w_i = (1 - r) w_i + r s_i / (sum of s_j over the workers kept),
  // where w_i is the penalty's weight (1 / R without it) and a dropped worker keeps weight 0.
  // steps: one per worker, sync-group order; empty turns it off. Identical on every rank.
  void set_step_shares(std::vector<double> steps, double r);

  // Penalty counters, summed over units and syncs.
  std::int64_t dropped_workers() const { return dropped_workers_; }
  std::int64_t skipped_units() const { return skipped_units_; }
  std::int64_t level_shifts() const { return level_shifts_; }
  std::int64_t syncs() const { return syncs_; }

  // Prepared norms (and deltas) are not state: they follow from the parameters and anchors, and
  // a resumed run prepares them again. Loading drops them.
  StateDict state_dict() override;
  void load_state_dict(const StateDict& state) override;

  OuterOptimizer& outer() { return outer_; }
  PseudoGradPenalty* penalty() { return penalty_.get(); }
  // The last decision per unit (empty weights before the first sync): for tests and metrics.
  const PenaltyDecision& last_decision(int unit) const { return slots_.at(static_cast<size_t>(unit)).decision; }

 private:
  // The norms of prepared units, on their way over the sync group: (n,) this worker's, in the
  // order of `units`; (R * n,) every worker's, worker r's at [r * n, (r + 1) * n).
  struct NormExchange {
    std::vector<int> units;
    at::Tensor mine;
    at::Tensor all;
    comm::WorkPtr work;
  };
  // Waits for the norm exchange in flight (if any) and hands every unit its R norms.
  void receive_norms();

  struct Slot {
    at::Tensor delta;    // (shard,) this worker's pseudo-gradient; the aggregate once landed
    comm::WorkPtr work;  // the weighted all_reduce of delta
    PenaltyDecision decision;
    bool prepared = false;      // prepare() covered this unit; its norms are here or on their way
    std::vector<double> norms;  // every worker's ||delta_i||, sync-group order, once received
    bool begun = false;
    bool landed = false;
    double clip_sqnorm = 0.0;  // ||Delta||^2 of this shard, until the shard group's sum is known
    at::Tensor clip_mine;      // (1,) and (S,): this shard's ||Delta||^2 and every shard's,
    at::Tensor clip_all;       // rank order, on their way over the shard group
    comm::WorkPtr clip_work;
    int skipped_in_a_row = 0;
  };
  shard::ShardedModel& model_;
  std::shared_ptr<comm::Communicator> sync_;
  LocalSgdOptions options_;
  OuterOptimizer outer_;
  std::unique_ptr<PseudoGradPenalty> penalty_;
  std::vector<Slot> slots_;
  std::unique_ptr<NormExchange> norms_in_flight_;
  std::vector<double> step_shares_;  // set_step_shares()
  double step_share_ratio_ = 0.0;
  std::int64_t syncs_ = 0;
  std::int64_t dropped_workers_ = 0;
  std::int64_t skipped_units_ = 0;
  std::int64_t level_shifts_ = 0;
};

class DiLoCo : public SyncStrategy {
 public:
  DiLoCo(shard::ShardedModel& model, std::shared_ptr<comm::Communicator> sync_group, LocalSgdOptions options);
  std::string name() const override { return "diloco"; }
  void after_step(std::int64_t step) override;
  SyncStats stats() const override;
  void with_global_model(const std::function<void()>& fn) override { sync_.with_anchors(fn); }
  StateDict state_dict() override { return sync_.state_dict(); }
  void load_state_dict(const StateDict& state) override { sync_.load_state_dict(state); }
  PseudoGradientSync& core() { return sync_; }

 private:
  LocalSgdOptions options_;
  shard::ShardedModel& model_;
  PseudoGradientSync sync_;
};

// EDiT: after a sync step the outer step is not done in bulk; it runs in the next forward, unit
// by unit, from the pre_gather hook (before the unit's parameters are gathered), with the next
// unit's exchange already in flight while the current unit computes. Penalty on by default: the
// norms it needs go out when the first unit's sync begins, for every unit in one exchange, so the
// units after it wait for no norm exchange. Units that the forward left out (a model may skip units
// in some steps) sync in before_step, before the inner step.
class EDiT : public SyncStrategy {
 public:
  static LocalSgdOptions default_options();  // LocalSgdOptions with use_penalty = true
  EDiT(shard::ShardedModel& model, std::shared_ptr<comm::Communicator> sync_group,
       LocalSgdOptions options = default_options());
  ~EDiT() override;
  std::string name() const override { return "edit"; }
  void before_step(std::int64_t step) override;
  void after_step(std::int64_t step) override;
  void finish() override;
  SyncStats stats() const override;
  void with_global_model(const std::function<void()>& fn) override;
  // A sync in flight is saved as pending (with the units already done), not completed, so a
  // resumed run takes exactly the path of an uninterrupted one.
  StateDict state_dict() override;
  void load_state_dict(const StateDict& state) override;
  bool sync_pending() const { return pending_; }
  PseudoGradientSync& core() { return sync_; }

 protected:
  // Starts a layer-wise sync: it runs in the next forward (or finish()).
  void request_sync();
  shard::ShardedModel& model() { return model_; }

 private:
  void on_pre_gather(int unit);
  // The penalty's norms of every unit not yet done, on their way (see PseudoGradientSync::prepare).
  void prepare_norms();

  LocalSgdOptions options_;
  shard::ShardedModel& model_;
  PseudoGradientSync sync_;
  std::vector<bool> done_;
  bool pending_ = false;
  int hook_id_ = -1;
};

}  // namespace edit::sync
