#include "edit/data/token_dataset.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <functional>
#include <set>
#include <string>
#include <vector>

#include "edit/core/check.h"
#include "edit/data/byte_tokenizer.h"
#include "edit/data/token_file.h"
#include "error_of.h"
#include "fifo_watchdog.h"
#include "temp_dir.h"

namespace {

using edit::data::Cursor;
using edit::data::TokenBatch;
using edit::data::TokenDataset;
using edit::data::TokenDatasetOptions;
using edit::testing_support::error_of;
using edit::testing_support::FifoWatchdog;
using edit::testing_support::TempDir;

// The corpus 0, 1, ..., n-1 split over `shards` files: a window's first token is its start.
std::string write_counting_corpus(const TempDir& dir, int n, int shards) {
  for (int s = 0; s < shards; ++s) {
    std::vector<std::uint16_t> tokens;
    for (int i = n * s / shards; i < n * (s + 1) / shards; ++i)
      tokens.push_back(static_cast<std::uint16_t>(i));
    edit::data::write_token_file(dir.file("shard_00" + std::to_string(s) + ".bin"), tokens);
  }
  return dir.file("shard_*.bin");
}

TokenDatasetOptions options(std::int64_t seq, int rank = 0, int world = 1, std::uint64_t seed = 1) {
  TokenDatasetOptions o;
  o.seq_len = seq;
  o.rank = rank;
  o.world_size = world;
  o.seed = seed;
  return o;
}

// Window starts (first input token) of the next `count` windows, one batch of `count`.
std::vector<std::int64_t> next_starts(TokenDataset& data, std::int64_t count) {
  const TokenBatch batch = data.next_batch(count, data.options().seq_len);
  const at::Tensor first = batch.inputs.select(1, 0).contiguous();
  return std::vector<std::int64_t>(first.data_ptr<std::int64_t>(), first.data_ptr<std::int64_t>() + count);
}

TEST(TokenDataset, TargetsAreInputsShiftedByOne) {
  TempDir dir;
  TokenDataset data(write_counting_corpus(dir, 500, 3), options(16));
  EXPECT_EQ(data.files().size(), 3u);
  EXPECT_EQ(data.num_tokens(), 500);
  EXPECT_EQ(data.num_windows(), 499 / 16);
  const TokenBatch batch = data.next_batch(4, 16);
  ASSERT_EQ(batch.inputs.sizes(), (at::IntArrayRef{4, 16}));
  ASSERT_EQ(batch.targets.sizes(), (at::IntArrayRef{4, 16}));
  EXPECT_EQ(batch.inputs.scalar_type(), at::kLong);
  EXPECT_EQ(batch.targets.scalar_type(), at::kLong);
  // Consecutive corpus: every target is its input + 1, and rows start on window boundaries.
  EXPECT_TRUE(at::equal(batch.targets, batch.inputs + 1));
  EXPECT_TRUE(at::equal(batch.inputs.narrow(1, 1, 15), batch.targets.narrow(1, 0, 15)));
  EXPECT_TRUE(at::equal(batch.inputs.select(1, 0).remainder(16), at::zeros({4}, at::kLong)));
}

TEST(TokenDataset, SameSeedAndRankGiveSameBatches) {
  TempDir dir;
  const std::string pattern = write_counting_corpus(dir, 2000, 2);
  TokenDataset a(pattern, options(8, 1, 2, 42));
  TokenDataset b(pattern, options(8, 1, 2, 42));
  TokenDataset other_seed(pattern, options(8, 1, 2, 43));
  bool differs = false;
  for (int step = 0; step < 10; ++step) {
    const TokenBatch x = a.next_batch(5, 8);
    const TokenBatch y = b.next_batch(5, 8);
    EXPECT_TRUE(at::equal(x.inputs, y.inputs));
    EXPECT_TRUE(at::equal(x.targets, y.targets));
    differs |= !at::equal(x.inputs, other_seed.next_batch(5, 8).inputs);
  }
  EXPECT_TRUE(differs) << "another seed should give another order";
}

TEST(TokenDataset, RanksReadDisjointWindowsThatCoverTheEpoch) {
  TempDir dir;
  // 999 / 8 = 124 windows: not a multiple of 3, so the ranks' shares differ by one.
  const std::string pattern = write_counting_corpus(dir, 1000, 3);
  const int world = 3;
  std::vector<std::vector<std::int64_t>> epoch0(world), epoch1(world);
  std::int64_t total = 0;
  for (int rank = 0; rank < world; ++rank) {
    TokenDataset data(pattern, options(8, rank, world, 7));
    ASSERT_EQ(data.num_windows(), 124);
    const std::int64_t share = data.windows_per_epoch();
    EXPECT_TRUE(share == 41 || share == 42) << share;
    total += share;
    epoch0[rank] = next_starts(data, share);
    EXPECT_EQ(data.cursor(), (Cursor{0, share}));
    epoch1[rank] = next_starts(data, share);
    EXPECT_EQ(data.cursor(), (Cursor{1, share}));
  }
  EXPECT_EQ(total, 124);
  for (const auto* epoch : {&epoch0, &epoch1}) {
    std::multiset<std::int64_t> seen;
    for (const auto& starts : *epoch) seen.insert(starts.begin(), starts.end());
    EXPECT_EQ(seen.size(), 124u);
    std::set<std::int64_t> unique(seen.begin(), seen.end());
    EXPECT_EQ(unique.size(), 124u) << "two ranks read the same window in one epoch";
    EXPECT_EQ(*unique.begin(), 0);
    EXPECT_EQ(*unique.rbegin(), 123 * 8);
  }
  EXPECT_NE(epoch0[0], epoch1[0]) << "a new epoch should reshuffle";
}

TEST(TokenDataset, CursorRestoreReproducesTheNextBatches) {
  TempDir dir;
  const std::string pattern = write_counting_corpus(dir, 600, 2);
  TokenDataset data(pattern, options(10, 1, 2, 3));  // 59 windows, 29 for rank 1
  for (int step = 0; step < 4; ++step) data.next_batch(3, 10);
  const Cursor saved = data.cursor();
  EXPECT_EQ(saved, (Cursor{0, 12}));
  std::vector<TokenBatch> expected;
  for (int step = 0; step < 8; ++step) expected.push_back(data.next_batch(3, 10));  // crosses into epoch 1
  EXPECT_EQ(data.cursor().epoch, 1);

  TokenDataset resumed(pattern, options(10, 1, 2, 3));
  resumed.set_cursor(saved);
  for (const TokenBatch& batch : expected) {
    const TokenBatch again = resumed.next_batch(3, 10);
    EXPECT_TRUE(at::equal(again.inputs, batch.inputs));
    EXPECT_TRUE(at::equal(again.targets, batch.targets));
  }
  EXPECT_EQ(resumed.cursor(), data.cursor());

  // Rewinding the same dataset works too (it reshuffles back to the saved epoch).
  data.set_cursor(saved);
  EXPECT_TRUE(at::equal(data.next_batch(3, 10).inputs, expected[0].inputs));
}

TEST(TokenDataset, TrainAndValNeverShareAWindow) {
  TempDir dir;
  const std::string pattern = write_counting_corpus(dir, 1001, 1);  // 100 windows of 11
  auto split = [&](const std::string& name) {
    TokenDatasetOptions o = options(10, 0, 1, 5);
    o.split = name;
    o.val_fraction = 0.2;
    TokenDataset data(pattern, o);
    const std::vector<std::int64_t> starts = next_starts(data, data.windows_per_epoch());
    return std::set<std::int64_t>(starts.begin(), starts.end());
  };
  const std::set<std::int64_t> train = split("train");
  const std::set<std::int64_t> val = split("val");
  const std::set<std::int64_t> all = split("all");
  EXPECT_EQ(train.size(), 80u);
  EXPECT_EQ(val.size(), 20u);
  EXPECT_EQ(all.size(), 100u);
  for (std::int64_t start : val) {
    EXPECT_EQ(train.count(start), 0u) << "window at " << start << " is in both splits";
    EXPECT_GE(start, 80 * 10) << "val holds the last windows";
  }
}

TEST(TokenDataset, TextFormatReadsBytes) {
  TempDir dir;
  const std::string a = "The quick brown fox jumps over the lazy dog.\n";
  const std::string b = "Pack my box with five dozen liquor jugs! \xc3\xa9\n";
  edit::testing_support::write_bytes(dir.file("a.txt"), a);
  edit::testing_support::write_bytes(dir.file("b.txt"), b);
  TokenDatasetOptions o = options(12);
  o.format = "text";
  o.vocab_size = 256;
  TokenDataset data(std::vector<std::string>{dir.file("a.txt"), dir.file("b.txt")}, o);
  const std::string corpus = a + b;
  EXPECT_EQ(data.num_tokens(), static_cast<std::int64_t>(corpus.size()));
  const edit::data::ByteTokenizer tokenizer;
  for (int step = 0; step < 10; ++step) {
    const TokenBatch batch = data.next_batch(2, 12);
    for (int row = 0; row < 2; ++row) {
      const at::Tensor in = batch.inputs[row];
      const at::Tensor out = batch.targets[row];
      std::vector<std::uint16_t> in_tokens, out_tokens;
      for (int t = 0; t < 12; ++t) {
        in_tokens.push_back(static_cast<std::uint16_t>(in[t].item<std::int64_t>()));
        out_tokens.push_back(static_cast<std::uint16_t>(out[t].item<std::int64_t>()));
      }
      const std::string text = tokenizer.decode(in_tokens);
      const std::size_t at = corpus.find(text);
      ASSERT_NE(at, std::string::npos) << text;
      EXPECT_EQ(at % 12, 0u);
      EXPECT_EQ(tokenizer.decode(out_tokens), corpus.substr(at + 1, 12));
    }
  }
}

TEST(TokenDataset, ClearErrors) {
  TempDir dir;
  const std::string pattern = write_counting_corpus(dir, 100, 1);
  std::string what = error_of([&] { TokenDataset data(dir.file("nothing_*.bin"), options(8)); });
  EXPECT_NE(what.find("no file matches the data pattern '" + dir.file("nothing_*.bin") + "'"),
            std::string::npos)
      << what;
  what = error_of([&] { TokenDataset data(pattern, options(100)); });
  EXPECT_NE(what.find("the corpus has 100 tokens"), std::string::npos) << what;
  EXPECT_NE(what.find("fewer than one window of seq_len + 1 = 101"), std::string::npos) << what;
  what = error_of([&] {
    TokenDataset data(pattern, options(8));
    data.next_batch(2, 9);
  });
  EXPECT_NE(what.find("laid out for seq_len 8"), std::string::npos) << what;
  what = error_of([&] {
    TokenDatasetOptions o = options(8);
    o.format = "json";
    TokenDataset data(pattern, o);
  });
  EXPECT_NE(what.find("unknown data format 'json'"), std::string::npos) << what;
  what = error_of([&] {
    TokenDatasetOptions o = options(8);
    o.vocab_size = 50;  // the corpus holds ids up to 99
    TokenDataset data(pattern, o);
  });
  EXPECT_NE(what.find("token id 50 at index 50 (byte offset 1124)"), std::string::npos) << what;
  what = error_of([&] {
    TokenDataset data(pattern, options(8));
    data.set_cursor(Cursor{0, 1000});
  });
  EXPECT_NE(what.find("does not fit this dataset"), std::string::npos) << what;
  what = error_of([&] { TokenDataset data(pattern, options(8, 3, 3)); });
  EXPECT_NE(what.find("data rank 3"), std::string::npos) << what;
  what = error_of([&] {
    TokenDatasetOptions o = options(8);
    o.split = "val";
    TokenDataset data(pattern, o);
  });
  EXPECT_NE(what.find("needs a val fraction > 0"), std::string::npos) << what;
}

// A FIFO or folder matched by the data pattern is refused by name and type, before any open that
// could block the job (a FIFO blocks until a writer appears).
TEST(TokenDataset, FifoOrFolderAmongTheDataFilesIsRefused) {
  for (const std::string format : {"tokens", "text"}) {
    SCOPED_TRACE(format);
    TempDir dir;
    const std::string pattern = write_counting_corpus(dir, 500, 2);
    FifoWatchdog fifo(dir.file("shard_009.bin"));
    TokenDatasetOptions o = options(16);
    o.format = format;
    const std::string what = error_of([&] { TokenDataset data(pattern, o); });
    EXPECT_NE(what.find(fifo.path() + " is a FIFO"), std::string::npos) << what;
    EXPECT_FALSE(fifo.reader_opened()) << "refused without opening it";
  }
  TempDir dir;
  const std::string pattern = write_counting_corpus(dir, 500, 2);
  std::filesystem::create_directory(dir.file("shard_009.bin"));
  const std::string what = error_of([&] { TokenDataset data(pattern, options(16)); });
  EXPECT_NE(what.find(dir.file("shard_009.bin") + " is a directory"), std::string::npos) << what;
}

}  // namespace

