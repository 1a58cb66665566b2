#include "edit/data/token_file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <string>
#include <utility>

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
  const MappedTokenFile file = MappedTokenFile::open_shard(path);
  EDIT_CHECK(file.token_bytes() == 2, path, " holds llama-3 uint32 tokens; read it with TokenDataset (as "
             "edit-train-gpt does), which reads both layouts");
  std::vector<std::int64_t> wide(static_cast<std::size_t>(file.size()));
  file.copy(0, file.size(), wide.data(), vocab_size);
  return std::vector<std::uint16_t>(wide.begin(), wide.end());
}

// --- MappedTokenFile ------------------------------------------------------------------------------

void MappedTokenFile::map(const std::string& path, const char* what) {
  path_ = path;
  check_regular_file(path, what);
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  EDIT_CHECK(fd >= 0, "cannot open the ", what, " ", path, ": ", std::strerror(errno),
             "; check the path (or the --data pattern) and the permissions");
  struct stat info {};
  if (::fstat(fd, &info) != 0) {
    const int error = errno;
    ::close(fd);
    EDIT_FAIL("cannot inspect the ", what, " ", path, ": ", std::strerror(error));
  }
  length_ = static_cast<std::size_t>(info.st_size);
  if (length_ > 0) {
    void* mapped = ::mmap(nullptr, length_, PROT_READ, MAP_PRIVATE, fd, 0);
    const int error = errno;
    ::close(fd);
    EDIT_CHECK(mapped != MAP_FAILED, "cannot map the ", what, " ", path, " (", length_, " bytes) into memory: ",
               std::strerror(error), "; check the address-space limit (ulimit -v)");
    base_ = static_cast<const unsigned char*>(mapped);
  } else {
    ::close(fd);
  }
}

MappedTokenFile MappedTokenFile::open_shard(const std::string& path) {
  MappedTokenFile file;
  file.map(path, "token file");
  const auto size = static_cast<std::int64_t>(file.length_);
  const char* const fix = "; re-run edit-prepare-text (or llm.c's data script) to regenerate it";
  EDIT_CHECK(size >= kTokenFileHeaderBytes, path, ": the file has ", size, " bytes, fewer than the ",
             kTokenFileHeaderBytes, "-byte llm.c header (it ends at byte offset ", size,
             "); the file is empty or truncated", fix);
  const std::int32_t magic = get_le32(file.base_);
  EDIT_CHECK(magic == kTokenFileMagic || magic == kTokenFileMagicU32, path, ": bad magic ", magic,
             " at byte offset 0, expected ", kTokenFileMagic, " (GPT-2, uint16 tokens) or ", kTokenFileMagicU32,
             " (llama 3, uint32 tokens); this is not an llm.c token file (raw text needs format \"text\")", fix);
  const std::int32_t version = get_le32(file.base_ + 4);
  const std::int32_t expected_version = magic == kTokenFileMagic ? kTokenFileVersion : kTokenFileVersionU32;
  EDIT_CHECK(version == expected_version, path, ": unsupported version ", version, " at byte offset 4, expected ",
             expected_version, " for magic ", magic, " (version ", kTokenFileVersion, ": uint16 tokens after magic ",
             kTokenFileMagic, "; version ", kTokenFileVersionU32, ": uint32 tokens after magic ", kTokenFileMagicU32, ")",
             fix);
  file.width_ = magic == kTokenFileMagic ? 2 : 4;
  const std::int32_t count = get_le32(file.base_ + 8);
  EDIT_CHECK(count >= 0, path, ": negative token count ", count, " at byte offset 8", fix);
  const std::int64_t expected = kTokenFileHeaderBytes + file.width_ * static_cast<std::int64_t>(count);
  EDIT_CHECK(size >= expected, path, ": truncated: the header (byte offset 8) says ", count,
             " tokens, so the file should have ", expected, " bytes, but it ends at byte offset ", size, " (",
             (expected - size + file.width_ - 1) / file.width_, " tokens missing)", fix);
  EDIT_CHECK(size == expected, path, ": ", size - expected, " trailing bytes from byte offset ", expected,
             " on: the header (byte offset 8) says ", count, " tokens, i.e. ", expected, " bytes", fix);
  file.offset_ = kTokenFileHeaderBytes;
  file.count_ = count;
  return file;
}

MappedTokenFile MappedTokenFile::open_text(const std::string& path) {
  MappedTokenFile file;
  file.map(path, "text file");
  file.width_ = 1;
  file.offset_ = 0;
  file.count_ = static_cast<std::int64_t>(file.length_);
  return file;
}

MappedTokenFile::MappedTokenFile(MappedTokenFile&& other) noexcept { *this = std::move(other); }

MappedTokenFile& MappedTokenFile::operator=(MappedTokenFile&& other) noexcept {
  if (this != &other) {
    if (base_ != nullptr) ::munmap(const_cast<unsigned char*>(base_), length_);
    path_ = std::move(other.path_);
    base_ = std::exchange(other.base_, nullptr);
    length_ = std::exchange(other.length_, 0);
    offset_ = other.offset_;
    width_ = other.width_;
    count_ = std::exchange(other.count_, 0);
  }
  return *this;
}

MappedTokenFile::~MappedTokenFile() {
  if (base_ != nullptr) ::munmap(const_cast<unsigned char*>(base_), length_);
}

void MappedTokenFile::fail_token(std::int64_t index, std::int64_t token, std::int64_t vocab_size) const {
  EDIT_FAIL(path_, ": token id ", token, " at index ", index, " (byte offset ", offset_ + width_ * index,
            ") is >= the vocab size ", vocab_size, "; pass --vocab-size of the tokenizer that made the file, or ",
            "regenerate it with edit-prepare-text");
}

void MappedTokenFile::copy(std::int64_t begin, std::int64_t count, std::int64_t* out, std::int64_t vocab_size) const {
  EDIT_CHECK(begin >= 0 && count >= 0 && begin + count <= count_, "token range [", begin, ", ", begin + count,
             ") is outside ", path_, " (", count_, " tokens)");
  const unsigned char* at = base_ + offset_ + width_ * begin;
  // Little-endian on disk, assembled byte by byte so a big-endian host reads it right too.
  for (std::int64_t i = 0; i < count; ++i, at += width_) {
    std::int64_t token = at[0];
    if (width_ >= 2) token |= static_cast<std::int64_t>(at[1]) << 8;
    if (width_ == 4) token |= static_cast<std::int64_t>(at[2]) << 16 | static_cast<std::int64_t>(at[3]) << 24;
    if (token >= vocab_size) fail_token(begin + i, token, vocab_size);
    out[i] = token;
  }
}

void MappedTokenFile::check_tokens(std::int64_t vocab_size) const {
  const auto page = static_cast<std::int64_t>(::sysconf(_SC_PAGESIZE));
  constexpr std::int64_t kChunk = std::int64_t{1} << 20;  // tokens
  std::vector<std::int64_t> scratch(static_cast<std::size_t>(std::min(kChunk, count_)));
  for (std::int64_t begin = 0; begin < count_; begin += kChunk) {
    const std::int64_t count = std::min(kChunk, count_ - begin);
    copy(begin, count, scratch.data(), vocab_size);
    // Hand the chunk's whole pages back: they stay in the page cache, not in this process.
    const std::int64_t first = (offset_ + width_ * begin + page - 1) / page * page;
    const std::int64_t last = (offset_ + width_ * (begin + count)) / page * page;
    if (last > first) ::madvise(const_cast<unsigned char*>(base_) + first, static_cast<std::size_t>(last - first), MADV_DONTNEED);
  }
}

}  // namespace edit::data
