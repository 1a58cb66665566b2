#include "edit/sync/strategy.h"

#include <chrono>

#include "edit/core/check.h"

namespace edit::sync {

void make_replicas_equal(shard::ShardedModel& model, comm::Communicator& sync_group) {
  if (sync_group.size() == 1) return;
  std::vector<comm::WorkPtr> pending;
  for (int u = 0; u < model.num_units(); ++u) pending.push_back(sync_group.broadcast(model.unit(u).shard(), 0));
  for (auto& work : pending) work->wait();
}

void SyncStrategy::load_state_dict(const StateDict& state) {
  EDIT_CHECK(state.tensors.empty() && state.scalars.empty(), "the checkpoint holds a synchronization state (",
             state.tensors.size(), " tensors: a Local SGD run's anchors and outer momenta), but this job's strategy "
             "is ", name(), ", which keeps none and would drop it; resume with the --strategy the run was saved "
             "with, or start a new run from the exported model");
}

Ddp::Ddp(shard::ShardedModel& model, std::shared_ptr<comm::Communicator> sync_group)
    : model_(model), sync_(std::move(sync_group)) {
  EDIT_CHECK(sync_ != nullptr, "Ddp needs the sync group (mesh.sync_ptr())");
  make_replicas_equal(model_, *sync_);
  pending_.resize(static_cast<size_t>(model_.num_units()));
  if (sync_->size() > 1) {
    hook_id_ = model_.add_hook(shard::HookPoint::kPostBackward, [this](int unit) { on_unit_backward_done(unit); });
  }
}

Ddp::~Ddp() {
  if (hook_id_ >= 0) model_.remove_hook(hook_id_);
  for (auto& work : pending_) {
    try {
      if (work) work->wait();
    } catch (...) {
      // The group failed; whoever waited first got the error.
    }
  }
}

void Ddp::before_micro_batch(std::int64_t /*step*/, int micro, int micro_batches) {
  last_micro_batch_ = micro + 1 == micro_batches;
}

void Ddp::issue(int unit) {
  comm::WorkPtr& work = pending_[static_cast<size_t>(unit)];
  if (work) return;
  model_.wait_grad(unit);  // S > 1: the shard's reduce-scatter has landed in grad_shard
  work = sync_->all_reduce(model_.unit(unit).grad_shard(), {comm::ReduceOp::kAvg});
}

void Ddp::on_unit_backward_done(int unit) {
  if (!last_micro_batch_) return;
  // post_backward(u) has landed the shard-group reduce-scatters of every unit after u (S > 1: u's
  // own is still in flight, so it goes out with the next unit's hook or in before_step); with
  // S = 1, u's gradient is final now.
  const int first = model_.shard_group().size() > 1 ? unit + 1 : unit;
  for (int u = model_.num_units() - 1; u >= first; --u) {
    if (!pending_[static_cast<size_t>(u)]) {
      issue(u);
    }
  }
}

void Ddp::before_step(std::int64_t /*step*/) {
  const auto start = std::chrono::steady_clock::now();
  if (sync_->size() > 1) {
    issued_during_backward_ = 0;
    for (const auto& work : pending_) issued_during_backward_ += work ? 1 : 0;
    for (int u = model_.num_units() - 1; u >= 0; --u) issue(u);
    for (auto& work : pending_) {
      work->wait();
      work.reset();
    }
  }
  last_micro_batch_ = true;
  ++stats_.syncs;
  stats_.blocked_seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace edit::sync
