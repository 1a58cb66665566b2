#include "edit/train/profiler.h"

#include <torch/csrc/autograd/profiler_kineto.h>

#include <fmt/format.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <map>
#include <numeric>
#include <set>

#include "edit/core/check.h"
#include "edit/core/device.h"

namespace edit::train {

namespace {

namespace kineto = torch::autograd::profiler;
namespace impl = torch::profiler::impl;

// Newer LibTorch reports event times in nanoseconds (startNs, durationNs), 1.13 and early 2.x in
// microseconds; whichever this one has.
template <typename Event>
auto start_us(const Event& e, int) -> decltype(e.startNs(), double()) {
  return static_cast<double>(e.startNs()) * 1e-3;
}
template <typename Event>
double start_us(const Event& e, long) {
  return static_cast<double>(e.startUs());
}
template <typename Event>
auto duration_us(const Event& e, int) -> decltype(e.durationNs(), double()) {
  return static_cast<double>(e.durationNs()) * 1e-3;
}
template <typename Event>
double duration_us(const Event& e, long) {
  return static_cast<double>(e.durationUs());
}

double now_us() {
  return std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

bool contains(const std::string& haystack, std::initializer_list<const char*> needles) {
  return std::any_of(needles.begin(), needles.end(),
                     [&](const char* needle) { return haystack.find(needle) != std::string::npos; });
}

std::string shorten(const std::string& name, std::size_t width) {
  std::string flat = name;
  std::replace(flat.begin(), flat.end(), '|', '/');  // a markdown cell
  return flat.size() <= width ? flat : flat.substr(0, width - 3) + "...";
}

std::string csv_field(const std::string& text) {
  std::string quoted = "\"";
  for (char ch : text) quoted += ch == '"' ? std::string("\"\"") : std::string(1, ch);
  return quoted + "\"";
}

}  // namespace

std::string kernel_kind(const std::string& name) {
  std::string n = name;
  std::transform(n.begin(), n.end(), n.begin(), [](unsigned char ch) { return static_cast<char>(std::tolower(ch)); });
  // First match wins: flash-attention kernels are built from CUTLASS too, so attention is tested
  // before matmul; a dtype cast is a copy kernel, not elementwise arithmetic.
  if (contains(n, {"nccl"})) return "communication";
  if (contains(n, {"flash", "fmha", "attention", "sdpa"})) return "attention";
  if (contains(n, {"gemm", "cutlass", "xmma", "nvjet", "cublas", "wgmma", "sm90_", "sm80_"})) return "matmul";
  if (contains(n, {"layer_norm", "layernorm", "rms_norm", "rmsnorm", "gammabeta"})) return "norm";
  if (contains(n, {"softmax", "nll_loss", "cross_entropy"})) return "softmax/loss";
  if (contains(n, {"multi_tensor", "adam"})) return "optimizer";
  if (contains(n, {"embedding"})) return "embedding";
  if (contains(n, {"memcpy", "memset", "copy_kernel", "catarray", "fill_kernel"})) return "copy";
  if (contains(n, {"reduce"})) return "reduction";
  if (contains(n, {"elementwise", "vectorized", "unrolled"})) return "elementwise";
  return "other";
}

double union_length(std::vector<std::pair<double, double>> intervals) {
  std::sort(intervals.begin(), intervals.end());
  double total = 0.0, begin = 0.0, end = 0.0;
  bool open = false;
  for (const auto& [b, e] : intervals) {
    if (e <= b) continue;
    if (open && b <= end) {
      end = std::max(end, e);
      continue;
    }
    if (open) total += end - begin;
    begin = b;
    end = e;
    open = true;
  }
  if (open) total += end - begin;
  return total;
}

std::vector<double> self_times(const std::vector<TimedCall>& calls) {
  std::vector<double> self(calls.size());
  std::vector<std::size_t> order(calls.size());
  std::iota(order.begin(), order.end(), 0);
  // By thread, then outer calls before the calls they contain.
  std::sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) {
    const TimedCall &x = calls[a], &y = calls[b];
    if (x.thread != y.thread) return x.thread < y.thread;
    if (x.begin != y.begin) return x.begin < y.begin;
    return x.end > y.end;
  });
  std::vector<std::size_t> stack;
  for (std::size_t i : order) {
    const TimedCall& call = calls[i];
    self[i] = std::max(0.0, call.end - call.begin);
    while (!stack.empty() &&
           (calls[stack.back()].thread != call.thread || calls[stack.back()].end <= call.begin)) {
      stack.pop_back();
    }
    if (!stack.empty()) {
      // Host and device clocks are aligned only approximately: a call that overhangs its parent
      // is charged to the parent up to the parent's end.
      const std::size_t parent = stack.back();
      self[parent] -= std::max(0.0, std::min(call.end, calls[parent].end) - call.begin);
    }
    stack.push_back(i);
  }
  for (double& s : self) s = std::max(0.0, s);
  return self;
}

