#include "edit/models/hf_format.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "edit/core/check.h"

namespace edit::models {
namespace {

using Json = nlohmann::ordered_json;  // keys in the order written: config.json stays readable

constexpr const char* kEndOfText = "<|endoftext|>";

std::string read_text(const std::filesystem::path& path, const std::string& dir) {
  std::ifstream in(path, std::ios::binary);
  EDIT_CHECK(in.good(), "cannot read ", path.string(),
             "; pass a folder with GPT-2's encoder.json and vocab.bpe (", dir, " lacks it)");
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

// Our parameters by export name ("block0.qkv.weight"); each is taken once by the mapping.
class Parameters {
 public:
  explicit Parameters(GptImpl& model) {
    for (const auto& item : model.named_parameters(/*recurse=*/true)) {
      std::string name = item.key();
      for (auto at = name.find(".inner."); at != std::string::npos; at = name.find(".inner."))
        name.erase(at, 6);
      tensors_.emplace(name, item.value());
    }
  }
  const at::Tensor* find(const std::string& name) {
    const auto it = tensors_.find(name);
    if (it == tensors_.end()) return nullptr;
    used_.insert(name);
    return &it->second;
  }
  at::Tensor take(const std::string& name) {
    const at::Tensor* tensor = find(name);
    EDIT_CHECK(tensor != nullptr, "the model has no parameter '", name,
               "'; its layout differs from the one src/models/hf_format.cpp maps");
    return tensor->detach();
  }
  void check_all_used() const {
    for (const auto& [name, tensor] : tensors_) {
      EDIT_CHECK(used_.count(name) != 0, "parameter '", name, "' has no place in the Hugging Face layout; ",
                 "extend src/models/hf_format.cpp before exporting this model");
    }
  }

 private:
  std::map<std::string, at::Tensor> tensors_;
  std::set<std::string> used_;
};

}  // namespace

const char* hf_architecture(GptStyle style) {
  return style == GptStyle::kGpt2 ? "GPT2LMHeadModel" : "LlamaForCausalLM";
}

std::vector<std::pair<std::string, at::Tensor>> hf_tensors(GptImpl& model) {
  const GptConfig& c = model.config();
  Parameters ours(model);
  std::vector<std::pair<std::string, at::Tensor>> out;
  const auto put = [&](std::string name, at::Tensor tensor) {
    out.emplace_back(std::move(name), std::move(tensor));
  };
  std::string embedding;
  if (c.style == GptStyle::kGpt2) {
    embedding = "transformer.wte.weight";
    put(embedding, ours.take("embed.tokens.weight"));
    put("transformer.wpe.weight", ours.take("embed.positions.weight"));
    for (int i = 0; i < c.layers; ++i) {
      const std::string from = "block" + std::to_string(i) + ".",
                        to = "transformer.h." + std::to_string(i) + ".";
      // Conv1D stores (in, out): each Linear weight (out, in) transposed; biases as they are.
      const auto conv1d = [&](const std::string& linear, const std::string& conv) {
        put(to + conv + ".weight", ours.take(from + linear + ".weight").t());
        put(to + conv + ".bias", ours.take(from + linear + ".bias"));
      };
      put(to + "ln_1.weight", ours.take(from + "norm1.weight"));
      put(to + "ln_1.bias", ours.take(from + "norm1.bias"));
      conv1d("qkv", "attn.c_attn");  // (C, 3C): q, k, v side by side in the output, as ours
      conv1d("out", "attn.c_proj");
      put(to + "ln_2.weight", ours.take(from + "norm2.weight"));
      put(to + "ln_2.bias", ours.take(from + "norm2.bias"));
      conv1d("up", "mlp.c_fc");
      conv1d("down", "mlp.c_proj");
    }
    put("transformer.ln_f.weight", ours.take("head.norm.weight"));
    put("transformer.ln_f.bias", ours.take("head.norm.bias"));
  } else {
    embedding = "model.embed_tokens.weight";
    put(embedding, ours.take("embed.tokens.weight"));
    for (int i = 0; i < c.layers; ++i) {
      const std::string from = "block" + std::to_string(i) + ".",
                        to = "model.layers." + std::to_string(i) + ".";
      put(to + "input_layernorm.weight", ours.take(from + "norm1.weight"));
      // (3C, C) -> three (C, C): rows [0, C) make q, [C, 2C) k, [2C, 3C) v (our forward chunks
      // the output the same way, then splits heads as (H, head size) like HF's view).
      const auto qkv = ours.take(from + "qkv.weight").chunk(3, 0);
      put(to + "self_attn.q_proj.weight", qkv[0]);
      put(to + "self_attn.k_proj.weight", qkv[1]);
      put(to + "self_attn.v_proj.weight", qkv[2]);
      put(to + "self_attn.o_proj.weight", ours.take(from + "out.weight"));
      put(to + "post_attention_layernorm.weight", ours.take(from + "norm2.weight"));
      put(to + "mlp.gate_proj.weight", ours.take(from + "gate.weight"));
      put(to + "mlp.up_proj.weight", ours.take(from + "up.weight"));
      put(to + "mlp.down_proj.weight", ours.take(from + "down.weight"));
    }
    put("model.norm.weight", ours.take("head.norm.weight"));
  }
  if (c.tie_embeddings) {
    // The head holds the embedding's own tensor; transformers rebuilds the tie from the config.
    const at::Tensor* head = ours.find("head.weight");
    const at::Tensor* tokens = ours.find("embed.tokens.weight");
    EDIT_CHECK(
        head == nullptr || head->unsafeGetTensorImpl() == tokens->unsafeGetTensorImpl(),
        "the model says tie_embeddings but its head has a weight of its own; the configuration does not ",
        "match the module");
  } else {
    put("lm_head.weight", ours.take("head.weight"));
  }
  ours.check_all_used();
  return out;
}

HfTokenizer read_gpt2_bpe(const std::string& dir) {
  namespace fs = std::filesystem;
  EDIT_CHECK(fs::is_directory(dir), dir,
             " is not a folder; pass a folder with GPT-2's encoder.json and vocab.bpe");
  HfTokenizer t;
  t.source = dir;
  t.vocab_json = read_text(fs::path(dir) / "encoder.json", dir);
  std::string merges = read_text(fs::path(dir) / "vocab.bpe", dir);
  try {
    const auto encoder = nlohmann::json::parse(t.vocab_json);
    EDIT_CHECK(encoder.is_object() && !encoder.empty(), "is not a JSON object of token -> id");
    for (const auto& [token, id] : encoder.items()) {
      EDIT_CHECK(id.is_number_integer() && id.get<std::int64_t>() >= 0, "maps '", token, "' to ", id.dump(),
                 ", not an id");
      t.size = std::max(t.size, id.get<std::int64_t>() + 1);
    }
    if (encoder.contains(kEndOfText)) t.end_of_text = encoder.at(kEndOfText).get<std::int64_t>();
  } catch (const std::exception& e) {
    EDIT_FAIL((fs::path(dir) / "encoder.json").string(), ": ", e.what(),
              "; replace it with GPT-2's encoder.json (token -> id)");
  }
  // transformers' GPT2Tokenizer drops the first line of merges.txt (the "#version" line) and the
  // empty one after the final newline; libedit skips a first line only when it starts with '#'.
  // Both read the same merges once the file has that header and that newline.
  if (merges.rfind("#", 0) != 0) merges.insert(0, "#version: 0.2\n");
  if (merges.back() != '\n') merges += '\n';
  t.merges_txt = std::move(merges);
  return t;
}

std::vector<std::pair<std::string, std::string>> hf_text_files(const GptConfig& c,
                                                               const std::optional<HfTokenizer>& tokenizer) {
  const bool gpt2 = c.style == GptStyle::kGpt2;
  if (tokenizer) {
    EDIT_CHECK(tokenizer->size <= c.vocab_size, "the tokenizer in ", tokenizer->source, " has ",
               tokenizer->size, " ids but the model's vocabulary is ", c.vocab_size,
               "; export with the tokenizer the run was trained with, or none for a byte-vocabulary model");
  }
  // Without a tokenizer the ids are stated as null: GPT2Config would default to 50256 and
  // LlamaConfig to 1 and 2, ids a byte vocabulary gives other meanings or does not have.
  const Json end_of_text =
      tokenizer && tokenizer->end_of_text ? Json(*tokenizer->end_of_text) : Json(nullptr);
  Json config;
  config["architectures"] = {hf_architecture(c.style)};
  if (gpt2) {
    config["model_type"] = "gpt2";
    config["vocab_size"] = c.vocab_size;
    config["n_positions"] = c.seq_len;
    config["n_ctx"] = c.seq_len;
    config["n_embd"] = c.dim;
    config["n_layer"] = c.layers;
    config["n_head"] = c.heads;
    config["n_inner"] = c.hidden();
    config["activation_function"] = "gelu_new";  // GELU with the tanh approximation, as ours
    config["layer_norm_epsilon"] = c.norm_eps;
    // Our forward has no dropout; at eval transformers' has none either, and training from the
    // export should not grow any.
    config["resid_pdrop"] = 0.0;
    config["embd_pdrop"] = 0.0;
    config["attn_pdrop"] = 0.0;
    config["scale_attn_weights"] = true;  // softmax(q k^T / sqrt(head size))
    config["scale_attn_by_inverse_layer_idx"] = false;
    config["reorder_and_upcast_attn"] = false;
  } else {
    config["model_type"] = "llama";
    config["vocab_size"] = c.vocab_size;
    config["hidden_size"] = c.dim;
    config["intermediate_size"] = c.hidden();
    config["num_hidden_layers"] = c.layers;
    config["num_attention_heads"] = c.heads;
    config["num_key_value_heads"] = c.heads;  // no grouped-query attention
    config["head_dim"] = c.dim / c.heads;
    config["hidden_act"] = "silu";
    config["max_position_embeddings"] = c.seq_len;
    config["rms_norm_eps"] = c.norm_eps;
    config["rope_theta"] = c.rope_theta;
    config["rope_scaling"] = nullptr;
    config["attention_bias"] = false;
    config["attention_dropout"] = 0.0;
    config["mlp_bias"] = false;
    config["pretraining_tp"] = 1;
  }
  config["initializer_range"] = 0.02;
  config["tie_word_embeddings"] = c.tie_embeddings;
  config["bos_token_id"] = end_of_text;
  config["eos_token_id"] = end_of_text;
  config["use_cache"] = true;
  config["torch_dtype"] = "float32";
  std::vector<std::pair<std::string, std::string>> files{{"config.json", config.dump(2) + "\n"}};
  if (!tokenizer) return files;

  files.emplace_back("vocab.json", tokenizer->vocab_json);
  files.emplace_back("merges.txt", tokenizer->merges_txt);
  // tokenizer_class: AutoTokenizer would otherwise pick the model type's own (LlamaTokenizer,
  // which needs a SentencePiece file). No prefix space and no clean-up, so decoding gives back
  // the bytes libedit's tokenizer encoded.
  Json tokenizer_config;
  tokenizer_config["tokenizer_class"] = "GPT2Tokenizer";
  tokenizer_config["model_max_length"] = c.seq_len;
  tokenizer_config["add_prefix_space"] = false;
  tokenizer_config["clean_up_tokenization_spaces"] = false;
  tokenizer_config["errors"] = "replace";
  Json special = Json::object();
  if (tokenizer->end_of_text) {
    for (const char* role : {"bos_token", "eos_token", "unk_token"}) special[role] = kEndOfText;
  }
  for (const auto& [role, token] : special.items()) tokenizer_config[role] = token;
  files.emplace_back("tokenizer_config.json", tokenizer_config.dump(2) + "\n");
  files.emplace_back("special_tokens_map.json", special.dump(2) + "\n");
  // What generate() stops at; transformers would derive the same from config.json.
  Json generation;
  generation["bos_token_id"] = end_of_text;
  generation["eos_token_id"] = end_of_text;
  files.emplace_back("generation_config.json", generation.dump(2) + "\n");
  return files;
}

std::vector<std::string> hf_text_file_names() {
  return {
      "config.json",           "vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json",
      "generation_config.json"};
}

}  // namespace edit::models
