// The pseudo-gradient of one flat shard: delta = anchor - local, and its squared L2 norm, in one
// pass (docs/architecture.md, sync/). pseudo_grad_sqnorm_cpu is the CPU twin of
// edit::kernels::pseudo_grad_sqnorm_cuda; pseudo_gradient() picks the twin, the kernel or ATen.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

namespace edit::sync {

// delta[i] = anchor[i] - local[i] for i < n; returns sum_i delta[i]^2 accumulated in double, so
// the result does not depend on n's size the way a float running sum would. Threads sum blocks of
// a fixed size and the blocks are added in order, so it does not depend on the thread count
// either. delta may be null: the same sum, bit for bit, with nothing stored.
double pseudo_grad_sqnorm_cpu(const float* anchor, const float* local, float* delta, std::int64_t n);

// The pseudo-gradient of a unit's shard, on local's device, with ||delta||^2 in *sqnorm unless
// sqnorm is null. `anchor` may live in host memory (offload): it is copied to local's device on
// the current stream. Float contiguous shards take one fused pass: the CPU twin above, or the
// CUDA kernel on LibTorch's current stream (its norm is a float sum, read back once and only when
// asked for). Other dtypes and layouts take plain ATen ops.
at::Tensor pseudo_gradient(const at::Tensor& anchor, const at::Tensor& local, double* sqnorm);

// ||anchor - local||^2 without keeping the difference, bit for bit the norm pseudo_gradient()
// gives: what the penalty's norm pass needs ahead of the exchange. Host float shards are read once
// and nothing is written or allocated; elsewhere the pseudo-gradient is computed and dropped.
double pseudo_grad_sqnorm(const at::Tensor& anchor, const at::Tensor& local);

// sum_i x[i]^2 of a shard without a double copy of it: accumulated in double for float CPU
// contiguous tensors, else by at::linalg_vector_norm in x's dtype.
double squared_norm(const at::Tensor& x);

}  // namespace edit::sync
