#include "edit/data/token_file.h"

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>

#include "edit/core/atomic_file.h"
#include "edit/core/check.h"

namespace edit::data {
namespace {

// The format is little-endian on disk; these keep it so on a big-endian host as well.
void put_le32(unsigned char* out, std::int32_t value) {
  const auto bits = static_cast<std::uint32_t>(value);
  for (int i = 0; i < 4; ++i) out[i] = static_cast<unsigned char>(bits >> (8 * i));
}

std::int32_t get_le32(const unsigned char* in) {
  std::uint32_t bits = 0;
  for (int i = 0; i < 4; ++i) bits |= static_cast<std::uint32_t>(in[i]) << (8 * i);
  return static_cast<std::int32_t>(bits);
}

const char* type_name(std::filesystem::file_type type) {
  switch (type) {
    case std::filesystem::file_type::directory:
      return "a directory";
    case std::filesystem::file_type::fifo:
      return "a FIFO (named pipe)";
    case std::filesystem::file_type::socket:
      return "a socket";
    case std::filesystem::file_type::character:
      return "a character device";
    case std::filesystem::file_type::block:
      return "a block device";
    case std::filesystem::file_type::symlink:
      return "a symbolic link";
    default:
      return "of an unknown type";
  }
}

}  // namespace

void check_regular_file(const std::string& path, const std::string& what) {
  std::error_code ec;
  const std::filesystem::file_status status = std::filesystem::status(path, ec);  // follows links
  EDIT_CHECK(status.type() != std::filesystem::file_type::not_found, "the ", what, " ", path,
             " does not exist (or is a broken symbolic link); check the path");
  EDIT_CHECK(!ec, "cannot inspect the ", what, " ", path, ": ", ec.message(),
             "; check the path and the permissions of its folders");
  EDIT_CHECK(status.type() == std::filesystem::file_type::regular, "the ", what, " ", path, " is ",
             type_name(status.type()), ", not a regular file; pass regular files only (reading a FIFO or ",
             "a device would block or never end)");
}

void write_token_file(const std::string& path, const std::vector<std::uint16_t>& tokens) {
  const auto count = static_cast<std::int64_t>(tokens.size());
  EDIT_CHECK(count <= kTokenFileMaxTokens, "cannot write ", count, " tokens to ", path,
             ": the llm.c header stores the count in an int32 (at most ", kTokenFileMaxTokens,
             "); split the tokens over several shards");
  std::vector<unsigned char> bytes(static_cast<std::size_t>(kTokenFileHeaderBytes + 2 * count), 0);
  put_le32(bytes.data(), kTokenFileMagic);
  put_le32(bytes.data() + 4, kTokenFileVersion);
  put_le32(bytes.data() + 8, static_cast<std::int32_t>(count));
  unsigned char* body = bytes.data() + kTokenFileHeaderBytes;
  for (std::size_t i = 0; i < tokens.size(); ++i) {
    body[2 * i] = static_cast<unsigned char>(tokens[i] & 0xff);
    body[2 * i + 1] = static_cast<unsigned char>(tokens[i] >> 8);
  }

  // A crash leaves the old file or the new one, never a torn shard.
  write_file_atomically(path, bytes.data(), bytes.size());
}

std::vector<std::uint16_t> read_token_file(const std::string& path, int vocab_size) {
  EDIT_CHECK(vocab_size >= 1 && vocab_size <= 65536, "vocab size ", vocab_size, " for ", path,
             " is outside 1..65536, the range of uint16 token ids; pass the tokenizer's vocab size");
  check_regular_file(path, "token file");
  std::ifstream in(path, std::ios::binary | std::ios::ate);
  EDIT_CHECK(in.good(), "cannot open the token file ", path, ": ", std::strerror(errno),
             "; check the path (or the --data pattern) and the permissions");
  const std::int64_t size = static_cast<std::int64_t>(in.tellg());
  in.seekg(0);

  const char* const fix = "; re-run edit-prepare-text (or llm.c's data script) to regenerate it";
  EDIT_CHECK(size >= kTokenFileHeaderBytes, path, ": the file has ", size, " bytes, fewer than the ",
             kTokenFileHeaderBytes, "-byte llm.c header (it ends at byte offset ", size,
             "); the file is empty or truncated", fix);
  unsigned char header[kTokenFileHeaderBytes];
  in.read(reinterpret_cast<char*>(header), kTokenFileHeaderBytes);
  EDIT_CHECK(in.good(), "cannot read the header of ", path, ": ", std::strerror(errno), fix);

  const std::int32_t magic = get_le32(header);
  EDIT_CHECK(magic == kTokenFileMagic, path, ": bad magic ", magic, " at byte offset 0, expected ",
             kTokenFileMagic, "; this is not an llm.c token file (raw text needs format \"text\")", fix);
  const std::int32_t version = get_le32(header + 4);
  EDIT_CHECK(version == kTokenFileVersion, path, ": unsupported version ", version,
             " at byte offset 4, expected ", kTokenFileVersion,
             " (uint16 tokens; version 2 holds llama-3 uint32 tokens, which libedit does not read)", fix);
  const std::int32_t count = get_le32(header + 8);
  EDIT_CHECK(count >= 0, path, ": negative token count ", count, " at byte offset 8", fix);
  const std::int64_t expected = kTokenFileHeaderBytes + 2 * static_cast<std::int64_t>(count);
  EDIT_CHECK(size >= expected, path, ": truncated: the header (byte offset 8) says ", count,
             " tokens, so the file should have ", expected, " bytes, but it ends at byte offset ", size, " (",
             (expected - size + 1) / 2, " tokens missing)", fix);
  EDIT_CHECK(size == expected, path, ": ", size - expected, " trailing bytes from byte offset ", expected,
             " on: the header (byte offset 8) says ", count, " tokens, i.e. ", expected, " bytes", fix);

  std::vector<unsigned char> body(static_cast<std::size_t>(2 * static_cast<std::int64_t>(count)));
  in.read(reinterpret_cast<char*>(body.data()), static_cast<std::streamsize>(body.size()));
  EDIT_CHECK(in.good() || body.empty(), "cannot read the tokens of ", path, " (from byte offset ",
             kTokenFileHeaderBytes, "): ", std::strerror(errno), fix);
  std::vector<std::uint16_t> tokens(static_cast<std::size_t>(count));
  for (std::size_t i = 0; i < tokens.size(); ++i) {
    const auto token = static_cast<std::uint16_t>(body[2 * i] | (body[2 * i + 1] << 8));
    EDIT_CHECK(token < vocab_size, path, ": token id ", token, " at index ", i, " (byte offset ",
               kTokenFileHeaderBytes + 2 * static_cast<std::int64_t>(i), ") is >= the vocab size ",
               vocab_size, "; pass --vocab-size of the tokenizer that made the file, or regenerate it",
               " with edit-prepare-text");
    tokens[i] = token;
  }
  return tokens;
}

}  // namespace edit::data
