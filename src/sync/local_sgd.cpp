#include "edit/sync/local_sgd.h"

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>

#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <numeric>

#include "edit/core/check.h"
#include "edit/core/profile_scope.h"
#include "edit/sync/pseudo_grad.h"
#include "rank_sum.h"

namespace edit::sync {
namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point start) { return std::chrono::duration<double>(Clock::now() - start).count(); }

}  // namespace

void LocalSgdOptions::validate() const {
  EDIT_CHECK(sync_every >= 1, "sync every ", sync_every, " steps is not possible; use H >= 1 (--sync-every)");
  EDIT_CHECK(check_replicas_every >= 0, "check the replicas every ", check_replicas_every,
             " syncs is not possible; use N >= 1, or 0 to check only at the start");
  outer.validate();
  if (use_penalty) penalty.validate();
}

// --- PseudoGradientSync --------------------------------------------------------------------------

namespace {

// The sync group, checked, and the replicas made equal before the anchors copy the parameters.
std::shared_ptr<comm::Communicator> equal_replicas(shard::ShardedModel& model,
                                                   std::shared_ptr<comm::Communicator> sync_group,
                                                   const LocalSgdOptions& options) {
  EDIT_CHECK(sync_group != nullptr, "Local SGD needs the sync group (mesh.sync_ptr())");
  options.validate();
  make_replicas_equal(model, *sync_group);
  return sync_group;
}

}  // namespace

PseudoGradientSync::PseudoGradientSync(shard::ShardedModel& model, std::shared_ptr<comm::Communicator> sync_group,
                                       const LocalSgdOptions& options)
    : model_(model),
      sync_(equal_replicas(model, std::move(sync_group), options)),
      options_(options),
      outer_(model, options.outer) {
  if (options.use_penalty) penalty_ = std::make_unique<PseudoGradPenalty>(options.penalty);
  slots_.resize(static_cast<size_t>(model.num_units()));
  check_replicas();
}

void PseudoGradientSync::check_replicas() {
  if (sync_->size() == 1) return;
  // Sum, sum of |x| and sum of squares of this rank's anchor shards, in double, in a fixed order.
  // Identical anchors give identical values; a relative 1e-6 allows a few ulps of float rounding
  // per element (an MPI reduction need not give every rank the same last bit), while replicas that
  // really drifted apart differ by far more.
  double sum = 0.0, sum_abs = 0.0, sum_sq = 0.0;
  for (int u = 0; u < model_.num_units(); ++u) {
    const at::Tensor phi = outer_.anchor(u).to(at::kDouble);
    sum += phi.sum().item<double>();
    sum_abs += phi.abs().sum().item<double>();
    sum_sq += phi.pow(2).sum().item<double>();
  }
  const auto all = sync_->all_gather_values({sum, sum_abs, sum_sq});
  std::string differing;
  double worst = 0.0;
  for (int r = 1; r < sync_->size(); ++r) {
    const double* mine = &all[3 * static_cast<size_t>(r)];
    const double gap = std::max(std::abs(mine[0] - all[0]) / (all[1] + 1e-30), std::abs(mine[2] - all[2]) / (all[2] + 1e-30));
    if (gap > 1e-6) {
      differing += (differing.empty() ? "" : ", ") + std::to_string(r);
      worst = std::max(worst, gap);
    }
  }
  EDIT_CHECK(differing.empty(), "the replicas' anchors differ on ", sync_->name(), ": replica(s) ", differing,
             " disagree with replica 0 (relative checksum gap ", worst, ") after ", syncs_,
             " syncs; they no longer train one model. Causes: a rank that changed its parameters outside the "
             "strategy, non-deterministic reductions, or a bug: restart from the last checkpoint");
}

void PseudoGradientSync::end_sync() {
  ++syncs_;
  if (options_.check_replicas_every > 0 && syncs_ % options_.check_replicas_every == 0) check_replicas();
}

