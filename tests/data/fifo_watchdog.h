// A FIFO that a data reader must refuse to open. A watchdog thread tries the write end every
// 10 ms: that open succeeds only while a reader has the FIFO open (or waits in open() for a
// writer), so it records that a reader opened it, and closes again, which releases the reader
// with end of file. A test asserts !reader_opened() rather than a time bound, and a reader that
// does open the FIFO never hangs the test.
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
  explicit FifoWatchdog(std::string path) : path_(std::move(path)) {
    if (::mkfifo(path_.c_str(), 0644) != 0) throw std::runtime_error("mkfifo failed for " + path_);
    thread_ = std::thread([this] {
      while (!stop_) {
        const int fd = ::open(path_.c_str(), O_WRONLY | O_NONBLOCK | O_CLOEXEC);
        if (fd >= 0) {
          reader_opened_ = true;
          ::close(fd);
        }
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
  // Whether a reader had the FIFO open while the watchdog looked (every 10 ms).
  bool reader_opened() const { return reader_opened_; }

 private:
  std::string path_;
  std::atomic<bool> stop_{false};
  std::atomic<bool> reader_opened_{false};
  std::thread thread_;
};

}  // namespace edit::testing_support
