// TokenDataset: batches of token windows for next-token prediction (docs/architecture.md, data/).
//
// Layout. The files (glob patterns expanded and sorted, in the order given) are concatenated into
// one corpus of N tokens. They are memory-mapped, not loaded: a corpus larger than RAM trains, and
// only the windows read are brought in. Token ids are checked against the vocabulary as windows
// are read, and at the start as well when the corpus holds at most kEagerCheckTokens tokens. Window w is the seq_len + 1 tokens starting at w * seq_len (inputs are
// its first seq_len tokens, targets its last seq_len), so consecutive windows share one token and
// every token but the first is a target exactly once. W = (N - 1) / seq_len windows in all.
//
// Split. The last max(1, round(val_fraction * W)) windows (none when val_fraction is 0), in corpus
// order, are "val"; the others "train"; "all" takes every window. Train and val never share a window.
//
// Sampling. Each epoch e permutes the split's windows with a generator seeded by (seed, e), the
// same on every rank; rank r reads positions r, r + world_size, r + 2 world_size, ... of it. So in
// an epoch the ranks read disjoint windows and together cover all of them (rank counts differ by
// at most one). A rank moves to the next epoch by itself when its share runs out, in mid-batch if
// need be. The permutation uses its own generator (not std::shuffle, whose algorithm differs
// between standard libraries), so a checkpoint resumes identically on any build.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "edit/core/state.h"
#include "edit/data/token_file.h"

namespace edit::data {

struct TokenDatasetOptions {
  std::string format = "tokens";  // "tokens": llm.c .bin shards; "text": raw text, byte-level tokens
  std::string split = "all";      // "train", "val" or "all" (see val_fraction)
  double val_fraction = 0.0;      // share of windows held out as "val" (the last ones); 0 <= f < 1
  std::int64_t seq_len = 1024;    // tokens per input row; windows hold seq_len + 1 tokens
  std::int64_t vocab_size = 65536;  // every id must be below it (the model's vocab)
  std::uint64_t seed = 0;         // the same on every rank
  int rank = 0;                   // which disjoint share this dataset reads
  int world_size = 1;             // number of readers (ranks of the data-parallel group)
};

// Where a rank is in its stream: `position` windows of epoch `epoch` are consumed. Saved in a
// checkpoint, it makes the same rank yield the same next batches after set_cursor().
struct Cursor {
  std::int64_t epoch = 0;
  std::int64_t position = 0;

  bool operator==(const Cursor& other) const { return epoch == other.epoch && position == other.position; }
};

struct TokenBatch {
  at::Tensor inputs;   // (batch, seq) kLong
  at::Tensor targets;  // (batch, seq) kLong: inputs shifted left by one token
};

// The files of `patterns` (paths or glob(3) patterns), each pattern's matches sorted, in the order
// given; a pattern that matches nothing is an error naming it.
std::vector<std::string> expand_data_files(const std::vector<std::string>& patterns);

// Stateful: the cursor ("epoch", "position").
class TokenDataset : public Stateful {
 public:
  // `patterns`: file paths or glob(3) patterns; a pattern that matches nothing is an error.
  TokenDataset(const std::vector<std::string>& patterns, TokenDatasetOptions options);
  TokenDataset(const std::string& pattern, TokenDatasetOptions options)
      : TokenDataset(std::vector<std::string>{pattern}, std::move(options)) {}

  // The next `batch` windows of this rank's stream. `seq` must equal options().seq_len: the
  // windows of every epoch are laid out for it (construct another dataset for another length).
  TokenBatch next_batch(std::int64_t batch, std::int64_t seq);

  Cursor cursor() const { return cursor_; }
  // Resumes at `cursor` (from cursor() of a dataset with the same files, options and rank).
  void set_cursor(const Cursor& cursor);
  StateDict state_dict() override;
  void load_state_dict(const StateDict& state) override;

  const TokenDatasetOptions& options() const { return options_; }
  const std::vector<std::string>& files() const { return files_; }
  std::int64_t num_tokens() const { return offsets_.back(); }
  // Corpora up to this many tokens have every id checked when the dataset is built (one pass,
  // seconds); larger ones as their windows are read, so a start does not read the whole corpus.
  static constexpr std::int64_t kEagerCheckTokens = std::int64_t{1} << 28;
  std::int64_t num_windows() const { return window_count_; }  // in this split, all ranks together
  std::int64_t windows_per_epoch() const;                     // this rank's share of an epoch

 private:
  void shuffle_for(std::int64_t epoch);
  // Corpus tokens [begin, begin + count) into `out`, across file boundaries.
  void read_tokens(std::int64_t begin, std::int64_t count, std::int64_t* out) const;
  TokenDatasetOptions options_;
  std::vector<std::string> files_;
  std::vector<MappedTokenFile> shards_;    // the files, mapped
  std::vector<std::int64_t> offsets_{0};  // corpus index of each file's first token; back(): N
  std::int64_t first_window_ = 0;  // the split's windows are [first_window_, first_window_ + window_count_)
  std::int64_t window_count_ = 0;
  Cursor cursor_;
  std::int64_t order_epoch_ = -1;    // the epoch `order_` was shuffled for
  std::vector<std::int64_t> order_;  // this rank's windows in the current epoch, in reading order
};

}  // namespace edit::data