void PseudoGradientSync::with_anchors(const std::function<void()>& fn) {
  c10::NoGradGuard no_grad;
  std::vector<at::Tensor> local;
  for (int u = 0; u < model_.num_units(); ++u) {
    EDIT_CHECK(!slots_[static_cast<size_t>(u)].begun, "the sync of unit ", u,
               " is in flight; finish it before swapping the anchors in");
    local.push_back(model_.unit(u).shard().clone());
    outer_.reset_to_anchor(u);
  }
  // The local parameters come back even when fn throws.
  struct Restore {
    shard::ShardedModel& model;
    std::vector<at::Tensor>& local;
    ~Restore() {
      c10::NoGradGuard guard;
      for (int u = 0; u < model.num_units(); ++u) model.unit(u).shard().copy_(local[static_cast<size_t>(u)]);
    }
  } restore{model_, local};
  fn();
}

StateDict PseudoGradientSync::state_dict() {
  StateDict state;
  state.put("syncs", syncs_);
  state.put("penalty.dropped_workers", dropped_workers_);
  state.put("penalty.skipped_units", skipped_units_);
  state.put("penalty.level_shifts", level_shifts_);
  for (int u = 0; u < model_.num_units(); ++u) {
    const std::string prefix = "unit" + std::to_string(u) + ".";
    EDIT_CHECK(!slots_[static_cast<size_t>(u)].begun, "the sync of unit ", u, " is in flight; finish it before saving");
    state.put(prefix + "anchor", outer_.mutable_anchor(u));
    state.put(prefix + "momentum", outer_.mutable_momentum(u));
    state.put(prefix + "skipped_in_a_row", static_cast<std::int64_t>(slots_[static_cast<size_t>(u)].skipped_in_a_row));
    if (penalty_) {
      const auto& d = penalty_->mutable_detector(u);
      state.put(prefix + "penalty.mean", d.mean);
      state.put(prefix + "penalty.var", d.var);
      state.put(prefix + "penalty.observations", d.observations);
      state.put(prefix + "penalty.syncs", d.syncs);
    }
  }
  return state;
}

void PseudoGradientSync::load_state_dict(const StateDict& state) {
  const std::string owner = "the Local SGD sync";
  // Norms and deltas prepared from the parameters before this load no longer apply.
  receive_norms();
  for (int u = 0; u < model_.num_units(); ++u) {
    Slot& slot = slots_[static_cast<size_t>(u)];
    EDIT_CHECK(!slot.begun, "the sync of unit ", u, " is in flight; finish it before loading a checkpoint");
    slot.prepared = false;
    slot.norms.clear();
    slot.delta = at::Tensor();
  }
  syncs_ = state.integer(owner, "syncs");
  dropped_workers_ = state.integer(owner, "penalty.dropped_workers");
  skipped_units_ = state.integer(owner, "penalty.skipped_units");
  level_shifts_ = state.integer(owner, "penalty.level_shifts");
  for (int u = 0; u < model_.num_units(); ++u) {
    const std::string prefix = "unit" + std::to_string(u) + ".";
    state.copy_into(owner, prefix + "anchor", outer_.mutable_anchor(u));
    state.copy_into(owner, prefix + "momentum", outer_.mutable_momentum(u));
    slots_[static_cast<size_t>(u)].skipped_in_a_row = static_cast<int>(state.integer(owner, prefix + "skipped_in_a_row"));
    EDIT_CHECK(static_cast<bool>(penalty_) == state.has_scalar(prefix + "penalty.mean"), "the checkpoint was saved ",
               penalty_ ? "without" : "with", " the pseudo-gradient penalty but this job runs ",
               penalty_ ? "with" : "without", " it; resume with the strategy and options it was saved with (",
               penalty_ ? "--no-penalty for edit and aedit; diloco and streaming have it only with --penalty"
                        : "edit and aedit have it unless --no-penalty; diloco and streaming with --penalty",
               ")");
    if (penalty_) {
      auto& d = penalty_->mutable_detector(u);
      d.mean = state.scalar(owner, prefix + "penalty.mean");
      d.var = state.scalar(owner, prefix + "penalty.var");
      d.observations = state.integer(owner, prefix + "penalty.observations");
      d.syncs = state.integer(owner, prefix + "penalty.syncs");
    }
  }
}

