// edit-prepare-text: raw text files -> byte-level llm.c token shards for TokenDataset.
//
//   edit-prepare-text --out data/fortunes /usr/share/games/fortunes
//
// Directories contribute their regular files (sorted, not recursive). Symbolic links and binary
// files (any NUL byte, e.g. the strfile .dat indexes beside each fortunes file) are skipped, so a
// shell glob over a fortunes folder works too. Each file's last --val-fraction of bytes goes to
// the val split and the rest to train, so val covers every file's kind of text (splitting the
// concatenation instead would hold out only the last files). Output: DIR/train_000000.bin, ...
// and DIR/val_000000.bin, ..., at most --shard-tokens tokens each.
#include <CLI/CLI.hpp>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <regex>
#include <string>
#include <vector>

#include "edit/core/check.h"
#include "edit/data/byte_tokenizer.h"
#include "edit/data/token_file.h"

namespace fs = std::filesystem;

namespace {

struct Options {
  std::string out;                          // output folder, created if missing
  double val_fraction = 0.05;               // tail share of each file written to val shards
  std::int64_t shard_tokens = 100'000'000;  // tokens per shard at most (llm.c's shard size)
  std::vector<std::string> inputs;          // text files or folders of them
};

struct Inputs {
  std::vector<fs::path> files;
  std::int64_t skipped = 0;  // symlinks and binary files
};

// Files named on the command line, folders expanded to their regular files (sorted).
Inputs list_inputs(const std::vector<std::string>& args) {
  Inputs inputs;
  for (const std::string& arg : args) {
    const fs::path path(arg);
    std::error_code ec;
    const fs::file_status link = fs::symlink_status(path, ec);
    EDIT_CHECK(!ec && fs::exists(link), "input ", arg, " does not exist; pass text files or folders of them");
    if (fs::is_symlink(link)) {
      ++inputs.skipped;  // fortunes' *.u8 links repeat their targets
      continue;
    }
    if (fs::is_directory(link)) {
      std::vector<fs::path> found;
      for (const fs::directory_entry& entry : fs::directory_iterator(path)) {
        if (entry.is_symlink() || !entry.is_regular_file()) {
          ++inputs.skipped;
        } else {
          found.push_back(entry.path());
        }
      }
      std::sort(found.begin(), found.end());
      inputs.files.insert(inputs.files.end(), found.begin(), found.end());
    } else {
      EDIT_CHECK(fs::is_regular_file(link), "input ", arg,
                 " is not a regular file or folder; pass text files");
      inputs.files.push_back(path);
    }
  }
  return inputs;
}

// Collects tokens of one split and writes a shard whenever shard_tokens are buffered.
class ShardWriter {
 public:
  ShardWriter(fs::path dir, std::string split, std::int64_t shard_tokens)
      : dir_(std::move(dir)), split_(std::move(split)), shard_tokens_(shard_tokens) {}

  void add(const std::uint16_t* tokens, std::int64_t count) {
    while (count > 0) {
      const std::int64_t take = std::min(count, shard_tokens_ - static_cast<std::int64_t>(buffer_.size()));
      buffer_.insert(buffer_.end(), tokens, tokens + take);
      tokens += take;
      count -= take;
      total_ += take;
      if (static_cast<std::int64_t>(buffer_.size()) == shard_tokens_) flush();
    }
  }
  void flush() {
    if (buffer_.empty()) return;
    char name[64];
    std::snprintf(name, sizeof(name), "%s_%06d.bin", split_.c_str(), shards_);
    edit::data::write_token_file((dir_ / name).string(), buffer_);
    buffer_.clear();
    ++shards_;
  }
  std::int64_t total() const { return total_; }
  int shards() const { return shards_; }

