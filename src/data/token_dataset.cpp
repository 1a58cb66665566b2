#include "edit/data/token_dataset.h"

#include <ATen/ATen.h>
#include <glob.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>

#include "edit/core/check.h"
#include "edit/data/byte_tokenizer.h"
#include "edit/data/token_file.h"

namespace edit::data {
namespace {

// Frees the glob(3) result on every path out.
struct GlobResult {
  glob_t value{};
  ~GlobResult() { globfree(&value); }
};

// splitmix64 (Steele, Lea, Flood 2014): tiny, fully specified, and good enough to shuffle.
std::uint64_t mix(std::uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

class SplitMix64 {
 public:
  explicit SplitMix64(std::uint64_t seed) : state_(seed) {}
  std::uint64_t next() {
    state_ += 0x9e3779b97f4a7c15ULL;
    return mix(state_);
  }
  // Uniform in [0, bound) without modulo bias: reject the low values that would over-represent.
  std::uint64_t below(std::uint64_t bound) {
    const std::uint64_t threshold = (0 - bound) % bound;
    for (;;) {
      const std::uint64_t r = next();
      if (r >= threshold) return r % bound;
    }
  }

 private:
  std::uint64_t state_;
};

}  // namespace

std::vector<std::string> expand_data_files(const std::vector<std::string>& patterns) {
  EDIT_CHECK(!patterns.empty(),
             "no data files given; pass a path or a glob pattern such as data/train_*.bin");
  std::vector<std::string> files;
  for (const std::string& pattern : patterns) {
    GlobResult result;
    // glob(3) sorts its matches, so every rank sees the files in the same order.
    const int rc = ::glob(pattern.c_str(), GLOB_ERR, nullptr, &result.value);
    EDIT_CHECK(rc != GLOB_NOMATCH, "no file matches the data pattern '", pattern,
               "'; check the path (run edit-prepare-text first to make token shards)");
    EDIT_CHECK(rc == 0, "cannot expand the data pattern '", pattern, "' (glob error ", rc, ": ",
               std::strerror(errno), "); check that its folders exist and are readable");
    for (std::size_t i = 0; i < result.value.gl_pathc; ++i) files.emplace_back(result.value.gl_pathv[i]);
  }
  return files;
}


TokenDataset::TokenDataset(const std::vector<std::string>& patterns, TokenDatasetOptions options)
    : options_(std::move(options)) {
  const TokenDatasetOptions& o = options_;
  EDIT_CHECK(o.format == "tokens" || o.format == "text", "unknown data format '", o.format,
             "'; use \"tokens\" (llm.c .bin shards) or \"text\" (raw text, byte-level tokens)");
  EDIT_CHECK(o.split == "train" || o.split == "val" || o.split == "all", "unknown data split '", o.split,
             "'; use \"train\", \"val\" or \"all\"");
  EDIT_CHECK(o.val_fraction >= 0.0 && o.val_fraction < 1.0, "val fraction ", o.val_fraction,
             " is outside [0, 1); pass e.g. 0.05 to hold out 5% of the windows");
  EDIT_CHECK(o.split != "val" || o.val_fraction > 0.0,
             "split \"val\" needs a val fraction > 0 (it is 0, so no window is held out); set val_fraction");
  EDIT_CHECK(o.seq_len >= 1, "sequence length ", o.seq_len, " must be at least 1");
  EDIT_CHECK(o.world_size >= 1 && o.rank >= 0 && o.rank < o.world_size, "data rank ", o.rank,
             " is outside [0, world size ", o.world_size, "); pass the rank within the data-parallel group");
  EDIT_CHECK(o.vocab_size >= 1, "vocab size ", o.vocab_size, " must be at least 1");
  EDIT_CHECK(o.format != "text" || o.vocab_size >= ByteTokenizer::kVocabSize, "format \"text\" makes byte ",
             "tokens 0..255, but the vocab size is ", o.vocab_size, "; use a model vocab of at least 256");

  files_ = expand_data_files(patterns);
  for (const std::string& file : files_) {
    shards_.push_back(o.format == "tokens" ? MappedTokenFile::open_shard(file) : MappedTokenFile::open_text(file));
    offsets_.push_back(offsets_.back() + shards_.back().size());
  }
  if (num_tokens() <= kEagerCheckTokens) {
    for (const MappedTokenFile& shard : shards_) shard.check_tokens(o.vocab_size);
  }

  const std::int64_t n = num_tokens();
  EDIT_CHECK(n >= o.seq_len + 1, "the corpus has ", n, " tokens in ", files_.size(),
             " file(s) (first: ", files_.front(), "), fewer than one window of seq_len + 1 = ", o.seq_len + 1,
             " tokens; use a shorter sequence length or more data");
  const std::int64_t windows = (n - 1) / o.seq_len;
  std::int64_t val = 0;
  if (o.val_fraction > 0.0) {
    val = std::max<std::int64_t>(1, std::llround(o.val_fraction * static_cast<double>(windows)));
  }
  EDIT_CHECK(val < windows || o.split == "val", "the corpus has ", windows, " windows of ", o.seq_len + 1,
             " tokens and val fraction ", o.val_fraction, " holds out ", val,
             " of them, leaving none to train on; lower the val fraction or the sequence length");
  if (o.split == "train") {
    first_window_ = 0;
    window_count_ = windows - val;
  } else if (o.split == "val") {
    first_window_ = windows - val;
    window_count_ = val;
  } else {
    first_window_ = 0;
    window_count_ = windows;
  }
  EDIT_CHECK(window_count_ >= o.world_size, "split \"", o.split, "\" has ", window_count_, " windows of ",
             o.seq_len + 1, " tokens, fewer than the ", o.world_size,
             " ranks that share it, so some rank would get none; use more data, a shorter sequence length",
             " or fewer ranks");
  shuffle_for(0);
}

std::int64_t TokenDataset::windows_per_epoch() const {
  // Rank r reads permutation positions r, r + world, ...: ceil((count - r) / world) of them.
  return (window_count_ - options_.rank + options_.world_size - 1) / options_.world_size;
}

void TokenDataset::shuffle_for(std::int64_t epoch) {
  if (order_epoch_ == epoch) return;
  // Every rank builds the same permutation of the whole split, then keeps its own share.
  std::vector<std::int64_t> permutation(static_cast<std::size_t>(window_count_));
  for (std::int64_t i = 0; i < window_count_; ++i)
    permutation[static_cast<std::size_t>(i)] = first_window_ + i;
  SplitMix64 rng(mix(options_.seed) ^ mix(static_cast<std::uint64_t>(epoch) + 0x632be59bd9b4e019ULL));
  for (std::int64_t i = window_count_ - 1; i > 0; --i) {  // Fisher-Yates
    const auto j = static_cast<std::int64_t>(rng.below(static_cast<std::uint64_t>(i + 1)));
    std::swap(permutation[static_cast<std::size_t>(i)], permutation[static_cast<std::size_t>(j)]);
  }
  order_.clear();
  order_.reserve(static_cast<std::size_t>(windows_per_epoch()));
  for (std::int64_t i = options_.rank; i < window_count_; i += options_.world_size) {
    order_.push_back(permutation[static_cast<std::size_t>(i)]);
  }
  order_epoch_ = epoch;
}

void TokenDataset::set_cursor(const Cursor& cursor) {
  EDIT_CHECK(
      cursor.epoch >= 0 && cursor.position >= 0 && cursor.position <= windows_per_epoch(),
      "data cursor (epoch ", cursor.epoch, ", position ", cursor.position,
      ") does not fit this dataset, whose rank ", options_.rank, " reads ", windows_per_epoch(),
      " windows per epoch; resume with the same files, split, seq_len and world size as the checkpoint");
  cursor_ = cursor;
  shuffle_for(cursor_.epoch);
}

StateDict TokenDataset::state_dict() {
  StateDict state;
  state.put("epoch", cursor_.epoch);
  state.put("position", cursor_.position);
  // What the cursor points into: a resume on other data must not continue silently.
  state.put("corpus_tokens", num_tokens());
  state.put("windows_per_epoch", windows_per_epoch());
  return state;
}

void TokenDataset::load_state_dict(const StateDict& state) {
  const std::string owner = "the data cursor";
  const std::int64_t tokens = state.integer(owner, "corpus_tokens");
  const std::int64_t windows = state.integer(owner, "windows_per_epoch");
  EDIT_CHECK(tokens == num_tokens() && windows == windows_per_epoch(), "the checkpoint was trained on a corpus of ",
             tokens, " tokens (", windows, " windows per epoch on rank ", options_.rank, "), but this job reads ",
             num_tokens(), " tokens (", windows_per_epoch(), " windows) from ", files_.size(),
             " file(s); resume with the same data files, split and --seq-len");
  set_cursor({state.integer(owner, "epoch"), state.integer(owner, "position")});
}

TokenBatch TokenDataset::next_batch(std::int64_t batch, std::int64_t seq) {
  EDIT_CHECK(batch >= 1, "batch size ", batch, " must be at least 1");
  EDIT_CHECK(seq == options_.seq_len, "next_batch asks for sequences of ", seq,
             " tokens, but the dataset's windows are laid out for seq_len ", options_.seq_len,
             "; pass the same length to both (or build another dataset)");
  TokenBatch out;
  out.inputs = at::empty({batch, seq}, at::kLong);
  out.targets = at::empty({batch, seq}, at::kLong);
  std::int64_t* inputs = out.inputs.data_ptr<std::int64_t>();
  std::int64_t* targets = out.targets.data_ptr<std::int64_t>();
  const std::int64_t per_epoch = windows_per_epoch();
  std::vector<std::int64_t> tokens(static_cast<std::size_t>(seq + 1));
  for (std::int64_t b = 0; b < batch; ++b) {
    if (cursor_.position == per_epoch) {
      cursor_ = Cursor{cursor_.epoch + 1, 0};
    }
    shuffle_for(cursor_.epoch);
    const std::int64_t window = order_[static_cast<std::size_t>(cursor_.position++)];
    read_tokens(window * seq, seq + 1, tokens.data());
    std::copy(tokens.begin(), tokens.end() - 1, inputs + b * seq);
    std::copy(tokens.begin() + 1, tokens.end(), targets + b * seq);
  }
  return out;
}

void TokenDataset::read_tokens(std::int64_t begin, std::int64_t count, std::int64_t* out) const {
  // The file holding `begin`: the last one whose first token is at or before it.
  auto file = std::upper_bound(offsets_.begin(), offsets_.end(), begin) - offsets_.begin() - 1;
  while (count > 0) {
    const MappedTokenFile& shard = shards_[static_cast<std::size_t>(file)];
    const std::int64_t local = begin - offsets_[static_cast<std::size_t>(file)];
    const std::int64_t take = std::min(count, shard.size() - local);
    shard.copy(local, take, out, options_.vocab_size);
    begin += take;
    out += take;
    count -= take;
    ++file;
  }
}

}  // namespace edit::data
