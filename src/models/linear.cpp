#include "edit/models/linear.h"

#include <ATen/ATen.h>
#include <torch/csrc/autograd/custom_function.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <optional>

#include "edit/config.h"
#include "edit/core/check.h"
#include "edit/core/profile_scope.h"
#include "edit/core/torch_compat.h"
#include "backend_choice.h"
#include "onednn.h"

#if EDIT_HAS_ONEDNN
#include <oneapi/dnnl/dnnl.h>
#endif

namespace edit::models {

bool detail::onednn_enabled() {
#if EDIT_HAS_ONEDNN
  static const bool enabled = !detail::env_selects_aten("EDIT_CPU_GEMM");
  return enabled;
#else
  return false;
#endif
}

namespace {

using detail::onednn_enabled;

#if EDIT_HAS_ONEDNN
// C (m, n) = alpha op(A) op(B) + beta C, row-major, fp32; op is a transpose where `ta` / `tb` is 'T'.
void sgemm(char ta, char tb, std::int64_t m, std::int64_t n, std::int64_t k, const float* a, std::int64_t lda,
           const float* b, std::int64_t ldb, float* c, std::int64_t ldc, float alpha = 1.0f, float beta = 0.0f) {
  const dnnl_status_t status = dnnl_sgemm(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
  EDIT_CHECK(status == dnnl_success, "oneDNN's sgemm failed (status ", static_cast<int>(status), ") on a ", m,
             "x", k, " by ", k, "x", n, " product; set EDIT_CPU_GEMM=aten to use LibTorch's instead");
}

// x W^T with oneDNN, autograd's way: the inputs saved as given (the ShardedModel re-gathers
// a unit's parameters in place before its backward, as it does for at::linear's saved tensors).
struct OneDnnLinear : public torch::autograd::Function<OneDnnLinear> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x,
                            const at::Tensor& weight) {
    // A span of its own for the profiler, which records ATen ops and sees none in an sgemm.
    const ProfileScope scope("models::linear (oneDNN)");
    const std::int64_t in = weight.size(1), out = weight.size(0);
    const at::Tensor x2 = x.reshape({-1, in}).contiguous();
    const at::Tensor w = weight.contiguous();
    const std::int64_t rows = x2.size(0);
    at::Tensor y = at::empty({rows, out}, x.options());
    if (rows > 0)
      sgemm('N', 'T', rows, out, in, x2.data_ptr<float>(), in, w.data_ptr<float>(), in, y.data_ptr<float>(),
            out);
    ctx->save_for_backward({x2, w});
    auto sizes = x.sizes().vec();
    sizes.back() = out;
    return y.view(sizes);
  }

  static torch::autograd::tensor_list backward(torch::autograd::AutogradContext* ctx,
                                               torch::autograd::tensor_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor& x2 = saved[0];
    const at::Tensor& w = saved[1];
    const std::int64_t rows = x2.size(0), in = w.size(1), out = w.size(0);
    const at::Tensor dy = grads[0].reshape({rows, out}).contiguous();
    at::Tensor dx, dw;
    if (ctx->needs_input_grad(0)) {
      dx = at::empty({rows, in}, dy.options());
      if (rows > 0)
        sgemm('N', 'N', rows, in, out, dy.data_ptr<float>(), out, w.data_ptr<float>(), in,
              dx.data_ptr<float>(), in);
      auto sizes = grads[0].sizes().vec();
      sizes.back() = in;
      dx = dx.view(sizes);
    }
    if (ctx->needs_input_grad(1)) {
      dw = at::empty({out, in}, dy.options());
      if (rows > 0) {
        sgemm('T', 'N', out, in, rows, dy.data_ptr<float>(), out, x2.data_ptr<float>(), in,
              dw.data_ptr<float>(), in);
      } else {
        dw.zero_();
      }
    }
    return {dx, dw};
  }
};

// One matrix of a batch as sgemm reads it: row-major ('N', ld = row stride) or a transposed view
// of a row-major matrix ('T', ld = column stride). Neither: nullopt (the caller copies).
struct Operand {
  char trans;
  std::int64_t ld;
};
std::optional<Operand> operand_of(const at::Tensor& t) {
  const std::int64_t rows = t.size(-2), cols = t.size(-1);
  if (t.stride(-1) == 1 && (rows <= 1 || t.stride(-2) >= cols))
    return Operand{'N', std::max<std::int64_t>(t.stride(-2), cols)};
  if (t.stride(-2) == 1 && (cols <= 1 || t.stride(-1) >= rows))
    return Operand{'T', std::max<std::int64_t>(t.stride(-1), rows)};
  return std::nullopt;
}

// alpha a (..., m, k) @ b (..., k, n) into a new contiguous (..., m, n), one sgemm per matrix; the
// leading dimensions may have any strides. With `addend` (broadcastable to (..., m, n)), the
// product is added to it in the sgemm (beta = 1) instead of in a pass of its own.
at::Tensor batched_product(at::Tensor a, at::Tensor b, float alpha = 1.0f, const at::Tensor& addend = {}) {
  if (!operand_of(a)) a = a.contiguous();
  if (!operand_of(b)) b = b.contiguous();
  const Operand oa = *operand_of(a), ob = *operand_of(b);
  const std::int64_t m = a.size(-2), k = a.size(-1), n = b.size(-1);
  auto sizes = a.sizes().vec();
  sizes.back() = n;
  at::Tensor c = addend.defined() ? addend.expand(sizes).contiguous() : at::empty(sizes, a.options());
  const std::int64_t lead = a.dim() - 2;
  std::int64_t batches = 1;
  for (std::int64_t d = 0; d < lead; ++d) batches *= a.size(d);
  if (m == 0 || n == 0) return c;
  if (k == 0) return addend.defined() ? c : c.zero_();
  const float* pa = a.data_ptr<float>();
  const float* pb = b.data_ptr<float>();
  float* pc = c.data_ptr<float>();
  for (std::int64_t i = 0; i < batches; ++i) {
    std::int64_t rest = i, offset_a = 0, offset_b = 0;
    for (std::int64_t d = lead - 1; d >= 0; --d) {  // the batch index, unravelled over the strides
      const std::int64_t index = rest % a.size(d);
      rest /= a.size(d);
      offset_a += index * a.stride(d);
      offset_b += index * b.stride(d);
    }
    sgemm(oa.trans, ob.trans, m, n, k, pa + offset_a, oa.ld, pb + offset_b, ob.ld, pc + i * m * n, n, alpha,
          addend.defined() ? 1.0f : 0.0f);
  }
  return c;
}

// a @ b over a batch, autograd's way: da = dc b^T, db = a^T dc (transposed views, not copies).
struct OneDnnMatmul : public torch::autograd::Function<OneDnnMatmul> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& a, const at::Tensor& b) {
    const ProfileScope scope("models::matmul (oneDNN)");
    ctx->save_for_backward({a, b});
    return batched_product(a, b);
  }
  static torch::autograd::tensor_list backward(torch::autograd::AutogradContext* ctx,
                                               torch::autograd::tensor_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor& a = saved[0];
    const at::Tensor& b = saved[1];
    at::Tensor da, db;
    if (ctx->needs_input_grad(0)) da = batched_product(grads[0], b.transpose(-2, -1));
    if (ctx->needs_input_grad(1)) db = batched_product(a.transpose(-2, -1), grads[0]);
    return {da, db};
  }
};