namespace {

}  // namespace

void PseudoGradientSync::prepare(const std::vector<int>& units, bool keep_deltas) {
  EDIT_CHECK(!norms_in_flight_,
             "prepare() while the norms of an earlier prepare() are still on their way; "
             "begin() one of those units first");
  if (!penalty_ && !keep_deltas) return;  // nothing to do ahead of begin()
  c10::NoGradGuard no_grad;
  std::vector<double> sqnorms;
  for (int unit : units) {
    Slot& slot = slots_.at(static_cast<size_t>(unit));
    EDIT_CHECK(!slot.begun && !slot.prepared && !slot.delta.defined(), "prepare() of unit ", unit,
               " that is already ", slot.begun ? "begun" : "prepared", "; finish() its sync first");
    const at::Tensor& anchor = outer_.anchor(unit);
    const at::Tensor& local = model_.unit(unit).shard();
    double sqnorm = 0.0;
    if (keep_deltas) {
      // (shard,) pseudo-gradient of this worker, with its squared norm from the same pass.
      slot.delta = pseudo_gradient(anchor, local, penalty_ ? &sqnorm : nullptr);
    } else {
      sqnorm = pseudo_grad_sqnorm(anchor, local);  // begin() computes the delta itself
    }
    sqnorms.push_back(sqnorm);
    slot.prepared = penalty_ != nullptr;
  }
  if (!penalty_ || units.empty()) return;
  const auto n = static_cast<std::int64_t>(units.size());
  // ||delta_i|| of the whole unit over the shard group (the fast group, idle when a sync starts:
  // waited here, once for all these units).
  const std::vector<double> norms = norms_over_shards(model_.shard_group(), sqnorms);
  // Every worker's norms, over the sync group: not waited here.
  auto exchange = std::make_unique<NormExchange>();
  exchange->units = units;
  exchange->mine = host_values(norms);
  exchange->all = at::empty({sync_->size() * n}, at::kDouble);
  exchange->work = sync_->all_gather(exchange->all, exchange->mine);
  norms_in_flight_ = std::move(exchange);
}

void PseudoGradientSync::receive_norms() {
  if (!norms_in_flight_) return;
  const std::unique_ptr<NormExchange> exchange = std::move(norms_in_flight_);
  exchange->work->wait();
  const auto n = exchange->units.size();
  const double* all = exchange->all.data_ptr<double>();
  for (size_t k = 0; k < n; ++k) {
    Slot& slot = slots_[static_cast<size_t>(exchange->units[k])];
    slot.norms.resize(static_cast<size_t>(sync_->size()));
    for (size_t r = 0; r < slot.norms.size(); ++r) slot.norms[r] = all[r * n + k];
  }
}

