#include "cuda_check.cuh"
#include "edit/kernels/cuda_event.h"

namespace edit::kernels {

CudaEvent::~CudaEvent() {
  // Destroying an event whose work is still queued is allowed: CUDA frees it once it completes.
  if (event_ != nullptr) cudaEventDestroy(static_cast<cudaEvent_t>(event_));
}

void CudaEvent::record(void* stream) {
  int device = -1;
  EDIT_CUDA_CHECK(cudaGetDevice(&device));
  if (event_ != nullptr && device != device_) {
    EDIT_CUDA_CHECK(cudaEventDestroy(static_cast<cudaEvent_t>(event_)));
    event_ = nullptr;
  }
  if (event_ == nullptr) {
    cudaEvent_t event = nullptr;
    // No timing: such events are cheaper to record and to wait for.
    EDIT_CUDA_CHECK(cudaEventCreateWithFlags(&event, cudaEventDisableTiming));
    event_ = event;
    device_ = device;
  }
  EDIT_CUDA_CHECK(cudaEventRecord(static_cast<cudaEvent_t>(event_), static_cast<cudaStream_t>(stream)));
  pending_ = true;
}

void CudaEvent::synchronize() {
  if (!pending_) return;
  pending_ = false;
  EDIT_CUDA_CHECK(cudaEventSynchronize(static_cast<cudaEvent_t>(event_)));
}

}  // namespace edit::kernels
