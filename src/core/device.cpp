#include "edit/core/device.h"

#include <ATen/Context.h>

#include "edit/config.h"
#include "edit/core/check.h"

#if EDIT_WITH_CUDA
#include <c10/cuda/CUDAFunctions.h>
#endif

namespace edit {

int cuda_device_count() {
#if EDIT_WITH_CUDA
  return at::hasCUDA() ? static_cast<int>(c10::cuda::device_count()) : 0;
#else
  return 0;
#endif
}

c10::Device resolve_device(const std::string& name, int local_rank) {
  const int gpus = cuda_device_count();
  if (name == "cpu") return c10::Device(c10::kCPU);
  if (name == "auto" && gpus == 0) return c10::Device(c10::kCPU);
  EDIT_CHECK(name == "auto" || name == "cuda" || name.rfind("cuda:", 0) == 0, "unknown device '", name,
             "'; use auto, cpu, cuda or cuda:N");
  EDIT_CHECK(gpus > 0, "device '", name, "' asked for, but ",
             EDIT_WITH_CUDA ? "no CUDA device is visible (check nvidia-smi and CUDA_VISIBLE_DEVICES)"
                            : "libedit was built against a LibTorch without CUDA (rebuild with a CUDA PyTorch 2.x: "
                              "-DTorch_DIR=$(python3 -c 'import torch;print(torch.utils.cmake_prefix_path)')/Torch)",
             "; or pass --device cpu");
  if (name.rfind("cuda:", 0) == 0) {
    const c10::Device device(name);
    EDIT_CHECK(device.index() < gpus, "device ", name, " does not exist: this process sees ", gpus,
               " GPU(s); use cuda:0 .. cuda:", gpus - 1, " or --device cuda (one GPU per local rank)");
    return device;
  }
  return c10::Device(c10::kCUDA, static_cast<c10::DeviceIndex>((local_rank < 0 ? 0 : local_rank) % gpus));
}

void use_device(c10::Device device) {
#if EDIT_WITH_CUDA
  if (device.is_cuda()) c10::cuda::set_device(device.index());
#else
  EDIT_CHECK(!device.is_cuda(), "CUDA device ", device, " in a libedit built without CUDA");
#endif
}

void synchronize(c10::Device device) {
#if EDIT_WITH_CUDA
  if (device.is_cuda()) c10::cuda::device_synchronize();
#else
  (void)device;
#endif
}

c10::ScalarType resolve_dtype(const std::string& name, c10::Device device) {
  if (name == "auto") return device.is_cuda() ? c10::kBFloat16 : c10::kFloat;
  if (name == "fp32" || name == "float32") return c10::kFloat;
  if (name == "bf16" || name == "bfloat16") return c10::kBFloat16;
  if (name == "fp16" || name == "float16") return c10::kHalf;
  if (name == "fp64" || name == "float64") return c10::kDouble;
  EDIT_FAIL("unknown dtype '", name, "'; use auto, fp32, bf16, fp16 or fp64");
}

}  // namespace edit
