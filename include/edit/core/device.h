// Where a rank computes: the CPU or one CUDA device (docs/architecture.md, comm/).
//
// One GPU per local rank: local rank r computes on cuda:(r mod GPUs), so ranks outnumbering the
// GPUs of a node share them (then only the MPI backend can carry their collectives: NCCL refuses
// two ranks on one GPU).
#pragma once

#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>

#include <string>

namespace edit {

// CUDA devices this process sees through LibTorch; 0 with a CPU-only LibTorch or no GPU.
int cuda_device_count();

// "auto" (CUDA when LibTorch has it and a GPU is visible, else the CPU), "cpu", "cuda" (the local
// rank's GPU) or "cuda:N". Throws edit::Error naming the fix when CUDA is asked for but absent.
c10::Device resolve_device(const std::string& name, int local_rank);

// Makes `device` the current CUDA device of this thread (so LibTorch's current stream, the NCCL
// communicators and kernels all use it); nothing for the CPU.
void use_device(c10::Device device);

// Waits for all work queued on `device` (wall-clock timing of GPU work); nothing for the CPU.
void synchronize(c10::Device device);

// "auto" (bf16 on CUDA, fp32 on the CPU), "fp32", "bf16", "fp16", "fp64".
c10::ScalarType resolve_dtype(const std::string& name, c10::Device device);

}  // namespace edit
