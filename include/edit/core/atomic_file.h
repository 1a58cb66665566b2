// Writing a file so that a crash, a full disk or a kill leaves either the old file or the new
// one, never a mix: the bytes go to `path.tmp`, are fsynced, then renamed over `path`, and the
// folder is fsynced so the rename itself survives a power loss.
#pragma once

#include <cstddef>
#include <string>

namespace edit {

// Throws edit::Error naming the file and the cause (a full disk, a missing or read-only folder).
// On failure `path` is untouched and the temporary file is removed.
void write_file_atomically(const std::string& path, const void* data, std::size_t size);
inline void write_file_atomically(const std::string& path, const std::string& text) {
  write_file_atomically(path, text.data(), text.size());
}

}  // namespace edit
