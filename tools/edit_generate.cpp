// edit-generate: sample text from a training run's checkpoint on one process (byte-level models).
//   edit-generate --run runs/quickstart [--prompt "Q: "] [--tokens 200] [--temperature 0.8] [--top-k 40]
#include <ATen/ATen.h>
#include <c10/core/GradMode.h>
#include <ATen/Parallel.h>

#include <CLI/CLI.hpp>
#include <climits>
#include <cmath>
#include <iostream>

#include "edit/data/byte_tokenizer.h"
#include "model_loading.h"

int main(int argc, char** argv) {
  std::string run, checkpoint = "latest", weights = "anchor", prompt = "\n";
  int tokens = 200, top_k = 40;
  double temperature = 0.8;
  std::uint64_t seed = 0;
  CLI::App app{"edit-generate: sample text from a checkpoint"};
  app.add_option("--run", run, "the --out-dir of an edit-train-gpt run (holds config.json)")->required();
  app.add_option("--checkpoint", checkpoint, "a checkpoint folder, or latest")->capture_default_str();
  app.add_option("--weights", weights, "anchor or local (see edit-export)")
      ->check(CLI::IsMember({"anchor", "local"}))->capture_default_str();
  app.add_option("--prompt", prompt, "text to continue")->capture_default_str();
  app.add_option("--tokens", tokens, "tokens to sample (>= 1)")->capture_default_str();
  app.add_option("--temperature", temperature, "softmax temperature (finite, > 0)")->capture_default_str();
  app.add_option("--top-k", top_k, "sample among the k most likely tokens (0 or >= the vocabulary: all)")
      ->capture_default_str();
  app.add_option("--seed", seed, "sampling seed")->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  try {
    // Before the checkpoint is read, so a typo fails at once. A NaN fails every comparison, so the
    // checks are written to pass only for valid values.
    EDIT_CHECK(tokens >= 1, "--tokens ", tokens, " is outside the valid range 1..", INT_MAX,
               "; pass how many tokens to sample, e.g. 200");
    EDIT_CHECK(std::isfinite(temperature) && temperature > 0, "--temperature ", temperature,
               " is outside the valid range (0, inf): it divides the logits; pass e.g. 0.8 (lower: more",
               " deterministic)");
    EDIT_CHECK(top_k >= 0, "--top-k ", top_k, " is outside the valid range 0..", INT_MAX,
               " (0: sample among all tokens); pass e.g. 40");
    at::set_num_threads(1);
    const auto loaded = edit::tools::load_run(run, checkpoint, weights == "anchor");
    const auto& config = loaded.model->config();
    EDIT_CHECK(config.vocab_size == 256, "edit-generate decodes bytes, but this model has a vocabulary of ",
               config.vocab_size, "; it was not trained on edit-prepare-text shards");
    const edit::data::ByteTokenizer tokenizer;
    auto ids = tokenizer.encode(prompt.empty() ? "\n" : prompt);
    at::manual_seed(seed);
    c10::NoGradGuard no_grad;
    for (int i = 0; i < tokens; ++i) {
      const auto start = ids.size() > static_cast<size_t>(config.seq_len) ? ids.size() - config.seq_len : 0;
      at::Tensor window = at::tensor(std::vector<std::int64_t>(ids.begin() + static_cast<std::ptrdiff_t>(start), ids.end()),
                                     at::kLong).unsqueeze(0);                 // (1, T)
      at::Tensor logits = loaded.model->forward(window).select(1, -1)[0] / temperature;  // (V,)
      if (top_k > 0 && top_k < logits.size(0)) {
        const at::Tensor kth = std::get<0>(logits.topk(top_k)).min();
        logits = logits.masked_fill(logits < kth, -INFINITY);
      }
      ids.push_back(static_cast<std::uint16_t>(at::multinomial(at::softmax(logits, -1), 1).item<std::int64_t>()));
    }
    std::cout << tokenizer.decode(ids) << std::endl;
    EDIT_CHECK(std::cout.good(), "cannot write the sample to standard output; is the disk full?");
    return 0;
  } catch (const std::exception& e) {
    std::cerr << "edit-generate: " << e.what() << "\n";
    return 1;
  }
}
