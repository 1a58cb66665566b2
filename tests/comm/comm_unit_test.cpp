// Single-process parts of the communication layer: launcher detection, mesh layout, link parsing,
// byte accounting, option parsing.
#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <cstdlib>
#include <map>
#include <string>

#include "edit/comm/device_mesh.h"
#include "edit/comm/link_emulator.h"
#include "edit/core/check.h"

namespace {

using edit::comm::detect_launch;
using edit::comm::LinkModel;
using edit::comm::MeshLayout;

auto fake_env(std::map<std::string, std::string> values) {
  return [values = std::move(values)](const char* name) -> const char* {
    auto it = values.find(name);
    return it == values.end() ? nullptr : it->second.c_str();
  };
}

TEST(Launch, EachLauncherIsRecognised) {
  auto info = detect_launch(fake_env({{"OMPI_COMM_WORLD_RANK", "3"}, {"OMPI_COMM_WORLD_SIZE", "8"},
                                      {"OMPI_COMM_WORLD_LOCAL_RANK", "1"}}));
  EXPECT_EQ(info.launcher, "mpirun");
  EXPECT_EQ(info.rank, 3);
  EXPECT_EQ(info.world_size, 8);
  EXPECT_EQ(info.local_rank, 1);
  info = detect_launch(fake_env({{"SLURM_PROCID", "5"}, {"SLURM_NTASKS", "16"}, {"SLURM_STEP_NUM_TASKS", "8"},
                                 {"SLURM_LOCALID", "5"}}));
  EXPECT_EQ(info.launcher, "srun");
  EXPECT_EQ(info.rank, 5);
  EXPECT_EQ(info.world_size, 8) << "the step's tasks (srun -n 8 in an allocation of 16)";
  // A batch script's own shell (sbatch -n 4) is no srun task: one process, whatever the allocation.
  info = detect_launch(fake_env({{"SLURM_PROCID", "0"}, {"SLURM_NTASKS", "4"}, {"SLURM_LOCALID", "0"}}));
  EXPECT_EQ(info.launcher, "none");
  info = detect_launch(fake_env({{"RANK", "0"}, {"WORLD_SIZE", "2"}, {"LOCAL_RANK", "0"}}));
  EXPECT_EQ(info.launcher, "torchrun");
  EXPECT_EQ(info.world_size, 2);
  info = detect_launch(fake_env({}));
  EXPECT_EQ(info.launcher, "none");
  EXPECT_EQ(info.rank, -1);
}

TEST(Launch, MpirunWinsOverLeftoverTorchrunVariables) {
  auto info = detect_launch(fake_env({{"RANK", "7"}, {"WORLD_SIZE", "9"}, {"OMPI_COMM_WORLD_RANK", "1"},
                                      {"OMPI_COMM_WORLD_SIZE", "2"}}));
  EXPECT_EQ(info.launcher, "mpirun");
  EXPECT_EQ(info.rank, 1);
}

TEST(Launch, GarbageOrInconsistentVariablesAreErrors) {
  EXPECT_THROW(detect_launch(fake_env({{"RANK", "zero"}, {"WORLD_SIZE", "2"}})), edit::Error);
  EXPECT_THROW(detect_launch(fake_env({{"RANK", "2"}, {"WORLD_SIZE", "2"}})), edit::Error);
}

TEST(Layout, ReplicaMajorCoordinates) {
  // W = 8, S = 4: ranks 0-3 are replica 0, 4-7 replica 1.
  const MeshLayout layout = MeshLayout::make(8, 4, 6);
  EXPECT_EQ(layout.num_replicas, 2);
  EXPECT_EQ(layout.replica, 1);
  EXPECT_EQ(layout.shard_rank, 2);
  EXPECT_EQ(MeshLayout::make(4, 1, 3).num_replicas, 4);  // plain replicas
  EXPECT_EQ(MeshLayout::make(4, 4, 3).num_replicas, 1);  // plain FSDP
}

TEST(Layout, IndivisibleWorldNamesTheValidShardSizes) {
  try {
    MeshLayout::make(6, 4, 0);
    FAIL() << "no error";
  } catch (const edit::Error& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("world size 6 is not divisible by shard size 4"), std::string::npos) << what;
    EXPECT_NE(what.find("(1, 2, 3, 6)"), std::string::npos) << what;
  }
  EXPECT_THROW(MeshLayout::make(4, 0, 0), edit::Error);
  EXPECT_THROW(MeshLayout::make(4, 2, 4), edit::Error);
}

