// DeviceMesh groups, LinkEmulator delays and compute/communication overlap, on real MPI ranks.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <algorithm>

#include <chrono>
#include <functional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "edit/comm/device_mesh.h"
#include "edit/comm/link_emulator.h"
#include "edit/core/check.h"
#include "mpi_test_env.h"

namespace {

using edit::comm::DeviceMesh;
using edit::testing_support::world;
using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point start) { return std::chrono::duration<double>(Clock::now() - start).count(); }

std::vector<int> members(edit::comm::Communicator& group, int world_rank) {
  std::vector<int> out;
  for (double v : group.all_gather_values({static_cast<double>(world_rank)})) out.push_back(static_cast<int>(v));
  return out;
}

TEST(Mesh, EveryValidShardSizeGivesConsecutiveShardGroupsAndStridedSyncGroups) {
  const int world_size = world()->size();
  for (int s = 1; s <= world_size; ++s) {
    if (world_size % s != 0) continue;
    DeviceMesh mesh = DeviceMesh::from_env({s});
    ASSERT_EQ(mesh.world_size(), world_size);
    ASSERT_EQ(mesh.shard().size(), s);
    ASSERT_EQ(mesh.sync().size(), world_size / s);
    const int rank = mesh.rank();
    const int replica = rank / s;
    std::vector<int> expected_shard;
    for (int i = 0; i < s; ++i) expected_shard.push_back(replica * s + i);
    std::vector<int> expected_sync;
    for (int r = 0; r < world_size / s; ++r) expected_sync.push_back(r * s + rank % s);
    EXPECT_EQ(members(mesh.shard(), rank), expected_shard) << "S=" << s;
    EXPECT_EQ(members(mesh.sync(), rank), expected_sync) << "S=" << s;
    EXPECT_EQ(mesh.shard().rank(), rank % s);
    EXPECT_EQ(mesh.sync().rank(), replica);
  }
}

TEST(Mesh, ShardSizeThatDoesNotDivideTheWorldIsAClearError) {
  const int world_size = world()->size();
  const int bad = world_size + 1;
  try {
    DeviceMesh::from_env({bad});
    FAIL() << "no error for shard size " << bad;
  } catch (const edit::Error& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("world size " + std::to_string(world_size) + " is not divisible by shard size " +
                        std::to_string(bad)), std::string::npos) << what;
  }
}

TEST(LinkEmulator, LatencyAndBandwidthDelayTheWorkNotTheCaller) {
  auto link = edit::comm::LinkModel::parse("80MB@100ms");
  edit::comm::LinkEmulator slow(world(), link);
  const int n = slow.size();
  at::Tensor tensor = at::ones({1 << 20}, at::kFloat);  // 4 MB
  world()->barrier()->wait();
  const auto start = Clock::now();
  auto work = slow.all_reduce(tensor);
  const double issue_s = seconds_since(start);
  const bool done_at_once = work->is_completed();
  work->wait();
  const double total_s = seconds_since(start);
  const double expected_s =
      link.delay_s(edit::comm::ring_bytes_all_reduce(4 << 20, n), edit::comm::ring_steps_all_reduce(n));
  // Blocking for the transfer would take all of expected_s; a quarter leaves room for a loaded
  // machine (4 ranks on 2 cores) to schedule the issue late.
  EXPECT_LT(issue_s, 0.25 * expected_s) << "issuing blocked the caller";
  if (n > 1) {
    EXPECT_FALSE(done_at_once);
    EXPECT_GE(total_s, expected_s * 0.999) << "finished before the emulated link could deliver";
  }
  EXPECT_TRUE(at::all(tensor == static_cast<float>(n)).item<bool>());
  EXPECT_EQ(slow.stats().ops, 1);
  EXPECT_NEAR(slow.stats().busy_seconds, n > 1 ? expected_s : 0.0, 1e-9);
}

// A ring collective waits for one message per step, so the latency is paid once per step: 2(R-1)
// times for all_reduce, R-1 times for the others.
TEST(LinkEmulator, LatencyIsPaidOncePerRingStep) {
  const auto link = edit::comm::LinkModel::parse("inf@20ms");
  edit::comm::LinkEmulator slow(world(), link);
  const int n = slow.size();
  at::Tensor tensor = at::ones({8 * n});
  at::Tensor chunk = at::ones({8});
  const std::vector<std::pair<std::string, std::function<void()>>> ops = {
      {"all_reduce", [&] { slow.all_reduce(tensor)->wait(); }},
      {"all_gather", [&] { slow.all_gather(tensor, chunk)->wait(); }},
      {"reduce_scatter", [&] { slow.reduce_scatter(chunk, tensor)->wait(); }},
      {"broadcast", [&] { slow.broadcast(tensor, 0)->wait(); }},
      {"barrier", [&] { slow.barrier()->wait(); }},
      {"all_gather_values", [&] { slow.all_gather_values({1.0}); }},
  };
  for (const auto& [name, run] : ops) {
    const int steps = name == "all_reduce" ? 2 * (n - 1) : n - 1;
    slow.reset_stats();
    world()->barrier()->wait();
    const auto start = Clock::now();
    run();
    const double took_s = seconds_since(start);
    EXPECT_NEAR(slow.stats().busy_seconds, steps * 0.020, 1e-9) << name << " on " << n << " ranks";
    EXPECT_GE(took_s, steps * 0.020 * 0.999) << name << " finished before its latency terms passed";
  }
}