void PseudoGradientSync::begin(int unit) {
  Slot& slot = slots_.at(static_cast<size_t>(unit));
  EDIT_CHECK(!slot.begun, "sync of unit ", unit, " begun twice without finish()");
  c10::NoGradGuard no_grad;
  if (penalty_ && !slot.prepared) {
    // Not prepared: this unit alone, its norms exchanged now (after any exchange in flight).
    receive_norms();
    prepare({unit}, /*keep_deltas=*/true);
  }
  if (!slot.delta.defined()) {
    slot.delta = pseudo_gradient(outer_.anchor(unit), model_.unit(unit).shard(), nullptr);
  }
  const int workers = sync_->size();
  if (penalty_) {
    if (slot.norms.empty()) receive_norms();
    EDIT_CHECK(slot.norms.size() == static_cast<size_t>(workers), "unit ", unit, " got ", slot.norms.size(),
               " worker norms for a sync group of ", workers, " (a bug in PseudoGradientSync)");
    slot.decision = penalty_->decide(unit, slot.norms);
    slot.norms.clear();
    slot.prepared = false;
    dropped_workers_ += slot.decision.dropped_count();
    level_shifts_ += slot.decision.level_shift ? 1 : 0;
  } else {
    slot.decision = PenaltyDecision{std::vector<double>(static_cast<size_t>(workers), 1.0 / workers),
                                    std::vector<bool>(static_cast<size_t>(workers), false), false};
  }
  slot.begun = true;
  slot.landed = false;
  if (slot.decision.skip) {
    ++skipped_units_;
    if (++slot.skipped_in_a_row == 2) {
      spdlog::warn("unit {} ({}): outer update skipped at two syncs in a row, every worker's pseudo-gradient "
                   "was NaN/Inf or anomalous; the model is not learning there. Lower --lr, or check the data",
                   unit, model_.unit(unit).name());
    }
    return;
  }
  slot.skipped_in_a_row = 0;
  if (!step_shares_.empty()) {
    std::vector<double>& w = slot.decision.weights;
    double kept_steps = 0.0;
    for (size_t i = 0; i < w.size(); ++i) kept_steps += slot.decision.dropped[i] ? 0.0 : step_shares_[i];
    for (size_t i = 0; i < w.size(); ++i) {
      if (slot.decision.dropped[i]) continue;
      // No steps among the kept workers (cannot happen in a round, but guards 0 / 0): shares even.
      const double share = kept_steps > 0 ? step_shares_[i] / kept_steps : w[i];
      w[i] = (1.0 - step_share_ratio_) * w[i] + step_share_ratio_ * share;
    }
  }
  const double weight = slot.decision.weights.at(static_cast<size_t>(sync_->rank()));
  // A dropped worker sends zeros, not weight x delta: 0 x NaN would still be NaN.
  if (weight == 0.0) slot.delta.zero_();
  slot.work = sync_->all_reduce(slot.delta, {comm::ReduceOp::kSum, weight == 0.0 ? 1.0 : weight});
}

void PseudoGradientSync::set_step_shares(std::vector<double> steps, double r) {
  EDIT_CHECK(steps.empty() || steps.size() == static_cast<size_t>(sync_->size()), "set_step_shares() got ",
             steps.size(), " step counts for a sync group of ", sync_->size());
  EDIT_CHECK(r >= 0.0 && r <= 1.0, "the step-share ratio r must be in [0, 1], got ", r);
  for (double s : steps) EDIT_CHECK(s >= 0.0 && std::isfinite(s), "a worker's step count must be >= 0, got ", s);
  step_shares_ = std::move(steps);
  step_share_ratio_ = r;
}

bool PseudoGradientSync::arrived(int unit) const {
  const Slot& slot = slots_.at(static_cast<size_t>(unit));
  EDIT_CHECK(slot.begun, "arrived() of unit ", unit, " without begin()");
  return slot.landed || !slot.work || slot.work->is_completed();
}

void PseudoGradientSync::land(int unit) {
  Slot& slot = slots_.at(static_cast<size_t>(unit));
  EDIT_CHECK(slot.begun, "land() of unit ", unit, " without begin()");
  if (slot.landed) return;
  slot.landed = true;
  if (slot.decision.skip) return;
  slot.work->wait();
  slot.work.reset();
  if (!penalty_ || !penalty_->options().clip) return;
  // ||Delta|| of the whole unit: squared norms of the shards, summed over the shard group; the
  // exchange travels until finish().
  slot.clip_sqnorm = squared_norm(slot.delta);
  comm::Communicator& shard = model_.shard_group();
  if (shard.size() == 1) return;
  slot.clip_mine = host_values({slot.clip_sqnorm});
  slot.clip_all = at::empty({shard.size()}, at::kDouble);
  slot.clip_work = shard.all_gather(slot.clip_all, slot.clip_mine);
}