TEST(Link, ParsesBitsBytesAndLatencyUnits) {
  const LinkModel gbit = LinkModel::parse("1Gbit@1ms");
  EXPECT_DOUBLE_EQ(gbit.bandwidth_bytes_per_s, 125e6);
  EXPECT_DOUBLE_EQ(gbit.latency_s, 1e-3);
  // 1 Gbit/s and 1 ms: 125 MB take 1 s + 1 ms.
  EXPECT_DOUBLE_EQ(gbit.delay_s(125'000'000), 1.001);
  const LinkModel bytes = LinkModel::parse("10GB@20us");
  EXPECT_DOUBLE_EQ(bytes.bandwidth_bytes_per_s, 10e9);
  EXPECT_DOUBLE_EQ(bytes.latency_s, 20e-6);
  EXPECT_DOUBLE_EQ(LinkModel::parse("inf@0").delay_s(1 << 30), 0.0);
}

TEST(Link, LatencyIsPaidOncePerRingStep) {
  const LinkModel link = LinkModel::parse("1Gbit@1ms");
  EXPECT_DOUBLE_EQ(link.delay_s(125'000'000, 6), 1.006);
  EXPECT_DOUBLE_EQ(link.delay_s(0, 0), 0.0);
  EXPECT_EQ(edit::comm::ring_steps_all_reduce(1), 0);
  EXPECT_EQ(edit::comm::ring_steps_all_reduce(2), 2);
  EXPECT_EQ(edit::comm::ring_steps_all_reduce(4), 6);
  EXPECT_EQ(edit::comm::ring_steps_all_gather(1), 0);
  EXPECT_EQ(edit::comm::ring_steps_all_gather(4), 3);
}

TEST(Link, MalformedLinksExplainTheFormat) {
  for (const char* bad : {"1Gbit", "fast@1ms", "1Gbit@soon", "1Tbit@1ms", "0MB@1ms", "-1MB@1ms", "1Gbit@inf",
                          "1Gbit@infms", "1Gbit@nan", "1Gbit@2h", "1Gbit@3601s"}) {
    try {
      LinkModel::parse(bad);
      ADD_FAILURE() << "no error for " << bad;
    } catch (const edit::Error& e) {
      EXPECT_NE(std::string(e.what()).find("1Gbit@1ms"), std::string::npos) << e.what();
    }
  }
}

TEST(RingBytes, MatchTheRingAlgorithm) {
  EXPECT_EQ(edit::comm::ring_bytes_all_reduce(1000, 1), 0);
  EXPECT_EQ(edit::comm::ring_bytes_all_reduce(1000, 2), 1000);
  EXPECT_EQ(edit::comm::ring_bytes_all_reduce(1000, 4), 1500);
  EXPECT_EQ(edit::comm::ring_bytes_all_gather(1000, 4), 750);
}

TEST(CommOptions, TimeoutFromEnvironment) {
  ::setenv("EDIT_COMM_TIMEOUT_S", "2.5", 1);
  EXPECT_EQ(edit::comm::CommOptions::from_env().timeout, std::chrono::milliseconds(2500));
  ::setenv("EDIT_COMM_TIMEOUT_S", "soon", 1);
  EXPECT_THROW(edit::comm::CommOptions::from_env(), edit::Error);
  ::setenv("EDIT_COMM_TIMEOUT_S", "0", 1);
  EXPECT_THROW(edit::comm::CommOptions::from_env(), edit::Error);
  // "Never": inf, and values whose deadline in nanoseconds would overflow the clock, are cut to
  // kMaxTimeout (1e8 s); before, inf cast to a negative count and 1e10 s wrapped the deadline, and
  // every collective failed at its first test.
  using edit::comm::CommOptions;
  for (const char* never : {"inf", "1e10", "1e300"}) {
    ::setenv("EDIT_COMM_TIMEOUT_S", never, 1);
    EXPECT_EQ(CommOptions::from_env().timeout, CommOptions::kMaxTimeout) << never;
  }
  ::unsetenv("EDIT_COMM_TIMEOUT_S");
  EXPECT_EQ(CommOptions::from_env().timeout, std::chrono::minutes(10));
}

TEST(CommOptions, TimeoutsBelowAMillisecondOrNotANumberAreRefusedByName) {
  using edit::comm::CommOptions;
  EXPECT_EQ(CommOptions::timeout_from_seconds(0.001, "--comm-timeout"), std::chrono::milliseconds(1));
  EXPECT_EQ(CommOptions::timeout_from_seconds(1e8, "--comm-timeout"), CommOptions::kMaxTimeout);
  for (const double bad : {0.0, 1e-4, -5.0, std::nan("")}) {
    try {
      CommOptions::timeout_from_seconds(bad, "--comm-timeout");
      ADD_FAILURE() << bad << " s accepted";
    } catch (const edit::Error& e) {
      EXPECT_NE(std::string(e.what()).find("--comm-timeout is"), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("at least 0.001 s"), std::string::npos) << e.what();
    }
  }
  // A communicator keeps at most kMaxTimeout, and refuses none at all.
  CommOptions options;
  options.timeout = std::chrono::milliseconds::max();
  EXPECT_EQ(options.checked().timeout, CommOptions::kMaxTimeout);
  options.timeout = std::chrono::milliseconds(0);
  EXPECT_THROW(options.checked(), edit::Error);
}

}  // namespace
