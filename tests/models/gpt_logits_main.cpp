// edit_gpt_logits RUN OUT: libedit's own logits for a fixed batch of tokens, from the latest
// checkpoint of an edit-train-gpt run (the anchor weights, as edit-export's default), written as
// safetensors {"tokens": I64 (2, seq_len), "logits": F32 (2, seq_len, vocab)}. The other side of
// tests/models/hf_reference.py, which computes the same logits from an `edit-export --format hf`
// folder.
#include <ATen/Functions.h>
#include <c10/core/GradMode.h>

#include <iostream>

#include "model_loading.h"

int main(int argc, char** argv) {
  if (argc != 3) {
    std::cerr << "usage: edit_gpt_logits RUN_DIR OUT.safetensors\n";
    return 2;
  }
  try {
    const auto loaded = edit::tools::load_run(argv[1], "latest", /*prefer_anchor=*/true);
    const auto& config = loaded.model->config();
    loaded.model->eval();
    // Every position the model has (so all of GPT-2's learned positions and RoPE's angles are
    // used), ids spread over the whole vocabulary.
    at::manual_seed(1234);
    const at::Tensor tokens = at::randint(config.vocab_size, {2, config.seq_len}, at::kLong);
    c10::NoGradGuard no_grad;
    const at::Tensor logits = loaded.model->forward(tokens);
    edit::train::write_safetensors(argv[2], {{"tokens", tokens}, {"logits", logits}},
                                   {{"source", loaded.checkpoint}});
    std::cout << "edit_gpt_logits: " << logits.sizes() << " from " << loaded.checkpoint << std::endl;
    return 0;
  } catch (const std::exception& e) {
    std::cerr << "edit_gpt_logits: " << e.what() << "\n";
    return 1;
  }
}
