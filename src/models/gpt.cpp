#include "edit/models/gpt.h"

#include <ATen/Parallel.h>
#include <c10/core/GradMode.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/nn/init.h>
#include <torch/nn/modules/embedding.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/modules/normalization.h>

#include <cmath>
#include <sstream>
#include <vector>
#include <nlohmann/json.hpp>

#include "edit/core/check.h"
#include "edit/core/profile_scope.h"
#include "edit/core/torch_compat.h"
#include "edit/models/cross_entropy.h"
#include "edit/models/gelu.h"
#include "edit/models/linear.h"

namespace edit::models {

GptStyle parse_style(const std::string& name) {
  if (name == "gpt2") return GptStyle::kGpt2;
  if (name == "llama") return GptStyle::kLlama;
  EDIT_FAIL("unknown model style '", name, "'; use gpt2 or llama");
}

const char* to_string(GptStyle style) { return style == GptStyle::kGpt2 ? "gpt2" : "llama"; }

GptConfig GptConfig::preset(const std::string& name) {
  GptConfig c;
  if (name == "tiny") {
    c.vocab_size = 256, c.seq_len = 64, c.dim = 64, c.heads = 4, c.layers = 2;
  } else if (name == "small") {
    c.vocab_size = 256, c.seq_len = 256, c.dim = 256, c.heads = 8, c.layers = 6;
  } else if (name == "124m") {
    c.vocab_size = 50304, c.seq_len = 1024, c.dim = 768, c.heads = 12, c.layers = 12;
  } else if (name == "1b") {
    c.vocab_size = 50304, c.seq_len = 2048, c.dim = 2048, c.heads = 16, c.layers = 18;
  } else {
    EDIT_FAIL("unknown model preset '", name,
              "'; use tiny, small, 124m or 1b (and override fields as needed)");
  }
  return c;
}

int GptConfig::hidden() const {
  if (mlp_hidden > 0) return mlp_hidden;
  if (style == GptStyle::kGpt2) return 4 * dim;
  return (8 * dim / 3 + 63) / 64 * 64;
}

void GptConfig::validate() const {
  EDIT_CHECK(vocab_size > 0 && seq_len > 0 && dim > 0 && heads > 0 && layers > 0,
             "model sizes must be positive (vocab ", vocab_size, ", seq ", seq_len, ", dim ", dim, ", heads ",
             heads, ", layers ", layers, ")");
  EDIT_CHECK(dim % heads == 0, "dim ", dim, " is not divisible by heads ", heads,
             "; pick heads that divide dim");
  EDIT_CHECK(style != GptStyle::kLlama || (dim / heads) % 2 == 0, "RoPE needs an even head size, got ",
             dim / heads, " (dim ", dim, " / heads ", heads, ")");
}

std::string GptConfig::resume_differences(const GptConfig& saved) const {
  std::ostringstream out;
  out << std::boolalpha;
  const auto note = [&out](const char* field, const auto& was, const auto& now) {
    if (was == now) return;
    out << (out.tellp() > 0 ? ", " : "") << field << " " << was << " -> " << now;
  };
  note("style", std::string(to_string(saved.style)), std::string(to_string(style)));
  note("vocab_size", saved.vocab_size, vocab_size);
  if (style == GptStyle::kGpt2 || saved.style == GptStyle::kGpt2) note("seq_len", saved.seq_len, seq_len);
  note("dim", saved.dim, dim);
  note("heads", saved.heads, heads);
  note("layers", saved.layers, layers);
  note("mlp_hidden", saved.hidden(), hidden());
  note("rope_theta", saved.rope_theta, rope_theta);
  note("norm_eps", saved.norm_eps, norm_eps);
  note("tie_embeddings", saved.tie_embeddings, tie_embeddings);
  return out.str();
}

std::int64_t GptConfig::num_parameters() const {
  const std::int64_t d = dim, v = vocab_size, h = hidden();
  if (style == GptStyle::kGpt2) {
    const std::int64_t block = 2 * (2 * d)            // two LayerNorms (weight + bias)
                               + (d * 3 * d + 3 * d)  // qkv
                               + (d * d + d)          // attention output
                               + (d * h + h)          // MLP up
                               + (h * d + d);         // MLP down
    return v * d + std::int64_t{seq_len} * d + layers * block + 2 * d + (tie_embeddings ? 0 : d * v);
  }
  const std::int64_t block = 2 * d + 4 * d * d + 3 * d * h;  // two RMSNorms, q k v o, w1 w2 w3
  return v * d + layers * block + d + (tie_embeddings ? 0 : d * v);
}

namespace {

// The rotation of every (..., t, :) row of x: out[i] = x[i] c - x[i + h] s, out[i + h] = x[i] s +
// x[i + h] c, with c, s the row's (h) table entries; `sign` -1 rotates back (the backward). x may be
// any strided view; out is contiguous. Each product and sum rounded as ATen's would be.
void rotate_rows(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin, float sign, at::Tensor& out) {
  const std::int64_t d = x.size(-1), half = d / 2, t_size = x.size(-2), rows = x.numel() / d;
  const std::int64_t dim = x.dim();
  const float* px = x.data_ptr<float>();
  const float* pc = cos.data_ptr<float>();
  const float* ps = sin.data_ptr<float>();
  float* po = out.data_ptr<float>();
  const std::int64_t step = x.stride(-1);
  at::parallel_for(0, rows, 64, [&](std::int64_t begin, std::int64_t end) {
    for (std::int64_t row = begin; row < end; ++row) {
      std::int64_t rest = row, offset = 0;
      for (std::int64_t k = dim - 2; k >= 0; --k) {  // the row's index, unravelled over x's strides
        offset += (rest % x.size(k)) * x.stride(k);
        rest /= x.size(k);
      }
      const float* in = px + offset;
      const std::int64_t t = row % t_size;
      const float* c = pc + t * half;
      const float* s = ps + t * half;
      float* o = po + row * d;
      for (std::int64_t i = 0; i < half; ++i) {
        const float a = in[i * step], b = in[(i + half) * step], si = sign * s[i];
        o[i] = a * c[i] - b * si;
        o[i + half] = a * si + b * c[i];
      }
    }
  });
}

// RoPE on fp32 CPU tensors in one pass each way. Unfused it is four products, a sum, a difference
// and a concatenation forward, and twice that backward (0.8-1.4 ms against 0.35 fused at the
// shapes of the quickstart-sized Llama, docs/benchmarks.md).
struct CpuRope : public torch::autograd::Function<CpuRope> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x, const at::Tensor& cos,
                            const at::Tensor& sin) {
    const ProfileScope scope("models::apply_rope (CPU)");
    at::Tensor out = at::empty(x.sizes(), x.options());
    rotate_rows(x, cos, sin, 1.0f, out);
    ctx->save_for_backward({cos, sin});
    return out;
  }
  static torch::autograd::tensor_list backward(torch::autograd::AutogradContext* ctx,
                                               torch::autograd::tensor_list grads) {
    const ProfileScope scope("models::apply_rope backward (CPU)");
    const auto saved = ctx->get_saved_variables();
    // A rotation's transpose is the rotation by the opposite angle: sin -> -sin.
    at::Tensor dx = at::empty(grads[0].sizes(), grads[0].options());
    rotate_rows(grads[0], saved[0], saved[1], -1.0f, dx);
    return {dx, at::Tensor(), at::Tensor()};
  }
};

