// bench_comm: bus bandwidth of the collectives across sizes, next to memcpy bandwidth, and how
// much of a collective hides behind compute with back-off polling vs busy polling.
//
//   mpirun -np 4 --oversubscribe build/benchmarks/bench_comm --out bench_comm.csv
//
// Bus bandwidth follows the usual convention (as nccl-tests): algorithm bandwidth (buffer bytes /
// time) times 2(n-1)/n for all_reduce and (n-1)/n for all_gather and reduce_scatter, so that it
// is comparable with the link's (here: memory's) raw bandwidth whatever the number of ranks.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <iostream>

#include "edit/comm/device_mesh.h"
#include "edit/comm/link_emulator.h"
#include "edit/comm/mpi_communicator.h"
#include "edit/config.h"
#include "edit/core/check.h"
#include "edit/core/log.h"
#include "support/table.h"

#if EDIT_WITH_NCCL
#include <cuda_runtime_api.h>

#include "edit/comm/nccl_communicator.h"
#endif

namespace {

using Clock = std::chrono::steady_clock;
using edit::bench::fmt_bytes;
using edit::bench::fmt_num;
using edit::comm::Communicator;

struct Options {
  std::int64_t min_bytes = 4 << 10;          // smallest buffer
  std::int64_t max_bytes = 256 << 20;        // largest buffer
  // all_reduce_iallreduce and reduce_scatter_ireduce_scatter (mpi): every all_reduce through
  // MPI_Iallreduce and every reduce_scatter through MPI_Ireduce_scatter_block, beside all_reduce
  // and reduce_scatter, which take libedit's ring from CommOptions::ring_min_bytes up.
  std::vector<std::string> ops = {"all_reduce", "all_reduce_iallreduce", "all_gather", "reduce_scatter",
                                  "reduce_scatter_ireduce_scatter"};
  double seconds_per_size = 0.25;            // timing budget per (op, size)
  std::string link;                          // optional LinkEmulator model, e.g. 1Gbit@1ms
  std::string out = "bench_comm.csv";        // CSV path (overlap table goes to <out>.overlap.csv)
  std::string backend = "mpi";               // mpi (host buffers) or nccl (device buffers, a GPU per rank)
  bool quick = false;                        // 4 KiB..4 MiB, shorter timing
};

double seconds_since(Clock::time_point start) { return std::chrono::duration<double>(Clock::now() - start).count(); }

double max_over_ranks(Communicator& comm, double value) {
  const auto all = comm.all_gather_values({value});
  return *std::max_element(all.begin(), all.end());
}

// Seconds per call of `op`, the slowest rank's view: a warm-up, a probe for the count, then a timed run.
template <typename Op>
double time_op(Communicator& comm, double budget_s, Op op) {
  op()->wait();
  comm.barrier()->wait();
  auto start = Clock::now();
  op()->wait();
  const double probe = max_over_ranks(comm, seconds_since(start));
  const int iterations = std::clamp(static_cast<int>(budget_s / std::max(probe, 1e-6)), 3, 200);
  comm.barrier()->wait();
  start = Clock::now();
  for (int i = 0; i < iterations; ++i) op()->wait();
  return max_over_ranks(comm, seconds_since(start) / iterations);
}

// Where the benchmark's buffers live: host memory for MPI, device memory for NCCL. Device buffers
// come straight from the CUDA runtime, so this works with a CPU-only LibTorch as well.
struct Buffers {
  int device = -1;  // -1: host
  at::Tensor make(std::int64_t numel) const {
    at::Tensor host = at::rand({numel});
    if (device < 0) return host;
#if EDIT_WITH_NCCL
    void* ptr = nullptr;
    EDIT_CHECK(cudaMalloc(&ptr, static_cast<size_t>(numel) * 4 + 4) == cudaSuccess, "cudaMalloc of ", numel * 4,
               " bytes failed; lower --max-bytes");
    EDIT_CHECK(cudaMemcpy(ptr, host.data_ptr(), static_cast<size_t>(numel) * 4, cudaMemcpyHostToDevice) == cudaSuccess,
               "copying the benchmark buffer to the GPU failed");
    return at::for_blob(ptr, {numel})
        .options(at::TensorOptions().dtype(at::kFloat).device(at::Device(at::kCUDA, static_cast<c10::DeviceIndex>(device))))
        .deleter([](void* p) { cudaFree(p); })
        .make_tensor();
#else
    EDIT_FAIL("device buffers need libedit built with NCCL");
#endif
  }
  void copy(at::Tensor& dst, const at::Tensor& src) const {
    if (device < 0) {
      dst.copy_(src);
      return;
    }
#if EDIT_WITH_NCCL
    cudaMemcpy(dst.data_ptr(), src.data_ptr(), static_cast<size_t>(src.numel()) * 4, cudaMemcpyDeviceToDevice);
    cudaDeviceSynchronize();
#endif
  }
};

double memcpy_gbps(Communicator& comm, const Buffers& buffers, std::int64_t bytes) {
  at::Tensor src = buffers.make(bytes / 4);
  at::Tensor dst = buffers.make(bytes / 4);
  buffers.copy(dst, src);
  comm.barrier()->wait();  // all ranks copy at once: the same memory contention as a collective
  const auto start = Clock::now();
  int iterations = 0;
  while (seconds_since(start) < 0.3 || iterations < 3) {
    buffers.copy(dst, src);
    ++iterations;
  }
  const double per_copy = max_over_ranks(comm, seconds_since(start) / iterations);
  return static_cast<double>(bytes) / per_copy / 1e9;
}

// Matrix products for about `seconds` (what a training step spends its time on).
void compute(int iterations) {
  at::Tensor a = at::randn({256, 256});
  at::Tensor acc = at::zeros({256, 256});
  for (int i = 0; i < iterations; ++i) acc.add_(at::mm(a, a), 1e-6);
}

int calibrate(double seconds) {
  int iterations = 4;
  while (true) {
    const auto start = Clock::now();
    compute(iterations);
    const double took = seconds_since(start);
    if (took > 0.05) return std::max(1, static_cast<int>(iterations * seconds / took));
    iterations *= 4;
  }
}

}  // namespace

