// llm.c token shards (docs/architecture.md, data/), the formats of karpathy/llm.c's dev/data scripts:
//   bytes [0, 1024):  256 little-endian int32: [0] magic, [1] version, [2] token count n
//   GPT-2:    magic 20240520, version 1, then n little-endian uint16 token ids
//   llama 3:  magic 20240801, version 7, then n little-endian uint32 token ids
// edit-prepare-text writes the GPT-2 layout; training reads both.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace edit::data {

inline constexpr std::int32_t kTokenFileMagic = 20240520;
inline constexpr std::int32_t kTokenFileVersion = 1;
inline constexpr std::int32_t kTokenFileMagicU32 = 20240801;  // llama 3: uint32 tokens
inline constexpr std::int32_t kTokenFileVersionU32 = 7;
inline constexpr std::int64_t kTokenFileHeaderInts = 256;
inline constexpr std::int64_t kTokenFileHeaderBytes = kTokenFileHeaderInts * 4;
// The header stores the count in an int32.
inline constexpr std::int64_t kTokenFileMaxTokens = 2147483647;

// Writes `tokens` to `path` atomically: path + ".tmp" is written, fsynced, then renamed over
// `path`, so a reader never sees half a shard. Throws edit::Error on I/O failure.
void write_token_file(const std::string& path, const std::vector<std::uint16_t>& tokens);

// Throws edit::Error naming `path`, its role `what` ("token file", "text file", ...) and its type
// unless it is a regular file or a symbolic link to one. Call it before opening a data file:
// opening a FIFO blocks until some writer appears (forever, in a training job), and a directory,
// socket or device is not a data file however it was matched.
void check_regular_file(const std::string& path, const std::string& what);

// Reads and validates a whole shard. Throws edit::Error, naming the file, the byte offset and the
// fix, when the file is shorter than the header, has the wrong magic or version, its size
// disagrees with the token count (truncated or trailing bytes), a token id is >= vocab_size
// (1 to 65536), or the path is not a regular file (check_regular_file).
// Only the GPT-2 layout (uint16); a llama-3 shard is read through MappedTokenFile.
std::vector<std::uint16_t> read_token_file(const std::string& path, int vocab_size = 65536);

// A token shard (or a raw text file, one byte per token) mapped read-only into memory. Pages are
// read from disk when first touched and the kernel may drop them again, so a corpus far larger
// than RAM trains without being loaded. Opening checks the header and the size; the token ids are
// checked against the vocabulary as they are copied out (copy) or all at once (check_tokens).
class MappedTokenFile {
 public:
  // An llm.c shard, either layout. Throws edit::Error as read_token_file does.
  static MappedTokenFile open_shard(const std::string& path);
  // A raw text file: its bytes are the tokens (the byte tokenizer).
  static MappedTokenFile open_text(const std::string& path);
  MappedTokenFile(MappedTokenFile&& other) noexcept;
  MappedTokenFile& operator=(MappedTokenFile&& other) noexcept;
  MappedTokenFile(const MappedTokenFile&) = delete;
  MappedTokenFile& operator=(const MappedTokenFile&) = delete;
  ~MappedTokenFile();

  const std::string& path() const { return path_; }
  std::int64_t size() const { return count_; }         // tokens
  int token_bytes() const { return width_; }           // 1 (text), 2 (GPT-2) or 4 (llama 3)
  // Tokens [begin, begin + count) as int64 into `out`; throws naming the file, the index and the
  // byte offset when one is >= vocab_size.
  void copy(std::int64_t begin, std::int64_t count, std::int64_t* out, std::int64_t vocab_size) const;
  // Checks every token against vocab_size in one pass, handing each chunk's pages back to the
  // kernel after reading it, so the check does not keep the file in this process's memory.
  void check_tokens(std::int64_t vocab_size) const;

 private:
  MappedTokenFile() = default;
  void map(const std::string& path, const char* what);
  [[noreturn]] void fail_token(std::int64_t index, std::int64_t token, std::int64_t vocab_size) const;
  std::string path_;
  const unsigned char* base_ = nullptr;  // the whole file
  std::size_t length_ = 0;
  std::int64_t offset_ = 0;  // of the first token
  int width_ = 2;
  std::int64_t count_ = 0;
};

}  // namespace edit::data
