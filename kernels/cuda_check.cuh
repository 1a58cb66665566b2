// EDIT_CUDA_CHECK(call): a failed CUDA runtime call becomes edit::Error naming the call, the CUDA
// error string, file and line.
#pragma once

#include <cuda_runtime.h>

#include "edit/core/check.h"

#define EDIT_CUDA_CHECK(call)                                                                    \
  do {                                                                                           \
    const cudaError_t edit_cuda_status_ = (call);                                                \
    EDIT_CHECK(edit_cuda_status_ == cudaSuccess, #call, " failed: ",                             \
               cudaGetErrorString(edit_cuda_status_),                                            \
               "; check that the GPU is visible (nvidia-smi) and the driver matches the toolkit"); \
  } while (false)