void PseudoGradientSync::finish(int unit) {
  Slot& slot = slots_.at(static_cast<size_t>(unit));
  EDIT_CHECK(slot.begun, "finish() of unit ", unit, " without begin()");
  land(unit);
  slot.begun = false;
  slot.landed = false;
  if (!slot.decision.skip) {
    if (penalty_ && penalty_->options().clip) {
      double sqnorm = slot.clip_sqnorm;
      if (slot.clip_work) {
        slot.clip_work->wait();
        slot.clip_work.reset();
        sqnorm = sum_over_ranks(slot.clip_all, 1, 0);
        slot.clip_mine = slot.clip_all = at::Tensor();
      }
      const double scale = penalty_->clip_scale(std::sqrt(sqnorm));
      if (scale < 1.0) slot.delta.mul_(scale);
    }
    outer_.step_and_reset(unit, slot.delta);
  } else {
    outer_.reset_to_anchor(unit);  // skipped: the anchor stays, the workers restart from it
  }
  slot.delta = at::Tensor();
}

// --- DiLoCo ----------------------------------------------------------------------------------------

DiLoCo::DiLoCo(shard::ShardedModel& model, std::shared_ptr<comm::Communicator> sync_group, LocalSgdOptions options)
    : options_(options), model_(model), sync_(model, std::move(sync_group), options_) {}

void DiLoCo::after_step(std::int64_t step) {
  if ((step + 1) % options_.sync_every != 0) return;
  const auto start = Clock::now();
  const int units = model_.num_units();
  // With the penalty, every unit's norm goes out in one exchange, ahead of the first all_reduce.
  if (sync_.penalty() != nullptr) {
    std::vector<int> all(static_cast<size_t>(units));
    std::iota(all.begin(), all.end(), 0);
    sync_.prepare(all, /*keep_deltas=*/true);
  }
  // Every unit's exchange in flight together, then the outer steps as they land: unit u's clip
  // norm travels while unit u - 1 takes its step.
  for (int u = 0; u < units; ++u) sync_.begin(u);
  for (int u = 0; u < units; ++u) {
    sync_.land(u);
    if (u > 0) sync_.finish(u - 1);
  }
  if (units > 0) sync_.finish(units - 1);
  sync_.end_sync();
  stats_.blocked_seconds += seconds_since(start);
}

// --- EDiT ------------------------------------------------------------------------------------------

LocalSgdOptions EDiT::default_options() {
  LocalSgdOptions options;
  options.use_penalty = true;
  return options;
}

EDiT::EDiT(shard::ShardedModel& model, std::shared_ptr<comm::Communicator> sync_group, LocalSgdOptions options)
    : options_(options), model_(model), sync_(model, std::move(sync_group), options_) {
  done_.assign(static_cast<size_t>(model.num_units()), false);
  hook_id_ = model_.add_hook(shard::HookPoint::kPreGather, [this](int unit) { on_pre_gather(unit); });
}

EDiT::~EDiT() { model_.remove_hook(hook_id_); }

void EDiT::after_step(std::int64_t step) {
  if ((step + 1) % options_.sync_every == 0) request_sync();
}

void EDiT::before_step(std::int64_t /*step*/) {
  // Still pending after the step's forwards: they left some units out (a model may skip units in
  // some steps). Those sync now, before the inner step, as they would have in their pre_gather
  // hook: their shards have not moved since the sync was requested.
  finish();
}

void EDiT::request_sync() {
  EDIT_CHECK(!pending_, "EDiT sync requested while the previous one is still pending; run a forward pass "
             "(or finish()) between sync steps");
  pending_ = true;
  done_.assign(done_.size(), false);
}

