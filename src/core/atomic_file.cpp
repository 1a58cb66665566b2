#include "edit/core/atomic_file.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>

#include "edit/core/check.h"

namespace edit {

AtomicFile::AtomicFile(std::string path) : path_(std::move(path)), tmp_(path_ + ".tmp") {
  fd_ = ::open(tmp_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  EDIT_CHECK(fd_ >= 0, "cannot create ", tmp_, ": ", std::strerror(errno), "; check that the folder exists and is writable");
}

AtomicFile::~AtomicFile() {
  if (fd_ >= 0) ::close(fd_);
  if (!committed_) ::unlink(tmp_.c_str());
}

void AtomicFile::write(const void* data, std::size_t size) {
  const auto* bytes = static_cast<const char*>(data);
  while (size > 0) {
    const ssize_t written = ::write(fd_, bytes, size);
    if (written < 0 && errno == EINTR) continue;
    EDIT_CHECK(written > 0, "writing ", tmp_, " (for ", path_, ") failed: ", std::strerror(errno), "; is the disk full?");
    bytes += written;
    size -= static_cast<std::size_t>(written);
  }
}

void AtomicFile::commit() {
  // Data on disk before the rename makes it visible.
  EDIT_CHECK(::fsync(fd_) == 0, "fsync of ", tmp_, " (for ", path_, ") failed: ", std::strerror(errno),
             "; is the disk full?");
  const int fd = fd_;
  fd_ = -1;
  EDIT_CHECK(::close(fd) == 0, "closing ", tmp_, " (for ", path_, ") failed: ", std::strerror(errno),
             "; is the disk full?");
  EDIT_CHECK(std::rename(tmp_.c_str(), path_.c_str()) == 0, "cannot rename ", tmp_, " to ", path_, ": ",
             std::strerror(errno), "; check the permissions of the folder");
  committed_ = true;
  // Persist the rename (the folder's entry); best effort, some file systems refuse it.
  const std::filesystem::path folder = std::filesystem::path(path_).parent_path();
  const int dir = ::open(folder.empty() ? "." : folder.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir >= 0) {
    ::fsync(dir);
    ::close(dir);
  }
}

}  // namespace edit