// sum_i a[i] b[i] in double, in four interleaved partial sums (one chain of dependent adds would
// wait out the adder's latency at every term).
double dot_in_double(const float* a, const float* b, std::int64_t n) {
  double s0 = 0.0, s1 = 0.0, s2 = 0.0, s3 = 0.0;
  std::int64_t i = 0;
  for (; i + 4 <= n; i += 4) {
    s0 += static_cast<double>(a[i]) * b[i];
    s1 += static_cast<double>(a[i + 1]) * b[i + 1];
    s2 += static_cast<double>(a[i + 2]) * b[i + 2];
    s3 += static_cast<double>(a[i + 3]) * b[i + 3];
  }
  for (; i < n; ++i) s0 += static_cast<double>(a[i]) * b[i];
  return (s0 + s1) + (s2 + s3);
}

// RMSNorm on fp32 CPU tensors: one pass forward (the mean square accumulated in double), one
// backward. Unfused it is a square, a mean, an add, a reciprocal root and two products, each with
// its backward.
struct CpuRmsNorm : public torch::autograd::Function<CpuRmsNorm> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x, const at::Tensor& weight,
                            double eps) {
    const ProfileScope scope("models::rms_norm (CPU)");
    const at::Tensor input = x.contiguous();
    const std::int64_t d = input.size(-1), rows = input.numel() / d;
    at::Tensor out = at::empty_like(input);
    at::Tensor inv_rms = at::empty({rows}, input.options());
    const float* px = input.data_ptr<float>();
    const float* pw = weight.data_ptr<float>();
    float* po = out.data_ptr<float>();
    float* pr = inv_rms.data_ptr<float>();
    at::parallel_for(0, rows, 16, [&](std::int64_t begin, std::int64_t end) {
      for (std::int64_t row = begin; row < end; ++row) {
        const float* xr = px + row * d;
        const auto r = static_cast<float>(1.0 / std::sqrt(dot_in_double(xr, xr, d) / static_cast<double>(d) + eps));
        pr[row] = r;
        float* yr = po + row * d;
        for (std::int64_t i = 0; i < d; ++i) yr[i] = (xr[i] * r) * pw[i];
      }
    });
    ctx->save_for_backward({input, weight, inv_rms});
    return out;
  }

  // n = x r, y = n w: dw = sum over rows of dy n; dx = r (dn - n mean(dn n)) with dn = dy w.
  static torch::autograd::tensor_list backward(torch::autograd::AutogradContext* ctx,
                                               torch::autograd::tensor_list grads) {
    const ProfileScope scope("models::rms_norm backward (CPU)");
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &x = saved[0], &weight = saved[1], &inv_rms = saved[2];
    const at::Tensor dy = grads[0].contiguous();
    const std::int64_t d = x.size(-1), rows = x.numel() / d;
    at::Tensor dx = at::empty_like(x);
    const float* px = x.data_ptr<float>();
    const float* pw = weight.data_ptr<float>();
    const float* pr = inv_rms.data_ptr<float>();
    const float* pdy = dy.data_ptr<float>();
    float* pdx = dx.data_ptr<float>();
    at::parallel_for(0, rows, 16, [&](std::int64_t begin, std::int64_t end) {
      std::vector<float> dn(static_cast<std::size_t>(d)), n(static_cast<std::size_t>(d));
      for (std::int64_t row = begin; row < end; ++row) {
        const float* xr = px + row * d;
        const float* gr = pdy + row * d;
        const float r = pr[row];
        for (std::int64_t i = 0; i < d; ++i) {
          dn[static_cast<std::size_t>(i)] = gr[i] * pw[i];
          n[static_cast<std::size_t>(i)] = xr[i] * r;
        }
        const auto mean = static_cast<float>(dot_in_double(dn.data(), n.data(), d) / static_cast<double>(d));
        float* dxr = pdx + row * d;
        for (std::int64_t i = 0; i < d; ++i) {
          dxr[i] = r * (dn[static_cast<std::size_t>(i)] - n[static_cast<std::size_t>(i)] * mean);
        }
      }
    });
    at::Tensor dw;
    if (ctx->needs_input_grad(1)) {
      // Over the rows in order (the same sum for any number of threads), element-wise across the
      // row, so the loop vectorizes; fp32 partial sums, as LibTorch's reduction keeps them.
      dw = at::zeros_like(weight);
      float* pdw = dw.data_ptr<float>();
      for (std::int64_t row = 0; row < rows; ++row) {
        const float* xr = px + row * d;
        const float* gr = pdy + row * d;
        const float r = pr[row];
        for (std::int64_t i = 0; i < d; ++i) pdw[i] += gr[i] * (xr[i] * r);
      }
    }
    return {dx, dw, at::Tensor()};
  }
};

}  // namespace

