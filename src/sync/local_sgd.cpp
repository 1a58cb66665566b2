#include "edit/sync/local_sgd.h"

#include <ATen/ATen.h>

#include <chrono>
#include <cmath>

#include "edit/core/check.h"

namespace edit::sync {
namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point start) { return std::chrono::duration<double>(Clock::now() - start).count(); }

}  // namespace

void LocalSgdOptions::validate() const {
  EDIT_CHECK(sync_every >= 1, "sync every ", sync_every, " steps is not possible; use H >= 1 (--sync-every)");
  EDIT_CHECK(!use_penalty || (penalty.temperature > 0 && penalty.z_threshold > 0 && penalty.ema_alpha > 0 &&
                              penalty.ema_alpha <= 1 && penalty.clip_norm > 0 && penalty.warmup_syncs >= 0),
             "penalty options out of range: temperature, z threshold and clip norm must be positive, "
             "EMA alpha in (0, 1], warm-up syncs >= 0");
}

// --- PseudoGradientSync --------------------------------------------------------------------------

PseudoGradientSync::PseudoGradientSync(shard::ShardedModel& model, std::shared_ptr<comm::Communicator> sync_group,
                                       const LocalSgdOptions& options)
    : model_(model), sync_(std::move(sync_group)), outer_(model, options.outer) {
  EDIT_CHECK(sync_ != nullptr, "Local SGD needs the sync group (mesh.sync_ptr())");
  options.validate();
  if (options.use_penalty) penalty_ = std::make_unique<PseudoGradPenalty>(options.penalty);
  slots_.resize(static_cast<size_t>(model.num_units()));
}

double PseudoGradientSync::shard_group_sum(double local) {
  comm::Communicator& group = model_.shard_group();
  if (group.size() == 1) return local;
  double total = 0.0;
  for (double part : group.all_gather_values({local})) total += part;
  return total;
}

void PseudoGradientSync::begin(int unit) {
  Slot& slot = slots_.at(static_cast<size_t>(unit));
  EDIT_CHECK(!slot.begun, "sync of unit ", unit, " begun twice without finish()");
  at::NoGradGuard no_grad;
  const at::Tensor& theta = model_.unit(unit).shard();
  const at::Tensor& phi = outer_.anchor(unit);
  slot.delta = phi.to(theta.device()) - theta;  // (shard,) pseudo-gradient of this worker
  const int workers = sync_->size();
  if (penalty_) {
    // ||delta_i|| of the whole unit: squared norms of the shards, summed over the shard group.
    const double norm = std::sqrt(shard_group_sum(slot.delta.to(at::kDouble).pow(2).sum().item<double>()));
    slot.decision = penalty_->decide(unit, sync_->all_gather_values({norm}));
  } else {
    slot.decision = PenaltyDecision{std::vector<double>(static_cast<size_t>(workers), 1.0 / workers),
                                    std::vector<bool>(static_cast<size_t>(workers), false), false};
  }
  slot.begun = true;
  if (slot.decision.skip) return;
  const double weight = slot.decision.weights.at(static_cast<size_t>(sync_->rank()));
  // A dropped worker sends zeros, not weight x delta: 0 x NaN would still be NaN.
  if (weight == 0.0) slot.delta.zero_();
  slot.work = sync_->all_reduce(slot.delta, {comm::ReduceOp::kSum, weight == 0.0 ? 1.0 : weight});
}

void PseudoGradientSync::finish(int unit) {
  Slot& slot = slots_.at(static_cast<size_t>(unit));
  EDIT_CHECK(slot.begun, "finish() of unit ", unit, " without begin()");
  slot.begun = false;
  if (!slot.decision.skip) {
    slot.work->wait();
    slot.work.reset();
    if (penalty_ && penalty_->options().clip) {
      const double norm = std::sqrt(shard_group_sum(slot.delta.to(at::kDouble).pow(2).sum().item<double>()));
      const double scale = penalty_->clip_scale(norm);
      if (scale < 1.0) slot.delta.mul_(scale);
    }
    outer_.step(unit, slot.delta);
  }
  outer_.reset_to_anchor(unit);
  slot.delta = at::Tensor();
}

// --- DiLoCo ----------------------------------------------------------------------------------------

DiLoCo::DiLoCo(shard::ShardedModel& model, std::shared_ptr<comm::Communicator> sync_group, LocalSgdOptions options)
    : options_(options), model_(model), sync_(model, std::move(sync_group), options_) {}

void DiLoCo::after_step(std::int64_t step) {
  if ((step + 1) % options_.sync_every != 0) return;
  const auto start = Clock::now();
  // Every unit's exchange in flight together, then the outer steps as they land.
  for (int u = 0; u < model_.num_units(); ++u) sync_.begin(u);
  for (int u = 0; u < model_.num_units(); ++u) sync_.finish(u);
  ++stats_.syncs;
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
  if ((step + 1) % options_.sync_every != 0) return;
  EDIT_CHECK(!pending_, "EDiT sync requested while the previous one is still pending; run a forward pass "
             "(or finish()) between sync steps");
  pending_ = true;
  done_.assign(done_.size(), false);
}

void EDiT::on_pre_gather(int unit) {
  if (!pending_ || done_.at(static_cast<size_t>(unit))) return;
  const auto start = Clock::now();
  if (!sync_.begun(unit)) sync_.begin(unit);
  // The next unit's exchange goes out now and travels while this unit gathers and computes.
  if (unit + 1 < model_.num_units() && !sync_.begun(unit + 1) && !done_[static_cast<size_t>(unit) + 1]) {
    sync_.begin(unit + 1);
  }
  sync_.finish(unit);
  done_[static_cast<size_t>(unit)] = true;
  if (std::all_of(done_.begin(), done_.end(), [](bool d) { return d; })) {
    pending_ = false;
    ++stats_.syncs;
  }
  stats_.blocked_seconds += seconds_since(start);
}

void EDiT::finish() {
  if (!pending_) return;
  for (int u = 0; u < model_.num_units(); ++u) on_pre_gather(u);
}

}  // namespace edit::sync
