// GPT models built from sharded units (docs/architecture.md, models/).
//
// Two styles share one skeleton, embedding unit -> n block units -> head unit:
//   GPT-2:  learned positions, LayerNorm, GELU MLP (4x), biases;
//   Llama:  RoPE, RMSNorm, SwiGLU MLP (~8/3 x, rounded to 64), no biases.
// Causal attention uses LibTorch's fused scaled-dot-product attention where the LibTorch has it
// (2.x), else oneDNN products with the scale and mask in the sgemm, else an exact fallback
// (models::causal_attention in linear.h).
// With tie_embeddings (GPT-2's choice) the head projects with the token embedding's weight; the
// ShardedModel keeps it in the embedding unit and lends it to the head unit.
#pragma once

#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "edit/shard/unit.h"

namespace edit::models {

enum class GptStyle { kGpt2, kLlama };
GptStyle parse_style(const std::string& name);  // "gpt2" or "llama"
const char* to_string(GptStyle style);

struct GptConfig {
  GptStyle style = GptStyle::kGpt2;
  int vocab_size = 256;   // 256 for the byte-level tokenizer
  int seq_len = 256;      // context length (positions for GPT-2, RoPE table for Llama)
  int dim = 256;
  int heads = 8;
  int layers = 6;
  int mlp_hidden = 0;     // 0: 4 dim (GPT-2) or 8/3 dim rounded up to a multiple of 64 (Llama)
  double rope_theta = 10000.0;
  double norm_eps = 1e-5;
  bool tie_embeddings = false;  // head reuses the token embedding (GPT-2 ties; edit-train-gpt's default for gpt2)

  // "tiny" (tests), "small" (CPU demo, ~5 M), "124m" (GPT-2 small shape), "1b" (1B class, GPUs).
  static GptConfig preset(const std::string& name);
  int hidden() const;                  // the MLP width in effect
  void validate() const;               // throws edit::Error naming the field and the fix
  std::int64_t num_parameters() const;  // closed form, equal to the module's count
  int num_units() const { return layers + 2; }  // GptImpl's shard units: the embedding, each block, the head

  // What keeps weights saved by a model of configuration `saved` from meaning the same in this
  // one, as "heads 4 -> 2, layers 2 -> 3" (empty: resumable). Shapes alone do not tell: other
  // heads split the same matrices differently. Llama's seq_len may change (RoPE is computed, not
  // trained); GPT-2's may not (its position table is a trained weight).
  std::string resume_differences(const GptConfig& saved) const;

  // JSON with every field (written next to checkpoints and exports, read by the tools).
  std::string to_json() const;
  static GptConfig from_json(const std::string& text);  // throws naming a missing or bad field
};

// RMSNorm over the last dimension, x / sqrt(mean(x^2) + eps) * weight, the mean square in fp32 at
// least (fp32 CPU tensors: one fused pass each way, the mean square in double).
at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps);

// Rotary position embedding, rotate-half convention: pairs (i, i + d/2) of (B, H, T, d) are
// rotated by position t times theta^(-2i/d). `cos` and `sin` are (max T, d/2) tables.
at::Tensor apply_rope(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin);
// The (T, d/2) cos and sin tables for head size d.
std::pair<at::Tensor, at::Tensor> rope_tables(std::int64_t max_positions, std::int64_t head_dim, double theta);

class GptImpl : public torch::nn::Module {
 public:
  explicit GptImpl(const GptConfig& config);
  at::Tensor forward(const at::Tensor& tokens);                                // (B, T) -> (B, T, V)
  at::Tensor loss(const at::Tensor& tokens, const at::Tensor& targets);        // mean cross-entropy
  const GptConfig& config() const { return config_; }

  shard::Unit embed{nullptr};
  std::vector<shard::Unit> blocks;
  shard::Unit head{nullptr};

 private:
  GptConfig config_;
};
TORCH_MODULE(Gpt);

}  // namespace edit::models
