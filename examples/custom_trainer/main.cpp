// A trainer author's own program, linked against the installed libedit (find_package(edit)):
//   mpirun -np 2 custom_trainer [--strategy edit|diloco|ddp|none] [--steps N] [--sync-every H]
//                               [--shard-size S] [--lr X] [--metrics FILE] [--log-level LEVEL]
// It wraps its blocks in edit::shard::Unit, shards them over the mesh, and trains a small MLP to
// fit a fixed random teacher network with the chosen strategy. Every rank sees its own data. It
// exits non-zero if the loss does not fall or the replicas end up different.
#include <torch/torch.h>

#include <cstdlib>
#include <string>
#include <type_traits>

#include "edit/comm/device_mesh.h"
#include "edit/edit.h"
#include "edit/shard/flat_adamw.h"
#include "edit/shard/sharded_model.h"
#include "edit/sync/factory.h"
#include "edit/train/trainer.h"

namespace {

struct Options {
  std::string strategy = "edit";
  int steps = 200;
  int sync_every = 8;
  int shard_size = 1;
  double lr = 1e-2;
  std::string metrics;
  std::string log_level;  // empty: EDIT_LOG_LEVEL or info
};

// The whole of `value` as a number, or an error naming the option.
template <typename T>
T number(const std::string& option, const std::string& value) {
  std::size_t used = 0;
  T out{};
  try {
    if constexpr (std::is_integral_v<T>) {
      out = static_cast<T>(std::stoi(value, &used));
    } else {
      out = static_cast<T>(std::stod(value, &used));
    }
  } catch (const std::exception&) {
    used = 0;
  }
  EDIT_CHECK(used > 0 && used == value.size(), option, " takes a number, got '", value, "'");
  return out;
}

Options parse(int argc, char** argv) {
  Options o;
  const char* usage =
      "usage: custom_trainer [--strategy edit|diloco|ddp|none] [--steps N] [--sync-every H] [--shard-size S] "
      "[--lr X] [--metrics FILE] [--log-level trace|debug|info|warn|error]";
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    EDIT_CHECK(i + 1 < argc, "option ", arg, " needs a value; ", usage);
    const std::string value = argv[++i];
    if (arg == "--strategy") {
      o.strategy = value;
    } else if (arg == "--steps") {
      o.steps = number<int>(arg, value);
    } else if (arg == "--sync-every") {
      o.sync_every = number<int>(arg, value);
    } else if (arg == "--shard-size") {
      o.shard_size = number<int>(arg, value);
    } else if (arg == "--lr") {
      o.lr = number<double>(arg, value);
    } else if (arg == "--metrics") {
      o.metrics = value;
    } else if (arg == "--log-level") {
      o.log_level = value;
    } else {
      EDIT_FAIL("unknown option ", arg, "; ", usage);
    }
  }
  // The check below compares the first step's loss with the last one's.
  EDIT_CHECK(o.steps >= 2, "--steps must be at least 2 (the first and the last step's losses are compared), got ",
             o.steps);
  return o;
}

// (B, in) -> (B, out): one hidden layer with tanh. A block of the model; each is a Unit.
struct DenseImpl : torch::nn::Module {
  DenseImpl(int in, int out, bool activation) : linear(register_module("linear", torch::nn::Linear(in, out))), act(activation) {}
  torch::Tensor forward(const torch::Tensor& x) { return act ? torch::tanh(linear->forward(x)) : linear->forward(x); }
  torch::nn::Linear linear;
  bool act;
};
TORCH_MODULE(Dense);

struct Net : torch::nn::Module {
  Net() {
    for (int i = 0; i < 3; ++i) {
      layers.push_back(register_module("layer" + std::to_string(i),
                                       edit::shard::Unit(Dense(i == 0 ? 16 : 64, i == 2 ? 1 : 64, i < 2))));
    }
  }
  torch::Tensor forward(torch::Tensor x) {
    for (auto& layer : layers) x = layer->forward(x);
    return x;
  }
  std::vector<edit::shard::Unit> layers;
};

}  // namespace

int main(int argc, char** argv) try {
  const Options o = parse(argc, argv);
  edit::comm::DeviceMesh mesh = edit::comm::DeviceMesh::from_env({o.shard_size});
  edit::log::init(mesh.rank(), o.log_level);
  torch::set_num_threads(1);

  torch::manual_seed(0);
  auto teacher = torch::nn::Sequential(torch::nn::Linear(16, 32), torch::nn::Tanh(), torch::nn::Linear(32, 1));
  auto net = std::make_shared<Net>();
  edit::shard::ShardedModel model(net, mesh.shard_ptr());
  edit::shard::FlatAdamW inner(model, {o.lr, 0.9, 0.95, 1e-8, 0.0});

  // A strategy by name, with the library's defaults (EDiT with the pseudo-gradient penalty, DiLoCo
  // without). The factory knows aedit and streaming too; this program's end check (replicas equal
  // after a sync at the last step) fits the four below.
  EDIT_CHECK(o.strategy == "edit" || o.strategy == "diloco" || o.strategy == "ddp" || o.strategy == "none",
             "unknown --strategy '", o.strategy, "'; use edit, diloco, ddp or none");
  edit::sync::StrategyConfig sync;
  sync.name = o.strategy;
  sync.local.sync_every = o.sync_every;
  const auto strategy = edit::sync::make_strategy(sync, model, mesh.sync_ptr());

  edit::train::TrainerOptions options;
  options.steps = o.steps;
  options.schedule = {o.lr, o.steps / 10, o.steps, o.lr / 10};
  options.metrics_path = o.metrics;
  options.log_every = 50;
  edit::train::Trainer trainer(mesh, model, inner, *strategy, options);
  const auto batch_of = [&](std::int64_t step, int) {
    torch::manual_seed(1 + step * mesh.world_size() + mesh.rank());  // every rank its own samples
    const torch::Tensor x = torch::randn({64, 16});
    return edit::train::Batch{x, teacher->forward(x).detach()};
  };
  const auto loss_of = [&](const edit::train::Batch& b) { return torch::mse_loss(net->forward(b.inputs), b.targets); };
  const double first = trainer.step(batch_of, loss_of).loss;
  const double last = trainer.run(batch_of, loss_of).loss;

  // Replicas must agree (Local SGD: everyone restarts from the same anchor after the last sync).
  double checksum = 0.0;
  for (const auto& [name, param] : model.gather_full_parameters()) checksum += param.to(torch::kDouble).sum().item<double>();
  // Local SGD replicas agree right after a sync, so only when the run ended on one.
  const bool synced = o.strategy == "ddp" || (o.strategy != "none" && o.steps % o.sync_every == 0);
  for (double other : mesh.world().all_gather_values({checksum})) {
    EDIT_CHECK(!synced || other == checksum, "replicas diverged: weight checksum ", checksum, " here vs ", other,
               " on another rank");
  }
  spdlog::info("libedit {} on LibTorch {}: {} on {} ranks (S = {}): loss {:.5f} -> {:.5f}", EDIT_VERSION_STRING,
               edit::compat::torch_version(), strategy->name(), mesh.world_size(), mesh.shard_size(), first, last);
  EDIT_CHECK(last < 0.5 * first, "training did not reduce the loss (", first, " -> ", last,
             "); try more --steps or a different --lr");
  return EXIT_SUCCESS;
} catch (const std::exception& e) {
  spdlog::error("{}", e.what());
  return EXIT_FAILURE;
}