void EDiT::prepare_norms() {
  if (sync_.penalty() == nullptr) return;
  std::vector<int> units;
  for (int u = 0; u < model_.num_units(); ++u) {
    if (!done_[static_cast<size_t>(u)] && !sync_.begun(u) && !sync_.prepared(u)) units.push_back(u);
  }
  sync_.prepare(units, /*keep_deltas=*/false);
}

void EDiT::on_pre_gather(int unit) {
  if (!pending_ || done_.at(static_cast<size_t>(unit))) return;
  const ProfileScope scope("edit::sync");  // the layer-wise sync, inside the forward
  const auto start = Clock::now();
  // The sync's first unit (or the first after a resume): the norms of every unit left go out in
  // one exchange, so the units after it find theirs here.
  if (sync_.penalty() != nullptr && !sync_.begun(unit) && !sync_.prepared(unit)) prepare_norms();
  if (!sync_.begun(unit)) sync_.begin(unit);
  // The next unit's exchange goes out now and travels while this unit gathers and computes. While
  // this unit's aggregate is still on the link, the next all_reduce is queued behind it first, so
  // the link never idles; once it is here (compute is the bottleneck), its clip-norm exchange goes
  // out first and travels while the next unit's pseudo-gradient is computed. Either way each group
  // sees the same collectives in the same order (the next unit is prepared: its begin() only
  // touches the sync group, land() only the shard group).
  const bool next =
      unit + 1 < model_.num_units() && !sync_.begun(unit + 1) && !done_[static_cast<size_t>(unit) + 1];
  if (next && !sync_.arrived(unit)) sync_.begin(unit + 1);
  sync_.land(unit);
  if (next && !sync_.begun(unit + 1)) sync_.begin(unit + 1);
  sync_.finish(unit);
  done_[static_cast<size_t>(unit)] = true;
  if (std::all_of(done_.begin(), done_.end(), [](bool d) { return d; })) {
    pending_ = false;
    sync_.end_sync();
  }
  stats_.blocked_seconds += seconds_since(start);
}

void EDiT::finish() {
  if (!pending_) return;
  for (int u = 0; u < model_.num_units(); ++u) on_pre_gather(u);
}

void EDiT::with_global_model(const std::function<void()>& fn) {
  finish();
  sync_.with_anchors(fn);
}

StateDict EDiT::state_dict() {
  // Saved between steps (as the Trainer does) no unit has begun, and a pending sync is saved as
  // pending. Saved mid-forward, with a unit's exchange in flight, the sync completes from there:
  // completing a unit begins the next one.
  for (int u = 0; u < model_.num_units(); ++u) {
    if (sync_.begun(u)) on_pre_gather(u);
  }
  StateDict state = sync_.state_dict();
  state.put("edit.pending", static_cast<std::int64_t>(pending_));
  for (int u = 0; u < model_.num_units(); ++u) {
    state.put("edit.unit" + std::to_string(u) + ".done", static_cast<std::int64_t>(done_[static_cast<size_t>(u)]));
  }
  return state;
}

void EDiT::load_state_dict(const StateDict& state) {
  sync_.load_state_dict(state);
  pending_ = state.integer("EDiT", "edit.pending") != 0;
  for (int u = 0; u < model_.num_units(); ++u) {
    done_[static_cast<size_t>(u)] = state.integer("EDiT", "edit.unit" + std::to_string(u) + ".done") != 0;
  }
}

namespace {

// The counters of the sync core, which its state carries over a resume.
SyncStats with_penalty_counts(SyncStats stats, const PseudoGradientSync& sync) {
  stats.syncs = sync.syncs();
  stats.dropped_workers = sync.dropped_workers();
  stats.skipped_units = sync.skipped_units();
  stats.level_shifts = sync.level_shifts();
  return stats;
}

}  // namespace

SyncStats DiLoCo::stats() const { return with_penalty_counts(stats_, sync_); }
SyncStats EDiT::stats() const { return with_penalty_counts(stats_, sync_); }

}  // namespace edit::sync