at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps) {
  if (x.device().is_cpu() && x.scalar_type() == at::kFloat && x.layout() == at::kStrided && x.dim() >= 1 &&
      x.size(-1) > 0 && weight.scalar_type() == at::kFloat && weight.is_contiguous() && weight.numel() == x.size(-1)) {
    return CpuRmsNorm::apply(x, weight, eps);
  }
  // The mean square in fp32 at least: in bf16 its rounding would scale every activation.
  const at::Tensor wide = x.scalar_type() == at::kDouble ? x : x.to(at::kFloat);
  return (wide * at::rsqrt(wide.pow(2).mean(-1, true) + eps)).to(x.scalar_type()) * weight;
}

at::Tensor apply_rope(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
  const auto half = x.size(-1) / 2;
  const auto t = x.size(-2);
  if (x.device().is_cpu() && x.scalar_type() == at::kFloat && x.layout() == at::kStrided && x.dim() >= 2 &&
      x.size(-1) > 0 && x.size(-2) > 0 && cos.scalar_type() == at::kFloat && sin.scalar_type() == at::kFloat) {
    return CpuRope::apply(x, cos.narrow(0, 0, t).contiguous(), sin.narrow(0, 0, t).contiguous());
  }
  const at::Tensor x1 = x.narrow(-1, 0, half), x2 = x.narrow(-1, half, half);
  // The tables are fp32; in the activations' dtype, so bf16 compute stays bf16.
  const at::Tensor c = cos.narrow(0, 0, t).to(x.scalar_type()), s = sin.narrow(0, 0, t).to(x.scalar_type());
  return at::cat({x1 * c - x2 * s, x1 * s + x2 * c}, -1);
}

