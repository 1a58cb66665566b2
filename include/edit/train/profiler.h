// Where a training step's time goes: LibTorch's profiler over a window of steps, summarized.
//
// Built on the Kineto profiler that LibTorch 1.13 and 2.x both ship. It records every ATen op the
// host runs, and on a CUDA build every kernel, copy and fill the device runs. The summary answers
// the two questions an MFU figure leaves open:
//   - Is the device kept busy? device_busy_us is the union of the device's activity intervals, so
//     a GPU busy well under the window's wall clock waits on the host (launches, host reads).
//   - What keeps it busy? Each kernel is put in a kind (matmul, attention, elementwise, ...): time
//     outside matmul and attention is what fusion could win back.
// Host ops are ranked by self time (their children's time taken out), so nested ops are not
// counted twice. The phases of a step (edit::forward, edit::backward, edit::sync, ..., marked with
// edit::ProfileScope) are reported with their whole time. On a 2.x build the Chrome trace is
// written too (chrome://tracing, Perfetto).
#pragma once

#include <c10/core/Device.h>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace edit::train {

struct ProfileEntry {
  std::string name;  // the op (host) or kernel (device) name
  std::string kind;  // kernel_kind() on the device; "host" for host ops
  bool on_device = false;
  std::int64_t calls = 0;
  double total_us = 0.0;  // device: kernel time; host: self time
};

struct ProfileSummary {
  std::int64_t first_step = 0;
  std::int64_t steps = 0;
  double wall_us = 0.0;         // the window, the device synchronized at both ends
  double device_busy_us = 0.0;  // union of device activity; 0 where nothing ran on a device
  double host_us = 0.0;         // sum of host ops' self time
  std::vector<ProfileEntry> entries;  // descending total_us
  // The step's phases (ProfileScope spans named "edit::...", kind "phase"), each with its whole
  // time, nested work included, descending. Phases may nest: EDiT's sync runs inside the forward.
  std::vector<ProfileEntry> phases;
  std::string trace_path;             // the Chrome trace, where this LibTorch wrote one; else empty

  // Device time per kind, descending.
  std::vector<std::pair<std::string, double>> device_kinds() const;
};

// The kind of a device kernel, from its name: matmul, attention, norm, softmax/loss, optimizer,
// embedding, reduction, elementwise, copy, communication, or other.
std::string kernel_kind(const std::string& name);

// Length of the union of [begin, end) intervals (in any order, overlapping or not).
double union_length(std::vector<std::pair<double, double>> intervals);

// Self time of each interval: its length minus that of the intervals directly nested in it. The
// intervals of one thread nest or are disjoint (a call stack); `thread` tells the stacks apart.
struct TimedCall {
  std::uint64_t thread = 0;
  double begin = 0.0, end = 0.0;
};
std::vector<double> self_times(const std::vector<TimedCall>& calls);

// Profiles what this thread (and the autograd threads it starts) runs between start() and stop().
// One window at a time per process.
class StepProfiler {
 public:
  explicit StepProfiler(c10::Device device);
  ~StepProfiler();
  StepProfiler(const StepProfiler&) = delete;
  StepProfiler& operator=(const StepProfiler&) = delete;

  void start();
  // Ends the window (waits for the device first) and summarizes it. `trace_path`: where the
  // Chrome trace goes, empty for none.
  ProfileSummary stop(std::int64_t first_step, std::int64_t steps, const std::string& trace_path = "");
  bool running() const { return running_; }

 private:
  c10::Device device_;
  bool running_ = false;
  double started_us_ = 0.0;
};

// A readable report: the phases, the busy fraction, time per kind, and the `top` costliest device
// kernels and host ops, per step.
std::string format_profile(const ProfileSummary& summary, std::size_t top = 15);
// Every phase and entry: name, kind, where (phase, device or host), calls, total_us, us_per_step.
void write_profile_csv(const ProfileSummary& summary, const std::string& path);

}  // namespace edit::train
