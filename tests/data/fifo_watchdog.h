// A FIFO that a data reader must refuse to open. If a reader opens it anyway and blocks waiting
// for a writer, a watchdog thread opens the write end after `deadline` and closes it again, so
// the reader sees end of file: the test then fails on its time bound instead of hanging until
// ctest kills it.
#pragma once

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <stdexcept>
#include <string>
#include <thread>

namespace edit::testing_support {

class FifoWatchdog {
 public:
  explicit FifoWatchdog(std::string path, std::chrono::milliseconds deadline = std::chrono::seconds(5))
      : path_(std::move(path)) {
    if (::mkfifo(path_.c_str(), 0644) != 0) throw std::runtime_error("mkfifo failed for " + path_);
    thread_ = std::thread([this, deadline] {
      const auto until = std::chrono::steady_clock::now() + deadline;
      while (!stop_ && std::chrono::steady_clock::now() < until) {
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
      }
      while (!stop_) {
        // Succeeds only while a reader has the FIFO open; closing gives that reader end of file.
        const int fd = ::open(path_.c_str(), O_WRONLY | O_NONBLOCK | O_CLOEXEC);
        if (fd >= 0) ::close(fd);
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
      }
    });
  }
  ~FifoWatchdog() {
    stop_ = true;
    thread_.join();
  }
  FifoWatchdog(const FifoWatchdog&) = delete;
  FifoWatchdog& operator=(const FifoWatchdog&) = delete;

  const std::string& path() const { return path_; }

 private:
  std::string path_;
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

}  // namespace edit::testing_support
