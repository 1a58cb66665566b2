// What tokenized a corpus, kept with its shards and with every run trained on them, so the tools
// that turn ids back into text (edit-generate) or hand a model to others (edit-export --format hf)
// need not be told again.
//
//   <folder>/tokenizer/tokenizer.json   {"kind": "byte" | "gpt2", "vocab_size": N}
//   <folder>/tokenizer/encoder.json     GPT-2's files, for kind gpt2 (Gpt2Tokenizer::from_dir reads
//   <folder>/tokenizer/vocab.bpe        the folder as it is)
//
// edit-prepare-text writes it beside the shards it writes; edit-train-gpt copies it from the
// training data's folder into the run's; edit-generate and edit-export read it from the run.
#pragma once

#include <optional>
#include <string>
#include <vector>

namespace edit::data {

inline constexpr const char* kTokenizerFolder = "tokenizer";

struct TokenizerRecord {
  std::string kind;    // "byte" or "gpt2"
  int vocab_size = 0;  // ids the tokenizer produces: 256, or GPT-2's 50257
  std::string folder;  // <folder>/tokenizer, where the record was read (empty for a new one)
};

// Writes <folder>/tokenizer/ for `kind`: byte, or gpt2 with GPT-2's encoder.json and vocab.bpe
// copied from `bpe_dir`. Each file is written atomically; what was in <folder>/tokenizer/ is
// replaced.
void write_tokenizer_record(const std::string& folder, const std::string& kind,
                            const std::string& bpe_dir = "");

// The record in <folder>/tokenizer/, or nullopt when there is none. A record that is there but
// broken (bad JSON, unknown kind, GPT-2's files missing) throws, naming the file and the fix.
std::optional<TokenizerRecord> read_tokenizer_record(const std::string& folder);

// The record of the folders holding `files` (e.g. the training shards). Every folder that has one
// must hold the same (same kind and the same GPT-2 files), else it throws naming both; nullopt
// when none has one (shards from elsewhere, e.g. llm.c's).
std::optional<TokenizerRecord> common_tokenizer_record(const std::vector<std::string>& files);

// Copies `record` into <folder>/tokenizer/, replacing what is there. A byte record needs no
// source folder: TokenizerRecord{"byte", 256} is enough.
void copy_tokenizer_record(const TokenizerRecord& record, const std::string& folder);

}  // namespace edit::data
