// NcclCommunicator on one GPU, world size 1 (docs/architecture.md, comm/): results against hand-computed
// references, stream ordering, and the errors that name their fix. Multi-rank runs belong to the
// mpi-labelled tests.
//
// Compiled everywhere; runs where the build has NCCL and a GPU is visible, skips otherwise. The
// CUDA tensors are cudaMalloc'd memory wrapped with at::for_blob(...).target_device(cuda): with an
// explicit device, ATen never asks its CUDA hooks, so this works with Debian's CPU-only LibTorch
// too (plain at::from_blob would fail there). No ATen op may run on those tensors (a CPU LibTorch
// has no CUDA kernels): data moves with cudaMemcpy and references are computed on the host.
#include "edit/comm/nccl_communicator.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "edit/config.h"
#include "edit/core/check.h"
#include "loopback_communicator.h"
#if EDIT_WITH_NCCL
#include <cuda_runtime_api.h>
#endif

namespace {

using edit::comm::AllReduceOptions;
using edit::comm::CommStats;
using edit::comm::Communicator;
using edit::comm::ReduceOp;
using edit::comm::ReduceScatterOptions;
using edit::comm::Work;
using edit::comm::WorkPtr;

using edit::testing_support::LoopbackCommunicator;

#if EDIT_WITH_NCCL

using edit::comm::NcclCommunicator;

constexpr int kDevice = 0;

bool gpu_visible() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();  // clear "no driver" so later CUDA calls start clean
    return false;
  }
  return count > 0;
}

// A CUDA tensor over fresh cudaMalloc'd memory, freed with the tensor. `strides` empty: contiguous.
at::Tensor device_tensor(at::IntArrayRef sizes, at::ScalarType dtype, at::IntArrayRef strides = {},
                         int device = kDevice) {
  std::int64_t elements = 1;
  if (strides.empty()) {
    for (const std::int64_t size : sizes) elements *= size;
  } else {
    for (size_t d = 0; d < sizes.size(); ++d) elements += (sizes[d] - 1) * strides[d];
  }
  const size_t bytes = static_cast<size_t>(std::max<std::int64_t>(elements, 1)) * c10::elementSize(dtype);
  void* memory = nullptr;
  const cudaError_t status = cudaMalloc(&memory, bytes);
  EDIT_CHECK(status == cudaSuccess, "cudaMalloc(", bytes, ") failed: ", cudaGetErrorString(status));
  auto maker = at::for_blob(memory, sizes);
  maker.deleter([](void* p) { cudaFree(p); })
      .options(at::TensorOptions().dtype(dtype).device(at::kCUDA, device))
      .target_device(at::Device(at::kCUDA, device));
  if (!strides.empty()) maker.strides(strides);
  return maker.make_tensor();
}

// Page-locked host memory: cudaMemcpyAsync from pageable memory may wait for the whole stream,
// which would defeat (or, behind a held stream, deadlock) the ordering test.
at::Tensor pinned_float(std::int64_t n) {
  void* memory = nullptr;
  const cudaError_t status =
      cudaMallocHost(&memory, static_cast<size_t>(std::max<std::int64_t>(n, 1)) * sizeof(float));
  EDIT_CHECK(status == cudaSuccess, "cudaMallocHost failed: ", cudaGetErrorString(status));
  return at::for_blob(memory, {n})
      .deleter([](void* p) { cudaFreeHost(p); })
      .options(at::TensorOptions().dtype(at::kFloat))
      .target_device(at::Device(at::kCPU))
      .make_tensor();
}

at::Tensor to_device(const at::Tensor& host) {
  const at::Tensor source = host.contiguous();
  at::Tensor device = device_tensor(source.sizes(), source.scalar_type());
  EDIT_CHECK(cudaMemcpy(device.data_ptr(), source.data_ptr(), source.nbytes(), cudaMemcpyHostToDevice) ==
                 cudaSuccess,
             "cudaMemcpy to the device failed");
  return device;
}

at::Tensor to_host(const at::Tensor& device) {
  at::Tensor host = at::empty(device.sizes(), at::TensorOptions().dtype(device.scalar_type()));
  EDIT_CHECK(
      cudaMemcpy(host.data_ptr(), device.data_ptr(), host.nbytes(), cudaMemcpyDeviceToHost) == cudaSuccess,
      "cudaMemcpy to the host failed");
  return host;
}