std::pair<at::Tensor, at::Tensor> rope_tables(std::int64_t max_positions, std::int64_t head_dim,
                                              double theta) {
  const at::Tensor inv_freq = at::pow(theta, -at::arange(0, head_dim, 2, at::kDouble) / head_dim);  // (d/2,)
  const at::Tensor angles = at::outer(at::arange(max_positions, at::kDouble), inv_freq);  // (T, d/2)
  return {angles.cos().to(at::kFloat), angles.sin().to(at::kFloat)};
}

std::string GptConfig::to_json() const {
  return nlohmann::json{{"style", to_string(style)},
                        {"vocab_size", vocab_size},
                        {"seq_len", seq_len},
                        {"dim", dim},
                        {"heads", heads},
                        {"layers", layers},
                        {"mlp_hidden", hidden()},
                        {"rope_theta", rope_theta},
                        {"norm_eps", norm_eps},
                        {"tie_embeddings", tie_embeddings}}
      .dump(2);
}

GptConfig GptConfig::from_json(const std::string& text) {
  GptConfig c;
  try {
    const auto j = nlohmann::json::parse(text);
    c.style = parse_style(j.at("style").get<std::string>());
    c.vocab_size = j.at("vocab_size").get<int>();
    c.seq_len = j.at("seq_len").get<int>();
    c.dim = j.at("dim").get<int>();
    c.heads = j.at("heads").get<int>();
    c.layers = j.at("layers").get<int>();
    c.mlp_hidden = j.at("mlp_hidden").get<int>();
    c.rope_theta = j.at("rope_theta").get<double>();
    c.norm_eps = j.at("norm_eps").get<double>();
    c.tie_embeddings = j.at("tie_embeddings").get<bool>();
  } catch (const nlohmann::json::exception& e) {
    EDIT_FAIL("bad model configuration JSON (", e.what(), "); use the config.json that edit-train-gpt wrote");
  }
  c.validate();
  return c;
}

