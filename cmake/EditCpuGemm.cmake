# EDIT_WITH_ONEDNN: the CPU matrix products of libedit's models (edit::models::linear) through
# oneDNN's sgemm, which picks its kernels by the CPU's features (AVX-512, AVX2, ...). LibTorch's
# own path goes to the system BLAS, and OpenBLAS picks kernels by CPU model: on a CPU newer than
# the OpenBLAS release (e.g. Debian 12's 0.3.21 on Emerald Rapids) it falls back to SSE3 kernels,
# 4-5x slower. Debian's LibTorch already links oneDNN (libdnnl2); the header is libdnnl-dev.
#   EDIT_WITH_ONEDNN=AUTO  oneDNN when <oneapi/dnnl/dnnl.h> and libdnnl are found
#   EDIT_WITH_ONEDNN=ON    oneDNN, or a configure error saying what to install
#   EDIT_WITH_ONEDNN=OFF   LibTorch's at::linear (and at::gelu: oneDNN 2.x also runs the GELU)
set(EDIT_WITH_ONEDNN AUTO CACHE STRING "CPU GEMMs of the models through oneDNN's sgemm (AUTO: when found)")
set_property(CACHE EDIT_WITH_ONEDNN PROPERTY STRINGS AUTO ON OFF)
find_path(EDIT_ONEDNN_INCLUDE_DIR oneapi/dnnl/dnnl.h)
find_library(EDIT_ONEDNN_LIBRARY NAMES dnnl libdnnl.so.2)
if(EDIT_ONEDNN_INCLUDE_DIR AND EDIT_ONEDNN_LIBRARY)
  set(_edit_onednn_found ON)
else()
  set(_edit_onednn_found OFF)
endif()
# The same AUTO / ON / OFF rules (and spellings) as the GPU switches (cmake/EditGpuOptions.cmake).
_edit_resolve(EDIT_WITH_ONEDNN _edit_onednn_found
  "oneDNN was not found; apt-get install libdnnl-dev, or pass -DEDIT_WITH_ONEDNN=OFF")
set(EDIT_USE_ONEDNN ${EDIT_WITH_ONEDNN})
if(NOT _edit_onednn_found)
  message(STATUS "oneDNN not found: the models' CPU GEMMs use LibTorch's BLAS (apt-get install libdnnl-dev for oneDNN)")
endif()
