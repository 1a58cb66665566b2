// llm.c token shards (DESIGN.md section 7), the format of karpathy/llm.c's dev/data scripts:
//   bytes [0, 1024):  256 little-endian int32: [0] magic 20240520, [1] version 1, [2] token count n
//   bytes [1024, 1024 + 2n):  n little-endian uint16 token ids
// Version 2 (uint32 tokens, llama 3) is not supported: every tokenizer here fits in 16 bits.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace edit::data {

inline constexpr std::int32_t kTokenFileMagic = 20240520;
inline constexpr std::int32_t kTokenFileVersion = 1;
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
std::vector<std::uint16_t> read_token_file(const std::string& path, int vocab_size = 65536);

}  // namespace edit::data