// A straggler's late issue is time spent waiting for a peer, not link time: the transfer starts
// when the last rank has issued the op, so every rank finishes at about the straggler's issue + the
// transfer (not at the straggler's issue alone, nor with the transfer counted twice), and
// busy_seconds holds the transfer only. Likewise link_wait_seconds, on every rank: the early ranks'
// wait for the straggler shows in wait_seconds only.
TEST(LinkEmulator, AStragglerDelaysTheTransferStartNotTheLinkClock) {
  const auto link = edit::comm::LinkModel::parse("inf@100ms");
  edit::comm::LinkEmulator slow(world(), link);
  const int n = slow.size();
  if (n < 2) GTEST_SKIP() << "needs a peer to wait for";
  const double transfer_s = link.delay_s(0, edit::comm::ring_steps_all_reduce(n));  // 2(n-1) x 100 ms
  const double straggle_s = 0.6;
  const bool straggler = slow.rank() == n - 1;
  at::Tensor tensor = at::ones({16});
  world()->barrier()->wait();
  const auto start = Clock::now();
  if (straggler) std::this_thread::sleep_for(std::chrono::duration<double>(straggle_s));
  const auto issued = Clock::now();
  slow.all_reduce(tensor)->wait();
  const double total_s = seconds_since(start);
  const double after_issue_s = seconds_since(issued);
  EXPECT_TRUE(at::all(tensor == static_cast<float>(n)).item<bool>());
  EXPECT_NEAR(slow.stats().busy_seconds, transfer_s, 1e-9) << "link time must not include the wait";
  // Each rank's clock starts when it leaves the barrier, and a loaded machine releases the ranks
  // some milliseconds apart: 0.1 s of room, against the 0.2 s or more (a transfer) that starting
  // the link before the straggler issued would save.
  EXPECT_GE(total_s, straggle_s + transfer_s * 0.999 - (straggler ? 0.0 : 0.1))
      << "the link ran before the straggler issued";
  // Counting the transfer twice would take straggle + 2 transfers; the bound sits between, with
  // room for a loaded machine.
  EXPECT_LT(total_s, straggle_s + 1.75 * transfer_s) << "the transfer was counted more than once";
  if (straggler) {
    EXPECT_GE(after_issue_s, transfer_s * 0.999);
  }
  EXPECT_GE(slow.link_wait_seconds(), transfer_s * 0.999) << "every rank waits out the whole transfer";
  EXPECT_LT(slow.link_wait_seconds(), transfer_s + 0.5 * straggle_s) << "the wait for the straggler counted as link";
  if (!straggler) {
    EXPECT_GE(slow.stats().wait_seconds, slow.link_wait_seconds() + 0.9 * straggle_s);
  }
}

// Compute for about `seconds` with matrix products (what a training step does).
double compute_for(int iterations) {
  at::Tensor a = at::randn({192, 192});
  at::Tensor acc = at::zeros({192, 192});
  for (int i = 0; i < iterations; ++i) acc.add_(at::mm(a, a), 1e-6);
  return acc.sum().item<double>();
}

int calibrate_iterations(double seconds) {
  int iterations = 8;
  while (true) {
    const auto start = Clock::now();
    compute_for(iterations);
    const double took = seconds_since(start);
    if (took > 0.05) return static_cast<int>(iterations * seconds / took) + 1;
    iterations *= 4;
  }
}

// A collective on a slow link and a long compute, issued together, take about the longer of the
// two rather than their sum: the Work handle really is asynchronous. Ratios, not wall-clock limits.
TEST(Overlap, SlowLinkCollectiveHidesBehindCompute) {
  // 2 latency terms per all_reduce on 2 ranks: 300 ms of link time.
  edit::comm::LinkEmulator slow(world(), edit::comm::LinkModel::parse("inf@150ms"));
  const int iterations = calibrate_iterations(0.3);
  at::Tensor tensor = at::ones({4096});
  world()->barrier()->wait();

  // The best of three tries: a loaded machine can stretch one try's compute, never shorten it.
  double ratio = INFINITY;
  for (int attempt = 0; attempt < 3 && ratio >= 0.8; ++attempt) {
    auto start = Clock::now();
    slow.all_reduce(tensor)->wait();
    const double comm_s = seconds_since(start);
    start = Clock::now();
    compute_for(iterations);
    const double compute_s = seconds_since(start);
    world()->barrier()->wait();
    start = Clock::now();
    auto work = slow.all_reduce(tensor);
    compute_for(iterations);
    work->wait();
    const double both_s = seconds_since(start);
    ratio = std::min(ratio, both_s / (comm_s + compute_s));
    std::printf("[overlap] rank %d: comm %.3f s, compute %.3f s, together %.3f s, ratio %.2f\n", world()->rank(),
                comm_s, compute_s, both_s, both_s / (comm_s + compute_s));
    // Every rank takes the same number of tries: the collectives above must pair up.
    const auto ratios = world()->all_gather_values({ratio});
    ratio = *std::max_element(ratios.begin(), ratios.end());
  }
  EXPECT_LT(ratio, 0.8) << "collective and compute did not overlap";
}

}  // namespace
