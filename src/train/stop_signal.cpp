#include "edit/train/stop_signal.h"

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>

#include <pthread.h>

#include <array>
#include <atomic>
#include <cerrno>
#include <csignal>
#include <cstring>
#include <ctime>

#include <spdlog/spdlog.h>

#include "edit/core/check.h"

namespace edit::train {
namespace {

constexpr int kMaxSignals = 8;

// What the handler touches: written before it is installed, then only flags it sets.
std::array<int, kMaxSignals> watched{};
std::atomic<int> watched_count{0};
// Set by the watcher thread or a handler, read by poll() on another thread: atomics, lock-free
// (so safe in a handler too).
std::array<std::atomic<int>, kMaxSignals> seen{};
static_assert(std::atomic<int>::is_always_lock_free, "a signal handler may only touch lock-free atomics");
std::array<struct sigaction, kMaxSignals> previous{};
std::atomic<bool> installed{false};

extern "C" void note_signal(int signal) {
  for (int i = 0; i < watched_count; ++i) {
    if (watched[static_cast<size_t>(i)] == signal) seen[static_cast<size_t>(i)] = 1;
  }
}

sigset_t set_of(const std::vector<int>& signals) {
  sigset_t set;
  sigemptyset(&set);
  for (int signal : signals) sigaddset(&set, signal);
  return set;
}

}  // namespace

void StopOnSignal::block(const std::vector<int>& signals) {
  const sigset_t set = set_of(signals);
  const int code = pthread_sigmask(SIG_BLOCK, &set, nullptr);
  EDIT_CHECK(code == 0, "cannot block the stop signals: ", std::strerror(code));
}

void StopOnSignal::unblock(const std::vector<int>& signals) {
  const sigset_t set = set_of(signals);
  const int code = pthread_sigmask(SIG_UNBLOCK, &set, nullptr);
  EDIT_CHECK(code == 0, "cannot unblock the stop signals: ", std::strerror(code));
}

StopOnSignal::StopOnSignal(std::shared_ptr<comm::Communicator> group, std::vector<int> signals, int lag)
    : group_(std::move(group)), signals_(std::move(signals)), lag_(lag) {
  EDIT_CHECK(group_ != nullptr, "StopOnSignal needs a communicator of every rank to vote over");
  EDIT_CHECK(lag_ >= 0, "StopOnSignal: lag ", lag_, " must be >= 0 polls");
  EDIT_CHECK(!signals_.empty() && signals_.size() <= kMaxSignals, "StopOnSignal watches 1 to ", kMaxSignals,
             " signals, got ", signals_.size());
  EDIT_CHECK(!installed.exchange(true), "only one StopOnSignal may watch signals at a time in a process");
  watched_count = 0;
  for (size_t i = 0; i < signals_.size(); ++i) {
    watched[i] = signals_[i];
    seen[i] = 0;
  }
  watched_count = static_cast<int>(signals_.size());
  for (size_t i = 0; i < signals_.size(); ++i) {
    struct sigaction action {};
    action.sa_handler = note_signal;
    sigemptyset(&action.sa_mask);
    action.sa_flags = SA_RESTART;  // blocking calls go on; the stop waits for the next poll
    if (sigaction(signals_[i], &action, &previous[i]) != 0) {
      const std::string why = std::strerror(errno);
      for (size_t j = 0; j < i; ++j) sigaction(signals_[j], &previous[j], nullptr);
      installed = false;
      EDIT_FAIL("cannot handle ", name(signals_[i]), ": ", why);
    }
  }
  sigset_t blocked;
  pthread_sigmask(SIG_BLOCK, nullptr, &blocked);
  for (int signal : signals_) {
    if (sigismember(&blocked, signal) != 1) {
      spdlog::warn("{} is not blocked in the thread that watches it: it may interrupt a thread in the middle of "
                   "its compute, which can corrupt it. Call StopOnSignal::block() first thing in main()",
                   name(signal));
      break;
    }
  }
  // Takes the signals that every thread blocks (and those already waiting) as they come; the
  // timeout only bounds how long the destructor waits for the thread to see `stopping_`.
  watcher_ = std::thread([this] {
    const sigset_t set = set_of(signals_);
    pthread_sigmask(SIG_BLOCK, &set, nullptr);  // sigtimedwait takes only blocked signals
    const timespec wait{0, 100'000'000};
    while (!stopping_) {
      const int signal = sigtimedwait(&set, nullptr, &wait);
      if (signal > 0) note_signal(signal);
    }
  });
}

StopOnSignal::~StopOnSignal() {
  // Votes still in flight (an error path: the normal one calls finish()) are not waited for, as a
  // peer may never post its own. Nor is their communicator destroyed under them: that would report
  // a vote in flight before the error that ends the run. It is left to the end of the process.
  if (!in_flight_.empty()) new std::shared_ptr<comm::Communicator>(group_);  // NOLINT: deliberate
  stopping_ = true;
  watcher_.join();
  for (size_t i = 0; i < signals_.size(); ++i) sigaction(signals_[i], &previous[i], nullptr);
  watched_count = 0;
  installed = false;
}

int StopOnSignal::poll() {
  const auto n = static_cast<std::int64_t>(signals_.size());
  Vote vote{at::empty({n}, at::kInt), nullptr};
  for (std::int64_t i = 0; i < n; ++i) vote.counts.data_ptr<std::int32_t>()[i] = seen[static_cast<size_t>(i)] ? 1 : 0;
  vote.work = group_->all_reduce(vote.counts);
  in_flight_.push_back(std::move(vote));
  while (in_flight_.size() > static_cast<size_t>(lag_)) {
    Vote oldest = std::move(in_flight_.front());
    in_flight_.pop_front();
    oldest.work->wait();
    for (std::int64_t i = 0; i < n; ++i) {
      if (oldest.counts.data_ptr<std::int32_t>()[i] > 0) {
        ranks_that_saw_ = oldest.counts.data_ptr<std::int32_t>()[i];
        finish();  // every rank is at this poll: the votes behind it land at once
        return signals_[static_cast<size_t>(i)];
      }
    }
  }
  return 0;
}

void StopOnSignal::finish() {
  while (!in_flight_.empty()) {
    in_flight_.front().work->wait();
    in_flight_.pop_front();
  }
}

int StopOnSignal::seen_here() const {
  for (size_t i = 0; i < signals_.size(); ++i) {
    if (seen[i]) return signals_[i];
  }
  return 0;
}

std::string StopOnSignal::name(int signal) {
  switch (signal) {
    case SIGTERM: return "SIGTERM";
    case SIGINT: return "SIGINT";
    case SIGUSR1: return "SIGUSR1";
    case SIGUSR2: return "SIGUSR2";
    case SIGHUP: return "SIGHUP";
    default: return "signal " + std::to_string(signal);
  }
}

}  // namespace edit::train