std::vector<std::pair<std::string, double>> ProfileSummary::device_kinds() const {
  std::map<std::string, double> by_kind;
  for (const auto& e : entries)
    if (e.on_device) by_kind[e.kind] += e.total_us;
  std::vector<std::pair<std::string, double>> kinds(by_kind.begin(), by_kind.end());
  std::stable_sort(kinds.begin(), kinds.end(), [](const auto& a, const auto& b) { return a.second > b.second; });
  return kinds;
}

StepProfiler::StepProfiler(c10::Device device) : device_(device) {}

StepProfiler::~StepProfiler() {
  if (!running_) return;
  try {
    kineto::disableProfiler();
  } catch (...) {  // a destructor during unwinding: the window is lost, the error that ended it is not
  }
}

void StepProfiler::start() {
  EDIT_CHECK(!running_, "the profiler is already running; stop() its window before starting another");
  std::set<impl::ActivityType> activities{impl::ActivityType::CPU};
  if (device_.is_cuda()) activities.insert(impl::ActivityType::CUDA);
  const impl::ProfilerConfig config(impl::ProfilerState::KINETO);
  synchronize(device_);  // the window holds only work queued inside it
  kineto::prepareProfiler(config, activities);
  kineto::enableProfiler(config, activities);
  running_ = true;
  started_us_ = now_us();
}

ProfileSummary StepProfiler::stop(std::int64_t first_step, std::int64_t steps, const std::string& trace_path) {
  EDIT_CHECK(running_, "the profiler is not running; call start() first");
  synchronize(device_);
  const double wall_us = now_us() - started_us_;
  const std::unique_ptr<kineto::ProfilerResult> result = kineto::disableProfiler();
  running_ = false;

  ProfileSummary summary;
  summary.first_step = first_step;
  summary.steps = steps;
  summary.wall_us = wall_us;
  std::vector<TimedCall> host_calls;
  std::vector<const kineto::KinetoEvent*> host_events;
  std::vector<std::pair<double, double>> device_intervals;
  std::map<std::pair<std::string, bool>, ProfileEntry> by_name;
  for (const auto& event : result->events()) {
    const double begin = start_us(event, 0), length = duration_us(event, 0);
    if (event.deviceType() == c10::DeviceType::CPU) {
      host_calls.push_back({event.startThreadId(), begin, begin + length});
      host_events.push_back(&event);
      continue;
    }
    // Newer LibTorch mirrors each user scope onto the GPU's timeline as an annotation spanning
    // its kernels: not work of its own, and counting it would cover the device's idle gaps.
    const std::string name = event.name();
    if (name.rfind("edit::", 0) == 0 || name.rfind("models::", 0) == 0) continue;
    device_intervals.emplace_back(begin, begin + length);
    ProfileEntry& entry = by_name[{name, true}];
    entry.calls += 1;
    entry.total_us += length;
  }
  const std::vector<double> self = self_times(host_calls);
  std::map<std::string, ProfileEntry> phases;
  for (std::size_t i = 0; i < host_events.size(); ++i) {
    const std::string name = host_events[i]->name();
    ProfileEntry& entry = by_name[{name, false}];
    entry.calls += 1;
    entry.total_us += self[i];
    summary.host_us += self[i];
    if (name.rfind("edit::", 0) == 0) {
      ProfileEntry& phase = phases[name];
      phase.calls += 1;
      phase.total_us += host_calls[i].end - host_calls[i].begin;
    }
  }
  for (auto& [name, phase] : phases) {
    phase.name = name;
    phase.kind = "phase";
    summary.phases.push_back(std::move(phase));
  }
  std::stable_sort(summary.phases.begin(), summary.phases.end(),
                   [](const ProfileEntry& a, const ProfileEntry& b) { return a.total_us > b.total_us; });
  for (auto& [key, entry] : by_name) {
    entry.name = key.first;
    entry.on_device = key.second;
    entry.kind = entry.on_device ? kernel_kind(entry.name) : "host";
    summary.entries.push_back(std::move(entry));
  }
  std::stable_sort(summary.entries.begin(), summary.entries.end(),
                   [](const ProfileEntry& a, const ProfileEntry& b) { return a.total_us > b.total_us; });
  summary.device_busy_us = union_length(std::move(device_intervals));
  if (!trace_path.empty()) {
    // A LibTorch built without Kineto's tracer (Debian's 1.13) refuses: the summary stands alone.
    try {
      result->save(trace_path);
    } catch (const c10::Error&) {
    }
    if (std::filesystem::exists(trace_path)) summary.trace_path = trace_path;
  }
  return summary;
}