namespace {

// An llm.c shard header: magic, version, count, then zeros to 1024 bytes.
std::string llmc_header(std::int32_t magic, std::int32_t version, std::int32_t count) {
  std::string header(1024, '\0');
  for (int i = 0; i < 4; ++i) {
    header[static_cast<size_t>(i)] = static_cast<char>((static_cast<std::uint32_t>(magic) >> (8 * i)) & 0xff);
    header[static_cast<size_t>(4 + i)] =
        static_cast<char>((static_cast<std::uint32_t>(version) >> (8 * i)) & 0xff);
    header[static_cast<size_t>(8 + i)] =
        static_cast<char>((static_cast<std::uint32_t>(count) >> (8 * i)) & 0xff);
  }
  return header;
}

// This process's resident memory, from /proc/self/status (kB).
std::int64_t resident_kb() {
  std::ifstream status("/proc/self/status");
  for (std::string line; std::getline(status, line);) {
    if (line.rfind("VmRSS:", 0) == 0) return std::stoll(line.substr(6));
  }
  return -1;
}

}  // namespace

// llm.c's llama-3 layout (magic 20240801, version 7, uint32 ids up to 128,256) reads back exactly,
// and an id at or above the vocabulary names its index and byte offset (4 bytes a token).
TEST(TokenDataset, Llama3ShardsOfUint32Tokens) {
  TempDir dir;
  const std::int32_t n = 1000;
  std::string body;
  for (std::int32_t i = 0; i < n; ++i) {
    const std::uint32_t id = 128000u + static_cast<std::uint32_t>(i % 256);  // above uint16's range
    for (int b = 0; b < 4; ++b) body.push_back(static_cast<char>((id >> (8 * b)) & 0xff));
  }
  edit::testing_support::write_bytes(dir.file("llama.bin"), llmc_header(20240801, 7, n) + body);
  TokenDatasetOptions o = options(9);
  o.vocab_size = 128256;
  TokenDataset data(dir.file("llama.bin"), o);
  EXPECT_EQ(data.num_tokens(), n);
  const TokenBatch batch = data.next_batch(4, 9);
  for (std::int64_t b = 0; b < 4; ++b) {
    const std::int64_t first = batch.inputs[b][0].item<std::int64_t>();
    EXPECT_GE(first, 128000);
    for (std::int64_t t = 0; t < 9; ++t) {
      // Consecutive ids (mod 256 above 128000), and targets are the inputs shifted by one.
      EXPECT_EQ(batch.inputs[b][t].item<std::int64_t>(), 128000 + (first - 128000 + t) % 256);
      EXPECT_EQ(batch.targets[b][t].item<std::int64_t>(), 128000 + (first - 128000 + t + 1) % 256);
    }
  }
  o.vocab_size = 128100;  // id 128100 first appears at index 100: byte offset 1024 + 400
  const std::string what = error_of([&] { TokenDataset(dir.file("llama.bin"), o); });
  EXPECT_NE(what.find("token id 128100 at index 100 (byte offset 1424) is >= the vocab size 128100"),
            std::string::npos)
      << what;
  // A GPT-2 magic with the llama version (or the reverse) is refused, naming both layouts.
  edit::testing_support::write_bytes(dir.file("mixed.bin"), llmc_header(20240520, 7, 0));
  EXPECT_NE(error_of([&] {
              TokenDataset(dir.file("mixed.bin"), options(1));
            }).find("unsupported version 7 at byte offset 4"),
            std::string::npos);
}

