// The one place where LibTorch 1.13 (Debian, CPU) and PyTorch 2.x LibTorch (CUDA builds) differ.
// Code elsewhere calls these helpers instead of testing versions itself.
#pragma once

#include <ATen/ATen.h>
#include <torch/version.h>

#include <cmath>
#include <limits>

#define EDIT_TORCH_AT_LEAST(major, minor) \
  (TORCH_VERSION_MAJOR > (major) || (TORCH_VERSION_MAJOR == (major) && TORCH_VERSION_MINOR >= (minor)))

namespace edit::compat {

// "1.13.0", "2.11.0", ...: the LibTorch this translation unit was compiled against.
constexpr const char* torch_version() { return TORCH_VERSION; }

// The StorageImpl behind a tensor, through TensorImpl::storage(), which 1.13 and 2.x both have
// (the C++ Tensor has no untyped_storage(); that name is Python's).
inline c10::StorageImpl* storage_impl(const at::Tensor& tensor) {
  return tensor.unsafeGetTensorImpl()->storage().unsafeGetStorageImpl();
}

// Frees the memory behind `tensor`'s storage but keeps the StorageImpl object, so every view of
// it (and every tensor autograd saved from those views) stays valid and sees the memory again
// after reallocate_storage(). This is how a sharded unit drops its full parameters after forward
// (docs/architecture.md, shard/). Touching the data in between is undefined: callers track the state.
inline void release_storage(const at::Tensor& tensor) {
  c10::StorageImpl* storage = storage_impl(tensor);
  storage->set_data_ptr_noswap(at::DataPtr(nullptr, storage->device()));
  storage->set_nbytes(0);
}

// Gives a released storage `nbytes` of fresh, uninitialized memory from its own allocator.
inline void reallocate_storage(const at::Tensor& tensor, size_t nbytes) {
  c10::StorageImpl* storage = storage_impl(tensor);
  storage->set_data_ptr_noswap(storage->allocator()->allocate(nbytes));
  storage->set_nbytes(nbytes);
}

inline size_t storage_nbytes(const at::Tensor& tensor) { return storage_impl(tensor)->nbytes(); }

// Exact causal attention, softmax(q k^T / sqrt(d) + causal mask) v, in plain ATen ops.
// (B, H, T, d) x 3 -> (B, H, T, d)
// With `product(a, b)` for the two batched matrix products (e.g. edit::models::matmul).
template <typename Product>
at::Tensor causal_attention_with(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, Product product) {
  const auto t = q.size(-2);
  at::Tensor scores = product(q, k.transpose(-2, -1)) / std::sqrt(static_cast<double>(q.size(-1)));
  const at::Tensor future = at::ones({t, t}, q.options().dtype(at::kBool)).triu(1);
  return product(at::softmax(scores.masked_fill(future, -std::numeric_limits<double>::infinity()), -1), v);
}
inline at::Tensor causal_attention_reference(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
  return causal_attention_with(q, k, v, [](const at::Tensor& a, const at::Tensor& b) { return at::matmul(a, b); });
}

// The fused scaled-dot-product attention where this LibTorch has it (2.x), else the reference.
inline at::Tensor causal_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
#if EDIT_TORCH_AT_LEAST(2, 0)
  return at::scaled_dot_product_attention(q, k, v, /*attn_mask=*/{}, /*dropout_p=*/0.0, /*is_causal=*/true);
#else
  return causal_attention_reference(q, k, v);
#endif
}

inline bool has_fused_attention() { return EDIT_TORCH_AT_LEAST(2, 0); }

}  // namespace edit::compat
