// A trainer author's program linked against the installed libedit (find_package(edit)):
//   mpirun -np 2 custom_trainer [--steps N] [--lr X]
// Every rank fits the same small MLP to a fixed random teacher on its own data; gradients are
// averaged over the world with libedit's asynchronous all_reduce (one Work per parameter, all in
// flight together) -- data-parallel training in a few lines. It exits non-zero if the loss does
// not fall or the replicas drift apart, so the package test checks a working program.
#include <torch/torch.h>

#include <cstdlib>
#include <string>

#include "edit/comm/device_mesh.h"
#include "edit/edit.h"

namespace {

struct Options {
  int steps = 200;
  double lr = 1e-2;
};

Options parse(int argc, char** argv) {
  Options options;
  const char* usage = "usage: custom_trainer [--steps N] [--lr X]";
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    EDIT_CHECK(i + 1 < argc, "option ", arg, " needs a value; ", usage);
    if (arg == "--steps") {
      options.steps = std::stoi(argv[++i]);
    } else if (arg == "--lr") {
      options.lr = std::stod(argv[++i]);
    } else {
      EDIT_FAIL("unknown option ", arg, "; ", usage);
    }
  }
  EDIT_CHECK(options.steps > 0, "--steps must be positive, got ", options.steps);
  return options;
}

}  // namespace

int main(int argc, char** argv) try {
  const Options options = parse(argc, argv);
  edit::comm::DeviceMesh mesh = edit::comm::DeviceMesh::from_env();
  edit::log::init(mesh.rank());
  torch::set_num_threads(1);

  // Same initial weights everywhere (same seed), different data per rank (seed + rank).
  torch::manual_seed(0);
  auto teacher = torch::nn::Sequential(torch::nn::Linear(16, 32), torch::nn::Tanh(), torch::nn::Linear(32, 1));
  auto student = torch::nn::Sequential(torch::nn::Linear(16, 64), torch::nn::Tanh(), torch::nn::Linear(64, 1));
  torch::manual_seed(1 + mesh.rank());
  torch::optim::AdamW optimizer(student->parameters(), torch::optim::AdamWOptions(options.lr));

  double first_loss = 0.0;
  double last_loss = 0.0;
  for (int step = 0; step < options.steps; ++step) {
    const torch::Tensor x = torch::randn({64, 16});  // (B, 16) -> (B, 1)
    const torch::Tensor y = teacher->forward(x).detach();
    const torch::Tensor loss = torch::mse_loss(student->forward(x), y);
    optimizer.zero_grad();
    loss.backward();
    std::vector<edit::comm::WorkPtr> pending;
    for (auto& param : student->parameters()) {
      pending.push_back(mesh.world().all_reduce(param.grad(), {edit::comm::ReduceOp::kAvg}));
    }
    for (auto& work : pending) work->wait();
    optimizer.step();
    last_loss = loss.item<double>();
    if (step == 0) first_loss = last_loss;
    if (step % 50 == 0 || step + 1 == options.steps) spdlog::info("step {:4d} loss {:.5f}", step, last_loss);
  }

  // The replicas must still be identical: compare a checksum of the weights across ranks.
  double checksum = 0.0;
  for (const auto& param : student->parameters()) checksum += param.detach().to(torch::kDouble).sum().item<double>();
  const auto checksums = mesh.world().all_gather_values({checksum});
  for (double other : checksums) {
    EDIT_CHECK(other == checksum, "replicas diverged: weight checksum ", checksum, " here vs ", other,
               " on another rank; gradients were not averaged identically");
  }
  spdlog::info("libedit {} on LibTorch {}, {} ranks: loss {:.5f} -> {:.5f}, replicas identical", EDIT_VERSION_STRING,
               edit::compat::torch_version(), mesh.world_size(), first_loss, last_loss);
  EDIT_CHECK(last_loss < 0.5 * first_loss, "training did not reduce the loss (", first_loss, " -> ", last_loss,
             "); try more --steps or a different --lr");
  return EXIT_SUCCESS;
} catch (const std::exception& e) {
  spdlog::error("{}", e.what());
  return EXIT_FAILURE;
}