// Poisons device memory (0x7f bytes: huge or NaN values in every dtype), so an op that never
// wrote its output cannot pass.
void poison(const at::Tensor& device) {
  ASSERT_EQ(cudaMemset(device.data_ptr(), 0x7f, device.numel() * device.element_size()), cudaSuccess);
}

// Small integers: exact in float, half and bfloat16, and so are their products by 0.5 and -2,
// which makes every reference below exact.
at::Tensor small_integers(std::int64_t n, at::ScalarType dtype, std::int64_t seed) {
  at::manual_seed(seed);
  return at::randint(-8, 9, {n}).to(dtype);
}

void expect_same(const at::Tensor& actual, const at::Tensor& expected) {
  ASSERT_EQ(actual.scalar_type(), expected.scalar_type());
  EXPECT_TRUE(at::equal(actual.to(at::kDouble), expected.to(at::kDouble)))
      << "actual " << actual.to(at::kDouble).slice(0, 0, 8) << "\nexpected "
      << expected.to(at::kDouble).slice(0, 0, 8);
}

// `call` throws edit::Error whose message contains every one of `parts`.
void expect_error(const std::function<void()>& call, const std::vector<std::string>& parts) {
  try {
    call();
  } catch (const edit::Error& error) {
    const std::string what = error.what();
    for (const std::string& part : parts) EXPECT_NE(what.find(part), std::string::npos) << what;
    return;
  }
  ADD_FAILURE() << "expected an edit::Error mentioning '" << parts.front() << "'";
}

#endif  // EDIT_WITH_NCCL

// One NCCL communicator per suite (ncclCommInitRank costs far more than the ops under test).
class NcclCommunicatorTest : public testing::Test {
 protected:
  void SetUp() override {
#if !EDIT_WITH_NCCL
    GTEST_SKIP() << "built without NCCL (EDIT_WITH_NCCL=0): configure where the CUDA toolkit with "
                    "nccl.h is installed";
#else
    if (!gpu_visible()) GTEST_SKIP() << "needs a GPU: cudaGetDeviceCount reports none";
    if (!comm_) comm_ = std::make_unique<NcclCommunicator>(std::make_shared<LoopbackCommunicator>(), kDevice);
#endif
  }
#if EDIT_WITH_NCCL
  static void TearDownTestSuite() { comm_.reset(); }
  static std::unique_ptr<NcclCommunicator> comm_;
#endif
};
#if EDIT_WITH_NCCL
std::unique_ptr<NcclCommunicator> NcclCommunicatorTest::comm_;
#endif

class NcclDtypeTest : public NcclCommunicatorTest, public testing::WithParamInterface<at::ScalarType> {};

TEST_P(NcclDtypeTest, AllReduceSumAvgAndPrescale) {
#if EDIT_WITH_NCCL
  const at::ScalarType dtype = GetParam();
  const at::Tensor x = small_integers(1000, dtype, 1);
  struct Case {
    ReduceOp op;
    double prescale;
    double factor;  // with one rank: sum = avg = the input, times the prescale
  };
  for (const Case& c : {Case{ReduceOp::kSum, 1.0, 1.0}, Case{ReduceOp::kAvg, 1.0, 1.0},
                        Case{ReduceOp::kSum, 0.5, 0.5}, Case{ReduceOp::kAvg, -2.0, -2.0}}) {
    SCOPED_TRACE(testing::Message() << edit::comm::to_string(c.op) << " prescale " << c.prescale);
    at::Tensor buffer = to_device(x);
    comm_->all_reduce(buffer, {c.op, c.prescale})->wait();
    expect_same(to_host(buffer), (x.to(at::kDouble) * c.factor).to(dtype));
  }
#endif
}

TEST_P(NcclDtypeTest, AllGatherWritesEveryRanksInput) {
#if EDIT_WITH_NCCL
  const at::ScalarType dtype = GetParam();
  const at::Tensor x = small_integers(777, dtype, 2);
  const at::Tensor input = to_device(x);
  const at::Tensor output = device_tensor({comm_->size() * x.numel()}, dtype);
  poison(output);
  comm_->all_gather(output, input)->wait();
  expect_same(to_host(output), x);
#endif
}

TEST_P(NcclDtypeTest, ReduceScatterSumAndAvg) {
#if EDIT_WITH_NCCL
  const at::ScalarType dtype = GetParam();
  const at::Tensor x = small_integers(512, dtype, 3);
  for (const ReduceOp op : {ReduceOp::kSum, ReduceOp::kAvg}) {
    SCOPED_TRACE(edit::comm::to_string(op));
    const at::Tensor input = to_device(x);
    const at::Tensor output = device_tensor({x.numel() / comm_->size()}, dtype);
    poison(output);
    comm_->reduce_scatter(output, input, {op})->wait();
    expect_same(to_host(output), x);
  }
#endif
}

