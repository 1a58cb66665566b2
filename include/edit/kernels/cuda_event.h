// A CUDA event as a plain C++ object (kernels/cuda_event.cu), so code outside kernels/ can wait
// for work it queued on a stream without the CUDA headers or a CUDA LibTorch. The outer optimizer
// uses it for the copies of offloaded state back to pinned host memory (docs/architecture.md, sync/).
#pragma once

namespace edit::kernels {

class CudaEvent {
 public:
  CudaEvent() = default;
  ~CudaEvent();  // frees the event; never throws, never waits
  CudaEvent(const CudaEvent&) = delete;
  CudaEvent& operator=(const CudaEvent&) = delete;

  // Marks the work queued on `stream` (a cudaStream_t of the current device) so far. The event is
  // made on the current device at the first record, and made again if a later record runs on
  // another device (an event must belong to its stream's device).
  void record(void* stream);
  // Blocks the host until the work recorded last has finished; returns at once when nothing is
  // pending. Errors of that work (e.g. a failed copy) are thrown as edit::Error.
  void synchronize();
  bool pending() const { return pending_; }

 private:
  void* event_ = nullptr;  // cudaEvent_t
  int device_ = -1;
  bool pending_ = false;
};

}  // namespace edit::kernels
