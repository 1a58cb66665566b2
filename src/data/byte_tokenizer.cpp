#include "edit/data/byte_tokenizer.h"

#include "edit/core/check.h"

namespace edit::data {

std::vector<std::uint16_t> ByteTokenizer::encode(std::string_view text) const {
  std::vector<std::uint16_t> tokens(text.size());
  for (std::size_t i = 0; i < text.size(); ++i) {
    tokens[i] = static_cast<unsigned char>(text[i]);  // through unsigned char: bytes >= 128 stay positive
  }
  return tokens;
}

std::string ByteTokenizer::decode(const std::vector<std::uint16_t>& tokens) const {
  std::string text(tokens.size(), '\0');
  for (std::size_t i = 0; i < tokens.size(); ++i) {
    EDIT_CHECK(tokens[i] < kVocabSize, "token id ", tokens[i], " at index ", i,
               " is not a byte (the byte tokenizer's vocab is ", kVocabSize,
               "); decode it with the tokenizer that produced it");
    text[i] = static_cast<char>(static_cast<unsigned char>(tokens[i]));
  }
  return text;
}

}  // namespace edit::data
