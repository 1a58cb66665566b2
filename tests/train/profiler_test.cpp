// The step profiler's arithmetic (busy time as a union, self time of nested calls, kernel kinds)
// against hand-worked cases, and a real window on the CPU against the ops it ran.
#include "edit/train/profiler.h"

#include <gtest/gtest.h>

#include <ATen/ATen.h>

#include <filesystem>
#include <fstream>
#include <string>

#include "edit/core/profile_scope.h"

namespace {

using edit::train::kernel_kind;
using edit::train::self_times;
using edit::train::TimedCall;
using edit::train::union_length;

TEST(Profiler, UnionLengthCountsOverlapOnce) {
  EXPECT_DOUBLE_EQ(union_length({}), 0.0);
  EXPECT_DOUBLE_EQ(union_length({{0, 10}}), 10.0);
  // Unsorted, one nested in another, two overlapping, one disjoint, one empty: [0, 14) + [20, 25).
  EXPECT_DOUBLE_EQ(union_length({{20, 25}, {2, 4}, {0, 10}, {8, 14}, {30, 30}}), 19.0);
  // Touching intervals join.
  EXPECT_DOUBLE_EQ(union_length({{0, 5}, {5, 7}}), 7.0);
}

TEST(Profiler, SelfTimeSubtractsOnlyTheDirectChildren) {
  // Thread 1: a [0, 10) holds b [1, 4) and c [5, 9); c holds d [6, 7). Thread 2: e [2, 3), during a
  // but not inside it. Thread 3: p [0, 10) and q [8, 12), which overhangs p's end.
  const std::vector<TimedCall> calls = {
      {1, 5, 9}, {2, 2, 3}, {1, 0, 10}, {1, 6, 7}, {1, 1, 4}, {3, 0, 10}, {3, 8, 12},
  };
  const std::vector<double> self = self_times(calls);
  ASSERT_EQ(self.size(), calls.size());
  EXPECT_DOUBLE_EQ(self[2], 10 - 3 - 4);  // a
  EXPECT_DOUBLE_EQ(self[4], 3);           // b
  EXPECT_DOUBLE_EQ(self[0], 4 - 1);       // c
  EXPECT_DOUBLE_EQ(self[3], 1);           // d
  EXPECT_DOUBLE_EQ(self[1], 1);           // e: another thread's call is not a child
  EXPECT_DOUBLE_EQ(self[5], 10 - 2);      // p: charged up to its own end
  EXPECT_DOUBLE_EQ(self[6], 4);           // q
}

TEST(Profiler, KernelKindsOfRealKernelNames) {
  // Names as CUDA 12/13 builds of LibTorch 2.x report them.
  EXPECT_EQ(kernel_kind("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64_warpgroupsize1x1x1"), "matmul");
  EXPECT_EQ(kernel_kind("nvjet_tst_128x256_64x4_2x1_v_bz_coopA_TNT"), "matmul");
  EXPECT_EQ(kernel_kind("void cutlass::Kernel2<cutlass_80_tensorop_bf16_s16816gemm_relu_bf16_64x64_64x4_tn_align8>"),
            "matmul");
  EXPECT_EQ(kernel_kind("void pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits<64, 128, 128, 4, false, false, "
                        "cutlass::bfloat16_t>, false, true, false, false, true, true, false, false>"),
            "attention");
  EXPECT_EQ(kernel_kind("cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16_knob_3_64x64x64"), "attention");
  EXPECT_EQ(kernel_kind("void at::native::(anonymous namespace)::vectorized_layer_norm_kernel<c10::BFloat16, float>"),
            "norm");
  EXPECT_EQ(kernel_kind("void at::native::(anonymous namespace)::GammaBetaBackwardCUDAKernel<c10::BFloat16, float>"),
            "norm");
  EXPECT_EQ(kernel_kind("void at::native::(anonymous namespace)::cunn_SoftMaxForward<4, float, float, float, "
                        "at::native::(anonymous namespace)::LogSoftMaxForwardEpilogue>"),
            "softmax/loss");
  EXPECT_EQ(kernel_kind("void at::native::(anonymous namespace)::multi_tensor_apply_kernel<at::native::(anonymous "
                        "namespace)::TensorListMetadata<4>, at::native::(anonymous namespace)::FusedAdamMathFunctor"),
            "optimizer");
  EXPECT_EQ(kernel_kind("ncclDevKernel_AllReduce_Sum_f32_RING_LL(ncclDevKernelArgsStorage<4096ul>)"), "communication");
  EXPECT_EQ(kernel_kind("Memcpy DtoH (Device -> Pinned)"), "copy");
  EXPECT_EQ(kernel_kind("void at::native::unrolled_elementwise_kernel<at::native::direct_copy_kernel_cuda("
                        "at::TensorIteratorBase&)::{lambda()#3}::operator()() const"),
            "copy");
  EXPECT_EQ(kernel_kind("void at::native::vectorized_elementwise_kernel<4, at::native::GeluCUDAKernelImpl("
                        "at::TensorIteratorBase&, at::native::GeluType)"),
            "elementwise");
  EXPECT_EQ(kernel_kind("void at::native::reduce_kernel<512, 1, at::native::ReduceOp<float, "
                        "at::native::func_wrapper_t<float, at::native::sum_functor<float, float, float>"),
            "reduction");
  EXPECT_EQ(kernel_kind("void at::native::(anonymous namespace)::embedding_backward_feature_kernel<c10::BFloat16>"),
            "embedding");
  EXPECT_EQ(kernel_kind("void at::native::(anonymous namespace)::indexSelectLargeIndex<float, long>"), "other");
}

TEST(Profiler, ACpuWindowCountsTheOpsItRan) {
  const at::Tensor a = at::randn({96, 96});
  at::Tensor b = at::randn({96, 96});
  edit::train::StepProfiler profiler(c10::Device(c10::kCPU));
  profiler.start();
  EXPECT_TRUE(profiler.running());
  for (int i = 0; i < 5; ++i) {
    const edit::ProfileScope scope("edit::work");
    b = at::mm(a, b).tanh();
  }
  const edit::train::ProfileSummary s = profiler.stop(7, 2);
  EXPECT_FALSE(profiler.running());
  EXPECT_EQ(s.first_step, 7);
  EXPECT_EQ(s.steps, 2);
  EXPECT_EQ(s.device_busy_us, 0.0) << "nothing ran on a device";
  EXPECT_TRUE(s.device_kinds().empty());
  std::int64_t mm_calls = 0, tanh_calls = 0;
  for (const auto& e : s.entries) {
    EXPECT_FALSE(e.on_device);
    EXPECT_EQ(e.kind, "host");
    if (e.name == "aten::mm") {
      mm_calls = e.calls;
      EXPECT_GT(e.total_us, 0.0) << "matrix products take time";
    }
    if (e.name == "aten::tanh") tanh_calls = e.calls;
  }
  EXPECT_EQ(mm_calls, 5);
  EXPECT_EQ(tanh_calls, 5);
  // The phase with its whole time: at least the self time of the ops inside it.
  ASSERT_EQ(s.phases.size(), 1u);
  EXPECT_EQ(s.phases[0].name, "edit::work");
  EXPECT_EQ(s.phases[0].kind, "phase");
  EXPECT_EQ(s.phases[0].calls, 5);
  double inside = 0.0;
  for (const auto& e : s.entries)
    if (e.name == "aten::mm" || e.name == "aten::tanh") inside += e.total_us;
  EXPECT_GE(s.phases[0].total_us, inside);
  EXPECT_LE(s.phases[0].total_us, s.wall_us);
  // Self times on one thread do not overlap, so they fit in the window.
  EXPECT_GT(s.host_us, 0.0);
  EXPECT_LE(s.host_us, s.wall_us);
  for (std::size_t i = 1; i < s.entries.size(); ++i) EXPECT_GE(s.entries[i - 1].total_us, s.entries[i].total_us);
  const std::string report = edit::train::format_profile(s);
  EXPECT_NE(report.find("profile of steps 7-8"), std::string::npos) << report;
  EXPECT_NE(report.find("| aten::mm | 2.5 |"), std::string::npos) << report;  // 5 calls over 2 steps
  EXPECT_EQ(report.find("device busy"), std::string::npos) << report;
  EXPECT_NE(report.find("| edit::work | 2.5 |"), std::string::npos) << report;
  EXPECT_THROW(profiler.stop(0, 1), std::exception);
}

TEST(Profiler, CsvQuotesNamesAndGivesTimePerStep) {
  edit::train::ProfileSummary s;
  s.steps = 4;
  s.entries = {{"void k<a, \"b\">", "elementwise", true, 8, 100.0}, {"aten::mm", "host", false, 4, 20.0}};
  s.phases = {{"edit::forward", "phase", false, 4, 400.0}};
  const auto path = (std::filesystem::temp_directory_path() / "edit_profile_test.csv").string();
  edit::train::write_profile_csv(s, path);
  std::ifstream in(path);
  std::string header, phase, first, second, extra;
  std::getline(in, header);
  std::getline(in, phase);
  std::getline(in, first);
  std::getline(in, second);
  EXPECT_FALSE(std::getline(in, extra));
  EXPECT_EQ(header, "name,kind,where,calls,total_us,us_per_step");
  EXPECT_EQ(phase, "\"edit::forward\",phase,phase,4,400.000,100.000");
  EXPECT_EQ(first, "\"void k<a, \"\"b\"\">\",elementwise,device,8,100.000,25.000");
  EXPECT_EQ(second, "\"aten::mm\",host,host,4,20.000,5.000");
  std::filesystem::remove(path);
  EXPECT_THROW(edit::train::write_profile_csv(s, "/nonexistent-folder/p.csv"), std::exception);
}

TEST(Profiler, DeviceReportGivesBusyShareAndKinds) {
  edit::train::ProfileSummary s;
  s.first_step = 10;
  s.steps = 2;
  s.wall_us = 100e3;
  s.device_busy_us = 80e3;
  s.entries = {{"sm90_xmma_gemm", "matmul", true, 20, 60e3}, {"vectorized_elementwise_kernel", "elementwise", true, 40, 20e3}};
  ASSERT_EQ(s.device_kinds().size(), 2u);
  EXPECT_EQ(s.device_kinds()[0].first, "matmul");
  const std::string report = edit::train::format_profile(s);
  EXPECT_NE(report.find("50.000 ms a step"), std::string::npos) << report;
  EXPECT_NE(report.find("device busy 40.000 ms (80.0% of the wall clock"), std::string::npos) << report;
  EXPECT_NE(report.find("| matmul | 30.000 | 75.0% |"), std::string::npos) << report;
  EXPECT_NE(report.find("| sm90_xmma_gemm | matmul | 10.0 | 30.000 |"), std::string::npos) << report;
}

}  // namespace
