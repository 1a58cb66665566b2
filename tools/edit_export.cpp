// edit-export: one consolidated safetensors file (plus config.json) from a training run's
// checkpoint, whatever mesh trained it. PyTorch reads it with safetensors.torch.load_file().
//   edit-export --run runs/quickstart [--checkpoint latest|PATH] [--weights anchor|local] --out model.safetensors
#include <CLI/CLI.hpp>
#include <filesystem>
#include <fstream>
#include <iostream>

#include "model_loading.h"

int main(int argc, char** argv) {
  std::string run, checkpoint = "latest", weights = "anchor", out;
  CLI::App app{"edit-export: a checkpoint as one safetensors file that PyTorch can load"};
  app.add_option("--run", run, "the --out-dir of an edit-train-gpt run (holds config.json)")->required();
  app.add_option("--checkpoint", checkpoint, "a checkpoint folder, or latest")->capture_default_str();
  app.add_option("--weights", weights, "anchor: the last synced global model (Local SGD); local: replica 0's own")
      ->check(CLI::IsMember({"anchor", "local"}))->capture_default_str();
  app.add_option("--out", out, "the .safetensors file to write (config.json goes beside it)")->required();
  CLI11_PARSE(app, argc, argv);
  try {
    const auto loaded = edit::tools::load_run(run, checkpoint, weights == "anchor");
    const auto tensors = edit::train::export_parameters(*loaded.model);
    const auto folder = std::filesystem::path(out).parent_path();
    if (!folder.empty()) std::filesystem::create_directories(folder);
    edit::train::write_safetensors(out, tensors,
                                   {{"format", "pt"}, {"source", loaded.checkpoint}, {"weights", weights}});
    std::ofstream(folder / "config.json")
        << loaded.model->config().to_json() << "\n";
    std::cout << "edit-export: " << tensors.size() << " tensors, " << loaded.model->config().num_parameters()
              << " parameters from " << loaded.checkpoint << " -> " << out << "\n";
    return 0;
  } catch (const std::exception& e) {
    std::cerr << "edit-export: " << e.what() << "\n";
    return 1;
  }
}
