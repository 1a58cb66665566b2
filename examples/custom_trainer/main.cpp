// A trainer author's program linked against the installed libedit (find_package(edit)).
// It fits a small MLP to a fixed random teacher network and exits non-zero if the loss does not
// fall, so the package test checks a working program, not just a link.
#include <torch/torch.h>

#include <cstdlib>
#include <string>

#include "edit/edit.h"

namespace {

struct Options {
  int steps = 200;
  double lr = 1e-2;
};

Options parse(int argc, char** argv) {
  Options options;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    EDIT_CHECK(i + 1 < argc, "option ", arg, " needs a value; usage: custom_trainer [--steps N] [--lr X]");
    if (arg == "--steps") {
      options.steps = std::stoi(argv[++i]);
    } else if (arg == "--lr") {
      options.lr = std::stod(argv[++i]);
    } else {
      EDIT_FAIL("unknown option ", arg, "; usage: custom_trainer [--steps N] [--lr X]");
    }
  }
  EDIT_CHECK(options.steps > 0, "--steps must be positive, got ", options.steps);
  return options;
}

}  // namespace

int main(int argc, char** argv) try {
  const Options options = parse(argc, argv);
  edit::log::init();
  torch::set_num_threads(1);
  torch::manual_seed(0);

  // (N, 16) -> (N, 1): the data come from a fixed teacher, so a perfect fit exists.
  auto teacher = torch::nn::Sequential(torch::nn::Linear(16, 32), torch::nn::Tanh(), torch::nn::Linear(32, 1));
  auto student = torch::nn::Sequential(torch::nn::Linear(16, 64), torch::nn::Tanh(), torch::nn::Linear(64, 1));
  torch::optim::AdamW optimizer(student->parameters(), torch::optim::AdamWOptions(options.lr));

  double first_loss = 0.0;
  double last_loss = 0.0;
  for (int step = 0; step < options.steps; ++step) {
    const torch::Tensor x = torch::randn({64, 16});
    const torch::Tensor y = teacher->forward(x).detach();
    const torch::Tensor loss = torch::mse_loss(student->forward(x), y);
    optimizer.zero_grad();
    loss.backward();
    optimizer.step();
    last_loss = loss.item<double>();
    if (step == 0) first_loss = last_loss;
    if (step % 20 == 0 || step + 1 == options.steps) spdlog::info("step {:4d} loss {:.5f}", step, last_loss);
  }
  spdlog::info("libedit {} on LibTorch {}: loss {:.5f} -> {:.5f}", EDIT_VERSION_STRING,
               edit::compat::torch_version(), first_loss, last_loss);
  EDIT_CHECK(last_loss < 0.5 * first_loss, "training did not reduce the loss (", first_loss, " -> ",
             last_loss, "); try more --steps or a different --lr");
  return EXIT_SUCCESS;
} catch (const std::exception& e) {
  spdlog::error("{}", e.what());
  return EXIT_FAILURE;
}
