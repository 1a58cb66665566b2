#include "edit/data/token_file.h"

#include <gtest/gtest.h>

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "edit/core/check.h"
#include "edit/data/byte_tokenizer.h"
#include "fifo_watchdog.h"
#include "temp_dir.h"

namespace {

using edit::data::read_token_file;
using edit::data::write_token_file;
using edit::testing_support::FifoWatchdog;
using edit::testing_support::read_bytes;
using edit::testing_support::TempDir;
using edit::testing_support::write_bytes;

std::string le32(std::int32_t value) {
  std::string out(4, '\0');
  for (int i = 0; i < 4; ++i)
    out[i] = static_cast<char>((static_cast<std::uint32_t>(value) >> (8 * i)) & 0xff);
  return out;
}

// A 1024-byte llm.c header with the given fields, then `body`.
std::string shard_bytes(std::int32_t magic, std::int32_t version, std::int32_t count,
                        const std::string& body) {
  std::string header = le32(magic) + le32(version) + le32(count);
  header.resize(1024, '\0');
  return header + body;
}

// Runs read_token_file on `bytes` and returns the error message (empty: no error).
std::string read_error(const TempDir& dir, const std::string& bytes, int vocab = 65536) {
  const std::string path = dir.file("bad.bin");
  write_bytes(path, bytes);
  try {
    read_token_file(path, vocab);
  } catch (const edit::Error& e) {
    return e.what();
  }
  return "";
}

void expect_contains(const std::string& what, const std::string& part) {
  EXPECT_NE(what.find(part), std::string::npos) << "expected \"" << part << "\" in: " << what;
}

TEST(TokenFile, RoundTripKeepsEveryTokenAndTheLlmcLayout) {
  TempDir dir;
  const std::string path = dir.file("shard.bin");
  std::vector<std::uint16_t> tokens;
  for (int i = 0; i < 1000; ++i) tokens.push_back(static_cast<std::uint16_t>((i * 7919) % 65536));
  tokens.push_back(65535);
  write_token_file(path, tokens);
  EXPECT_EQ(read_token_file(path), tokens);

  // Byte for byte what llm.c writes: little-endian header ints, then little-endian uint16.
  const std::string bytes = read_bytes(path);
  ASSERT_EQ(bytes.size(), 1024 + 2 * tokens.size());
  EXPECT_EQ(bytes.substr(0, 12), le32(20240520) + le32(1) + le32(static_cast<std::int32_t>(tokens.size())));
  EXPECT_EQ(bytes.substr(12, 1012), std::string(1012, '\0'));
  EXPECT_EQ(static_cast<unsigned char>(bytes[1024 + 2 * 1000]), 0xff);
  EXPECT_EQ(static_cast<unsigned char>(bytes[1024 + 2 * 1]), 7919 & 0xff);
  EXPECT_EQ(static_cast<unsigned char>(bytes[1024 + 2 * 1 + 1]), 7919 >> 8);
  // Atomic write: no temporary is left behind.
  EXPECT_FALSE(std::filesystem::exists(path + ".tmp"));
}

TEST(TokenFile, EmptyShardAndOverwriteRoundTrip) {
  TempDir dir;
  const std::string path = dir.file("shard.bin");
  write_token_file(path, {1, 2, 3});
  write_token_file(path, {});
  EXPECT_TRUE(read_token_file(path).empty());
}

TEST(TokenFile, ShortHeaderNamesFileAndOffset) {
  TempDir dir;
  const std::string what = read_error(dir, std::string(100, '\0'));
  expect_contains(what, dir.file("bad.bin"));
  expect_contains(what, "100 bytes, fewer than the 1024-byte");
  expect_contains(what, "byte offset 100");
  expect_contains(what, "re-run edit-prepare-text");
}

TEST(TokenFile, WrongMagicNamesFileAndOffset) {
  TempDir dir;
  const std::string what = read_error(dir, shard_bytes(12345, 1, 0, ""));
  expect_contains(what, dir.file("bad.bin"));
  expect_contains(what, "bad magic 12345 at byte offset 0");
  expect_contains(what, "re-run edit-prepare-text");
}

TEST(TokenFile, WrongVersionNamesFileAndOffset) {
  TempDir dir;
  const std::string what = read_error(dir, shard_bytes(20240520, 2, 0, ""));
  expect_contains(what, dir.file("bad.bin"));
  expect_contains(what, "unsupported version 2 at byte offset 4");
}

TEST(TokenFile, TruncatedFileNamesFileAndOffset) {
  TempDir dir;
  // The header promises 10 tokens (20 bytes); 7 bytes follow, so the file ends at byte 1031.
  const std::string what = read_error(dir, shard_bytes(20240520, 1, 10, std::string(7, '\1')));
  expect_contains(what, dir.file("bad.bin"));
  expect_contains(what, "truncated");
  expect_contains(what, "says 10 tokens");
  expect_contains(what, "should have 1044 bytes");
  expect_contains(what, "ends at byte offset 1031");
}

TEST(TokenFile, TrailingBytesNameFileAndOffset) {
  TempDir dir;
  const std::string what = read_error(dir, shard_bytes(20240520, 1, 2, std::string(4 + 3, '\0')));
  expect_contains(what, dir.file("bad.bin"));
  expect_contains(what, "3 trailing bytes from byte offset 1028");
}

TEST(TokenFile, TokenAtOrAboveVocabNamesIndexAndOffset) {
  TempDir dir;
  // Tokens 5, 49, 50: with vocab 50 the third (index 2, byte offset 1024 + 4) is out of range.
  const std::string body = std::string("\x05\x00\x31\x00\x32\x00", 6);
  EXPECT_EQ(read_error(dir, shard_bytes(20240520, 1, 3, body), 51), "");
  const std::string what = read_error(dir, shard_bytes(20240520, 1, 3, body), 50);
  expect_contains(what, dir.file("bad.bin"));
  expect_contains(what, "token id 50 at index 2 (byte offset 1028) is >= the vocab size 50");
  expect_contains(what, "--vocab-size");
}

TEST(TokenFile, MissingFileAndBadVocabAreErrors) {
  TempDir dir;
  try {
    read_token_file(dir.file("missing.bin"));
    FAIL() << "no error for a missing file";
  } catch (const edit::Error& e) {
    expect_contains(e.what(), dir.file("missing.bin"));
  }
  EXPECT_THROW(read_token_file(dir.file("missing.bin"), 0), edit::Error);
  EXPECT_THROW(read_token_file(dir.file("missing.bin"), 65537), edit::Error);
}

TEST(TokenFile, FifoDirectoryAndDeviceAreRefusedWithoutOpening) {
  TempDir dir;
  FifoWatchdog fifo(dir.file("pipe.bin"));
  try {
    read_token_file(fifo.path());
    FAIL() << "no error for a FIFO";
  } catch (const edit::Error& e) {
    expect_contains(e.what(), "token file " + fifo.path() + " is a FIFO");
  }
  EXPECT_FALSE(fifo.reader_opened()) << "refused without opening it (an open blocks until a writer comes)";

  std::filesystem::create_directory(dir.file("folder.bin"));
  try {
    read_token_file(dir.file("folder.bin"));
    FAIL() << "no error for a directory";
  } catch (const edit::Error& e) {
    expect_contains(e.what(), dir.file("folder.bin") + " is a directory");
  }
  if (std::filesystem::exists("/dev/null")) {
    try {
      read_token_file("/dev/null");
      FAIL() << "no error for a device";
    } catch (const edit::Error& e) {
      expect_contains(e.what(), "/dev/null is a character device");
    }
  }
}

TEST(TokenFile, WriteIntoMissingFolderIsAnError) {
  TempDir dir;
  try {
    write_token_file(dir.file("no/such/folder/x.bin"), {1});
    FAIL() << "no error";
  } catch (const edit::Error& e) {
    expect_contains(e.what(), "x.bin.tmp");
  }
}

TEST(ByteTokenizer, EncodeDecodeRoundTripsEveryByte) {
  const edit::data::ByteTokenizer tokenizer;
  std::string text;
  for (int b = 0; b < 256; ++b) text.push_back(static_cast<char>(b));
  text += "hello, world\n";
  const std::vector<std::uint16_t> tokens = tokenizer.encode(text);
  ASSERT_EQ(tokens.size(), text.size());
  EXPECT_EQ(tokens[0], 0);
  EXPECT_EQ(tokens[200], 200);  // bytes >= 128 stay positive
  EXPECT_EQ(tokens[256], 'h');
  EXPECT_EQ(tokenizer.decode(tokens), text);
  EXPECT_EQ(tokenizer.vocab_size(), 256);
}

TEST(ByteTokenizer, DecodeRejectsNonByteIds) {
  const edit::data::ByteTokenizer tokenizer;
  try {
    tokenizer.decode({65, 300});
    FAIL() << "no error";
  } catch (const edit::Error& e) {
    expect_contains(e.what(), "token id 300 at index 1");
  }
}

}  // namespace