TEST_P(NcclDtypeTest, BroadcastFromRoot) {
#if EDIT_WITH_NCCL
  const at::ScalarType dtype = GetParam();
  const at::Tensor x = small_integers(300, dtype, 4).reshape({3, 100});
  at::Tensor buffer = to_device(x);
  WorkPtr work = comm_->broadcast(buffer, 0);
  work->wait();
  EXPECT_TRUE(work->is_completed());
  expect_same(to_host(buffer), x);
#endif
}

INSTANTIATE_TEST_SUITE_P(Dtypes, NcclDtypeTest, testing::Values(at::kFloat, at::kBFloat16, at::kHalf),
                         [](const testing::TestParamInfo<at::ScalarType>& info) {
                           return std::string(c10::toString(info.param));
                         });

TEST_F(NcclCommunicatorTest, EveryListedDtypeReduces) {
#if EDIT_WITH_NCCL
  for (const at::ScalarType dtype : {at::kDouble, at::kInt, at::kLong, at::kByte}) {
    SCOPED_TRACE(c10::toString(dtype));
    const at::Tensor x =
        dtype == at::kByte ? at::randint(0, 100, {64}).to(dtype) : small_integers(64, dtype, 5);
    at::Tensor buffer = to_device(x);
    comm_->all_reduce(buffer, {ReduceOp::kSum})->wait();
    expect_same(to_host(buffer), x);
  }
#endif
}

TEST_F(NcclCommunicatorTest, GroupIdentityAndHostValuesComeFromTheBootstrap) {
#if EDIT_WITH_NCCL
  EXPECT_EQ(comm_->rank(), 0);
  EXPECT_EQ(comm_->size(), 1);
  EXPECT_EQ(comm_->name(), "loopback");
  EXPECT_EQ(comm_->device(), kDevice);
  EXPECT_NE(comm_->comm_stream(), nullptr);
  EXPECT_FALSE(comm_->broken());
  EXPECT_EQ(comm_->all_gather_values({3.5, -1.0}), (std::vector<double>{3.5, -1.0}));
  comm_->barrier()->wait();
#endif
}

TEST_F(NcclCommunicatorTest, EmptyTensorsCompleteAtOnce) {
#if EDIT_WITH_NCCL
  const at::Tensor empty = device_tensor({0}, at::kFloat);
  for (const WorkPtr& work :
       {comm_->all_reduce(empty, {ReduceOp::kAvg, 0.5}), comm_->all_gather(empty, empty),
        comm_->reduce_scatter(empty, empty), comm_->broadcast(empty, 0)}) {
    EXPECT_TRUE(work->is_completed());
    work->wait();
  }
#endif
}

TEST_F(NcclCommunicatorTest, StatsCountOpsAndTime) {
#if EDIT_WITH_NCCL
  comm_->reset_stats();
  at::Tensor buffer = to_device(small_integers(4096, at::kFloat, 6));
  comm_->all_reduce(buffer)->wait();
  comm_->broadcast(buffer, 0)->wait();
  comm_->barrier()->wait();
  const CommStats stats = comm_->stats();
  EXPECT_EQ(stats.ops, 3);
  EXPECT_EQ(stats.bytes_sent, 0);  // nothing leaves a group of one
  EXPECT_GE(stats.busy_seconds, 0.0);
  EXPECT_GT(stats.wait_seconds, 0.0);
  comm_->reset_stats();
  EXPECT_EQ(comm_->stats().ops, 0);
#endif
}

