// Byte-level tokenizer: token id = byte value (vocab 256). No merges, no special tokens: any file
// is valid input, which is what a demo corpus (fortunes) and the tests need.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace edit::data {

class ByteTokenizer {
 public:
  static constexpr int kVocabSize = 256;

  int vocab_size() const { return kVocabSize; }
  std::vector<std::uint16_t> encode(std::string_view text) const;
  // Throws edit::Error for an id >= 256 (naming its index): it did not come from this tokenizer.
  std::string decode(const std::vector<std::uint16_t>& tokens) const;
};

}  // namespace edit::data
