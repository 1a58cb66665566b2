// The one place where LibTorch 1.13 (Debian, CPU) and PyTorch 2.x LibTorch (CUDA builds) differ.
// Code elsewhere calls these helpers instead of testing versions itself.
#pragma once

#include <ATen/ATen.h>
#include <torch/version.h>

#define EDIT_TORCH_AT_LEAST(major, minor) \
  (TORCH_VERSION_MAJOR > (major) || (TORCH_VERSION_MAJOR == (major) && TORCH_VERSION_MINOR >= (minor)))

namespace edit::compat {

// "1.13.0", "2.11.0", ...: the LibTorch this translation unit was compiled against.
constexpr const char* torch_version() { return TORCH_VERSION; }

// The StorageImpl behind a tensor. 2.x renamed storage() to untyped_storage() and deprecates the
// old name for Python-facing typed storages; both give the same StorageImpl.
inline c10::StorageImpl* storage_impl(const at::Tensor& tensor) {
#if EDIT_TORCH_AT_LEAST(2, 0)
  return tensor.untyped_storage().unsafeGetStorageImpl();
#else
  return tensor.storage().unsafeGetStorageImpl();
#endif
}

}  // namespace edit::compat
