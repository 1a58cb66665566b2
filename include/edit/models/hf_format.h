// A GPT in the layout of Hugging Face transformers, so that AutoModelForCausalLM.from_pretrained,
// lm-eval-harness and vLLM load it: GPT-2 style -> GPT2LMHeadModel, Llama style ->
// LlamaForCausalLM. Only names, shapes and text here; train/export.h writes the folder.
//
// The two functions agree with libedit's forward (src/models/gpt.cpp):
//   GPT-2: HF's Conv1D computes x @ W + b with W stored (in, out), the transpose of a Linear's
//          (out, in); c_attn's output splits into q, k, v and then heads as our qkv does; the MLP
//          is gelu_new (tanh GELU); attention scales by 1/sqrt(head size).
//   Llama: our fused qkv (3C, C) is q_proj, k_proj, v_proj stacked by rows; RoPE is rotate-half
//          with inv_freq = theta^(-2i/d) over pairs (i, i + d/2) in both, so q and k rows need no
//          permutation; RMSNorm in fp32 times the weight, as HF's LlamaRMSNorm.
// A tied head (tie_embeddings) writes no lm_head.weight: transformers ties it to the embedding.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "edit/models/gpt.h"

namespace edit::models {

// "GPT2LMHeadModel" or "LlamaForCausalLM".
const char* hf_architecture(GptStyle style);

// The model's parameters under transformers' names, transposed or split where its layout differs
// (views or new tensors; write them out, do not train through them). Every parameter of `model`
// is used exactly once (the tied head by the embedding), else edit::Error.
std::vector<std::pair<std::string, at::Tensor>> hf_tensors(GptImpl& model);

// GPT-2's byte-level BPE as transformers' GPT2Tokenizer reads it: vocab.json is GPT-2's
// encoder.json and merges.txt its vocab.bpe, byte for byte.
struct HfTokenizer {
  std::string source;                       // the folder it was read from, for messages
  std::string vocab_json;                   // encoder.json's text
  std::string merges_txt;                   // vocab.bpe's text ("#version" line, then one merge per line)
  std::int64_t size = 0;                    // one more than the largest id
  std::optional<std::int64_t> end_of_text;  // the id of "<|endoftext|>", GPT-2's bos and eos
};
// Reads dir/encoder.json and dir/vocab.bpe; throws edit::Error naming a missing or malformed file.
HfTokenizer read_gpt2_bpe(const std::string& dir);

// The text files of the folder beside model.safetensors, as (name, content): config.json always;
// with a tokenizer also vocab.json, merges.txt, tokenizer_config.json, special_tokens_map.json and
// generation_config.json. Without one, bos/eos ids are null (a byte vocabulary has no
// end-of-text token; GPT2Config's default 50256 would point outside it). Throws when the tokenizer
// has more ids than the model's vocabulary.
std::vector<std::pair<std::string, std::string>> hf_text_files(const GptConfig& config,
                                                               const std::optional<HfTokenizer>& tokenizer);

// Every name hf_text_files can write (so an overwritten export loses a stale tokenizer).
std::vector<std::string> hf_text_file_names();

}  // namespace edit::models