namespace {

// y = x / rms(x) * weight
struct RmsNormImpl : torch::nn::Module {
  RmsNormImpl(int dim, double eps) : eps(eps) { weight = register_parameter("weight", at::ones({dim})); }
  at::Tensor forward(const at::Tensor& x) { return rms_norm(x, weight, eps); }
  at::Tensor weight;
  double eps;
};
TORCH_MODULE(RmsNorm);

// A Linear layer's product through edit::models::linear (oneDNN on the CPU where built with it).
at::Tensor dense(const torch::nn::Linear& layer, const at::Tensor& x) {
  return models::linear(x, layer->weight, layer->bias);
}

struct EmbeddingImpl : torch::nn::Module {
  explicit EmbeddingImpl(const GptConfig& c) {
    tokens = register_module("tokens", torch::nn::Embedding(c.vocab_size, c.dim));
    if (c.style == GptStyle::kGpt2)
      positions = register_module("positions", torch::nn::Embedding(c.seq_len, c.dim));
  }
  at::Tensor forward(const at::Tensor& ids) {  // (B, T) -> (B, T, C)
    at::Tensor x = tokens->forward(ids);
    if (positions) x = x + positions->forward(at::arange(ids.size(1), ids.options()));
    return x;
  }
  torch::nn::Embedding tokens{nullptr}, positions{nullptr};
};
TORCH_MODULE(Embedding);

struct BlockImpl : torch::nn::Module {
  explicit BlockImpl(const GptConfig& c) : config(c) {
    const bool gpt2 = c.style == GptStyle::kGpt2;
    const int h = c.hidden();
    auto linear = [&](const char* name, int in, int out) {
      return register_module(name, torch::nn::Linear(torch::nn::LinearOptions(in, out).bias(gpt2)));
    };
    if (gpt2) {
      ln1 = register_module("norm1",
                            torch::nn::LayerNorm(torch::nn::LayerNormOptions({c.dim}).eps(c.norm_eps)));
      ln2 = register_module("norm2",
                            torch::nn::LayerNorm(torch::nn::LayerNormOptions({c.dim}).eps(c.norm_eps)));
    } else {
      rms1 = register_module("norm1", RmsNorm(c.dim, c.norm_eps));
      rms2 = register_module("norm2", RmsNorm(c.dim, c.norm_eps));
      auto [cos, sin] = rope_tables(c.seq_len, c.dim / c.heads, c.rope_theta);
      rope_cos = register_buffer("rope_cos", cos);
      rope_sin = register_buffer("rope_sin", sin);
    }
    qkv = linear("qkv", c.dim, 3 * c.dim);
    out = linear("out", c.dim, c.dim);
    if (gpt2) {
      up = linear("up", c.dim, h);
    } else {
      gate = linear("gate", c.dim, h);
      up = linear("up", c.dim, h);
    }
    down = linear("down", h, c.dim);
    // GPT-2 initialisation: N(0, 0.02), the residual projections scaled by 1/sqrt(2 layers).
    c10::NoGradGuard no_grad;
    for (auto& p : named_parameters()) {
      if (p.key().find("norm") != std::string::npos) continue;
      if (p.value().dim() < 2) {
        p.value().zero_();
      } else {
        const bool residual = p.key().rfind("out.", 0) == 0 || p.key().rfind("down.", 0) == 0;
        p.value().normal_(0.0, residual ? 0.02 / std::sqrt(2.0 * c.layers) : 0.02);
      }
    }
  }