std::string format_profile(const ProfileSummary& s, std::size_t top) {
  const double steps = static_cast<double>(std::max<std::int64_t>(1, s.steps));
  auto ms = [&](double us) { return fmt::format("{:.3f}", us / steps / 1e3); };
  auto percent = [](double part, double whole) { return whole > 0 ? fmt::format("{:.1f}%", 100.0 * part / whole) : "-"; };
  std::string out = fmt::format("profile of step{} {}-{}: {} ms a step", s.steps == 1 ? "" : "s", s.first_step,
                                s.first_step + s.steps - 1, ms(s.wall_us));
  const bool device = s.device_busy_us > 0;
  if (device) {
    out += fmt::format(", device busy {} ms ({} of the wall clock; the rest it waited for the host)",
                       ms(s.device_busy_us), percent(s.device_busy_us, s.wall_us));
  }
  out += fmt::format(", host ops {} ms\n", ms(s.host_us));
  if (!s.phases.empty()) {
    out += "\n| phase | calls a step | ms a step | share of the step |\n| --- | --- | --- | --- |\n";
    for (const auto& p : s.phases) {
      out += fmt::format("| {} | {:.1f} | {} | {} |\n", p.name, static_cast<double>(p.calls) / steps, ms(p.total_us),
                         percent(p.total_us, s.wall_us));
    }
  }
  if (device) {
    double device_total = 0.0;
    for (const auto& [kind, us] : s.device_kinds()) device_total += us;
    out += "\n| device time by kind | ms a step | share of kernel time |\n| --- | --- | --- |\n";
    for (const auto& [kind, us] : s.device_kinds()) out += fmt::format("| {} | {} | {} |\n", kind, ms(us), percent(us, device_total));
  }
  auto table = [&](bool on_device, const char* title) {
    std::string rows;
    std::size_t shown = 0;
    for (const auto& e : s.entries) {
      if (e.on_device != on_device || shown == top) continue;
      ++shown;
      const std::string kind = on_device ? " " + e.kind + " |" : "";
      rows += fmt::format("| {} |{} {:.1f} | {} |\n", shorten(e.name, 110), kind, static_cast<double>(e.calls) / steps,
                          ms(e.total_us));
    }
    if (shown == 0) return;
    out += on_device ? fmt::format("\n| {} | kind | calls a step | ms a step |\n| --- | --- | --- | --- |\n", title)
                     : fmt::format("\n| {} | calls a step | ms a step |\n| --- | --- | --- |\n", title);
    out += rows;
  };
  table(true, "top device kernels");
  table(false, "top host ops (self time)");
  if (!s.trace_path.empty()) out += fmt::format("\ntrace: {}\n", s.trace_path);
  return out;
}

void write_profile_csv(const ProfileSummary& s, const std::string& path) {
  std::ofstream out(path, std::ios::trunc);
  EDIT_CHECK(out.good(), "cannot write the profile ", path, "; check that its folder exists and is writable");
  const double steps = static_cast<double>(std::max<std::int64_t>(1, s.steps));
  out << "name,kind,where,calls,total_us,us_per_step\n";
  auto row = [&](const ProfileEntry& e, const char* where) {
    out << csv_field(e.name) << ',' << e.kind << ',' << where << ',' << e.calls << ','
        << fmt::format("{:.3f},{:.3f}", e.total_us, e.total_us / steps) << '\n';
  };
  for (const auto& p : s.phases) row(p, "phase");
  for (const auto& e : s.entries) row(e, e.on_device ? "device" : "host");
  out.flush();
  EDIT_CHECK(out.good(), "writing the profile ", path, " failed; is the disk full?");
}

}  // namespace edit::train
