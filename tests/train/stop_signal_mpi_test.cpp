// StopOnSignal: a signal that reaches one rank, at a poll of its choosing, stops every rank at the
// same later poll (the one `lag` polls after it), however the ranks' paces differ.
#include "edit/train/stop_signal.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <chrono>
#include <csignal>
#include <functional>
#include <thread>

#include <signal.h>
#include <pthread.h>
#include <unistd.h>

#include "edit/comm/mpi_communicator.h"
#include "edit/core/check.h"
#include "mpi_test_env.h"

namespace {

using edit::testing_support::world;
using edit::train::StopOnSignal;

// As a scheduler or kill(1) sends it: to the process, which the kernel hands to a thread that does
// not block it (the watcher, or through the handler any other), soon but not at once: returns
// once `stop` has noted it.
void signal_process(const StopOnSignal& stop, int signal) {
  ::kill(::getpid(), signal);
  for (int i = 0; i < 5000 && stop.seen_here() == 0; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  ASSERT_NE(stop.seen_here(), 0) << StopOnSignal::name(signal) << " not noted within 5 s";
}

// StopOnSignal::block() in this thread for a test's time, as a program does first thing in main().
class BlockedHere {
 public:
  explicit BlockedHere(const std::vector<int>& signals) {
    pthread_sigmask(SIG_BLOCK, nullptr, &before_);
    StopOnSignal::block(signals);
  }
  ~BlockedHere() { pthread_sigmask(SIG_SETMASK, &before_, nullptr); }

 private:
  sigset_t before_;
};

std::shared_ptr<edit::comm::MpiCommunicator> vote_group() {
  return edit::comm::MpiCommunicator::world(world()->runtime(), world()->options(), "votes");
}

// Polls until a stop (at most `polls` times); `signal_at(i)` raises signals before poll i. Rank 0
// is the slow one, so the others run up to `lag` polls ahead of it. Returns the poll that stopped
// (-1: none) and the signal.
std::pair<int, int> run(StopOnSignal& stop, int polls, const std::function<void(int)>& signal_at) {
  for (int i = 0; i < polls; ++i) {
    if (world()->rank() == 0) std::this_thread::sleep_for(std::chrono::milliseconds(15));
    signal_at(i);
    if (const int signal = stop.poll(); signal != 0) return {i, signal};
  }
  stop.finish();
  return {-1, 0};
}

TEST(StopOnSignal, OneRanksSignalStopsEveryRankAtTheSamePollLagPollsLater) {
  const int last = world()->size() - 1;
  const BlockedHere blocked({SIGUSR1, SIGUSR2});
  for (const int lag : {0, 1, 3}) {
    StopOnSignal stop(vote_group(), {SIGUSR1, SIGUSR2}, lag);
    const auto [at_poll, signal] = run(stop, 20, [&](int i) {
      if (i == 5 && world()->rank() == last) signal_process(stop, SIGUSR2);
    });
    EXPECT_EQ(at_poll, 5 + lag) << "lag " << lag;
    EXPECT_EQ(signal, SIGUSR2) << "lag " << lag;
    EXPECT_EQ(stop.ranks_that_saw(), 1) << "lag " << lag;
    EXPECT_EQ(stop.seen_here(), world()->rank() == last ? SIGUSR2 : 0) << "lag " << lag;
    // Every rank at the same poll, with no vote left in flight: a barrier completes.
    world()->barrier()->wait();
  }
}

TEST(StopOnSignal, SignalsOnSeveralRanksGiveTheFirstWatchedOneAndTheirCount) {
  if (world()->size() < 2) GTEST_SKIP() << "needs 2 ranks";
  const BlockedHere blocked({SIGUSR1, SIGUSR2, SIGTERM});
  StopOnSignal stop(vote_group(), {SIGUSR1, SIGUSR2, SIGTERM}, 2);
  // At poll 4 rank 0 sees SIGTERM and every other rank SIGUSR2: that vote holds both, and SIGUSR2
  // comes first in the watched order.
  const auto [at_poll, signal] = run(stop, 20, [&](int i) {
    if (i == 4) signal_process(stop, world()->rank() == 0 ? SIGTERM : SIGUSR2);
  });
  EXPECT_EQ(at_poll, 4 + 2);
  EXPECT_EQ(signal, SIGUSR2);
  EXPECT_EQ(stop.ranks_that_saw(), world()->size() - 1);
  world()->barrier()->wait();
}

TEST(StopOnSignal, WithoutSignalsEveryVoteLandsAndThePreviousHandlersComeBack) {
  static volatile std::sig_atomic_t caught = 0;
  struct sigaction mine {}, before {};
  mine.sa_handler = [](int) { caught = caught + 1; };
  sigemptyset(&mine.sa_mask);
  ASSERT_EQ(sigaction(SIGUSR1, &mine, &before), 0);
  const auto group = vote_group();
  {
    const BlockedHere blocked({SIGUSR1, SIGUSR2});
    StopOnSignal stop(group, {SIGUSR1}, 4);
    EXPECT_EQ(run(stop, 10, [](int) {}).first, -1);
    EXPECT_EQ(group->stats().ops, 10) << "one vote per poll, all landed by finish()";
    EXPECT_THROW({ StopOnSignal another(group, std::vector<int>{SIGUSR2}); }, edit::Error)
        << "a second watcher in one process";
  }
  std::raise(SIGUSR1);
  EXPECT_EQ(caught, 1) << "the handler from before StopOnSignal is not back";
  sigaction(SIGUSR1, &before, nullptr);
  world()->barrier()->wait();
}

}  // namespace
