// Whether sync/ launches kernels/ on CUDA tensors (an internal header of src/sync).
//
// That needs the kernels (EDIT_HAS_KERNELS) and a CUDA LibTorch (EDIT_WITH_CUDA), whose current
// stream edit::comm::torch_current_stream() hands out. Without both, CUDA tensors take the plain
// ATen path: correct, only not fused.
#pragma once

#include "edit/config.h"

#define EDIT_SYNC_CUDA_KERNELS (EDIT_HAS_KERNELS && EDIT_WITH_CUDA)
