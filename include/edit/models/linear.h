// The models' matrix products (y = x W^T + b, batched products, causal attention), on the CPU
// through oneDNN's sgemm where libedit was built with it (EDIT_HAS_ONEDNN, cmake/EditCpuGemm.cmake).
//
// Why not at::linear: on the CPU LibTorch calls the system BLAS, and OpenBLAS chooses its kernels
// by CPU model. On a CPU newer than the OpenBLAS release it falls back to its oldest x86-64
// kernels (Debian 12's OpenBLAS 0.3.21 on Emerald Rapids runs SSE3 code at ~30 GFLOP/s a core);
// oneDNN chooses by the CPU's features (AVX-512 there: 4-5x faster). Where OpenBLAS recognises the
// CPU, the two are close.
//
// The fast path takes fp32, contiguous-or-made-so CPU tensors; anything else (CUDA, bf16, double)
// is at::linear. Forward and backward (dx = dy W, dW = dy^T x, db = sum dy) are products of the
// same sgemm; one product is deterministic, as at::linear's is. The environment variable
// EDIT_CPU_GEMM=aten forces at::linear (read once), for comparisons; it switches oneDNN's GELU
// off too (models/gelu.h).
#pragma once

#include <ATen/core/Tensor.h>

namespace edit::models {

// x (..., in), weight (out, in), bias (out) or undefined -> (..., out). Differentiable.
at::Tensor linear(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias = {});

// a (..., m, k) @ b (..., k, n) -> (..., m, n), the leading dimensions equal (no broadcasting):
// the attention's batched products, by the same sgemm (a transposed view is read as such, not
// copied). Differentiable; anything not fp32 on the CPU is at::matmul.
at::Tensor matmul(const at::Tensor& a, const at::Tensor& b);

// softmax(q k^T / sqrt(d) + causal mask) v over (..., T, d) q, k, v: LibTorch's fused kernel where
// it has one (2.x); on the CPU with oneDNN, the scale and the mask ride in the scores' sgemm
// (alpha, and beta = 1 onto the mask) and the two products are matmul()'s; else the exact
// reference (edit::compat::causal_attention_reference). Differentiable.
at::Tensor causal_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v);

// Whether linear() takes oneDNN for fp32 CPU tensors in this process ("onednn") or LibTorch's
// at::linear ("aten": not built with oneDNN, or EDIT_CPU_GEMM=aten).
const char* cpu_gemm_backend();

}  // namespace edit::models
