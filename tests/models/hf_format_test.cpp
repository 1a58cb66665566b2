// The Hugging Face layout of a GPT: every parameter under transformers' name once, Conv1D weights
// transposed, Llama's qkv split by rows, the tied head left out, config.json's fields, and GPT-2's
// tokenizer files. That the layout computes libedit's function is checked end to end against an
// independent forward (tests/models/hf_reference.py, e2e.hf_export.np2).
#include "edit/models/hf_format.h"

#include <gtest/gtest.h>

#include <map>
#include <nlohmann/json.hpp>

#include "../data/temp_dir.h"
#include "edit/core/check.h"

namespace {

using edit::models::Gpt;
using edit::models::GptConfig;
using edit::models::GptStyle;

std::map<std::string, at::Tensor> by_name(const std::vector<std::pair<std::string, at::Tensor>>& tensors) {
  std::map<std::string, at::Tensor> out;
  for (const auto& [name, tensor] : tensors)
    EXPECT_TRUE(out.emplace(name, tensor).second) << name << " twice";
  return out;
}

at::Tensor ours(Gpt& model, const std::string& unit, const std::string& name) {
  for (const auto& item : model->named_parameters()) {
    if (item.key() == unit + ".inner." + name) return item.value();
  }
  ADD_FAILURE() << "no parameter " << unit << ".inner." << name;
  return {};
}

std::int64_t total(const std::map<std::string, at::Tensor>& tensors) {
  std::int64_t n = 0;
  for (const auto& [name, tensor] : tensors) n += tensor.numel();
  return n;
}

class HfTensors : public testing::TestWithParam<bool> {};  // tie_embeddings

TEST_P(HfTensors, Gpt2NamesAreTransformersAndConv1DWeightsAreTransposed) {
  GptConfig c = GptConfig::preset("tiny");
  c.tie_embeddings = GetParam();
  Gpt model(c);
  const auto hf = by_name(edit::models::hf_tensors(*model));
  EXPECT_EQ(hf.size(), 2u + 12u * c.layers + 2u + (c.tie_embeddings ? 0u : 1u));
  EXPECT_EQ(total(hf), c.num_parameters()) << "every parameter once";
  EXPECT_TRUE(at::equal(hf.at("transformer.wte.weight"), ours(model, "embed", "tokens.weight")));
  EXPECT_TRUE(at::equal(hf.at("transformer.wpe.weight"), ours(model, "embed", "positions.weight")));
  for (const auto& [linear, conv] : std::map<std::string, std::string>{
           {"qkv", "attn.c_attn"}, {"out", "attn.c_proj"}, {"up", "mlp.c_fc"}, {"down", "mlp.c_proj"}}) {
    const at::Tensor weight = ours(model, "block1", linear + ".weight");
    const at::Tensor conv_weight = hf.at("transformer.h.1." + conv + ".weight");
    EXPECT_EQ(conv_weight.sizes(), weight.t().sizes()) << conv << ": Conv1D stores (in, out)";
    EXPECT_TRUE(at::equal(conv_weight, weight.t())) << conv;
    EXPECT_TRUE(
        at::equal(hf.at("transformer.h.1." + conv + ".bias"), ours(model, "block1", linear + ".bias")));
  }
  EXPECT_TRUE(at::equal(hf.at("transformer.h.0.ln_2.weight"), ours(model, "block0", "norm2.weight")));
  EXPECT_TRUE(at::equal(hf.at("transformer.ln_f.bias"), ours(model, "head", "norm.bias")));
  EXPECT_EQ(hf.count("lm_head.weight"), c.tie_embeddings ? 0u : 1u);
  if (!c.tie_embeddings) {
    EXPECT_TRUE(at::equal(hf.at("lm_head.weight"), ours(model, "head", "weight")));
  }
}

TEST_P(HfTensors, LlamaQkvSplitsByRowsIntoThreeProjections) {
  GptConfig c = GptConfig::preset("tiny");
  c.style = GptStyle::kLlama;
  c.tie_embeddings = GetParam();
  Gpt model(c);
  const auto hf = by_name(edit::models::hf_tensors(*model));
  EXPECT_EQ(hf.size(), 1u + 9u * c.layers + 1u + (c.tie_embeddings ? 0u : 1u));
  EXPECT_EQ(total(hf), c.num_parameters());
  const std::string p = "model.layers.1.";
  const at::Tensor qkv = ours(model, "block1", "qkv.weight");  // (3C, C)
  EXPECT_EQ(hf.at(p + "self_attn.q_proj.weight").sizes(), (std::vector<int64_t>{c.dim, c.dim}));
  EXPECT_TRUE(at::equal(at::cat({hf.at(p + "self_attn.q_proj.weight"), hf.at(p + "self_attn.k_proj.weight"),
                                 hf.at(p + "self_attn.v_proj.weight")}),
                        qkv));
  EXPECT_TRUE(at::equal(hf.at(p + "self_attn.o_proj.weight"), ours(model, "block1", "out.weight")));
  EXPECT_TRUE(at::equal(hf.at(p + "mlp.gate_proj.weight"), ours(model, "block1", "gate.weight")));
  EXPECT_TRUE(at::equal(hf.at(p + "mlp.up_proj.weight"), ours(model, "block1", "up.weight")));
  EXPECT_TRUE(at::equal(hf.at(p + "mlp.down_proj.weight"), ours(model, "block1", "down.weight")));
  EXPECT_TRUE(at::equal(hf.at(p + "input_layernorm.weight"), ours(model, "block1", "norm1.weight")));
  EXPECT_TRUE(at::equal(hf.at(p + "post_attention_layernorm.weight"), ours(model, "block1", "norm2.weight")));
  EXPECT_TRUE(at::equal(hf.at("model.norm.weight"), ours(model, "head", "norm.weight")));
  EXPECT_TRUE(at::equal(hf.at("model.embed_tokens.weight"), ours(model, "embed", "tokens.weight")));
  EXPECT_EQ(hf.count("lm_head.weight"), c.tie_embeddings ? 0u : 1u);
}

INSTANTIATE_TEST_SUITE_P(TiedAndUntied, HfTensors, testing::Bool(),
                         [](const auto& info) { return info.param ? "tied" : "untied"; });

nlohmann::json config_of(const GptConfig& c, const std::optional<edit::models::HfTokenizer>& tokenizer = {}) {
  const auto files = edit::models::hf_text_files(c, tokenizer);
  EXPECT_EQ(files.at(0).first, "config.json");
  return nlohmann::json::parse(files.at(0).second);
}

TEST(HfConfig, Gpt2FieldsStateTheFunctionAndNullIdsWithoutATokenizer) {
  GptConfig c = GptConfig::preset("tiny");
  c.tie_embeddings = true;
  const auto files = edit::models::hf_text_files(c, std::nullopt);
  ASSERT_EQ(files.size(), 1u) << "no tokenizer, no tokenizer files";
  const auto j = config_of(c);
  EXPECT_EQ(j["architectures"], nlohmann::json::array({"GPT2LMHeadModel"}));
  EXPECT_EQ(j["model_type"], "gpt2");
  EXPECT_EQ(j["vocab_size"], c.vocab_size);
  EXPECT_EQ(j["n_positions"], c.seq_len);
  EXPECT_EQ(j["n_embd"], c.dim);
  EXPECT_EQ(j["n_layer"], c.layers);
  EXPECT_EQ(j["n_head"], c.heads);
  EXPECT_EQ(j["n_inner"], c.hidden());
  EXPECT_EQ(j["activation_function"], "gelu_new");
  EXPECT_EQ(j["layer_norm_epsilon"], c.norm_eps);
  EXPECT_EQ(j["scale_attn_weights"], true);
  EXPECT_EQ(j["tie_word_embeddings"], true);
  EXPECT_EQ(j["torch_dtype"], "float32");
  EXPECT_TRUE(j["bos_token_id"].is_null() && j["eos_token_id"].is_null())
      << "GPT2Config's default 50256 is outside a byte vocabulary";
}

TEST(HfConfig, LlamaFieldsAndTheTokenizerFiles) {
  GptConfig c = GptConfig::preset("tiny");
  c.style = GptStyle::kLlama;
  c.vocab_size = 300;
  edit::models::HfTokenizer tokenizer;
  tokenizer.source = "bpe";
  tokenizer.vocab_json = "{\"<|endoftext|>\": 299}";
  tokenizer.merges_txt = "#version: 0.2\n";
  tokenizer.size = 300;
  tokenizer.end_of_text = 299;
  const auto j = config_of(c, tokenizer);
  EXPECT_EQ(j["architectures"], nlohmann::json::array({"LlamaForCausalLM"}));
  EXPECT_EQ(j["model_type"], "llama");
  EXPECT_EQ(j["hidden_size"], c.dim);
  EXPECT_EQ(j["intermediate_size"], c.hidden());
  EXPECT_EQ(j["num_hidden_layers"], c.layers);
  EXPECT_EQ(j["num_attention_heads"], c.heads);
  EXPECT_EQ(j["num_key_value_heads"], c.heads);
  EXPECT_EQ(j["max_position_embeddings"], c.seq_len);
  EXPECT_EQ(j["rms_norm_eps"], c.norm_eps);
  EXPECT_EQ(j["rope_theta"], c.rope_theta);
  EXPECT_EQ(j["hidden_act"], "silu");
  EXPECT_EQ(j["attention_bias"], false);
  EXPECT_EQ(j["mlp_bias"], false);
  EXPECT_EQ(j["tie_word_embeddings"], false);
  EXPECT_EQ(j["eos_token_id"], 299);
  std::map<std::string, std::string> files;
  for (const auto& [name, text] : edit::models::hf_text_files(c, tokenizer)) files[name] = text;
  EXPECT_EQ(files.at("vocab.json"), tokenizer.vocab_json);
  EXPECT_EQ(files.at("merges.txt"), tokenizer.merges_txt);
  const auto tokenizer_config = nlohmann::json::parse(files.at("tokenizer_config.json"));
  EXPECT_EQ(tokenizer_config["tokenizer_class"], "GPT2Tokenizer")
      << "else AutoTokenizer picks LlamaTokenizer";
  EXPECT_EQ(tokenizer_config["eos_token"], "<|endoftext|>");
  EXPECT_EQ(nlohmann::json::parse(files.at("generation_config.json"))["eos_token_id"], 299);
  for (const auto& name : edit::models::hf_text_file_names()) EXPECT_EQ(files.count(name), 1u) << name;

  c.vocab_size = 299;  // one id short of the tokenizer's
  EXPECT_THROW(edit::models::hf_text_files(c, tokenizer), edit::Error);
}

TEST(HfTokenizer, ReadsGpt2FilesAndGivesMergesTheHeaderTransformersDrops) {
  edit::testing_support::TempDir dir;
  edit::testing_support::write_bytes(dir.file("encoder.json"),
                                     "{\"a\": 0, \"b\": 1, \"ab\": 3, \"<|endoftext|>\": 2}");
  edit::testing_support::write_bytes(dir.file("vocab.bpe"), "a b");  // no "#version" line, no final newline
  const auto t = edit::models::read_gpt2_bpe(dir.path());
  EXPECT_EQ(t.size, 4);
  EXPECT_EQ(t.end_of_text, 2);
  EXPECT_EQ(t.merges_txt, "#version: 0.2\na b\n");
  edit::testing_support::write_bytes(dir.file("vocab.bpe"), "#version: 0.2\na b\n");
  EXPECT_EQ(edit::models::read_gpt2_bpe(dir.path()).merges_txt, "#version: 0.2\na b\n")
      << "kept byte for byte";

  edit::testing_support::write_bytes(dir.file("encoder.json"), "[1, 2]");
  EXPECT_THROW(edit::models::read_gpt2_bpe(dir.path()), edit::Error);
  std::filesystem::remove(dir.file("vocab.bpe"));
  try {
    edit::models::read_gpt2_bpe(dir.path());
    FAIL() << "a folder without vocab.bpe was accepted";
  } catch (const edit::Error& e) {
    EXPECT_NE(std::string(e.what()).find("vocab.bpe"), std::string::npos) << e.what();
  }
}

}  // namespace
