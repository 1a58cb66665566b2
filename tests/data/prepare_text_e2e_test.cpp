// End to end: edit-prepare-text turns a folder of text files into shards that TokenDataset reads
// back. The tool's path comes from CMake (EDIT_PREPARE_TEXT).
#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "edit/data/byte_tokenizer.h"
#include "edit/data/token_dataset.h"
#include "edit/data/token_file.h"
#include "fifo_watchdog.h"
#include "temp_dir.h"

#ifndef EDIT_PREPARE_TEXT
#error "EDIT_PREPARE_TEXT (the path of edit-prepare-text) must be defined by the build"
#endif

namespace {

namespace fs = std::filesystem;
using edit::testing_support::FifoWatchdog;
using edit::testing_support::read_bytes;
using edit::testing_support::TempDir;
using edit::testing_support::write_bytes;

struct ToolRun {
  int rc = -1;
  std::string output;  // stdout and stderr
};

// `prefix`: shell commands before the tool's, e.g. resource limits; the tool runs in a `timeout`,
// so one that blocks fails the test (exit 124) instead of hanging it.
ToolRun prepare_text(const TempDir& dir, const std::string& args, const std::string& prefix = "") {
  const std::string log = dir.file("tool.log");
  const std::string command =
      prefix + "exec timeout 20 '" + EDIT_PREPARE_TEXT + "' " + args + " > '" + log + "' 2>&1";
  const int status = std::system(command.c_str());
  return ToolRun{WIFEXITED(status) ? WEXITSTATUS(status) : -1, read_bytes(log)};
}

// Every file under `dir` with its bytes: equal snapshots mean nothing was touched.
std::map<std::string, std::string> snapshot(const std::string& dir) {
  std::map<std::string, std::string> files;
  for (const fs::directory_entry& entry : fs::recursive_directory_iterator(dir)) {
    if (entry.is_regular_file())
      files[fs::relative(entry.path(), dir).string()] = read_bytes(entry.path().string());
  }
  return files;
}

// Entries of `dir` other than those named in `expected`: a staging folder left behind shows here.
std::vector<std::string> unexpected_entries(const std::string& dir, const std::set<std::string>& expected) {
  std::vector<std::string> extra;
  for (const fs::directory_entry& entry : fs::directory_iterator(dir)) {
    const std::string name = entry.path().filename().string();
    if (expected.count(name) == 0) extra.push_back(name);
  }
  return extra;
}

void expect_contains(const std::string& text, const std::string& part) {
  EXPECT_NE(text.find(part), std::string::npos) << "expected \"" << part << "\" in: " << text;
}

// Deterministic text that differs from file to file, so a window identifies where it came from.
std::string make_text(int file, int lines) {
  std::string text;
  for (int i = 0; i < lines; ++i) {
    text += "file " + std::to_string(file) + " line " + std::to_string(i) + ": the fox " +
            std::string(static_cast<std::size_t>(i % 7), 'o') + "\n%\n";
  }
  return text;
}

std::vector<std::uint16_t> read_split(const std::string& dir, const std::string& split, int* shards) {
  std::vector<std::uint16_t> all;
  *shards = 0;
  for (;; ++*shards) {
    char name[32];
    std::snprintf(name, sizeof(name), "/%s_%06d.bin", split.c_str(), *shards);
    if (!fs::exists(dir + name)) break;
    const std::vector<std::uint16_t> part = edit::data::read_token_file(dir + name, 256);
    all.insert(all.end(), part.begin(), part.end());
  }
  return all;
}

TEST(PrepareTextE2e, ShardsReadBackThroughTheDataset) {
  TempDir dir;
  fs::create_directories(dir.file("in/corpus"));
  const std::vector<std::string> texts = {make_text(0, 60), make_text(1, 40), make_text(2, 80)};
  write_bytes(dir.file("in/corpus/a"), texts[0]);
  write_bytes(dir.file("in/corpus/b"), texts[1]);
  write_bytes(dir.file("in/extra.txt"), texts[2]);
  // What a fortunes folder also holds: a binary strfile index and a symlink to a text file.
  write_bytes(dir.file("in/corpus/a.dat"), std::string("\0\0\0\2\0\0\0\x3c", 8));
  fs::create_symlink("a", dir.file("in/corpus/a.u8"));

  const std::string out = dir.file("out");
  const ToolRun run = prepare_text(dir, "--out '" + out + "' --val-fraction 0.1 --shard-tokens 1000 '" +
                                            dir.file("in/corpus") + "' '" + dir.file("in/extra.txt") + "'");
  ASSERT_EQ(run.rc, 0) << run.output;
  EXPECT_NE(run.output.find("3 files (2 skipped)"), std::string::npos) << run.output;

  // Each file's last 10% is val, the rest train, in the order a, b (folder, sorted), extra.txt.
  std::string train_text, val_text;
  for (const std::string& text : texts) {
    const auto n_val = static_cast<std::size_t>(std::llround(0.1 * static_cast<double>(text.size())));
    train_text += text.substr(0, text.size() - n_val);
    val_text += text.substr(text.size() - n_val);
  }
  const edit::data::ByteTokenizer tokenizer;
  int train_shards = 0, val_shards = 0;
  EXPECT_EQ(tokenizer.decode(read_split(out, "train", &train_shards)), train_text);
  EXPECT_EQ(tokenizer.decode(read_split(out, "val", &val_shards)), val_text);
  EXPECT_EQ(train_shards, static_cast<int>((train_text.size() + 999) / 1000));
  EXPECT_EQ(val_shards, 1);
  const std::string summary = std::to_string(train_text.size() + val_text.size()) + " tokens: train " +
                              std::to_string(train_text.size()) + " in " + std::to_string(train_shards) +
                              " shards";
  EXPECT_NE(run.output.find(summary), std::string::npos) << run.output;

  // Two ranks read the train shards; every row is a stretch of the train text, shifted for targets.
  for (int rank = 0; rank < 2; ++rank) {
    edit::data::TokenDatasetOptions options;
    options.seq_len = 32;
    options.vocab_size = 256;
    options.rank = rank;
    options.world_size = 2;
    edit::data::TokenDataset data(out + "/train_*.bin", options);
    EXPECT_EQ(data.num_tokens(), static_cast<std::int64_t>(train_text.size()));
    const edit::data::TokenBatch batch = data.next_batch(4, 32);
    EXPECT_TRUE(at::equal(batch.inputs.narrow(1, 1, 31), batch.targets.narrow(1, 0, 31)));
    for (int row = 0; row < 4; ++row) {
      std::vector<std::uint16_t> tokens;
      for (int t = 0; t < 32; ++t)
        tokens.push_back(static_cast<std::uint16_t>(batch.inputs[row][t].item<std::int64_t>()));
      EXPECT_NE(train_text.find(tokenizer.decode(tokens)), std::string::npos);
    }
  }
  edit::data::TokenDatasetOptions val_options;
  val_options.seq_len = 16;
  val_options.vocab_size = 256;
  edit::data::TokenDataset val(out + "/val_*.bin", val_options);
  EXPECT_EQ(val.num_tokens(), static_cast<std::int64_t>(val_text.size()));

  // A second run into the same folder replaces the old shards instead of leaving stale ones.
  const ToolRun again =
      prepare_text(dir, "--out '" + out + "' --val-fraction 0 '" + dir.file("in/extra.txt") + "'");
  ASSERT_EQ(again.rc, 0) << again.output;
  EXPECT_TRUE(fs::exists(out + "/train_000000.bin"));
  EXPECT_FALSE(fs::exists(out + "/train_000001.bin"));
  EXPECT_FALSE(fs::exists(out + "/val_000000.bin"));
  EXPECT_EQ(tokenizer.decode(edit::data::read_token_file(out + "/train_000000.bin", 256)), texts[2]);
}

TEST(PrepareTextE2e, MissingInputIsAClearError) {
  TempDir dir;
  const ToolRun run = prepare_text(dir, "--out '" + dir.file("out") + "' '" + dir.file("missing.txt") + "'");
  EXPECT_EQ(run.rc, 1) << run.output;
  EXPECT_NE(run.output.find("input " + dir.file("missing.txt") + " does not exist"), std::string::npos)
      << run.output;
}

// Every way a run can fail leaves the shards of the last good run byte for byte, the other files
// of the folder too, and no staging folder beside it.
TEST(PrepareTextE2e, FailedRunLeavesThePreviousShardsUnchanged) {
  TempDir dir;
  fs::create_directories(dir.file("in"));
  write_bytes(dir.file("in/good.txt"), make_text(0, 200));
  write_bytes(dir.file("in/empty.txt"), "");
  fs::create_directories(dir.file("in/binary"));
  write_bytes(dir.file("in/binary/a.dat"), std::string("\0\0\0\2", 4));
  fs::create_symlink(dir.file("in/good.txt"), dir.file("in/binary/a.u8"));
  std::string big;
  for (int i = 0; i < 20; ++i) big += make_text(i, 200);  // ~500 KB: past the 64 KB file size limit
  write_bytes(dir.file("in/big.txt"), big);
  const std::string out = dir.file("out");
  const std::string common = "--out '" + out + "' --val-fraction 0.1 ";
  ASSERT_EQ(prepare_text(dir, common + "--shard-tokens 2000 '" + dir.file("in/good.txt") + "'").rc, 0);
  write_bytes(out + "/README", "kept");
  const auto before = snapshot(out);
  ASSERT_GE(before.size(), 3u);
  const std::set<std::string> expected_entries = {"in", "out", "tool.log"};

  struct Case {
    std::string name, args, prefix;
    std::vector<std::string> messages;
  };
  const std::vector<Case> cases = {
      {"empty file",
       "'" + dir.file("in/empty.txt") + "'",
       "",
       {"hold no training tokens", out + " is unchanged"}},
      {"binary and symlink only",
       "'" + dir.file("in/binary") + "'",
       "",
       {"no text in the inputs " + dir.file("in/binary") + ": skipped ",
        dir.file("in/binary/a.dat") + " (binary: holds a NUL byte)",
        dir.file("in/binary/a.u8") + " (symbolic link)"}},
      // A file size limit makes the shard write fail as a full disk would (EFBIG for ENOSPC).
      {"full disk",
       "--shard-tokens 1000000 '" + dir.file("in/big.txt") + "'",
       "trap '' XFSZ; ulimit -f 128; ",
       {"train_000000.bin", "is the disk full?"}},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    const ToolRun run = prepare_text(dir, common + c.args, c.prefix);
    EXPECT_EQ(run.rc, 1) << run.output;
    for (const std::string& message : c.messages) expect_contains(run.output, message);
    EXPECT_EQ(snapshot(out), before);
    EXPECT_EQ(unexpected_entries(dir.path(), expected_entries), std::vector<std::string>{});
  }

  // A good run replaces the shards and keeps the other files of the folder.
  const ToolRun run = prepare_text(dir, common + "'" + dir.file("in/big.txt") + "'");
  ASSERT_EQ(run.rc, 0) << run.output;
  expect_contains(run.output, "(replaced " + std::to_string(before.size() - 1) + " old shards)");
  EXPECT_EQ(read_bytes(out + "/README"), "kept");
  int shards = 0;
  EXPECT_EQ(read_split(out, "train", &shards).size() + read_split(out, "val", &shards).size(), big.size());
  EXPECT_EQ(unexpected_entries(dir.path(), expected_entries), std::vector<std::string>{});
}

// A FIFO is never opened (it would block until a writer appears): named, it is an error that says
// what it is; in a folder, it is skipped like a symlink.
TEST(PrepareTextE2e, FifoInputFailsFastInsteadOfBlocking) {
  TempDir dir;
  fs::create_directories(dir.file("in"));
  FifoWatchdog fifo(dir.file("in/pipe.txt"));
  const std::string out = dir.file("out");
  const ToolRun named = prepare_text(dir, "--out '" + out + "' '" + fifo.path() + "'");
  EXPECT_EQ(named.rc, 1) << named.output;
  expect_contains(named.output, "input " + fifo.path() + " is a FIFO");
  const ToolRun folder = prepare_text(dir, "--out '" + out + "' '" + dir.file("in") + "'");
  EXPECT_EQ(folder.rc, 1) << folder.output;
  expect_contains(folder.output, "skipped " + fifo.path() + " (not a regular file)");
  EXPECT_FALSE(fifo.reader_opened()) << "neither run opened the FIFO (an open blocks until a writer comes)";
  EXPECT_FALSE(fs::exists(out));

  write_bytes(dir.file("in/text.txt"), make_text(0, 20));
  const ToolRun mixed = prepare_text(dir, "--out '" + out + "' --val-fraction 0 '" + dir.file("in") + "'");
  EXPECT_EQ(mixed.rc, 0) << mixed.output;
  expect_contains(mixed.output, "1 files (1 skipped)");
}

// The summary is part of the output: a run whose standard output cannot be written fails.
TEST(PrepareTextE2e, UnwritableStandardOutputIsAnError) {
  TempDir dir;
  write_bytes(dir.file("text.txt"), make_text(0, 20));
  const std::string command = std::string("exec timeout 20 '") + EDIT_PREPARE_TEXT + "' --out '" +
                              dir.file("out") + "' '" + dir.file("text.txt") + "' > /dev/full 2> '" +
                              dir.file("err.log") + "'";
  const int status = std::system(command.c_str());
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 1) << status;
  expect_contains(read_bytes(dir.file("err.log")), "standard output");
}

}  // namespace