TEST_F(NcclCommunicatorTest, ErrorsNameTheFix) {
#if EDIT_WITH_NCCL
  const at::Tensor good = device_tensor({8}, at::kFloat);
  expect_error([&] { comm_->all_reduce(at::ones({8})); },
               {"all_reduce", "loopback", ".cuda()", "MpiCommunicator"});
  // (4, 2) with strides (1, 4): a transposed view, as .t() would give.
  const at::Tensor strided = device_tensor({4, 2}, at::kFloat, {1, 4});
  ASSERT_FALSE(strided.is_contiguous());
  expect_error([&] { comm_->all_reduce(strided); }, {"not contiguous", ".contiguous()"});
  expect_error([&] { comm_->broadcast(strided, 0); }, {"not contiguous"});
  expect_error([&] { comm_->all_gather(device_tensor({9}, at::kFloat), good); },
               {"all_gather", "size() * input.numel()"});
  expect_error([&] { comm_->reduce_scatter(device_tensor({7}, at::kFloat), good); },
               {"reduce_scatter", "size() * output.numel()"});
  expect_error([&] { comm_->all_gather(device_tensor({8}, at::kHalf), good); }, {"dtype", "Half"});
  expect_error([&] { comm_->all_reduce(device_tensor({8}, at::kShort)); },
               {"Short", "supported", "bfloat16"});
  expect_error(
      [&] {
        comm_->all_reduce(device_tensor({8}, at::kInt), {ReduceOp::kSum, 0.5});
      },
      {"prescale", "floating-point"});
  expect_error([&] { comm_->broadcast(good, 1); }, {"root 1"});
  // A tensor claiming another device: checked before its memory is ever touched.
  float host_stand_in[4] = {};
  const at::Tensor elsewhere =
      at::for_blob(host_stand_in, {4})
          .options(at::TensorOptions().dtype(at::kFloat).device(at::kCUDA, kDevice + 1))
          .target_device(at::Device(at::kCUDA, kDevice + 1))
          .make_tensor();
  expect_error([&] { comm_->all_reduce(elsewhere); }, {"runs on cuda:0"});
  EXPECT_FALSE(comm_->broken());  // bad arguments leave the communicator usable
#endif
}

#if EDIT_WITH_NCCL
// Holds the caller's stream at a host callback until released (or 20 s pass, so a failing test
// cannot hang the suite): work queued behind it provably has not run yet.
class StreamGate {
 public:
  explicit StreamGate(cudaStream_t stream) : stream_(stream) {
    EXPECT_EQ(cudaLaunchHostFunc(stream, &StreamGate::hold, &open_), cudaSuccess);
  }
  // The callback reads open_: it must have returned before this object goes.
  ~StreamGate() {
    release();
    cudaStreamSynchronize(stream_);
  }
  StreamGate(const StreamGate&) = delete;
  StreamGate& operator=(const StreamGate&) = delete;
  void release() { open_.store(true); }

 private:
  static void hold(void* flag) {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
    while (!static_cast<std::atomic<bool>*>(flag)->load() && std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
  }
  cudaStream_t stream_;
  std::atomic<bool> open_{false};
};
#endif

// The op runs after what the caller queued before it, and the caller's later work sees its result.
TEST_F(NcclCommunicatorTest, OrdersWithTheCallersStream) {
#if EDIT_WITH_NCCL
  cudaStream_t caller = nullptr;
  ASSERT_EQ(cudaStreamCreateWithFlags(&caller, cudaStreamNonBlocking), cudaSuccess);
  {
    NcclCommunicator comm(std::make_shared<LoopbackCommunicator>(), kDevice, {}, [caller] { return caller; });
    const std::int64_t n = 1 << 20;
    at::Tensor x = pinned_float(n);
    x.copy_(small_integers(n, at::kFloat, 7));
    const at::Tensor host_out = pinned_float(n);
    at::Tensor buffer = device_tensor({n}, at::kFloat);
    ASSERT_EQ(cudaMemset(buffer.data_ptr(), 0, n * sizeof(float)), cudaSuccess);
    StreamGate gate(caller);
    // Queued behind the gate: the data lands only once the gate opens.
    ASSERT_EQ(
        cudaMemcpyAsync(buffer.data_ptr(), x.data_ptr(), n * sizeof(float), cudaMemcpyHostToDevice, caller),
        cudaSuccess);
    WorkPtr work = comm.all_reduce(buffer, {ReduceOp::kSum, 2.0});
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    EXPECT_FALSE(work->is_completed()) << "the op ran before the caller's queued copy";
    gate.release();
    work->wait();
    EXPECT_TRUE(work->is_completed());
    // Ordered on the caller's stream only through wait()'s cudaStreamWaitEvent.
    ASSERT_EQ(cudaMemcpyAsync(host_out.data_ptr(), buffer.data_ptr(), n * sizeof(float),
                              cudaMemcpyDeviceToHost, caller),
              cudaSuccess);
    ASSERT_EQ(cudaStreamSynchronize(caller), cudaSuccess);
    expect_same(host_out, x * 2);
    EXPECT_GT(comm.stats().busy_seconds, 0.0);
  }
  cudaStreamDestroy(caller);
#endif
}

}  // namespace
