// The model and batch shape the training benchmarks share, with their command-line flags.
#pragma once

#include <CLI/CLI.hpp>
#include <algorithm>

#include "tiny_transformer.h"

namespace edit::bench {

struct ModelShape {
  int dim = 128;    // model width
  int layers = 4;   // transformer blocks
  int vocab = 256;  // vocabulary size
  int seq = 64;     // sequence length
  int batch = 8;    // sequences per rank per step

  void add_flags(CLI::App& app) {
    app.add_option("--dim", dim, "model width")->capture_default_str();
    app.add_option("--layers", layers, "transformer blocks")->capture_default_str();
    app.add_option("--vocab", vocab, "vocabulary size")->capture_default_str();
    app.add_option("--seq", seq, "sequence length")->capture_default_str();
    app.add_option("--batch", batch, "sequences per rank per step")->capture_default_str();
  }
  testing_support::TinyConfig config() const { return {vocab, seq, dim, std::max(1, dim / 32), layers}; }
};

}  // namespace edit::bench
