#include "edit/comm/link_emulator.h"

#include <ATen/ATen.h>

#include <cmath>
#include <sstream>
#include <thread>

#include "edit/core/check.h"

namespace edit::comm {
namespace {

using Clock = LinkEmulator::Clock;

// Splits "<number><unit>" into its value scaled by the unit's factor; `units` maps suffixes.
double parse_quantity(const std::string& text, std::initializer_list<std::pair<const char*, double>> units,
                      const std::string& whole) {
  if (text == "inf") return std::numeric_limits<double>::infinity();
  size_t used = 0;
  double value = 0.0;
  try {
    value = std::stod(text, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  const std::string unit = text.substr(used);
  for (const auto& [suffix, factor] : units) {
    if (used > 0 && unit == suffix && value >= 0) return value * factor;
  }
  EDIT_FAIL("cannot read link '", whole, "' (part '", text,
            "'); write <bandwidth>@<latency> such as 1Gbit@1ms, 100Mbit@5ms, 10GB@20us or inf@0");
}

}  // namespace

LinkModel LinkModel::parse(const std::string& text) {
  const auto at = text.find('@');
  EDIT_CHECK(at != std::string::npos, "cannot read link '", text,
             "': missing '@'; write <bandwidth>@<latency> such as 1Gbit@1ms");
  LinkModel link;
  link.bandwidth_bytes_per_s = parse_quantity(
      text.substr(0, at),
      {{"Gbit", 1e9 / 8}, {"Mbit", 1e6 / 8}, {"Kbit", 1e3 / 8}, {"GB", 1e9}, {"MB", 1e6}, {"KB", 1e3}, {"B", 1.0}},
      text);
  EDIT_CHECK(link.bandwidth_bytes_per_s > 0, "link '", text, "' has zero bandwidth; use a positive value or inf, e.g. 1Gbit@1ms");
  link.latency_s = parse_quantity(text.substr(at + 1), {{"ms", 1e-3}, {"us", 1e-6}, {"s", 1.0}, {"", 1.0}}, text);
  return link;
}

std::string LinkModel::to_string() const {
  std::ostringstream out;
  if (std::isinf(bandwidth_bytes_per_s)) {
    out << "inf";
  } else {
    out << bandwidth_bytes_per_s * 8 / 1e9 << "Gbit";
  }
  out << "@" << latency_s * 1e3 << "ms";
  return out.str();
}

double LinkModel::delay_s(std::int64_t bytes) const { return delay_s(bytes, 1); }

double LinkModel::delay_s(std::int64_t bytes, int latency_steps) const {
  return latency_steps * latency_s + static_cast<double>(bytes) / bandwidth_bytes_per_s;
}

int ring_steps_all_reduce(int group_size) { return group_size <= 1 ? 0 : 2 * (group_size - 1); }
int ring_steps_all_gather(int group_size) { return group_size <= 1 ? 0 : group_size - 1; }

struct LinkEmulator::State {
  std::mutex mutex;
  Clock::time_point link_free_at = Clock::now();
  CommStats stats;
};

namespace {

class DelayedWork final : public Work {
 public:
  DelayedWork(WorkPtr inner, Clock::time_point ready_at, std::shared_ptr<LinkEmulator::State> state)
      : inner_(std::move(inner)), ready_at_(ready_at), state_(std::move(state)) {}

  void wait() override;
  bool is_completed() override { return Clock::now() >= ready_at_ && inner_->is_completed(); }

 private:
  WorkPtr inner_;
  Clock::time_point ready_at_;
  std::shared_ptr<LinkEmulator::State> state_;
};

}  // namespace

void DelayedWork::wait() {
  const auto start = Clock::now();
  inner_->wait();
  std::this_thread::sleep_until(ready_at_);
  std::lock_guard<std::mutex> guard(state_->mutex);
  state_->stats.wait_seconds += std::chrono::duration<double>(Clock::now() - start).count();
}

LinkEmulator::LinkEmulator(std::shared_ptr<Communicator> inner, LinkModel link)
    : inner_(std::move(inner)), link_(link), state_(std::make_shared<State>()) {
  EDIT_CHECK(inner_ != nullptr, "LinkEmulator needs a communicator to wrap");
}

LinkEmulator::Clock::time_point LinkEmulator::reserve(std::int64_t bytes_sent, std::int64_t bytes_on_wire,
                                                      int latency_steps) {
  const double delay = size() > 1 ? link_.delay_s(bytes_on_wire, latency_steps) : 0.0;
  std::lock_guard<std::mutex> guard(state_->mutex);
  // One op on the link at a time: a transfer starts when the previous one has left the wire.
  const auto start = std::max(Clock::now(), state_->link_free_at);
  const auto ready = start + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(delay));
  state_->link_free_at = ready;
  state_->stats.ops += 1;
  state_->stats.bytes_sent += bytes_sent;
  state_->stats.busy_seconds += delay;
  return ready;
}

WorkPtr LinkEmulator::delayed(WorkPtr inner, std::int64_t bytes_sent, std::int64_t bytes_on_wire,
                              int latency_steps) {
  const auto ready = reserve(bytes_sent, bytes_on_wire, latency_steps);
  return std::make_shared<DelayedWork>(std::move(inner), ready, state_);
}

WorkPtr LinkEmulator::all_reduce(at::Tensor tensor, AllReduceOptions options) {
  const auto bytes = ring_bytes_all_reduce(tensor.numel() * tensor.element_size(), size());
  return delayed(inner_->all_reduce(tensor, options), bytes, bytes, ring_steps_all_reduce(size()));
}

WorkPtr LinkEmulator::all_gather(at::Tensor output, at::Tensor input) {
  const auto bytes = ring_bytes_all_gather(output.numel() * output.element_size(), size());
  return delayed(inner_->all_gather(output, input), bytes, bytes, ring_steps_all_gather(size()));
}

WorkPtr LinkEmulator::reduce_scatter(at::Tensor output, at::Tensor input, ReduceScatterOptions options) {
  const auto bytes = ring_bytes_all_gather(input.numel() * input.element_size(), size());
  return delayed(inner_->reduce_scatter(output, input, options), bytes, bytes, ring_steps_all_gather(size()));
}

WorkPtr LinkEmulator::broadcast(at::Tensor tensor, int root) {
  const auto bytes = tensor.numel() * tensor.element_size();
  // Only the root sends, but every rank waits for the data to cross the link.
  return delayed(inner_->broadcast(tensor, root), rank() == root ? bytes : 0, bytes,
                 ring_steps_all_gather(size()));
}

WorkPtr LinkEmulator::barrier() { return delayed(inner_->barrier(), 0, 0, ring_steps_all_gather(size())); }

std::vector<double> LinkEmulator::all_gather_values(const std::vector<double>& mine) {
  const auto bytes = ring_bytes_all_gather(static_cast<std::int64_t>(mine.size() * sizeof(double)) * size(), size());
  const auto start = Clock::now();
  const auto ready = reserve(bytes, bytes, ring_steps_all_gather(size()));
  auto values = inner_->all_gather_values(mine);
  std::this_thread::sleep_until(ready);
  std::lock_guard<std::mutex> guard(state_->mutex);
  state_->stats.wait_seconds += std::chrono::duration<double>(Clock::now() - start).count();
  return values;
}

CommStats LinkEmulator::stats() const {
  std::lock_guard<std::mutex> guard(state_->mutex);
  return state_->stats;
}

void LinkEmulator::reset_stats() {
  std::lock_guard<std::mutex> guard(state_->mutex);
  state_->stats = CommStats{};
}

}  // namespace edit::comm
