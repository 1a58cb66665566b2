// Streaming DiLoCo on real ranks: P = 1, tau = 0, alpha = 0, fp32 against DiLoCo (bit for bit with
// 2 replicas), the merge with alpha, tau and int8 against its rule by hand,
// bit-identical anchors on every replica with fp4 after many syncs (3 and 4 replicas), several
// exchanges in flight without waiting, an exact resume from a checkpoint taken with exchanges in
// flight (each fragment layout), and a resume into another layout refused. The schedule and the
// layouts' tables: streaming_test.cpp.
#include <c10/core/GradMode.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>

#include "edit/comm/device_mesh.h"
#include "edit/core/check.h"
#include "edit/shard/flat_adamw.h"
#include "edit/shard/sharded_model.h"
#include "edit/sync/local_sgd.h"
#include "edit/sync/streaming.h"
#include "mpi_test_env.h"
#include "recording_communicator.h"
#include "tiny_transformer.h"

namespace {

using edit::shard::ShardedModel;
using edit::sync::StreamingDiLoCo;
using edit::sync::StreamingOptions;
using edit::testing_support::tiny_batch;
using edit::testing_support::TinyConfig;
using edit::testing_support::TinyTransformer;
using edit::testing_support::world;

int shard_size_for_world() { return world()->size() == 4 ? 2 : 1; }

struct Worker {
  TinyConfig config;
  std::shared_ptr<TinyTransformer> module;
  std::unique_ptr<ShardedModel> model;
  std::unique_ptr<edit::shard::FlatAdamW> inner;
  std::unique_ptr<edit::sync::SyncStrategy> strategy;
  explicit Worker(int seed) {
    config.layers = 3;  // 5 units: embedding, 3 blocks, head
    at::manual_seed(static_cast<std::uint64_t>(seed));
    module = std::make_shared<TinyTransformer>(config);
  }
  void build(edit::comm::DeviceMesh& mesh) {
    model = std::make_unique<ShardedModel>(module, mesh.shard_ptr());
    inner = std::make_unique<edit::shard::FlatAdamW>(*model, edit::shard::AdamWOptions{1e-2});
  }
  void step(edit::comm::DeviceMesh& mesh, int s) {
    auto [x, y] = tiny_batch(config, s, mesh.layout().replica, 2);  // each replica its own data
    model->zero_grad();
    model->backward(module->loss(x, y));
    strategy->before_step(s);
    inner->step();
    strategy->after_step(s);
  }
  std::vector<at::Tensor> shards() {
    std::vector<at::Tensor> out;
    for (int u = 0; u < model->num_units(); ++u) out.push_back(model->unit(u).shard().clone());
    return out;
  }
};

void expect_identical(const std::vector<at::Tensor>& a, const std::vector<at::Tensor>& b,
                      const std::string& what) {
  ASSERT_EQ(a.size(), b.size());
  for (size_t u = 0; u < a.size(); ++u) EXPECT_TRUE(at::equal(a[u], b[u])) << what << ", unit " << u;
}

TEST(StreamingDiLoCo, OneFragmentNoOverlapFp32IsDiLoCoBitForBit) {
  edit::comm::DeviceMesh mesh = edit::comm::DeviceMesh::from_env({shard_size_for_world()});
  Worker diloco(world()->rank()), streaming(world()->rank());  // different seeds: replicas made equal
  diloco.build(mesh);
  streaming.build(mesh);
  edit::sync::LocalSgdOptions local;
  local.sync_every = 4;
  StreamingOptions options;
  options.local = local;
  options.fragments = 1;
  options.overlap = 0;
  options.alpha = 0.0;
  diloco.strategy = std::make_unique<edit::sync::DiLoCo>(*diloco.model, mesh.sync_ptr(), local);
  streaming.strategy = std::make_unique<StreamingDiLoCo>(*streaming.model, mesh.sync_ptr(), options);
  for (int s = 0; s < 12; ++s) {
    diloco.step(mesh, s);
    streaming.step(mesh, s);
    if (mesh.num_replicas() == 2) {
      expect_identical(diloco.shards(), streaming.shards(), "step " + std::to_string(s));
    } else {
      // Streaming adds the R deltas in rank order; DiLoCo's all-reduce in the order MPI's algorithm
      // picks, which for three or more terms may round differently.
      const auto a = diloco.shards(), b = streaming.shards();
      for (size_t u = 0; u < a.size(); ++u) {
        EXPECT_TRUE(at::allclose(a[u], b[u], 1e-5, 1e-6)) << "step " << s << ", unit " << u;
      }
    }
  }
  EXPECT_EQ(streaming.strategy->stats().syncs, 3);
}

// Streaming's merge against its rule written out here: with plain averaging as the outer step, a
// fragment issued after step 1 with tau = 1 lands as phi1 = phi0 - sum_i dq(q(delta_i)) / R, where
// delta_i = phi0 - theta_i after step 1, and merges after step 2 as
// theta = alpha theta(step 2) + (1 - alpha) phi1. int8's error (about 1e-3 here) is far above the
// float rounding allowed, so summing a worker's own delta unquantized would show, as would alpha
// and 1 - alpha swapped, or delta taken at the merge instead of at the issue.
TEST(StreamingDiLoCo, MergeWithAlphaAndOverlapFollowsTheRuleByHand) {
  edit::comm::DeviceMesh mesh = edit::comm::DeviceMesh::from_env({1});  // R = W
  Worker w(0);
  w.build(mesh);
  StreamingOptions options;
  options.local.sync_every = 2;
  options.local.outer.method = edit::sync::OuterMethod::kAverage;
  options.fragments = 1;
  options.overlap = 1;
  options.alpha = 0.25;
  options.quant = {edit::sync::QuantFormat::kInt8, 16};
  auto* streaming = new StreamingDiLoCo(*w.model, mesh.sync_ptr(), options);
  w.strategy.reset(streaming);
  const int units = w.model->num_units();
  const std::vector<at::Tensor> phi0 = w.shards();
  // Inner steps by hand: every replica moves its weights its own way.
  at::manual_seed(static_cast<std::uint64_t>(100 + mesh.rank()));
  const auto inner_step = [&] {
    c10::NoGradGuard no_grad;
    for (int u = 0; u < units; ++u) {
      at::Tensor shard = w.model->unit(u).shard();
      shard.add_(0.1 * at::randn(shard.sizes()));
    }
  };
  inner_step();
  streaming->after_step(0);
  inner_step();
  const std::vector<at::Tensor> theta1 = w.shards();
  streaming->after_step(1);
  EXPECT_EQ(streaming->in_flight(), 1) << "issued after step 1";
  inner_step();
  const std::vector<at::Tensor> theta2 = w.shards();
  streaming->after_step(2);
  EXPECT_EQ(streaming->in_flight(), 0) << "merged after step 2";
  const int workers = mesh.num_replicas();
  for (int u = 0; u < units; ++u) {
    const at::Tensor delta = (phi0[u] - theta1[u]).contiguous();
    const std::int64_t n = delta.numel();
    at::Tensor packet = at::empty({edit::sync::packet_bytes(n, options.quant)}, at::kByte);
    edit::sync::quantize(delta.data_ptr<float>(), n, options.quant, packet.data_ptr<std::uint8_t>());
    at::Tensor mine = at::empty_like(delta);
    edit::sync::dequantize(packet.data_ptr<std::uint8_t>(), n, options.quant, mine.data_ptr<float>());
    EXPECT_GT((mine - delta).abs().max().item<double>(), 1e-5) << "unit " << u << ": int8 rounded nothing";
    at::Tensor all = at::empty({workers * n});
    mesh.sync().all_gather(all, mine)->wait();
    const at::Tensor phi1 = phi0[u].to(at::kDouble) - all.view({workers, n}).to(at::kDouble).sum(0) / workers;
    const at::Tensor theta = options.alpha * theta2[u].to(at::kDouble) + (1 - options.alpha) * phi1;
    const at::Tensor anchor = streaming->core().outer().anchor(u).to(at::kDouble);
    EXPECT_TRUE(at::allclose(anchor, phi1, 0, 2e-6)) << "unit " << u;
    EXPECT_TRUE(at::allclose(w.model->unit(u).shard().to(at::kDouble), theta, 0, 2e-6)) << "unit " << u;
  }
}

// The checksum of every anchor, exactly equal across the replicas of this shard index.
void expect_anchors_identical_across_replicas(StreamingDiLoCo& streaming, const ShardedModel& model,
                                              edit::comm::DeviceMesh& mesh) {
  double sum = 0.0, squares = 0.0;
  for (int u = 0; u < model.num_units(); ++u) {
    const at::Tensor anchor = streaming.core().outer().anchor(u).to(at::kDouble);
    sum += anchor.sum().item<double>();
    squares += anchor.pow(2).sum().item<double>();
    EXPECT_TRUE(anchor.isfinite().all().item<bool>());
  }
  const auto all = mesh.sync().all_gather_values({sum, squares});
  for (int r = 1; r < mesh.num_replicas(); ++r) {
    EXPECT_EQ(all[2 * static_cast<size_t>(r)], all[0]) << "replica " << r;
    EXPECT_EQ(all[2 * static_cast<size_t>(r) + 1], all[1]) << "replica " << r;
  }
  streaming.core().check_replicas();  // the library's own check agrees
}

// Every rank dequantizes the same packets and adds them in the same order: after many fp4 syncs,
// with several fragments in flight, the anchors are bit-identical on every replica.
TEST(StreamingDiLoCo, Fp4AnchorsAreBitIdenticalOnEveryReplicaWithExchangesInFlight) {
  edit::comm::DeviceMesh mesh = edit::comm::DeviceMesh::from_env({1});  // 2, 3 or 4 replicas
  Worker worker(100 + world()->rank());
  worker.build(mesh);
  StreamingOptions options;
  options.local.sync_every = 8;
  options.fragments = 4;  // a fragment every 2 steps
  options.overlap = 3;    // above H / P: two exchanges in flight at times
  options.alpha = 0.5;
  options.quant = {edit::sync::QuantFormat::kFp4E2M1, 32};
  auto* streaming = new StreamingDiLoCo(*worker.model, mesh.sync_ptr(), options);
  worker.strategy.reset(streaming);
  std::int64_t buffers_after_first_round = 0;
  for (int s = 0; s < 40; ++s) {
    worker.step(mesh, s);
    // Between an issue and its merge nothing waits: the exchange stays in flight.
    if (s >= 1) {
      EXPECT_GE(streaming->in_flight(), 1) << "step " << s;
    }
    if (s == options.local.sync_every) buffers_after_first_round = streaming->streaming_stats().buffer_bytes;
  }
  EXPECT_EQ(streaming->streaming_stats().max_in_flight, 2);
  EXPECT_EQ(streaming->streaming_stats().issued, 20);
  EXPECT_EQ(streaming->streaming_stats().merged,
            streaming->streaming_stats().issued - streaming->in_flight());
  streaming->finish();
  EXPECT_EQ(streaming->in_flight(), 0);
  // fp4 packets: half a byte a value plus a 4-byte scale per 32 values.
  const auto& stats = streaming->streaming_stats();
  EXPECT_NEAR(static_cast<double>(stats.scale_bytes) / static_cast<double>(stats.payload_bytes), 0.25, 0.02);
  // The busiest step issued the biggest fragment's packets (one fragment every 2 steps).
  std::vector<std::int64_t> sizes;
  for (int u = 0; u < worker.model->num_units(); ++u) sizes.push_back(worker.model->unit(u).shard_numel());
  std::int64_t biggest = 0;
  for (const auto& units : edit::sync::fragment_units(sizes, options.fragments, options.layout)) {
    std::int64_t bytes = 0;
    for (int u : units) bytes += edit::sync::packet_bytes(sizes[static_cast<size_t>(u)], options.quant);
    biggest = std::max(biggest, bytes);
  }
  EXPECT_EQ(stats.max_step_bytes, biggest);
  // The buffers were sized in the first round and reused since: two fp32 scratch vectors of the
  // largest shard, and one slot (packets and their all-gather) per exchange in flight at once.
  const std::int64_t largest = *std::max_element(sizes.begin(), sizes.end());
  EXPECT_EQ(stats.buffer_bytes, 2 * largest * 4 + stats.max_in_flight * biggest * (1 + mesh.sync().size()));
  EXPECT_EQ(stats.buffer_bytes, buffers_after_first_round);
  expect_anchors_identical_across_replicas(*streaming, *worker.model, mesh);
}

// Split fragments cut units, so fp32 Streaming's busiest step carries 1/P of the model to one
// value, which whole units cannot (5 unequal units here, P = 4 and P = 7 > 5): the exact byte
// count, and anchors bit-identical on every replica, with exchanges in flight and sharded units.
TEST(StreamingDiLoCo, SplitFragmentsCarryOnePthOfTheValuesEach) {
  edit::comm::DeviceMesh mesh = edit::comm::DeviceMesh::from_env({shard_size_for_world()});
  for (int P : {4, 7}) {
    Worker worker(300 + world()->rank());
    worker.build(mesh);
    StreamingOptions options;
    options.local.sync_every = 28;  // a fragment every 7 or 4 steps
    options.fragments = P;
    options.layout = edit::sync::FragmentLayout::kSplit;
    options.overlap = 2;
    auto* streaming = new StreamingDiLoCo(*worker.model, mesh.sync_ptr(), options);
    worker.strategy.reset(streaming);
    for (int s = 0; s < 56; ++s) worker.step(mesh, s);
    streaming->finish();
    EXPECT_EQ(streaming->streaming_stats().merged, 2 * P);
    std::int64_t total = 0, largest_unit = 0;
    for (int u = 0; u < worker.model->num_units(); ++u) {
      total += worker.model->unit(u).shard_numel();
      largest_unit = std::max(largest_unit, worker.model->unit(u).shard_numel());
    }
    const std::int64_t per_fragment = (total + P - 1) / P;
    EXPECT_EQ(streaming->streaming_stats().max_step_bytes, 4 * per_fragment) << "P " << P;
    EXPECT_LT(per_fragment, largest_unit) << "the test needs a unit bigger than 1/P of the model";
    expect_anchors_identical_across_replicas(*streaming, *worker.model, mesh);
  }
}

// With the penalty (weights, clip) and sharded units (S = 2 on 4 ranks), the norms are summed
// over the shard group in rank order: every replica takes the same decisions and clip scales, so
// the anchors stay bit-identical.
TEST(StreamingDiLoCo, PenaltyAndClipOverShardsKeepAnchorsIdentical) {
  edit::comm::DeviceMesh mesh = edit::comm::DeviceMesh::from_env({shard_size_for_world()});
  Worker worker(200 + world()->rank());
  worker.build(mesh);
  StreamingOptions options;
  options.local.sync_every = 6;
  options.local.use_penalty = true;
  options.local.penalty.warmup_syncs = 1;
  options.local.penalty.clip_norm = 1e-3;  // small enough that every merge clips
  options.fragments = 3;
  options.layout = edit::sync::FragmentLayout::kBalanced;
  options.overlap = 1;
  options.quant = {edit::sync::QuantFormat::kFp4E2M1, 32};
  auto* streaming = new StreamingDiLoCo(*worker.model, mesh.sync_ptr(), options);
  worker.strategy.reset(streaming);
  for (int s = 0; s < 30; ++s) worker.step(mesh, s);
  streaming->finish();
  EXPECT_EQ(streaming->streaming_stats().merged, 15);
  expect_anchors_identical_across_replicas(*streaming, *worker.model, mesh);
}

// With the penalty, an exchange's norms go out before its packets, in one blocking exchange per
// group for all of the fragment's units: a blocking exchange between two packets would wait for the
// first, and the overlap would hide nothing. Every packet is waited for in its merge, tau steps
// after the issue, not in the step that issues it.
TEST(StreamingDiLoCo, WithThePenaltyAFragmentsNormsGoOutInOneExchangeBeforeItsPackets) {
  edit::comm::DeviceMesh mesh = edit::comm::DeviceMesh::from_env({shard_size_for_world()});
  auto log = std::make_shared<edit::testing_support::CallLog>();
  auto shard_group = std::make_shared<edit::testing_support::RecordingCommunicator>(mesh.shard_ptr(), log);
  auto sync_group = std::make_shared<edit::testing_support::RecordingCommunicator>(mesh.sync_ptr(), log);
  Worker worker(300 + world()->rank());
  worker.model = std::make_unique<ShardedModel>(worker.module, shard_group);
  worker.inner = std::make_unique<edit::shard::FlatAdamW>(*worker.model, edit::shard::AdamWOptions{1e-2});
  StreamingOptions options;
  options.local.sync_every = 4;
  options.local.use_penalty = true;
  options.local.penalty.warmup_syncs = 1;
  options.fragments = 2;  // 5 units: 3 in fragment 0, 2 in fragment 1
  options.overlap = 1;
  auto* streaming = new StreamingDiLoCo(*worker.model, sync_group, options);
  worker.strategy.reset(streaming);
  const std::string sync = mesh.sync().name(), shard = mesh.shard().name();
  for (int s = 0; s < 12; ++s) {
    log->phase = "step " + std::to_string(s);
    worker.step(mesh, s);
  }
  log->phase = "finish";
  streaming->finish();
  EXPECT_EQ(streaming->streaming_stats().issued, 6);
  expect_anchors_identical_across_replicas(*streaming, *worker.model, mesh);

  int issues = 0;
  for (int s = 0; s < 12; ++s) {
    const std::string phase = "step " + std::to_string(s);
    int norm_exchanges = 0, shard_sums = 0, packets = 0;
    for (const auto& call : log->calls) {
      if (call.issued_in != phase) continue;
      if (call.group == sync && call.op == "all_gather_values") ++norm_exchanges;
      if (call.group == sync && call.op == "all_gather" && call.dtype == at::kByte) {
        ++packets;
        EXPECT_NE(call.waited_in, phase) << "a packet issued at step " << s << " was waited for in that step";
      }
      if (call.group == shard && call.op == "all_gather" && call.dtype == at::kDouble) ++shard_sums;
    }
    if (packets == 0) continue;
    ++issues;
    EXPECT_EQ(norm_exchanges, 1) << "step " << s;
    EXPECT_EQ(shard_sums, mesh.shard_size() > 1 ? 1 : 0) << "step " << s;
  }
  EXPECT_EQ(issues, 6);
}

// Saves (copies: the dicts alias live state).
edit::StateDict copy(edit::StateDict state) {
  for (auto& [key, t] : state.tensors) t = t.clone();
  return state;
}

// A checkpoint taken with exchanges in flight resumes onto exactly the uninterrupted path, in
// every layout.
class StreamingResume : public ::testing::TestWithParam<edit::sync::FragmentLayout> {};

TEST_P(StreamingResume, WithExchangesInFlightIsExact) {
  edit::comm::DeviceMesh mesh = edit::comm::DeviceMesh::from_env({shard_size_for_world()});
  StreamingOptions options;
  options.local.sync_every = 6;
  options.fragments = 3;
  options.layout = GetParam();
  options.overlap = 2;
  options.quant = {edit::sync::QuantFormat::kInt8, 16};
  const auto make = [&](Worker& w) {
    w.build(mesh);
    w.strategy = std::make_unique<StreamingDiLoCo>(*w.model, mesh.sync_ptr(), options);
  };
  Worker straight(7), first(7), resumed(7);
  make(straight);
  make(first);
  for (int s = 0; s < 14; ++s) straight.step(mesh, s);
  for (int s = 0; s < 8; ++s) first.step(mesh, s);
  ASSERT_GT(static_cast<StreamingDiLoCo&>(*first.strategy).in_flight(), 0)
      << "the test needs an exchange in flight";
  const edit::StateDict model_state = copy(first.model->state_dict());
  const edit::StateDict inner_state = copy(first.inner->state_dict());
  const edit::StateDict strategy_state = copy(first.strategy->state_dict());
  make(resumed);
  resumed.model->load_state_dict(model_state);
  resumed.inner->load_state_dict(inner_state);
  resumed.strategy->load_state_dict(strategy_state);
  for (int s = 8; s < 14; ++s) resumed.step(mesh, s);
  expect_identical(straight.shards(), resumed.shards(), "after the resume");
  for (int u = 0; u < straight.model->num_units(); ++u) {
    EXPECT_TRUE(at::equal(static_cast<StreamingDiLoCo&>(*straight.strategy).core().outer().anchor(u),
                          static_cast<StreamingDiLoCo&>(*resumed.strategy).core().outer().anchor(u)))
        << "anchor of unit " << u;
  }
}

INSTANTIATE_TEST_SUITE_P(Layouts, StreamingResume,
                         ::testing::Values(edit::sync::FragmentLayout::kStrided,
                                           edit::sync::FragmentLayout::kSequential,
                                           edit::sync::FragmentLayout::kBalanced,
                                           edit::sync::FragmentLayout::kSplit),
                         [](const auto& info) { return std::string(edit::sync::to_string(info.param)); });

// An exchange in flight belongs to its fragment's units: a job that groups them otherwise refuses
// the checkpoint, naming the layout, instead of merging it into the wrong units.
TEST(StreamingDiLoCo, ResumeIntoAnotherLayoutIsRefused) {
  edit::comm::DeviceMesh mesh = edit::comm::DeviceMesh::from_env({shard_size_for_world()});
  StreamingOptions options;
  options.local.sync_every = 6;
  options.fragments = 3;  // 5 units: strided {0, 3}, {1, 4}, {2}; sequential {0, 1}, {2, 3}, {4}
  options.overlap = 2;
  Worker first(7), resumed(7);
  first.build(mesh);
  first.strategy = std::make_unique<StreamingDiLoCo>(*first.model, mesh.sync_ptr(), options);
  for (int s = 0; s < 8; ++s) first.step(mesh, s);
  ASSERT_GT(static_cast<StreamingDiLoCo&>(*first.strategy).in_flight(), 0)
      << "the test needs an exchange in flight";
  const edit::StateDict strategy_state = copy(first.strategy->state_dict());
  options.layout = edit::sync::FragmentLayout::kSequential;
  resumed.build(mesh);
  resumed.strategy = std::make_unique<StreamingDiLoCo>(*resumed.model, mesh.sync_ptr(), options);
  try {
    resumed.strategy->load_state_dict(strategy_state);
    FAIL() << "a checkpoint of another layout was loaded";
  } catch (const edit::Error& e) {
    EXPECT_NE(std::string(e.what()).find("resume with the same --fragments and --fragment-layout"),
              std::string::npos)
        << e.what();
  }
}

}  // namespace
