// Whether sync/ launches kernels/ on CUDA tensors (an internal header of src/sync).
//
// That needs the kernels (EDIT_HAS_KERNELS), a CUDA LibTorch (EDIT_WITH_CUDA) for its current
// stream, and the adapter that hands that stream out, edit::comm::torch_current_stream(), which
// src/CMakeLists.txt compiles only with EDIT_WITH_NCCL. Without all three, CUDA tensors take the
// plain ATen path: correct, only not fused.
#pragma once

#include "edit/config.h"

#define EDIT_SYNC_CUDA_KERNELS (EDIT_HAS_KERNELS && EDIT_WITH_CUDA && EDIT_WITH_NCCL)
