#include "edit/comm/link_emulator.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <condition_variable>
#include <deque>
#include <exception>
#include <sstream>
#include <thread>
#include <vector>

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
  EDIT_CHECK(link.latency_s <= 3600, "link '", text, "' has a latency of ", link.latency_s,
             " s; emulate at most an hour, e.g. 1Gbit@1ms or 1Gbit@250ms");
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

namespace {

class DelayedWork;

}  // namespace

struct LinkEmulator::State {
  std::mutex mutex;
  std::condition_variable cv;
  std::deque<std::shared_ptr<DelayedWork>> pending;  // issued, not yet booked on the link
  bool stopping = false;
  CommStats stats;
  double link_wait_seconds = 0.0;  // see LinkEmulator::link_wait_seconds
};

namespace {

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// One op on the emulated link: complete once the wrapped op is and the link thread's booking has
// passed.
class DelayedWork final : public Work {
 public:
  DelayedWork(WorkPtr join, WorkPtr inner, double delay_s, std::shared_ptr<LinkEmulator::State> state)
      : join_(std::move(join)), inner_(std::move(inner)), delay_s_(delay_s), state_(std::move(state)) {}

  // Link thread: the barrier issued before the op, or null in a group of one.
  const WorkPtr& join() const { return join_; }
  double delay_s() const { return delay_s_; }
  // Link thread: every rank had issued the op at `joined_at`; the transfer ends at `ready_at`, or
  // the join barrier failed with `join_error`.
  void book(Clock::time_point joined_at, Clock::time_point ready_at, std::exception_ptr join_error) {
    {
      std::lock_guard<std::mutex> guard(mutex_);
      booked_ = true;
      joined_at_ = joined_at;
      ready_at_ = ready_at;
      join_error_ = std::move(join_error);
    }
    booked_cv_.notify_all();
  }

  void wait() override {
    const auto start = Clock::now();
    Clock::time_point joined_at, ready_at;
    std::exception_ptr join_error;
    {
      std::unique_lock<std::mutex> lock(mutex_);
      booked_cv_.wait(lock, [this] { return booked_; });
      joined_at = joined_at_;
      ready_at = ready_at_;
      join_error = join_error_;
    }
    // The op's own error names it; the join barrier's would only say that the group broke first.
    if (inner_) inner_->wait();
    if (join_error) std::rethrow_exception(join_error);
    std::this_thread::sleep_until(ready_at);
    std::lock_guard<std::mutex> guard(state_->mutex);
    state_->stats.wait_seconds += seconds_since(start);
    state_->link_wait_seconds += std::max(0.0, seconds_since(std::max(start, joined_at)));
  }

  bool is_completed() override {
    {
      std::lock_guard<std::mutex> guard(mutex_);
      if (!booked_ || (!join_error_ && Clock::now() < ready_at_)) return false;
    }
    return !inner_ || inner_->is_completed();
  }

 private:
  WorkPtr join_;
  WorkPtr inner_;  // null for all_gather_values, which the caller ran blocking
  double delay_s_;
  std::shared_ptr<LinkEmulator::State> state_;
  std::mutex mutex_;
  std::condition_variable booked_cv_;
  bool booked_ = false;
  Clock::time_point joined_at_;
  Clock::time_point ready_at_;
  std::exception_ptr join_error_;
};

// The link thread: books the ops in issue order, each as soon as its last rank has issued it.
void run_link(LinkEmulator::State& state) {
  auto link_free_at = Clock::now();
  while (true) {
    std::shared_ptr<DelayedWork> op;
    {
      std::unique_lock<std::mutex> lock(state.mutex);
      state.cv.wait(lock, [&state] { return state.stopping || !state.pending.empty(); });
      if (state.pending.empty()) return;
      op = std::move(state.pending.front());
      state.pending.pop_front();
    }
    std::exception_ptr error;
    auto joined_at = Clock::now();
    if (op->join()) {
      try {
        op->join()->wait();  // returns when the last rank has issued the op
      } catch (...) {
        error = std::current_exception();
      }
      joined_at = Clock::now();
    }
    // One op on the link at a time: a transfer starts when the previous one has left the wire.
    const auto start = std::max(Clock::now(), link_free_at);
    // At most 1e9 s (~31 years): a huge op on a slow link must not overflow the clock's nanoseconds.
    const auto ready = start + std::chrono::duration_cast<Clock::duration>(
                                   std::chrono::duration<double>(std::min(op->delay_s(), 1e9)));
    if (!error) link_free_at = ready;
    op->book(joined_at, ready, std::move(error));
  }
}

}  // namespace