// The shards are mapped, not loaded: a 600 MB corpus (sparse, so it costs no disk) is opened and
// read from while this process's resident memory grows by a few MB, the windows it touched. A
// dataset that loaded the corpus would grow by 1.2 GB (600 MB of uint16, widened or copied).
TEST(TokenDataset, MappedCorpusLargerThanWhatIsReadStaysOutOfMemory) {
  TempDir dir;
  const std::int64_t n = 300'000'000;  // > kEagerCheckTokens: ids are checked as windows are read
  ASSERT_GT(n, TokenDataset::kEagerCheckTokens);
  const std::string path = dir.file("big.bin");
  edit::testing_support::write_bytes(path, llmc_header(20240520, 1, static_cast<std::int32_t>(n)));
  std::filesystem::resize_file(path, 1024 + 2 * n);  // zeros: token 0 everywhere
  const std::int64_t before = resident_kb();
  ASSERT_GT(before, 0) << "needs /proc/self/status";
  TokenDataset data(path, options(1024));
  EXPECT_EQ(data.num_tokens(), n);
  for (int i = 0; i < 50; ++i) {
    const TokenBatch batch = data.next_batch(8, 1024);
    ASSERT_EQ(batch.inputs.sum().item<std::int64_t>(), 0);
  }
  // The permutation of 293k windows (2 x 2.3 MB) and 400 touched windows of 2 KB (and their
  // read-ahead) fit well inside 64 MB.
  EXPECT_LT(resident_kb() - before, 64 * 1024) << "kB resident growth after reading 400 windows";
}
