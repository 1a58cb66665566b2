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

Ddp::Ddp(shard::ShardedModel& model, std::shared_ptr<comm::Communicator> sync_group)
    : model_(model), sync_(std::move(sync_group)) {
  EDIT_CHECK(sync_ != nullptr, "Ddp needs the sync group (mesh.sync_ptr())");
  make_replicas_equal(model_, *sync_);
}

void Ddp::before_step(std::int64_t /*step*/) {
  const auto start = std::chrono::steady_clock::now();
  if (sync_->size() > 1) {
    // All units in flight at once; the communicator runs them back to back.
    std::vector<comm::WorkPtr> pending;
    for (int u = 0; u < model_.num_units(); ++u) {
      pending.push_back(sync_->all_reduce(model_.unit(u).grad_shard(), {comm::ReduceOp::kAvg}));
    }
    for (auto& work : pending) work->wait();
  }
  ++stats_.syncs;
  stats_.blocked_seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace edit::sync
