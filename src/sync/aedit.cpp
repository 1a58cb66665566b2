#include "edit/sync/aedit.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <cmath>

#include "edit/core/check.h"

namespace edit::sync {
namespace {

double steady_seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

}  // namespace

void AEDiTOptions::validate() const {
  local.validate();
  EDIT_CHECK(std::isfinite(interval_s) && interval_s > 0, "the A-EDiT sync interval must be > 0 seconds, got ",
             interval_s, " (--sync-interval)");
  EDIT_CHECK(step_share >= 0 && step_share <= 1, "the A-EDiT step-share weight r must be in [0, 1], got ", step_share,
             " (--step-share)");
  EDIT_CHECK(budget_steps >= 0, "the A-EDiT step budget must be >= 0 (0: none), got ", budget_steps);
  EDIT_CHECK(std::isfinite(time_limit_s) && time_limit_s >= 0, "the A-EDiT time limit must be >= 0 seconds (0: none), got ",
             time_limit_s, " (--time-limit)");
  EDIT_CHECK(budget_steps > 0 || time_limit_s > 0,
             "A-EDiT needs an end that every replica agrees on: a step budget (--steps) or a time limit (--time-limit)");
  EDIT_CHECK(time_limit_s == 0 || time_limit_s >= interval_s, "the time limit ", time_limit_s,
             " s is shorter than one sync interval (", interval_s, " s); lengthen it or shorten --sync-interval");
}

AEDiT::AEDiT(shard::ShardedModel& model, std::shared_ptr<comm::Communicator> sync_group, AEDiTOptions options)
    : EDiT(model, sync_group, options.local), options_(std::move(options)), sync_(std::move(sync_group)) {
  options_.validate();
  share_budget();
}

void AEDiT::start_clock() {
  if (clock_started_) return;
  clock_started_ = true;
  if (options_.clock) return;
  // The shared epoch: every rank leaves these barriers at about the same moment and reads its own
  // steady clock right after, so rank clocks agree to a barrier's latency, whatever their skew.
  sync_->barrier()->wait();
  model().shard_group().barrier()->wait();
  clock_origin_ = steady_seconds();
}

double AEDiT::elapsed() {
  if (options_.clock) return options_.clock();
  start_clock();
  return clock_offset_ + (steady_seconds() - clock_origin_);
}

void AEDiT::before_micro_batch(std::int64_t step, int micro, int micro_batches) {
  EDiT::before_micro_batch(step, micro, micro_batches);
  start_clock();
}

void AEDiT::after_step(std::int64_t /*step*/) {
  round_agreed_ = false;
  EDIT_CHECK(!stop_, "A-EDiT: a step after the replicas agreed to stop; the trainer must end at should_stop()");
  ++steps_since_round_;
  // The replica's clock: its shard group's latest, so all of its ranks decide alike.
  double now = elapsed();
  comm::Communicator& shard = model().shard_group();
  if (shard.size() > 1) {
    for (double t : shard.all_gather_values({now})) now = std::max(now, t);
  }
  if (!due(now)) return;

  // Round: wait for every replica to be due, and learn where each one is.
  const auto start = std::chrono::steady_clock::now();
  constexpr size_t kValues = 4;  // per worker: clock, steps since the last round, last wait, round
  const auto all = sync_->all_gather_values(
      {now, static_cast<double>(steps_since_round_), last_wait_, static_cast<double>(rounds_ + 1)});
  last_wait_ = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  stats_.blocked_seconds += last_wait_;
  const auto workers = static_cast<size_t>(sync_->size());
  std::vector<double> steps(workers);
  round_steps_.assign(workers, 0);
  round_waits_.assign(workers, 0.0);
  double latest = 0.0;
  for (size_t r = 0; r < workers; ++r) {
    const double* mine = &all[kValues * r];
    // Rounds are joined in order, so the n-th exchange is round n everywhere; anything else means
    // the replicas no longer agree where they are (e.g. one resumed from another checkpoint).
    EDIT_CHECK(mine[3] == static_cast<double>(rounds_ + 1), "A-EDiT: worker ", r, " of ", sync_->name(),
               " is at round ", mine[3], " but this one is at round ", rounds_ + 1, "; the replicas no longer agree. "
               "Resume every rank from the same checkpoint");
    latest = std::max(latest, mine[0]);
    steps[r] = mine[1];
    round_steps_[r] = static_cast<std::int64_t>(mine[1]);
    round_waits_[r] = mine[2];
    total_steps_ += round_steps_[r];
  }
  ++rounds_;
  round_time_ = latest;
  // The next deadline: the next multiple of T, or the first one after the latest replica's clock
  // when that replica's step outlasted whole intervals.
  next_deadline_ =
      std::max(next_deadline_ + 1, static_cast<std::int64_t>(std::floor(latest / options_.interval_s)) + 1);
  stop_ = reached_end();
  share_budget();
  if (options_.step_share > 0) core().set_step_shares(steps, options_.step_share);
  request_sync();
  steps_since_round_ = 0;
  round_agreed_ = true;
}

bool AEDiT::due(double now) const {
  if (budget_share_ > 0 && steps_since_round_ >= budget_share_) return true;
  if (last_round_) return false;  // the last round ends on step counts, not on the clock
  return now >= static_cast<double>(next_deadline_) * options_.interval_s;
}

bool AEDiT::reached_end() const {
  return (options_.budget_steps > 0 && total_steps_ >= options_.budget_steps) ||
         (options_.time_limit_s > 0 &&
          static_cast<double>(next_deadline_) * options_.interval_s > options_.time_limit_s + 1e-9);
}

std::vector<std::int64_t> share_steps(std::int64_t left, const std::vector<std::int64_t>& weights) {
  const auto workers = static_cast<std::int64_t>(weights.size());
  std::int64_t last = 0;
  for (std::int64_t s : weights) last += s;
  EDIT_CHECK(workers > 0 && last > 0 && left > 0, "share_steps needs steps left (", left,
             ") and weights with a positive sum (", last, ")");
  // Every replica takes a step before it can join a round: one each first (when there are that
  // many left), then the rest in proportion to the last round's steps.
  const std::int64_t first = left >= workers ? 1 : 0;
  const std::int64_t shared = left - first * workers;
  std::vector<std::int64_t> share(static_cast<size_t>(workers));
  std::vector<std::pair<std::int64_t, size_t>> remainders;  // (shared * s_i mod last, i): exact integers
  std::int64_t given = 0;
  for (size_t i = 0; i < share.size(); ++i) {
    share[i] = first + shared * weights[i] / last;
    given += share[i];
    remainders.emplace_back(shared * weights[i] % last, i);
  }
  std::sort(remainders.begin(), remainders.end(), [](const auto& a, const auto& b) {
    return a.first != b.first ? a.first > b.first : a.second < b.second;
  });
  for (std::int64_t k = 0; k < left - given; ++k) share[remainders[static_cast<size_t>(k)].second] += 1;
  return share;
}

void AEDiT::share_budget() {
  budget_share_ = 0;
  last_round_ = false;
  if (options_.budget_steps <= 0 || stop_) return;
  const std::int64_t left = options_.budget_steps - total_steps_;
  const auto workers = static_cast<std::int64_t>(sync_->size());
  // Before the first round nothing is known of the replicas' speeds: even shares.
  const std::vector<std::int64_t> weights =
      round_steps_.empty() ? std::vector<std::int64_t>(static_cast<size_t>(workers), 1) : round_steps_;
  std::int64_t last = 0;
  for (std::int64_t s : weights) last += s;
  if (left <= 0 || last <= 0) return;
  last_round_ = !round_steps_.empty() && 2 * left < 3 * last;
  const std::vector<std::int64_t> share = share_steps(left, weights);
  budget_share_ = std::max<std::int64_t>(1, share[static_cast<size_t>(sync_->rank())]);
}

SyncStats AEDiT::stats() const {
  SyncStats stats = EDiT::stats();
  stats.rounds = rounds_;
  stats.round_steps = round_steps_;
  stats.round_waits = round_waits_;
  return stats;
}

StateDict AEDiT::state_dict() {
  EDIT_CHECK(round_agreed_ || (rounds_ == 0 && steps_since_round_ == 0),
             "A-EDiT saves only where a round was just agreed (round_agreed()): elsewhere the replicas are at "
             "different steps and their checkpoints would not fit together");
  StateDict state = EDiT::state_dict();
  state.put("aedit.rounds", rounds_);
  state.put("aedit.next_deadline", next_deadline_);
  state.put("aedit.total_steps", total_steps_);
  state.put("aedit.round_time", round_time_);
  // The last round's steps weight its sync, which may still be ahead (pending).
  for (size_t r = 0; r < round_steps_.size(); ++r) state.put("aedit.round_steps." + std::to_string(r), round_steps_[r]);
  return state;
}

void AEDiT::load_state_dict(const StateDict& state) {
  EDiT::load_state_dict(state);
  const std::string owner = "A-EDiT";
  rounds_ = state.integer(owner, "aedit.rounds");
  next_deadline_ = state.integer(owner, "aedit.next_deadline");
  total_steps_ = state.integer(owner, "aedit.total_steps");
  round_time_ = state.scalar(owner, "aedit.round_time");
  // The end follows from where the run is and this job's budget and limit (a resumed job may
  // train on past the end of the one that saved).
  stop_ = rounds_ > 0 && reached_end();
  round_steps_.clear();
  round_waits_.clear();
  if (rounds_ > 0) {
    std::vector<double> steps;
    for (int r = 0; r < sync_->size(); ++r) {
      const std::string key = "aedit.round_steps." + std::to_string(r);
      EDIT_CHECK(state.has_scalar(key), "the A-EDiT checkpoint has no step count for worker ", r, "; it was saved by a "
                 "job with fewer replicas. Resume with the replica count it was saved with");
      round_steps_.push_back(state.integer(owner, key));
      steps.push_back(static_cast<double>(round_steps_.back()));
    }
    if (options_.step_share > 0) core().set_step_shares(steps, options_.step_share);
  }
  share_budget();
  steps_since_round_ = 0;
  round_agreed_ = false;
  // The clock goes on from the round the checkpoint was taken at, from a new shared epoch.
  clock_offset_ = round_time_;
  clock_started_ = false;
  last_wait_ = 0.0;
}

}  // namespace edit::sync