 private:
  fs::path dir_;
  std::string split_;
  std::int64_t shard_tokens_;
  std::vector<std::uint16_t> buffer_;
  std::int64_t total_ = 0;
  int shards_ = 0;
};

int run(const Options& options) {
  EDIT_CHECK(options.val_fraction >= 0.0 && options.val_fraction < 1.0, "--val-fraction ",
             options.val_fraction, " is outside [0, 1); pass e.g. 0.05");
  EDIT_CHECK(options.shard_tokens >= 1 && options.shard_tokens <= edit::data::kTokenFileMaxTokens,
             "--shard-tokens ", options.shard_tokens, " is outside 1..", edit::data::kTokenFileMaxTokens,
             " (the llm.c header stores the count in an int32)");
  const Inputs inputs = list_inputs(options.inputs);

  const fs::path out(options.out);
  fs::create_directories(out);
  // Shards of an earlier run would be read as part of this corpus: remove them first.
  const std::regex shard_name(R"((train|val)_\d{6}\.bin)");
  int removed = 0;
  for (const fs::directory_entry& entry : fs::directory_iterator(out)) {
    if (entry.is_regular_file() && std::regex_match(entry.path().filename().string(), shard_name)) {
      fs::remove(entry.path());
      ++removed;
    }
  }

  const edit::data::ByteTokenizer tokenizer;
  ShardWriter train(out, "train", options.shard_tokens);
  ShardWriter val(out, "val", options.shard_tokens);
  std::int64_t used = 0;
  std::int64_t skipped = inputs.skipped;
  for (const fs::path& file : inputs.files) {
    std::ifstream in(file, std::ios::binary);
    EDIT_CHECK(in.good(), "cannot open ", file.string(), "; check its permissions");
    const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    EDIT_CHECK(!in.bad(), "cannot read ", file.string());
    if (text.find('\0') != std::string::npos) {
      ++skipped;  // binary, e.g. a strfile index
      continue;
    }
    ++used;
    const std::vector<std::uint16_t> tokens = tokenizer.encode(text);
    const auto n = static_cast<std::int64_t>(tokens.size());
    const auto n_val = static_cast<std::int64_t>(std::llround(options.val_fraction * static_cast<double>(n)));
    train.add(tokens.data(), n - n_val);
    val.add(tokens.data() + (n - n_val), n_val);
  }
  train.flush();
  val.flush();

  EDIT_CHECK(used > 0, "none of the ", inputs.files.size() + inputs.skipped,
             " inputs is a text file (symlinks and binary files are skipped); pass text files or folders");
  EDIT_CHECK(train.total() > 0, "the ", used, " text files hold no training tokens; pass non-empty files");
  EDIT_CHECK(options.val_fraction == 0.0 || val.total() > 0, "--val-fraction ", options.val_fraction,
             " of these ", train.total(), " tokens rounds to no val token in every file; pass more text or a",
             " larger fraction (0 writes no val shard)");
  std::printf(
      "edit-prepare-text: %lld files (%lld skipped), %lld tokens: train %lld in %d shards, val %lld in %d "
      "shards"
      " -> %s%s\n",
      static_cast<long long>(used), static_cast<long long>(skipped),
      static_cast<long long>(train.total() + val.total()), static_cast<long long>(train.total()),
      train.shards(), static_cast<long long>(val.total()), val.shards(), out.string().c_str(),
      removed > 0 ? (" (replaced " + std::to_string(removed) + " old shards)").c_str() : "");
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Byte-tokenize text files into llm.c token shards (train_*.bin, val_*.bin) for TokenDataset"};
  Options options;
  app.add_option("--out", options.out, "output folder (created if missing)")->required();
  app.add_option("--val-fraction", options.val_fraction, "tail share of each file written to val shards")
      ->capture_default_str();
  app.add_option("--shard-tokens", options.shard_tokens, "tokens per shard at most")->capture_default_str();
  app.add_option("files", options.inputs, "text files, or folders whose regular files are read")->required();
  CLI11_PARSE(app, argc, argv);
  try {
    return run(options);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "edit-prepare-text: error: %s\n", e.what());
    return 1;
  }
}