// The attention's scores, scale q k^T + causal mask over (..., T, d) q and k, in one sgemm per
// matrix: the scale is its alpha, and the mask (0 on and below the diagonal, -inf above) its C
// with beta = 1. Unfused, the scale and the mask are two more passes over the (..., T, T) scores,
// forward and backward. The mask has no gradient: dq = scale g k, dk = scale g^T q.
struct CausalScores : public torch::autograd::Function<CausalScores> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& q, const at::Tensor& k,
                            double scale) {
    const ProfileScope scope("models::causal_scores (oneDNN)");
    ctx->save_for_backward({q, k});
    ctx->saved_data["scale"] = scale;
    const std::int64_t t = q.size(-2);
    const at::Tensor mask = at::full({t, t}, -std::numeric_limits<float>::infinity(), q.options()).triu_(1);
    return batched_product(q, k.transpose(-2, -1), static_cast<float>(scale), mask);
  }
  static torch::autograd::tensor_list backward(torch::autograd::AutogradContext* ctx,
                                               torch::autograd::tensor_list grads) {
    const auto saved = ctx->get_saved_variables();
    const auto scale = static_cast<float>(ctx->saved_data["scale"].toDouble());
    at::Tensor dq, dk;
    if (ctx->needs_input_grad(0)) dq = batched_product(grads[0], saved[1], scale);
    if (ctx->needs_input_grad(1)) dk = batched_product(grads[0].transpose(-2, -1), saved[0], scale);
    return {dq, dk, at::Tensor()};
  }
};

bool fp32_cpu(const at::Tensor& t) {
  return t.device().is_cpu() && t.scalar_type() == at::kFloat && t.layout() == at::kStrided;
}

bool takes_onednn(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias) {
  return onednn_enabled() && fp32_cpu(x) && fp32_cpu(weight) && (!bias.defined() || fp32_cpu(bias)) &&
         weight.dim() == 2 && x.dim() >= 1 && x.size(-1) == weight.size(1);
}

#endif

}  // namespace

at::Tensor linear(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias) {
#if EDIT_HAS_ONEDNN
  // The bias as its own op: autograd's custom functions take defined tensors only.
  if (takes_onednn(x, weight, bias)) {
    at::Tensor y = OneDnnLinear::apply(x, weight);
    return bias.defined() ? y + bias : y;
  }
#endif
  return at::linear(x, weight, bias);
}

at::Tensor matmul(const at::Tensor& a, const at::Tensor& b) {
#if EDIT_HAS_ONEDNN
  if (onednn_enabled() && fp32_cpu(a) && fp32_cpu(b) && a.dim() >= 2 && a.dim() == b.dim() &&
      a.sizes().slice(0, a.dim() - 2) == b.sizes().slice(0, b.dim() - 2) && a.size(-1) == b.size(-2)) {
    return OneDnnMatmul::apply(a, b);
  }
#endif
  return at::matmul(a, b);
}

at::Tensor causal_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
  if (compat::has_fused_attention()) return compat::causal_attention(q, k, v);
#if EDIT_HAS_ONEDNN
  if (onednn_enabled() && fp32_cpu(q) && fp32_cpu(k) && fp32_cpu(v) && q.dim() >= 2 && q.sizes() == k.sizes() &&
      q.sizes().slice(0, q.dim() - 1) == v.sizes().slice(0, v.dim() - 1)) {
    const at::Tensor scores = CausalScores::apply(q, k, 1.0 / std::sqrt(static_cast<double>(q.size(-1))));
    return models::matmul(at::softmax(scores, -1), v);
  }
#endif
  return compat::causal_attention_reference(q, k, v);
}

const char* cpu_gemm_backend() { return onednn_enabled() ? "onednn" : "aten"; }

}  // namespace edit::models