int main(int argc, char** argv) try {
  Options options;
  CLI::App app{"bench_comm: collective bandwidth vs memcpy, and compute/communication overlap"};
  app.add_option("--min-bytes", options.min_bytes, "smallest buffer in bytes")->capture_default_str();
  app.add_option("--max-bytes", options.max_bytes, "largest buffer in bytes")->capture_default_str();
  app.add_option("--ops", options.ops, "collectives to time")->delimiter(',')->capture_default_str();
  app.add_option("--seconds-per-size", options.seconds_per_size, "timing budget per op and size")->capture_default_str();
  app.add_option("--link", options.link, "emulate a slow link, e.g. 1Gbit@1ms (default: none)");
  app.add_option("--out", options.out, "CSV file for the bandwidth table")->capture_default_str();
  app.add_flag("--quick", options.quick, "4 KiB to 4 MiB with a short budget (under a minute)");
  app.add_option("--backend", options.backend, "mpi (host buffers) or nccl (device buffers, one GPU per rank)")
      ->check(CLI::IsMember({"mpi", "nccl"}))->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  if (options.quick) {
    options.max_bytes = std::min<std::int64_t>(options.max_bytes, 4 << 20);
    options.seconds_per_size = 0.05;
  }
  EDIT_CHECK(options.min_bytes >= 4 && options.min_bytes <= options.max_bytes, "--min-bytes ", options.min_bytes,
             " must be at least 4 and at most --max-bytes ", options.max_bytes);

  at::set_num_threads(1);
  edit::comm::DeviceMesh mesh = edit::comm::DeviceMesh::from_env();
  edit::log::init(mesh.rank());
  std::shared_ptr<Communicator> comm = mesh.world_ptr();
  Buffers buffers;
  if (options.backend == "nccl") {
#if EDIT_WITH_NCCL
    int devices = 0;
    EDIT_CHECK(cudaGetDeviceCount(&devices) == cudaSuccess && devices > 0,
               "--backend nccl needs a GPU, and this machine has none; use --backend mpi");
    buffers.device = mesh.local_rank() % devices;
    EDIT_CHECK(cudaSetDevice(buffers.device) == cudaSuccess, "cannot select GPU ", buffers.device);
    comm = std::make_shared<edit::comm::NcclCommunicator>(mesh.world_ptr(), buffers.device);
#else
    EDIT_FAIL("--backend nccl needs libedit built with NCCL (EDIT_WITH_NCCL); use --backend mpi");
#endif
  }
  if (!options.link.empty()) comm = std::make_shared<edit::comm::LinkEmulator>(comm, edit::comm::LinkModel::parse(options.link));
  const int n = comm->size();
  const bool lead = comm->rank() == 0;

  const double memcpy_bw = memcpy_gbps(*comm, buffers, std::min<std::int64_t>(options.max_bytes, 256 << 20));
  // The same world with the ring turned off, for the ops named after MPI's own collectives.
  std::shared_ptr<Communicator> mpi_own;
  if (options.backend == "mpi") {
    edit::comm::CommOptions no_ring = edit::comm::CommOptions::from_env();
    no_ring.ring_min_bytes = 0;
    mpi_own = edit::comm::MpiCommunicator::world(edit::comm::MpiRuntime::acquire(), no_ring, "mpi_own");
    if (!options.link.empty()) {
      mpi_own = std::make_shared<edit::comm::LinkEmulator>(mpi_own, edit::comm::LinkModel::parse(options.link));
    }
  }
  edit::bench::Table table({"backend", "op", "ranks", "bytes", "size", "time_us", "algbw_GBps", "busbw_GBps",
                            "memcpy_GBps", "busbw_over_memcpy"});
  for (const std::string& op_name : options.ops) {
    const bool on_mpi_own = op_name == "all_reduce_iallreduce" || op_name == "reduce_scatter_ireduce_scatter";
    EDIT_CHECK(on_mpi_own || op_name == "all_reduce" || op_name == "all_gather" || op_name == "reduce_scatter",
               "unknown --ops entry '", op_name, "'; use all_reduce, all_reduce_iallreduce, all_gather, ",
               "reduce_scatter, reduce_scatter_ireduce_scatter");
    if (on_mpi_own && !mpi_own) continue;  // (nccl: no MPI collective to compare)
    for (std::int64_t bytes = options.min_bytes; bytes <= options.max_bytes; bytes *= 4) {
      const std::int64_t numel = std::max<std::int64_t>(n, bytes / 4 / n * n);  // divisible by the group
      at::Tensor full = buffers.make(numel);
      at::Tensor part = buffers.make(numel / n);
      double seconds = 0.0;
      double factor = static_cast<double>(n - 1) / n;
      if (op_name == "all_reduce") {
        factor *= 2;
        seconds = time_op(*comm, options.seconds_per_size, [&] { return comm->all_reduce(full); });
      } else if (op_name == "all_reduce_iallreduce") {
        factor *= 2;
        seconds = time_op(*mpi_own, options.seconds_per_size, [&] { return mpi_own->all_reduce(full); });
      } else if (op_name == "all_gather") {
        seconds = time_op(*comm, options.seconds_per_size, [&] { return comm->all_gather(full, part); });
      } else if (op_name == "reduce_scatter") {
        seconds = time_op(*comm, options.seconds_per_size, [&] { return comm->reduce_scatter(part, full); });
      } else {
        seconds = time_op(*mpi_own, options.seconds_per_size, [&] { return mpi_own->reduce_scatter(part, full); });
      }
      const double algbw = static_cast<double>(numel * 4) / seconds / 1e9;
      const double busbw = algbw * factor;
      table.add_row({options.backend + (options.link.empty() ? "" : "+link"), op_name, std::to_string(n), std::to_string(numel * 4),
                     fmt_bytes(static_cast<double>(numel * 4)), fmt_num(seconds * 1e6, 1), fmt_num(algbw, 3),
                     fmt_num(busbw, 3), fmt_num(memcpy_bw, 2), fmt_num(busbw / memcpy_bw, 3)});
    }
  }

  // Overlap: a train of all_reduces (about 0.3 s) issued at once, then compute of the same length.
  edit::bench::Table overlap({"polling", "ranks", "bytes_per_op", "ops", "comm_s", "compute_s", "together_s",
                              "ratio_to_sum"});
  const std::int64_t overlap_numel = (8 << 20) / 4 / n * n;
  // Polling modes concern the MPI communication thread only.
  for (bool busy : {false, true}) {
    if (options.backend != "mpi") break;
    edit::comm::CommOptions comm_options = edit::comm::CommOptions::from_env();
    comm_options.busy_poll = busy;
    auto polled = edit::comm::MpiCommunicator::world(edit::comm::MpiRuntime::acquire(), comm_options, "overlap");
    at::Tensor tensor = at::rand({overlap_numel});
    const double one_op = time_op(*polled, 0.05, [&] { return polled->all_reduce(tensor); });
    const int ops = std::max(1, static_cast<int>((options.quick ? 0.15 : 0.4) / one_op));
    auto run_comm = [&] {
      std::vector<edit::comm::WorkPtr> works;
      for (int i = 0; i < ops; ++i) works.push_back(polled->all_reduce(tensor));
      return works;
    };
    polled->barrier()->wait();
    auto start = Clock::now();
    for (auto& work : run_comm()) work->wait();
    const double comm_s = max_over_ranks(*polled, seconds_since(start));
    const int iterations = calibrate(comm_s);
    polled->barrier()->wait();
    start = Clock::now();
    compute(iterations);
    const double compute_s = max_over_ranks(*polled, seconds_since(start));
    polled->barrier()->wait();
    start = Clock::now();
    auto works = run_comm();
    compute(iterations);
    for (auto& work : works) work->wait();
    const double together_s = max_over_ranks(*polled, seconds_since(start));
    overlap.add_row({busy ? "busy" : "back-off", std::to_string(n), std::to_string(overlap_numel * 4),
                     std::to_string(ops), fmt_num(comm_s, 3), fmt_num(compute_s, 3), fmt_num(together_s, 3),
                     fmt_num(together_s / (comm_s + compute_s), 3)});
  }

  if (lead) {
    table.print("Collective bandwidth (" + std::to_string(n) + " ranks; memcpy = one rank's copy bandwidth while all copy)");
    table.write_csv(options.out);
    overlap.print("Overlap of one all_reduce with compute (ratio 0.5 = fully hidden, 1.0 = none)");
    overlap.write_csv(options.out + ".overlap.csv");
    std::cout << "\nwrote " << options.out << " and " << options.out << ".overlap.csv\n";
  }
  comm->barrier()->wait();
  return 0;
} catch (const std::exception& e) {
  std::cerr << "bench_comm: " << e.what() << "\n";
  return 1;
}
