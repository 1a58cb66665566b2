# Resolves the three GPU switches (AUTO | ON | OFF) to ON/OFF.
#
# They are independent on purpose (docs/architecture.md, comm/): the NCCL communicator and kernels/ talk to
# the CUDA runtime through raw device pointers and cudaStream_t, so they build wherever the CUDA
# toolkit (nvcc, cuda_runtime.h, nccl.h) is present, even against Debian's CPU-only LibTorch. Only
# EDIT_WITH_CUDA (the adapter that picks up LibTorch's current CUDA stream) needs a CUDA LibTorch.
# Asking for a switch whose prerequisites are missing is a configure-time error that says what to
# install or pass.

function(_edit_resolve name available reason_missing)
  string(TOUPPER "${${name}}" _value)
  if(_value STREQUAL "AUTO")
    set(_on ${${available}})
  elseif(_value STREQUAL "ON" OR _value STREQUAL "TRUE" OR _value STREQUAL "1")
    if(NOT ${${available}})
      message(FATAL_ERROR "${name}=ON but ${reason_missing}")
    endif()
    set(_on ON)
  elseif(_value STREQUAL "OFF" OR _value STREQUAL "FALSE" OR _value STREQUAL "0")
    set(_on OFF)
  else()
    message(FATAL_ERROR "${name}='${${name}}' is not one of AUTO, ON, OFF.")
  endif()
  if(_on)
    set(${name} ON PARENT_SCOPE)
  else()
    set(${name} OFF PARENT_SCOPE)
  endif()
endfunction()

# LibTorch with CUDA defines the torch_cuda target (PyTorch 2.x wheels and CUDA source builds).
if(TARGET torch_cuda)
  set(_edit_torch_has_cuda ON)
else()
  set(_edit_torch_has_cuda OFF)
endif()
_edit_resolve(EDIT_WITH_CUDA _edit_torch_has_cuda
  "the LibTorch found at '${Torch_DIR}' was built without CUDA (Debian's libtorch-dev is CPU-only). \
Point CMake at a CUDA build of PyTorch 2.x: \
-DTorch_DIR=$(python3 -c 'import torch;print(torch.utils.cmake_prefix_path)')/Torch, or pass -DEDIT_WITH_CUDA=OFF.")

find_package(CUDAToolkit QUIET)
find_path(EDIT_NCCL_INCLUDE_DIR nccl.h
  HINTS ENV NCCL_ROOT ENV NCCL_HOME ${CUDAToolkit_INCLUDE_DIRS} PATH_SUFFIXES include)
find_library(EDIT_NCCL_LIBRARY nccl
  HINTS ENV NCCL_ROOT ENV NCCL_HOME ${CUDAToolkit_LIBRARY_DIR} PATH_SUFFIXES lib lib64)
if(CUDAToolkit_FOUND AND EDIT_NCCL_INCLUDE_DIR AND EDIT_NCCL_LIBRARY)
  set(_edit_nccl_found ON)
else()
  set(_edit_nccl_found OFF)
endif()
_edit_resolve(EDIT_WITH_NCCL _edit_nccl_found
  "NCCL was not found (CUDA toolkit: '${CUDAToolkit_FOUND}', nccl.h: '${EDIT_NCCL_INCLUDE_DIR}', \
libnccl: '${EDIT_NCCL_LIBRARY}'). Install the CUDA toolkit with NCCL (or NVIDIA's libnccl-dev), \
set NCCL_ROOT / -DEDIT_NCCL_INCLUDE_DIR=... -DEDIT_NCCL_LIBRARY=..., or pass -DEDIT_WITH_NCCL=OFF.")

include(CheckLanguage)
string(TOUPPER "${EDIT_BUILD_KERNELS}" _edit_kernels_value)
if(NOT _edit_kernels_value STREQUAL "OFF")
  check_language(CUDA)
endif()
if(CMAKE_CUDA_COMPILER AND CUDAToolkit_FOUND)
  set(_edit_nvcc_found ON)
else()
  set(_edit_nvcc_found OFF)
endif()
_edit_resolve(EDIT_BUILD_KERNELS _edit_nvcc_found
  "nvcc was not found. Install the CUDA toolkit and put nvcc on PATH (or pass \
-DCMAKE_CUDA_COMPILER=/usr/local/cuda/bin/nvcc), or pass -DEDIT_BUILD_KERNELS=OFF.")

if(EDIT_BUILD_KERNELS)
  if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES)
    # Hopper first (the GPUs we benchmark on), Ampere for the rest; override with -DCMAKE_CUDA_ARCHITECTURES.
    set(CMAKE_CUDA_ARCHITECTURES 80 90)
  endif()
  enable_language(CUDA)
endif()
