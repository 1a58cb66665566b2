#include "edit/train/trainer.h"

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <thread>

#include "edit/core/check.h"
#include "edit/core/profile_scope.h"
#include "edit/train/stop_signal.h"

namespace edit::train {

namespace {
// How every refused step ends its message: what was kept and what to do.
constexpr const char* kStoppedBeforeTheUpdate =
    "training stopped before the update, so the weights and the last checkpoint are intact. Lower the learning "
    "rate or check the data, then resume from the last checkpoint";
}  // namespace

Trainer::Trainer(comm::DeviceMesh& mesh, shard::ShardedModel& model, shard::FlatOptimizer& inner,
                 sync::SyncStrategy& strategy, TrainerOptions options)
    : mesh_(mesh), model_(model), inner_(inner), strategy_(strategy), options_(std::move(options)) {
  EDIT_CHECK(options_.steps >= 0, "--steps must not be negative, got ", options_.steps);
  EDIT_CHECK(options_.accumulation >= 1, "gradient accumulation must be at least 1 micro-batch, got ",
             options_.accumulation);
  EDIT_CHECK(options_.clip_norm >= 0, "clip norm must be >= 0 (0 turns clipping off), got ", options_.clip_norm);
  EDIT_CHECK(options_.max_skipped_steps >= 1, "--max-skipped-steps must be at least 1, got ",
             options_.max_skipped_steps, "; to never skip a step, keep --on-nonfinite stop");
  options_.schedule.validate();
  options_.stragglers.check_ranks(mesh_.world_size());
  EDIT_CHECK(options_.profile_first >= 0 && options_.profile_steps >= 0,
             "the profiled steps must start at a step >= 0 and number >= 0, got ", options_.profile_steps,
             " from step ", options_.profile_first);
  if (!options_.metrics_path.empty() && mesh_.rank() == 0) {
    // Fail now, not at the first step, when the file cannot be written.
    std::ofstream probe(options_.metrics_path, std::ios::app);
    EDIT_CHECK(probe.good(), "cannot open the metrics file ", options_.metrics_path,
               "; check that its folder exists and is writable");
  }
}

StateDict Trainer::state_dict() {
  StateDict state;
  state.put("step", step_);
  state.put("skipped_steps", skipped_steps_);
  return state;
}

void Trainer::load_state_dict(const StateDict& state) {
  set_step(state.integer("the trainer", "step"));
  // (Checkpoints from before skipped steps were counted have no count.)
  skipped_steps_ = state.has_scalar("skipped_steps") ? state.integer("the trainer", "skipped_steps") : 0;
}

void Trainer::open_metrics() {
  // Lines of steps at or after the one this process starts with were written by a run that
  // stopped later than its last checkpoint: this run writes them anew.
  std::vector<std::string> kept;
  {
    std::ifstream in(options_.metrics_path);
    for (std::string line; std::getline(in, line);) {
      const auto parsed = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
      // A torn last line (killed mid-write) or foreign text is dropped as well.
      if (parsed.is_object() && parsed.contains("step") && parsed["step"].is_number_integer() &&
          parsed["step"].get<std::int64_t>() < step_) {
        kept.push_back(line);
      }
    }
  }
  // Rewritten beside the file and renamed over it, so a crash now loses none of the kept lines.
  const std::string rewritten = options_.metrics_path + ".tmp";
  {
    std::ofstream out(rewritten, std::ios::trunc);
    for (const auto& line : kept) out << line << '\n';
    out.flush();
    EDIT_CHECK(out.good(), "cannot write ", rewritten, "; check that the folder is writable and the disk is not full");
  }
  std::filesystem::rename(rewritten, options_.metrics_path);
  metrics_ = std::make_unique<std::ofstream>(options_.metrics_path, std::ios::app);
  EDIT_CHECK(metrics_->good(), "cannot open the metrics file ", options_.metrics_path, " for appending");
}

StepMetrics Trainer::step(const BatchFn& next_batch, const LossFn& loss_fn) {
  using Clock = std::chrono::steady_clock;
  const auto start = Clock::now();
  const auto shard_before = mesh_.shard().stats();
  const auto sync_before = mesh_.sync().stats();
  const sync::SyncStats sync_stats_before = strategy_.stats();
  if (run_steps_ == 0) {  // counters restored from a checkpoint are not news
    logged_dropped_ = sync_stats_before.dropped_workers;
    logged_skipped_ = sync_stats_before.skipped_units;
  }

  if (options_.profile_steps > 0 && step_ == options_.profile_first) {
    // A profiler that cannot start (no CUPTI, a sandbox refusing it) costs the profile, not the run.
    try {
      if (!profiler_) profiler_ = std::make_unique<StepProfiler>(model_.device());
      profiler_->start();
    } catch (const std::exception& e) {
      spdlog::warn("rank {}: the profiler did not start ({}); training goes on without a profile", mesh_.rank(),
                   e.what());
    }
  }
  StepMetrics metrics;
  metrics.step = step_;
  std::int64_t tokens = 0;
  model_.zero_grad();
  // The loss is summed where it is computed and read once per step: a read per micro-batch would
  // make the host wait for the GPU before it may queue the next micro-batch.
  at::Tensor loss_sum;
  for (int micro = 0; micro < options_.accumulation; ++micro) {
    {
      const ProfileScope scope("edit::sync");
      strategy_.before_micro_batch(step_, micro, options_.accumulation);
    }
    const Batch batch = [&] {
      const ProfileScope scope("edit::batch");
      return next_batch(step_, micro);
    }();
    at::Tensor loss = [&] {
      const ProfileScope scope("edit::forward");
      return loss_fn(batch) / options_.accumulation;
    }();
    {
      const ProfileScope scope("edit::backward");
      model_.backward(loss);
    }
    const at::Tensor part = loss.detach().to(at::kDouble);
    loss_sum = loss_sum.defined() ? loss_sum + part : part;
    tokens += batch.targets.numel();
  }
  if (!options_.stragglers.empty()) {
    // A slower worker: its compute (timed up to the end of its backward, which the read waits for
    // on a GPU) takes longer, before the strategy can sync.
    (void)loss_sum.item<double>();
    const double compute = std::chrono::duration<double>(Clock::now() - start).count();
    metrics.straggler_delay_s = options_.stragglers.delay(mesh_.rank(), step_, compute);
    if (metrics.straggler_delay_s > 0) std::this_thread::sleep_for(std::chrono::duration<double>(metrics.straggler_delay_s));
  }
  {
    const ProfileScope scope("edit::sync");
    strategy_.before_step(step_);
  }
  const bool check_finite = options_.on_nonfinite != NonFinitePolicy::kIgnore;
  at::Tensor grad_norm;
  {
    // Without a clip the norm is still taken when non-finite values must stop or skip the step: a
    // NaN that reached this rank through a gradient average or reduce-scatter shows only there.
    const ProfileScope scope("edit::clip");
    if (options_.clip_norm > 0) {
      grad_norm = model_.clip_grad_norm_queued(options_.clip_norm);
    } else if (check_finite) {
      grad_norm = model_.grad_norm_queued();
    }
  }
  {
    // One read a step, the loss and the gradient norm together, after the clip is queued: on a GPU
    // every read makes the host wait for all the work queued before it.
    const ProfileScope scope("edit::host_read");
    const at::Tensor loss_one = loss_sum.reshape({1});
    const at::Tensor read =
        (grad_norm.defined() ? at::cat({loss_one, grad_norm.reshape({1}).to(at::kDouble)}) : loss_one).to(at::kCPU);
    metrics.loss = read[0].item<double>();
    metrics.grad_norm = grad_norm.defined() ? read[1].item<double>() : NAN;
  }
  // A non-finite gradient norm skips the update where asked to: the norm is global (identical on
  // every rank of the group that clips together), so the group skips as one.
  metrics.skipped = options_.on_nonfinite == NonFinitePolicy::kSkip && !std::isfinite(metrics.grad_norm);
  if (check_finite && !metrics.skipped) {
    // Else a non-finite loss or gradient norm stops here, before any update: the weights, the
    // anchors and every checkpoint stay as they were. A bad rank's peers stop with it on the norm.
    EDIT_CHECK(std::isfinite(metrics.loss), "step ", step_, ": the loss is ", metrics.loss, " on rank ",
               mesh_.rank(), " (lr ", options_.schedule.at(step_), ")",
               options_.on_nonfinite == NonFinitePolicy::kSkip
                   ? " while the gradient norm is finite, so the ranks of its model could not skip the step together"
                   : "",
               "; ", kStoppedBeforeTheUpdate);
    EDIT_CHECK(std::isfinite(metrics.grad_norm), "step ", step_, ": the gradient norm is ", metrics.grad_norm, "; ",
               kStoppedBeforeTheUpdate, " (or let such steps be skipped: --on-nonfinite skip)");
  }
  metrics.lr = options_.schedule.at(step_);
  if (metrics.skipped) {
    EDIT_CHECK(skipped_steps_ < options_.max_skipped_steps, "step ", step_, ": the gradient norm is ",
               metrics.grad_norm, ", and replica ", mesh_.sync().rank(), " has skipped ", skipped_steps_,
               " steps already (--max-skipped-steps ", options_.max_skipped_steps,
               "); ", kStoppedBeforeTheUpdate);
    ++skipped_steps_;
    ++skipped_since_log_;
    if (mesh_.shard().rank() == 0) {  // once per replica
      spdlog::warn("step {}: the gradient norm is {} on replica {} (loss {:.4f} on rank {}); its update was skipped, "
                   "the weights and optimizer state are as before the step ({} skipped, at most {})",
                   step_, metrics.grad_norm, mesh_.sync().rank(), metrics.loss, mesh_.rank(), skipped_steps_,
                   options_.max_skipped_steps);
    }
  } else {
    inner_.set_lr(metrics.lr);
    const ProfileScope scope("edit::optimizer");
    inner_.step();
  }
  {
    const ProfileScope scope("edit::sync");
    strategy_.after_step(step_);
    // The run's last step: what is still in flight (Streaming DiLoCo's exchanges issued fewer than
    // tau steps ago, EDiT's pending sync) lands now, so that an evaluation, a checkpoint or an
    // export after it holds all of the run's work, not the anchors of some steps before.
    const bool last = strategy_.replicas_in_lockstep() ? step_ + 1 == options_.steps : strategy_.should_stop();
    if (last) strategy_.finish();
  }

  metrics.seconds = std::chrono::duration<double>(Clock::now() - start).count();
  if (profiler_ && profiler_->running() && step_ + 1 == options_.profile_first + options_.profile_steps) {
    finish_profile();
  }
  run_seconds_ += metrics.seconds;
  ++run_steps_;
  metrics.tokens_per_s = static_cast<double>(tokens) * mesh_.world_size() / metrics.seconds;
  metrics.bytes_shard = mesh_.shard().stats().bytes_sent - shard_before.bytes_sent;
  metrics.bytes_sync = mesh_.sync().stats().bytes_sent - sync_before.bytes_sent;
  const sync::SyncStats sync_stats = strategy_.stats();
  metrics.sync_wait_s = sync_stats.blocked_seconds - sync_stats_before.blocked_seconds;
  metrics.dropped_workers = sync_stats.dropped_workers - sync_stats_before.dropped_workers;
  metrics.skipped_units = sync_stats.skipped_units - sync_stats_before.skipped_units;
  metrics.level_shifts = sync_stats.level_shifts - sync_stats_before.level_shifts;
  if (sync_stats.rounds != sync_stats_before.rounds) {
    metrics.round = sync_stats.rounds;
    metrics.round_steps = sync_stats.round_steps;
    metrics.round_waits_s = sync_stats.round_waits;
  }
  const bool lockstep = strategy_.replicas_in_lockstep();
  const bool log_step = options_.log_every > 0 && (step_ % options_.log_every == 0 || step_ + 1 == options_.steps);
  if (log_step) {
    // Replicas not in lockstep (A-EDiT) are at other steps: the mean is the replica's own.
    comm::Communicator& group = lockstep ? mesh_.world() : mesh_.shard();
    // The losses of steps that were skipped are NaN or Inf: the mean is over the others. Skips are
    // per replica (its shard group skips as one; under Ddp every replica skips the same steps): the
    // line gives the most any replica skipped and how many replicas skipped.
    const double skips_here = mesh_.shard().rank() == 0 ? static_cast<double>(skipped_since_log_) : 0.0;
    const std::vector<double> gathered = group.all_gather_values({metrics.loss, skips_here});
    double total = 0.0, most_skips = 0.0;
    int finite = 0, skipping_replicas = 0;
    for (size_t i = 0; i + 1 < gathered.size(); i += 2) {
      if (std::isfinite(gathered[i])) {
        total += gathered[i];
        ++finite;
      }
      most_skips = std::max(most_skips, gathered[i + 1]);
      skipping_replicas += gathered[i + 1] > 0 ? 1 : 0;
    }
    metrics.loss_world = finite > 0 ? total / finite : NAN;
    skipped_since_log_ = 0;
    if (mesh_.rank() == 0) {
      // Penalty drops and skips since the last line: a unit skipped again and again means a part
      // of the model has stopped learning.
      std::string penalty;
      if (sync_stats.dropped_workers != logged_dropped_ || sync_stats.skipped_units != logged_skipped_) {
        penalty = fmt::format(" | dropped {} skipped {}", sync_stats.dropped_workers - logged_dropped_,
                              sync_stats.skipped_units - logged_skipped_);
      }
      if (skipping_replicas > 0) {
        penalty += fmt::format(" | skipped {:.0f} non-finite step(s) on {} of {} replica(s)", most_skips,
                               skipping_replicas, group.size() / mesh_.shard_size());
      }
      // Replicas at their own pace (A-EDiT) end on the strategy's clock, not at --steps: their step
      // is the replica's own, and no time to go is guessed from a step count.
      std::string step, to_go;
      if (lockstep) {
        const double mean_step = run_seconds_ / static_cast<double>(run_steps_);  // this run so far
        const auto steps_left = std::max<std::int64_t>(0, options_.steps - step_ - 1);
        step = fmt::format("step {:5d}/{}", step_, options_.steps);
        to_go = fmt::format(" | {:.0f} s to go", mean_step * static_cast<double>(steps_left));
      } else {
        step = fmt::format("replica step {:5d}", step_);
      }
      spdlog::info("{} | loss {:.4f} | lr {:.2e} | {:.0f} tok/s | sync wait {:.1f} ms{}{}", step,
                   metrics.loss_world, metrics.lr, metrics.tokens_per_s, 1e3 * metrics.sync_wait_s, penalty, to_go);
    }
    logged_dropped_ = sync_stats.dropped_workers;
    logged_skipped_ = sync_stats.skipped_units;
  }
  write_metrics(metrics);
  ++step_;
  return metrics;
}

void Trainer::finish_profile() {
  const std::string name = "rank" + std::to_string(mesh_.rank());
  const std::string trace =
      options_.profile_dir.empty() ? "" : (std::filesystem::path(options_.profile_dir) / ("trace_" + name + ".json")).string();
  try {
    const ProfileSummary summary = profiler_->stop(options_.profile_first, options_.profile_steps, trace);
    if (!options_.profile_dir.empty()) {
      write_profile_csv(summary, (std::filesystem::path(options_.profile_dir) / ("profile_" + name + ".csv")).string());
    }
    if (mesh_.rank() == 0) spdlog::info("{}", format_profile(summary));
  } catch (const std::exception& e) {
    spdlog::warn("rank {}: the profile was lost ({}); training goes on", mesh_.rank(), e.what());
  }
}

bool Trainer::finished() const {
  // Replicas not in lockstep end together where their strategy says, not at a step of their own.
  return strategy_.replicas_in_lockstep() ? step_ >= options_.steps : strategy_.should_stop();
}

StepMetrics Trainer::run(const BatchFn& next_batch, const LossFn& loss) {
  StepMetrics last;
  StopOnSignal* stop = options_.stop_on_signal;
  while (!finished()) {
    last = step(next_batch, loss);
    if (stop != nullptr && strategy_.replicas_meet()) {
      last.stop_signal = stop->poll();
      if (last.stop_signal != 0) return last;
    }
  }
  if (stop != nullptr) stop->finish();
  strategy_.finish();
  return last;
}

void Trainer::write_metrics(const StepMetrics& m) {
  if (options_.metrics_path.empty() || mesh_.rank() != 0) return;
  if (!metrics_) open_metrics();
  nlohmann::json line = {{"step", m.step},
                         {"loss", std::isfinite(m.loss) ? nlohmann::json(m.loss) : nlohmann::json()},
                         {"lr", m.lr},
                         {"grad_norm", std::isfinite(m.grad_norm) ? nlohmann::json(m.grad_norm) : nlohmann::json()},
                         {"tokens_per_s", m.tokens_per_s},
                         {"seconds", m.seconds},
                         {"bytes_shard", m.bytes_shard},
                         {"bytes_sync", m.bytes_sync},
                         {"sync_wait_s", m.sync_wait_s},
                         {"dropped_workers", m.dropped_workers},
                         {"skipped_units", m.skipped_units},
                         {"level_shifts", m.level_shifts},
                         {"strategy", strategy_.name()}};
  if (m.skipped) line["skipped"] = true;  // rank 0's replica left the update out
  if (std::isfinite(m.loss_world)) line["loss_world"] = m.loss_world;
  if (!options_.stragglers.empty()) line["straggler_delay_s"] = m.straggler_delay_s;  // rank 0's
  if (m.round > 0) {  // A-EDiT: a round was agreed at this step
    line["round"] = m.round;
    line["round_steps"] = m.round_steps;
    line["round_waits_s"] = m.round_waits_s;
  }
  *metrics_ << line.dump() << '\n';
  metrics_->flush();
  EDIT_CHECK(metrics_->good(), "writing ", options_.metrics_path, " failed at step ", m.step, "; is the disk full?");
}

}  // namespace edit::train