  at::Tensor forward(const at::Tensor& x) {  // (B, T, C) -> (B, T, C)
    const int64_t B = x.size(0), T = x.size(1), C = x.size(2), H = config.heads, hd = C / H;
    const bool gpt2 = config.style == GptStyle::kGpt2;
    auto split = [&](const at::Tensor& t) {
      return t.reshape({B, T, H, hd}).transpose(1, 2);
    };  // (B, H, T, hd)
    const auto parts = dense(qkv, gpt2 ? ln1->forward(x) : rms1->forward(x)).chunk(3, -1);
    at::Tensor q = split(parts[0]), k = split(parts[1]), v = split(parts[2]);
    if (!gpt2) {
      q = apply_rope(q, rope_cos, rope_sin);
      k = apply_rope(k, rope_cos, rope_sin);
    }
    const at::Tensor y = models::causal_attention(q, k, v).transpose(1, 2).reshape({B, T, C});
    const at::Tensor h = x + dense(out, y);
    const at::Tensor n = gpt2 ? ln2->forward(h) : rms2->forward(h);
    const at::Tensor mlp = gpt2 ? models::gelu_tanh(dense(up, n)) : at::silu(dense(gate, n)) * dense(up, n);
    return h + dense(down, mlp);
  }

  GptConfig config;
  torch::nn::LayerNorm ln1{nullptr}, ln2{nullptr};
  RmsNorm rms1{nullptr}, rms2{nullptr};
  torch::nn::Linear qkv{nullptr}, out{nullptr}, gate{nullptr}, up{nullptr}, down{nullptr};
  at::Tensor rope_cos, rope_sin;
};
TORCH_MODULE(Block);

// `tied`: the token embedding's (V, C) weight, registered here too, so the output projection
// reuses it (GPT-2); undefined: a projection of its own.
struct HeadImpl : torch::nn::Module {
  HeadImpl(const GptConfig& c, const at::Tensor& tied) : gpt2(c.style == GptStyle::kGpt2) {
    if (gpt2) {
      ln =
          register_module("norm", torch::nn::LayerNorm(torch::nn::LayerNormOptions({c.dim}).eps(c.norm_eps)));
    } else {
      rms = register_module("norm", RmsNorm(c.dim, c.norm_eps));
    }
    if (tied.defined()) {
      weight = register_parameter("weight", tied);
    } else {
      weight = register_parameter("weight", at::empty({c.vocab_size, c.dim}));
      c10::NoGradGuard no_grad;
      weight.normal_(0.0, 0.02);
    }
  }
  at::Tensor forward(const at::Tensor& x) {  // (B, T, C) -> (B, T, V)
    return models::linear(gpt2 ? ln->forward(x) : rms->forward(x), weight);
  }
  bool gpt2;
  torch::nn::LayerNorm ln{nullptr};
  RmsNorm rms{nullptr};
  at::Tensor weight;
};
TORCH_MODULE(Head);

}  // namespace

GptImpl::GptImpl(const GptConfig& config) : config_(config) {
  config_.validate();
  embed = register_module("embed", shard::Unit(Embedding(config_)));
  {
    c10::NoGradGuard no_grad;
    for (auto& p : embed->parameters()) p.normal_(0.0, 0.02);
  }
  for (int i = 0; i < config_.layers; ++i) {
    blocks.push_back(register_module("block" + std::to_string(i), shard::Unit(Block(config_))));
  }
  at::Tensor tied;
  if (config_.tie_embeddings) {
    tied = embed->inner().ptr()->named_parameters()["tokens.weight"];
  }
  head = register_module("head", shard::Unit(Head(config_, tied)));
}

at::Tensor GptImpl::forward(const at::Tensor& tokens) {
  EDIT_CHECK(tokens.dim() == 2 && tokens.size(1) <= config_.seq_len,
             "tokens must be (batch, T) with T <= seq_len ", config_.seq_len, ", got shape ", tokens.sizes());
  at::Tensor x = embed->forward(tokens);
  for (auto& block : blocks) x = block->forward(x);
  return head->forward(x);
}

at::Tensor GptImpl::loss(const at::Tensor& tokens, const at::Tensor& targets) {
  // Softmax and log over the vocabulary in fp32 at least (bf16 logits lose the small probabilities),
  // fused on CUDA (models/cross_entropy.h).
  return models::cross_entropy(forward(tokens), targets);
}

}  // namespace edit::models
