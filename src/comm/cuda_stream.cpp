#include "edit/comm/cuda_stream.h"

#include "edit/config.h"
#include "edit/core/check.h"

#if EDIT_WITH_CUDA
#include <c10/cuda/CUDAStream.h>
#endif

namespace edit::comm {

NcclCommunicator::StreamFn torch_current_stream() {
#if EDIT_WITH_CUDA
  return [] { return static_cast<void*>(c10::cuda::getCurrentCUDAStream().stream()); };
#else
  EDIT_FAIL("torch_current_stream() needs libedit built with EDIT_WITH_CUDA (a CUDA LibTorch: configure with "
            "-DTorch_DIR=$(python3 -c 'import torch;print(torch.utils.cmake_prefix_path)')/Torch); "
            "pass no stream function to use the default stream");
#endif
}

}  // namespace edit::comm
