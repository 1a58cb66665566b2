// A small GPT-like model built from edit::shard::Units, for the sharding tests: embedding unit,
// n pre-norm transformer blocks (causal self-attention + GELU MLP), head unit.
#pragma once

#include <torch/nn/functional.h>
#include <torch/nn/modules/embedding.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/modules/normalization.h>

#include <cmath>
#include <string>
#include <vector>

#include "edit/shard/unit.h"

namespace edit::testing_support {

struct TinyConfig {
  int vocab = 32;
  int seq = 8;
  int dim = 16;
  int heads = 2;
  int layers = 2;
};

struct TinyEmbedImpl : torch::nn::Module {
  explicit TinyEmbedImpl(const TinyConfig& c)
      : tokens(register_module("tokens", torch::nn::Embedding(c.vocab, c.dim))),
        positions(register_module("positions", torch::nn::Embedding(c.seq, c.dim))) {}
  at::Tensor forward(const at::Tensor& ids) {  // (B, T) -> (B, T, C)
    return tokens->forward(ids) + positions->forward(at::arange(ids.size(1), ids.options()));
  }
  torch::nn::Embedding tokens, positions;
};
TORCH_MODULE(TinyEmbed);

struct TinyBlockImpl : torch::nn::Module {
  explicit TinyBlockImpl(const TinyConfig& c)
      : heads(c.heads),
        norm1(register_module("norm1", torch::nn::LayerNorm(torch::nn::LayerNormOptions({c.dim})))),
        // No bias: the key bias's gradient is zero in exact arithmetic (softmax ignores a shift shared by
        // all keys), so Adam would turn its rounding noise into full-size steps that no two summation
        // orders agree on.
        qkv(register_module("qkv", torch::nn::Linear(torch::nn::LinearOptions(c.dim, 3 * c.dim).bias(false)))),
        proj(register_module("proj", torch::nn::Linear(c.dim, c.dim))),
        norm2(register_module("norm2", torch::nn::LayerNorm(torch::nn::LayerNormOptions({c.dim})))),
        up(register_module("up", torch::nn::Linear(c.dim, 4 * c.dim))),
        down(register_module("down", torch::nn::Linear(4 * c.dim, c.dim))) {}

  at::Tensor forward(const at::Tensor& x) {  // (B, T, C) -> (B, T, C)
    const auto B = x.size(0), T = x.size(1), C = x.size(2), hd = C / heads;
    auto q_k_v = qkv->forward(norm1->forward(x)).chunk(3, -1);  // 3 x (B, T, C)
    auto split = [&](const at::Tensor& t) { return t.view({B, T, heads, hd}).transpose(1, 2); };  // (B, H, T, hd)
    at::Tensor scores = at::matmul(split(q_k_v[0]), split(q_k_v[1]).transpose(-2, -1)) / std::sqrt(double(hd));
    const at::Tensor causal = at::ones({T, T}, x.options().dtype(at::kBool)).triu(1);
    at::Tensor attention = at::softmax(scores.masked_fill(causal, -INFINITY), -1);
    at::Tensor y = at::matmul(attention, split(q_k_v[2])).transpose(1, 2).reshape({B, T, C});
    at::Tensor h = x + proj->forward(y);
    return h + down->forward(at::gelu(up->forward(norm2->forward(h))));
  }
  int heads;
  torch::nn::LayerNorm norm1;
  torch::nn::Linear qkv, proj;
  torch::nn::LayerNorm norm2;
  torch::nn::Linear up, down;
};
TORCH_MODULE(TinyBlock);

struct TinyHeadImpl : torch::nn::Module {
  explicit TinyHeadImpl(const TinyConfig& c)
      : norm(register_module("norm", torch::nn::LayerNorm(torch::nn::LayerNormOptions({c.dim})))),
        out(register_module("out", torch::nn::Linear(c.dim, c.vocab))) {}
  at::Tensor forward(const at::Tensor& x) { return out->forward(norm->forward(x)); }  // (B, T, C) -> (B, T, V)
  torch::nn::LayerNorm norm;
  torch::nn::Linear out;
};
TORCH_MODULE(TinyHead);

struct TinyTransformer : torch::nn::Module {
  explicit TinyTransformer(const TinyConfig& c) : config(c) {
    embed = register_module("embed", edit::shard::Unit(TinyEmbed(c)));
    for (int i = 0; i < c.layers; ++i) {
      blocks.push_back(register_module("block" + std::to_string(i), edit::shard::Unit(TinyBlock(c))));
    }
    head = register_module("head", edit::shard::Unit(TinyHead(c)));
  }
  at::Tensor forward(const at::Tensor& ids) {  // (B, T) -> (B, T, V)
    at::Tensor x = embed->forward(ids);
    for (size_t i = 0; i < blocks.size(); ++i) {
      if (static_cast<int>(i) != skip_block) x = blocks[i]->forward(x);
    }
    return head->forward(x);
  }
  at::Tensor loss(const at::Tensor& ids, const at::Tensor& targets) {
    const at::Tensor logits = forward(ids);
    return torch::nn::functional::cross_entropy(logits.reshape({-1, config.vocab}), targets.reshape({-1}));
  }
  TinyConfig config;
  int skip_block = -1;  // a block the forward leaves out (a model whose forwards skip units)
  edit::shard::Unit embed{nullptr}, head{nullptr};
  std::vector<edit::shard::Unit> blocks;
};

// Tokens and next-token targets of micro-batch `index` of `step`: the same on every rank.
inline std::pair<at::Tensor, at::Tensor> tiny_batch(const TinyConfig& c, int step, int index, int batch) {
  at::manual_seed(10'000 * step + index + 1);
  at::Tensor data = at::randint(0, c.vocab, {batch, c.seq + 1}, at::kLong);
  return {data.narrow(1, 0, c.seq), data.narrow(1, 1, c.seq)};
}

}  // namespace edit::testing_support
