#include "edit/core/atomic_file.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>

#include "edit/core/check.h"

namespace edit {
namespace {

// Closes the descriptor on every path out, exceptions included.
struct FileDescriptor {
  int fd = -1;
  ~FileDescriptor() {
    if (fd >= 0) ::close(fd);
  }
};

}  // namespace

void write_file_atomically(const std::string& path, const void* data, std::size_t size) {
  const std::string tmp = path + ".tmp";
  try {
    FileDescriptor file;
    file.fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    EDIT_CHECK(file.fd >= 0, "cannot create ", tmp, ": ", std::strerror(errno),
               "; check that the folder exists and is writable");
    const auto* bytes = static_cast<const char*>(data);
    for (std::size_t done = 0; done < size;) {
      const ssize_t n = ::write(file.fd, bytes + done, size - done);
      if (n < 0 && errno == EINTR) continue;
      EDIT_CHECK(n > 0, "writing ", tmp, " failed: ", std::strerror(errno), "; is the disk full?");
      done += static_cast<std::size_t>(n);
    }
    // Data on disk before the rename makes it visible.
    EDIT_CHECK(::fsync(file.fd) == 0, "cannot fsync ", tmp, ": ", std::strerror(errno), "; is the disk full?");
    const int fd = file.fd;
    file.fd = -1;
    EDIT_CHECK(::close(fd) == 0, "cannot close ", tmp, ": ", std::strerror(errno), "; is the disk full?");
    EDIT_CHECK(std::rename(tmp.c_str(), path.c_str()) == 0, "cannot rename ", tmp, " to ", path, ": ",
               std::strerror(errno), "; check the permissions of the folder");
  } catch (...) {
    std::remove(tmp.c_str());
    throw;
  }
  // Persist the rename itself (the directory entry); best effort, some file systems refuse it.
  const auto slash = path.find_last_of('/');
  const std::string dir = slash == std::string::npos ? "." : (slash == 0 ? "/" : path.substr(0, slash));
  FileDescriptor dir_fd;
  dir_fd.fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir_fd.fd >= 0) ::fsync(dir_fd.fd);
}

}  // namespace edit
