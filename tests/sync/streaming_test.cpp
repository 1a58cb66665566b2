// Streaming DiLoCo's pure functions against hand-written tables: which fragments sync after which
// step, and which units each fragment holds in every layout (the balanced one on sizes with ties,
// P = 1 and P = the number of units). The multi-rank behaviour is in streaming_mpi_test.cpp.
#include "edit/sync/streaming.h"

#include <gtest/gtest.h>

#include <map>

#include "edit/core/check.h"

namespace {

using edit::sync::FragmentLayout;
using edit::sync::StreamingOptions;
using Fragments = std::vector<std::vector<int>>;

TEST(StreamingSchedule, FragmentsSyncInTurnAsTheTablesSay) {
  // After which 0-based inner steps each fragment syncs, written out by hand.
  struct Case {
    int H, P;
    std::map<std::int64_t, std::vector<int>> due;  // steps 0 .. 2H-1; the others: none
  };
  const std::vector<Case> cases = {
      {5, 1, {{4, {0}}, {9, {0}}}},
      {8, 2, {{3, {1}}, {7, {0}}, {11, {1}}, {15, {0}}}},
      {6, 3, {{1, {1}}, {3, {2}}, {5, {0}}, {7, {1}}, {9, {2}}, {11, {0}}}},
      {4, 4, {{0, {1}}, {1, {2}}, {2, {3}}, {3, {0}}, {4, {1}}, {5, {2}}, {6, {3}}, {7, {0}}}},
  };
  for (const Case& c : cases) {
    for (std::int64_t step = 0; step < 2 * c.H; ++step) {
      const auto found = c.due.find(step);
      const std::vector<int> want = found == c.due.end() ? std::vector<int>{} : found->second;
      EXPECT_EQ(edit::sync::fragments_due(step, c.H, c.P), want)
          << "H " << c.H << " P " << c.P << " step " << step;
    }
  }
  StreamingOptions bad;
  bad.local.sync_every = 10;
  bad.fragments = 4;
  EXPECT_THROW(bad.validate(8), edit::Error);  // H not divisible by P
  bad.fragments = 5;
  EXPECT_THROW(bad.validate(4), edit::Error);  // more fragments than units
  bad.overlap = 10;
  bad.fragments = 2;
  EXPECT_THROW(bad.validate(8), edit::Error);  // an exchange that would outlive its fragment's next sync
}

TEST(StreamingLayout, StridedAndSequentialIgnoreTheSizes) {
  const std::vector<std::int64_t> sizes = {9, 1, 1, 1, 9};
  EXPECT_EQ(edit::sync::fragment_units(sizes, 2, FragmentLayout::kStrided), (Fragments{{0, 2, 4}, {1, 3}}));
  EXPECT_EQ(edit::sync::fragment_units(sizes, 2, FragmentLayout::kSequential),
            (Fragments{{0, 1, 2}, {3, 4}}));
  EXPECT_EQ(edit::sync::fragment_units(sizes, 3, FragmentLayout::kStrided), (Fragments{{0, 3}, {1, 4}, {2}}));
  EXPECT_EQ(edit::sync::fragment_units(sizes, 3, FragmentLayout::kSequential),
            (Fragments{{0, 1}, {2, 3}, {4}}));
}

TEST(StreamingLayout, BalancedAsTheTablesSay) {
  // Worked by hand: units by size descending (ties: lower index first), each to the lightest
  // fragment so far (ties: lower fragment index); each fragment's units listed in ascending order.
  struct Case {
    std::vector<std::int64_t> sizes;
    int P;
    Fragments want;
    std::vector<std::int64_t> loads;  // elements per fragment
  };
  const std::vector<Case> cases = {
      // An embedding and a head of 10, four blocks of 4 (the shape of a small GPT).
      {{10, 4, 4, 4, 4, 10}, 2, {{0, 1, 3}, {2, 4, 5}}, {18, 18}},
      {{10, 4, 4, 4, 4, 10}, 3, {{0, 4}, {5}, {1, 2, 3}}, {14, 10, 12}},
      // All equal: the ties make it strided.
      {{5, 5, 5, 5, 5}, 2, {{0, 2, 4}, {1, 3}}, {15, 10}},
      // P = 1: one fragment of everything.
      {{5, 5, 5, 5, 5}, 1, {{0, 1, 2, 3, 4}}, {25}},
      // P = the number of units: one unit each, the biggest in fragment 0.
      {{5, 5, 5, 5, 5}, 5, {{0}, {1}, {2}, {3}, {4}}, {5, 5, 5, 5, 5}},
      {{3, 9, 1, 7}, 4, {{1}, {3}, {0}, {2}}, {9, 7, 3, 1}},
      // Ascending sizes, balanced exactly.
      {{2, 3, 4, 5, 6, 7}, 3, {{0, 5}, {1, 4}, {2, 3}}, {9, 9, 9}},
      // Equal loads with unequal unit counts: the lower fragment index wins the tie.
      {{4, 3, 2, 2, 1}, 2, {{0, 3}, {1, 2, 4}}, {6, 6}},
      // One unit bigger than the rest together: whole units cannot balance it.
      {{100, 1, 1, 1}, 2, {{0}, {1, 2, 3}}, {100, 3}},
  };
  for (const Case& c : cases) {
    const Fragments got = edit::sync::fragment_units(c.sizes, c.P, FragmentLayout::kBalanced);
    EXPECT_EQ(got, c.want) << "P " << c.P << ", unit sizes starting " << c.sizes.front();
    std::vector<std::int64_t> loads;
    for (const auto& units : got) {
      std::int64_t load = 0;
      for (int u : units) load += c.sizes[static_cast<size_t>(u)];
      loads.push_back(load);
    }
    EXPECT_EQ(loads, c.loads) << "P " << c.P << ", unit sizes starting " << c.sizes.front();
  }
}

TEST(StreamingLayout, RefusesWhatCannotBeLaidOut) {
  for (FragmentLayout layout :
       {FragmentLayout::kStrided, FragmentLayout::kSequential, FragmentLayout::kBalanced}) {
    EXPECT_THROW(edit::sync::fragment_units({1, 2, 3}, 4, layout), edit::Error) << to_string(layout);
    EXPECT_THROW(edit::sync::fragment_units({1, 2, 3}, 0, layout), edit::Error) << to_string(layout);
  }
  EXPECT_THROW(edit::sync::fragment_units({1, 0, 3}, 2, FragmentLayout::kBalanced), edit::Error);
}

TEST(StreamingLayout, NamesRoundTrip) {
  for (FragmentLayout layout :
       {FragmentLayout::kStrided, FragmentLayout::kSequential, FragmentLayout::kBalanced, FragmentLayout::kSplit}) {
    EXPECT_EQ(edit::sync::parse_fragment_layout(edit::sync::to_string(layout)), layout);
  }
  try {
    edit::sync::parse_fragment_layout("balance");
    FAIL() << "an unknown layout was accepted";
  } catch (const edit::Error& e) {
    EXPECT_NE(std::string(e.what()).find(
                  "unknown fragment layout 'balance'; use strided, sequential, balanced or split"),
              std::string::npos)
        << e.what();
  }
}

using Pieces = std::vector<std::vector<edit::sync::FragmentPiece>>;

// Split, by hand: the shards end to end, cut at floor(p T / P).
TEST(StreamingLayout, SplitAsTheTablesSay) {
  // T = 20, P = 2: one cut at 10, on a unit boundary.
  EXPECT_EQ(edit::sync::fragment_pieces({10, 3, 7}, 2, FragmentLayout::kSplit),
            (Pieces{{{0, 0, 10}}, {{1, 0, 3}, {2, 0, 7}}}));
  // T = 20, P = 3: cuts at 6 and 13; unit 0 is cut after 6 of its 10 values.
  EXPECT_EQ(edit::sync::fragment_pieces({10, 3, 7}, 3, FragmentLayout::kSplit),
            (Pieces{{{0, 0, 6}}, {{0, 6, 4}, {1, 0, 3}}, {{2, 0, 7}}}));
  // More fragments than units: T = 7, P = 4 -> cuts at 1, 3, 5; one unit spans three fragments.
  EXPECT_EQ(edit::sync::fragment_pieces({2, 5}, 4, FragmentLayout::kSplit),
            (Pieces{{{0, 0, 1}}, {{0, 1, 1}, {1, 0, 1}}, {{1, 1, 2}}, {{1, 3, 2}}}));
  // A big embedding first, as in a GPT: every fragment carries 1/P of the values, to one.
  const std::vector<std::int64_t> gpt = {50304, 7088, 7088, 7088, 7088, 1536};
  for (int P : {2, 3, 4, 7}) {
    std::int64_t total = 0, largest = 0;
    for (std::int64_t size : gpt) total += size;
    std::int64_t smallest = total;
    std::vector<std::int64_t> covered(gpt.size(), 0);
    for (const auto& pieces : edit::sync::fragment_pieces(gpt, P, FragmentLayout::kSplit)) {
      std::int64_t values = 0;
      for (const auto& piece : pieces) {
        EXPECT_EQ(piece.begin, covered[static_cast<size_t>(piece.unit)]) << "pieces of a unit in order, no gap";
        covered[static_cast<size_t>(piece.unit)] += piece.length;
        values += piece.length;
      }
      smallest = std::min(smallest, values);
      largest = std::max(largest, values);
    }
    EXPECT_LE(largest - smallest, 1) << "P " << P;
    EXPECT_EQ(largest, (total + P - 1) / P) << "P " << P;
    EXPECT_EQ(covered, gpt) << "every value in exactly one fragment, P " << P;
  }
}

// The layouts of whole units give one whole-shard piece per unit, as fragment_units() groups them.
TEST(StreamingLayout, WholeUnitLayoutsGiveWholeShards) {
  const std::vector<std::int64_t> sizes = {5, 9, 2, 7, 3};
  for (FragmentLayout layout : {FragmentLayout::kStrided, FragmentLayout::kSequential, FragmentLayout::kBalanced}) {
    const auto units = edit::sync::fragment_units(sizes, 3, layout);
    const auto pieces = edit::sync::fragment_pieces(sizes, 3, layout);
    ASSERT_EQ(pieces.size(), units.size());
    for (size_t p = 0; p < units.size(); ++p) {
      ASSERT_EQ(pieces[p].size(), units[p].size());
      for (size_t k = 0; k < units[p].size(); ++k) {
        const int u = units[p][k];
        EXPECT_EQ(pieces[p][k], (edit::sync::FragmentPiece{u, 0, sizes[static_cast<size_t>(u)]}))
            << to_string(layout);
      }
    }
  }
}

TEST(StreamingLayout, SplitRefusesWhatCannotBeLaidOut) {
  EXPECT_THROW(edit::sync::fragment_pieces({2, 5}, 8, FragmentLayout::kSplit), edit::Error);  // 7 values
  EXPECT_THROW(edit::sync::fragment_pieces({2, 0}, 1, FragmentLayout::kSplit), edit::Error);
  EXPECT_THROW(edit::sync::fragment_units({2, 5}, 2, FragmentLayout::kSplit), edit::Error);
  // The penalty judges whole units: split with it is refused, naming the way out.
  edit::sync::StreamingOptions options;
  options.local.sync_every = 4;
  options.fragments = 2;
  options.layout = FragmentLayout::kSplit;
  options.local.use_penalty = true;
  try {
    options.validate(5);
    FAIL() << "split with the penalty was accepted";
  } catch (const edit::Error& e) {
    EXPECT_NE(std::string(e.what()).find("drop --penalty or use another layout"), std::string::npos) << e.what();
  }
  options.local.use_penalty = false;
  options.local.sync_every = 8;
  options.fragments = 8;  // more fragments than units: fine when units may be cut
  EXPECT_NO_THROW(options.validate(5));
  options.layout = FragmentLayout::kBalanced;
  EXPECT_THROW(options.validate(5), edit::Error);
}

}  // namespace
