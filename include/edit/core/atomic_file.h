// Writing a file so that a crash, a full disk or a kill leaves either the old file or the new
// one, never a mix: the bytes go to `path.tmp`, are fsynced, then renamed over `path`, and the
// folder is fsynced so the rename itself survives a power loss. Checkpoint manifests, token
// shards, safetensors exports and a run's config.json are all written this way.
#pragma once

#include <cstddef>
#include <string>

namespace edit {

// Streams into path + ".tmp"; commit() makes it `path`. Every write, the fsync and the close are
// checked (a full disk often shows only at the close) and throw edit::Error naming the file. If
// commit() is never reached, the temporary is removed and `path` is as it was.
class AtomicFile {
 public:
  explicit AtomicFile(std::string path);
  ~AtomicFile();
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;

  void write(const void* data, std::size_t size);
  void commit();

 private:
  std::string path_, tmp_;
  int fd_ = -1;
  bool committed_ = false;
};

inline void write_file_atomically(const std::string& path, const void* data, std::size_t size) {
  AtomicFile file(path);
  file.write(data, size);
  file.commit();
}
inline void write_file_atomically(const std::string& path, const std::string& text) {
  write_file_atomically(path, text.data(), text.size());
}

}  // namespace edit