LinkEmulator::LinkEmulator(std::shared_ptr<Communicator> inner, LinkModel link)
    : inner_(std::move(inner)), link_(link), state_(std::make_shared<State>()) {
  EDIT_CHECK(inner_ != nullptr, "LinkEmulator needs a communicator to wrap");
  thread_ = std::thread([state = state_] { run_link(*state); });
}

LinkEmulator::~LinkEmulator() {
  {
    std::lock_guard<std::mutex> guard(state_->mutex);
    state_->stopping = true;
  }
  state_->cv.notify_all();
  // The thread books every pending op before it ends (their join barriers complete, or fail within
  // the wrapped group's timeout), so no Work handed out waits forever.
  thread_.join();
}

WorkPtr LinkEmulator::delayed(const std::function<WorkPtr()>& issue, std::int64_t bytes_sent,
                              std::int64_t bytes_on_wire, int latency_steps) {
  const double delay = size() > 1 ? link_.delay_s(bytes_on_wire, latency_steps) : 0.0;
  std::shared_ptr<DelayedWork> work;
  {
    std::lock_guard<std::mutex> issue_guard(issue_mutex_);
    WorkPtr join = size() > 1 ? inner_->barrier() : nullptr;  // a group of one waits for nobody
    WorkPtr inner = issue();
    work = std::make_shared<DelayedWork>(std::move(join), std::move(inner), delay, state_);
  }
  {
    std::lock_guard<std::mutex> guard(state_->mutex);
    state_->stats.ops += 1;
    state_->stats.bytes_sent += bytes_sent;
    state_->stats.busy_seconds += delay;
    state_->pending.push_back(work);
  }
  state_->cv.notify_one();
  return work;
}

WorkPtr LinkEmulator::all_reduce(at::Tensor tensor, AllReduceOptions options) {
  const auto bytes = ring_bytes_all_reduce(tensor.numel() * tensor.element_size(), size());
  return delayed([&] { return inner_->all_reduce(tensor, options); }, bytes, bytes,
                 ring_steps_all_reduce(size()));
}

WorkPtr LinkEmulator::all_gather(at::Tensor output, at::Tensor input) {
  const auto bytes = ring_bytes_all_gather(output.numel() * output.element_size(), size());
  return delayed([&] { return inner_->all_gather(output, input); }, bytes, bytes,
                 ring_steps_all_gather(size()));
}

WorkPtr LinkEmulator::reduce_scatter(at::Tensor output, at::Tensor input, ReduceScatterOptions options) {
  const auto bytes = ring_bytes_all_gather(input.numel() * input.element_size(), size());
  return delayed([&] { return inner_->reduce_scatter(output, input, options); }, bytes, bytes,
                 ring_steps_all_gather(size()));
}

WorkPtr LinkEmulator::broadcast(at::Tensor tensor, int root) {
  const auto bytes = tensor.numel() * tensor.element_size();
  // Only the root sends, but every rank waits for the data to cross the link.
  return delayed([&] { return inner_->broadcast(tensor, root); }, rank() == root ? bytes : 0, bytes,
                 ring_steps_all_gather(size()));
}

WorkPtr LinkEmulator::barrier() {
  return delayed([&] { return inner_->barrier(); }, 0, 0, ring_steps_all_gather(size()));
}

std::vector<double> LinkEmulator::all_gather_values(const std::vector<double>& mine) {
  const auto bytes = ring_bytes_all_gather(static_cast<std::int64_t>(mine.size() * sizeof(double)) * size(), size());
  const auto start = Clock::now();
  std::vector<double> values;
  // Blocking on the wrapped group too; issued right after its join barrier like any other op.
  const WorkPtr work = delayed(
      [&] {
        values = inner_->all_gather_values(mine);
        return WorkPtr();
      },
      bytes, bytes, ring_steps_all_gather(size()));
  const double blocked_s = seconds_since(start);
  work->wait();  // counts the rest of the wait
  std::lock_guard<std::mutex> guard(state_->mutex);
  state_->stats.wait_seconds += blocked_s;
  return values;
}

CommStats LinkEmulator::stats() const {
  std::lock_guard<std::mutex> guard(state_->mutex);
  return state_->stats;
}

double LinkEmulator::link_wait_seconds() const {
  std::lock_guard<std::mutex> guard(state_->mutex);
  return state_->link_wait_seconds;
}

void LinkEmulator::reset_stats() {
  std::lock_guard<std::mutex> guard(state_->mutex);
  state_->stats = CommStats{};
  state_->link_wait_seconds = 0.0;
}

}  // namespace edit::comm
