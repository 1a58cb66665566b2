// Every collective of MpiCommunicator against a reference computed locally: each rank's input is
// a pure function of (rank, seed), so any rank can rebuild every other rank's input and reduce in
// float64 itself. Run with 2 and 4 ranks.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <chrono>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "edit/comm/mpi_communicator.h"
#include "edit/core/check.h"
#include "mpi_test_env.h"

namespace {

using edit::comm::AllReduceOptions;
using edit::comm::ReduceOp;
using edit::testing_support::world;

at::Tensor rank_input(int rank, std::int64_t numel, at::ScalarType type, int salt = 0) {
  at::manual_seed(1000 * salt + rank);
  if (at::isFloatingType(type)) return at::randn({numel}, at::kDouble).to(type);
  return at::randint(-100, 100, {numel}, at::kLong).to(type);
}

// Tolerance of a reduction over `ranks` inputs of magnitude ~1, stored in `type`.
void expect_close(const at::Tensor& actual, const at::Tensor& expected, at::ScalarType type, const std::string& what) {
  ASSERT_EQ(actual.sizes(), expected.sizes()) << what;
  if (actual.numel() == 0) return;
  const at::Tensor a = actual.to(at::kDouble);
  const at::Tensor e = expected.to(at::kDouble);
  double atol = 0.0;
  switch (type) {
    case at::kDouble: atol = 1e-12; break;
    case at::kFloat: atol = 1e-5; break;
    case at::kHalf: atol = 2e-2; break;
    case at::kBFloat16: atol = 1.5e-1; break;  // 8 mantissa bits, values up to ~4 x 4 ranks
    default: atol = 0.0; break;                // integers: exact
  }
  const double max_error = (a - e).abs().max().item<double>();
  EXPECT_LE(max_error, atol) << what << ": max |error| " << max_error;
}

using Case = std::tuple<at::ScalarType, std::int64_t>;

class Collectives : public testing::TestWithParam<Case> {
 protected:
  at::ScalarType type() const { return std::get<0>(GetParam()); }
  std::int64_t numel() const { return std::get<1>(GetParam()); }
  std::string what() const {
    return std::string(c10::toString(type())) + "[" + std::to_string(numel()) + "] on " +
           std::to_string(world()->size()) + " ranks";
  }
};

TEST_P(Collectives, AllReduceSumAndAvg) {
  const auto comm = world();
  for (ReduceOp op : {ReduceOp::kSum, ReduceOp::kAvg}) {
    if (op == ReduceOp::kAvg && !at::isFloatingType(type())) continue;
    at::Tensor reference = at::zeros({numel()}, at::kDouble);
    for (int r = 0; r < comm->size(); ++r) reference += rank_input(r, numel(), type()).to(at::kDouble);
    if (op == ReduceOp::kAvg) reference /= comm->size();
    at::Tensor mine = rank_input(comm->rank(), numel(), type());
    comm->all_reduce(mine, {op})->wait();
    expect_close(mine, reference, type(), what() + " all_reduce " + edit::comm::to_string(op));
  }
}

TEST_P(Collectives, AllReduceWeightedByPrescale) {
  if (!at::isFloatingType(type())) GTEST_SKIP() << "prescale needs a floating dtype";
  const auto comm = world();
  const double weight = 1.0 / (comm->rank() + 1);
  at::Tensor reference = at::zeros({numel()}, at::kDouble);
  for (int r = 0; r < comm->size(); ++r) {
    // The reference applies the weight to the dtype-rounded input, as the communicator does.
    reference += rank_input(r, numel(), type()).mul(1.0 / (r + 1)).to(at::kDouble);
  }
  at::Tensor mine = rank_input(comm->rank(), numel(), type());
  comm->all_reduce(mine, AllReduceOptions{ReduceOp::kSum, weight})->wait();
  expect_close(mine, reference, type(), what() + " weighted all_reduce");
}

TEST_P(Collectives, AllGatherPlacesEachRankInItsSlot) {
  const auto comm = world();
  at::Tensor output = at::full({numel() * comm->size()}, 7, type());
  comm->all_gather(output, rank_input(comm->rank(), numel(), type()))->wait();
  for (int r = 0; r < comm->size(); ++r) {
    EXPECT_TRUE(at::equal(output.narrow(0, r * numel(), numel()), rank_input(r, numel(), type())))
        << what() << " all_gather slot " << r;
  }
}

TEST_P(Collectives, ReduceScatterGivesEachRankItsChunkOfTheSum) {
  const auto comm = world();
  const int n = comm->size();
  at::Tensor reference = at::zeros({numel()}, at::kDouble);
  for (int r = 0; r < n; ++r) {
    reference += rank_input(r, numel() * n, type()).narrow(0, comm->rank() * numel(), numel()).to(at::kDouble);
  }
  at::Tensor output = at::full({numel()}, 7, type());
  comm->reduce_scatter(output, rank_input(comm->rank(), numel() * n, type()))->wait();
  expect_close(output, reference, type(), what() + " reduce_scatter");
  if (at::isFloatingType(type())) {
    comm->reduce_scatter(output, rank_input(comm->rank(), numel() * n, type()), {ReduceOp::kAvg})->wait();
    expect_close(output, reference / n, type(), what() + " reduce_scatter avg");
  }
}

TEST_P(Collectives, BroadcastFromTheLastRank) {
  const auto comm = world();
  const int root = comm->size() - 1;
  at::Tensor tensor = comm->rank() == root ? rank_input(root, numel(), type()) : at::zeros({numel()}, type());
  comm->broadcast(tensor, root)->wait();
  EXPECT_TRUE(at::equal(tensor, rank_input(root, numel(), type()))) << what() << " broadcast";
}

INSTANTIATE_TEST_SUITE_P(
    DtypesAndSizes, Collectives,
    testing::Combine(testing::Values(at::kFloat, at::kDouble, at::kBFloat16, at::kHalf, at::kInt, at::kLong),
                     testing::Values<std::int64_t>(0, 1, 7, 1000, 65537)),
    [](const testing::TestParamInfo<Case>& info) {
      return std::string(c10::toString(std::get<0>(info.param))) + "_" + std::to_string(std::get<1>(info.param));
    });

// Large float and double all-reduces run as a ring of point-to-point messages (CommOptions::
// ring_min_bytes); a communicator that takes the ring from 1 byte tests it at every
// size, chunks that are uneven or empty (fewer values than ranks) included. Against the float64
// reference of all ranks' inputs, exactly for sums of small integers, and every rank must end with
// the same bits (each chunk is summed on one rank and copied to the others).
TEST(CollectivesRing, AllReduceAsARingMatchesTheReferenceOnEveryRank) {
  edit::comm::CommOptions options = world()->options();
  options.ring_min_bytes = 1;
  const auto ring = edit::comm::MpiCommunicator::world(world()->runtime(), options, "ring");
  const int n = ring->size();
  for (const at::ScalarType type : {at::kFloat, at::kDouble}) {
    for (const std::int64_t numel : {std::int64_t{1}, std::int64_t{3}, std::int64_t{1000}, std::int64_t{300007}}) {
      const std::string what = std::string(c10::toString(type)) + "[" + std::to_string(numel) + "] on " +
                               std::to_string(n) + " ranks";
      // Small integers: every order of summation gives the exact sum.
      at::Tensor integers = rank_input(ring->rank(), numel, at::kLong, 3).to(type);
      at::Tensor exact = at::zeros({numel}, at::kLong);
      for (int r = 0; r < n; ++r) exact += rank_input(r, numel, at::kLong, 3);
      ring->all_reduce(integers)->wait();
      EXPECT_TRUE(at::equal(integers, exact.to(type))) << what << " sum of integers";

      at::Tensor reference = at::zeros({numel}, at::kDouble);
      for (int r = 0; r < n; ++r) reference += rank_input(r, numel, type).mul(1.0 / (r + 1)).to(at::kDouble);
      at::Tensor mine = rank_input(ring->rank(), numel, type);
      ring->all_reduce(mine, AllReduceOptions{ReduceOp::kAvg, 1.0 / (ring->rank() + 1)})->wait();
      expect_close(mine, reference / n, type, what + " weighted average");
      at::Tensor everyone = at::empty({numel * n}, type);
      ring->all_gather(everyone, mine)->wait();
      for (int r = 0; r < n; ++r) {
        EXPECT_TRUE(at::equal(everyone.narrow(0, r * numel, numel), mine)) << what << ": rank " << r << " differs";
      }
    }
  }
  EXPECT_EQ(ring->stats().ops, 2 * 4 * 3);
}

// Large float and double reduce-scatters take the same ring (its first half, with the sums kept
// out of the input): each rank's chunk against the float64 reference of every rank's input, exact
// sums of integers, the average, and the input left as it was.
TEST(CollectivesRing, ReduceScatterAsARingGivesEachRankItsChunkAndLeavesTheInput) {
  edit::comm::CommOptions options = world()->options();
  options.ring_min_bytes = 1;
  const auto ring = edit::comm::MpiCommunicator::world(world()->runtime(), options, "ring");
  const int n = ring->size();
  const int me = ring->rank();
  for (const at::ScalarType type : {at::kFloat, at::kDouble}) {
    for (const std::int64_t numel : {std::int64_t{1}, std::int64_t{3}, std::int64_t{100003}}) {
      const std::string what = std::string(c10::toString(type)) + "[" + std::to_string(n) + " x " +
                               std::to_string(numel) + "] on " + std::to_string(n) + " ranks";
      const at::Tensor integers = rank_input(me, numel * n, at::kLong, 5).to(type);
      const at::Tensor integers_before = integers.clone();
      at::Tensor exact = at::zeros({numel}, at::kLong);
      for (int r = 0; r < n; ++r) exact += rank_input(r, numel * n, at::kLong, 5).narrow(0, me * numel, numel);
      at::Tensor output = at::full({numel}, 7, type);
      ring->reduce_scatter(output, integers)->wait();
      EXPECT_TRUE(at::equal(output, exact.to(type))) << what << " sum of integers";
      EXPECT_TRUE(at::equal(integers, integers_before)) << what << ": the input changed";

      at::Tensor reference = at::zeros({numel}, at::kDouble);
      for (int r = 0; r < n; ++r) reference += rank_input(r, numel * n, type).narrow(0, me * numel, numel).to(at::kDouble);
      ring->reduce_scatter(output, rank_input(me, numel * n, type), {ReduceOp::kAvg})->wait();
      expect_close(output, reference / n, type, what + " average");
    }
  }
  EXPECT_EQ(ring->stats().ops, 2 * 3 * 2);
}

TEST(CollectivesLayout, NonContiguousTensorsAreStagedAndWrittenBack) {
  const auto comm = world();
  // A transposed (3, 5) view: all_reduce must reduce the logical elements and write them back.
  at::Tensor base = rank_input(comm->rank(), 15, at::kFloat).reshape({5, 3});
  at::Tensor view = base.t();
  ASSERT_FALSE(view.is_contiguous());
  at::Tensor reference = at::zeros({5, 3}, at::kDouble);
  for (int r = 0; r < comm->size(); ++r) reference += rank_input(r, 15, at::kFloat).reshape({5, 3}).to(at::kDouble);
  comm->all_reduce(view)->wait();
  expect_close(base, reference, at::kFloat, "non-contiguous all_reduce");

  // all_gather into every other element of a larger buffer.
  at::Tensor storage = at::zeros({2 * 4 * comm->size()}, at::kFloat);
  at::Tensor strided_output = storage.slice(0, 0, storage.numel(), 2);
  comm->all_gather(strided_output, rank_input(comm->rank(), 4, at::kFloat))->wait();
  for (int r = 0; r < comm->size(); ++r) {
    EXPECT_TRUE(at::equal(strided_output.narrow(0, 4 * r, 4), rank_input(r, 4, at::kFloat)));
  }
  EXPECT_EQ(storage.slice(0, 1, storage.numel(), 2).abs().sum().item<float>(), 0.f) << "wrote outside the view";
}

TEST(CollectivesLayout, InPlaceAllGatherFromOwnSlot) {
  const auto comm = world();
  at::Tensor full = at::zeros({6 * comm->size()}, at::kFloat);
  at::Tensor mine = full.narrow(0, 6 * comm->rank(), 6);
  mine.copy_(rank_input(comm->rank(), 6, at::kFloat));
  comm->all_gather(full, mine)->wait();
  for (int r = 0; r < comm->size(); ++r) {
    EXPECT_TRUE(at::equal(full.narrow(0, 6 * r, 6), rank_input(r, 6, at::kFloat)));
  }
}

TEST(CollectivesAsync, ManyOpsInFlightCompleteInIssueOrder) {
  const auto comm = world();
  std::vector<at::Tensor> tensors;
  std::vector<edit::comm::WorkPtr> works;
  for (int i = 0; i < 16; ++i) {
    tensors.push_back(at::full({100 + i}, static_cast<float>(comm->rank() + i), at::kFloat));
    works.push_back(comm->all_reduce(tensors.back()));
  }
  const int n = comm->size();
  for (int i = 15; i >= 0; --i) {  // waiting out of order must not matter
    works[i]->wait();
    EXPECT_TRUE(works[i]->is_completed());
    const float expected = static_cast<float>(n * (n - 1) / 2 + n * i);
    EXPECT_TRUE(at::all(tensors[i] == expected).item<bool>()) << "op " << i;
  }
  comm->barrier()->wait();
}

// A timeout of "practically never" (the largest a CommOptions can hold) is cut to kMaxTimeout, so
// an op that is not done at its first test still completes; the deadline used to overflow into the
// past and fail every such op at once.
TEST(CollectivesAsync, ATimeoutOfPracticallyNeverLetsOpsComplete) {
  edit::comm::CommOptions options = world()->options();
  options.timeout = std::chrono::milliseconds::max();
  const auto comm = edit::comm::MpiCommunicator::world(world()->runtime(), options, "never");
  EXPECT_EQ(comm->options().timeout, edit::comm::CommOptions::kMaxTimeout);
  std::vector<at::Tensor> tensors;
  std::vector<edit::comm::WorkPtr> works;
  for (int i = 0; i < 8; ++i) {
    // The last rank starts late, so the others' ops cannot be done at their first test.
    if (i == 0 && comm->rank() == comm->size() - 1) std::this_thread::sleep_for(std::chrono::milliseconds(50));
    tensors.push_back(at::full({1 << 16}, static_cast<float>(comm->rank() + i), at::kFloat));
    works.push_back(comm->all_reduce(tensors.back()));
  }
  const int n = comm->size();
  for (int i = 0; i < 8; ++i) {
    ASSERT_NO_THROW(works[i]->wait()) << "op " << i;
    EXPECT_TRUE(at::all(tensors[i] == static_cast<float>(n * (n - 1) / 2 + n * i)).item<bool>()) << "op " << i;
  }
  comm->barrier()->wait();
}

TEST(CollectivesErrors, BadArgumentsAreRejectedWithTheFix) {
  const auto comm = world();
  const auto message_of = [](const std::function<void()>& call) {
    try {
      call();
    } catch (const edit::Error& e) {
      return std::string(e.what());
    }
    return std::string("<no error>");
  };
  const int n = comm->size();
  EXPECT_NE(message_of([&] { comm->all_gather(at::zeros({3 * n + 1}), at::zeros({3})); })
                .find("allocate the output as group size x input elements"), std::string::npos);
  EXPECT_NE(message_of([&] { comm->reduce_scatter(at::zeros({3}), at::zeros({3 * n + 1})); })
                .find("pad the input to a multiple of the group size"), std::string::npos);
  at::Tensor whole = at::zeros({3 * n});  // an output in the input's own memory (its slot)
  EXPECT_NE(message_of([&] { comm->reduce_scatter(whole.narrow(0, 3 * comm->rank(), 3), whole); })
                .find("the output overlaps the input's memory"), std::string::npos);
  EXPECT_NE(message_of([&] { comm->all_reduce(at::zeros({3}, at::kLong), {ReduceOp::kAvg}); })
                .find("kAvg needs a floating dtype"), std::string::npos);
  EXPECT_NE(message_of([&] { comm->all_reduce(at::zeros({3}, at::kBool)); }).find("cannot be reduced"),
            std::string::npos);
  EXPECT_NE(message_of([&] { comm->broadcast(at::zeros({3}), n); }).find("is not a rank of this group"),
            std::string::npos);
  EXPECT_NE(message_of([&] { comm->all_gather(at::zeros({3 * n}, at::kDouble), at::zeros({3})); })
                .find("differs from input dtype"), std::string::npos);
  // The group still works after rejected calls: nothing was enqueued.
  at::Tensor one = at::ones({1});
  comm->all_reduce(one)->wait();
  EXPECT_EQ(one.item<float>(), static_cast<float>(n));
}

TEST(CollectivesHost, AllGatherValuesInRankOrder) {
  const auto comm = world();
  const auto values = comm->all_gather_values({comm->rank() * 1.5, -1.0 * comm->rank()});
  ASSERT_EQ(values.size(), static_cast<size_t>(2 * comm->size()));
  for (int r = 0; r < comm->size(); ++r) {
    EXPECT_EQ(values[2 * r], r * 1.5);
    EXPECT_EQ(values[2 * r + 1], -1.0 * r);
  }
}

TEST(CollectivesStats, BytesFollowTheRingModel) {
  const auto comm = world();
  comm->barrier()->wait();
  comm->reset_stats();
  const int n = comm->size();
  at::Tensor tensor = at::ones({1000}, at::kFloat);
  const auto start = std::chrono::steady_clock::now();
  comm->all_reduce(tensor)->wait();
  comm->all_gather(at::empty({250 * n}), at::ones({250}))->wait();
  const double elapsed_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  const auto stats = comm->stats();
  EXPECT_EQ(stats.ops, 2);
  // all_reduce: 2 (n-1)/n of 4000 bytes; all_gather: (n-1)/n of the 1000 n-byte output.
  EXPECT_EQ(stats.bytes_sent, 2 * (n - 1) * 4000 / n + (n - 1) * 1000 * n / n);
  // Seconds, not another unit: the callers waited inside the span measured here.
  EXPECT_LE(stats.wait_seconds, elapsed_s);
  EXPECT_GT(stats.busy_seconds, 0.0);
}

}  // namespace
