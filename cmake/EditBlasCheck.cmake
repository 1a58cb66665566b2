# LibTorch on Debian calls whatever libblas.so.3 the alternatives system points at. With only the
# reference BLAS installed, matrix products run ~7x slower than with OpenBLAS: say so loudly here,
# because a slow run is otherwise indistinguishable from a slow algorithm.
set(EDIT_BLAS_KIND "unknown")
find_library(EDIT_SYSTEM_BLAS NAMES libblas.so.3 blas PATHS /usr/lib/${CMAKE_LIBRARY_ARCHITECTURE})
if(EDIT_SYSTEM_BLAS)
  get_filename_component(_edit_blas_real "${EDIT_SYSTEM_BLAS}" REALPATH)
  if(_edit_blas_real MATCHES "openblas")
    set(EDIT_BLAS_KIND "openblas")
  elseif(_edit_blas_real MATCHES "mkl")
    set(EDIT_BLAS_KIND "mkl")
  elseif(_edit_blas_real MATCHES "/blas/libblas")
    set(EDIT_BLAS_KIND "reference")
  endif()
  if(EDIT_BLAS_KIND STREQUAL "reference")
    message(WARNING
      "libblas.so.3 resolves to the reference BLAS (${_edit_blas_real}): LibTorch will train about 7x "
      "slower. Install OpenBLAS: `apt-get install libopenblas0-openmp` (scripts/install-deps.sh does it), "
      "or select it with `update-alternatives --config libblas.so.3-${CMAKE_LIBRARY_ARCHITECTURE}`.")
  endif()
endif()
