// edit-export: one consolidated safetensors file (plus config.json) from a training run's
// checkpoint, whatever mesh trained it. PyTorch reads it with safetensors.torch.load_file().
//   edit-export --run runs/quickstart [--checkpoint latest|PATH] [--weights anchor|local]
//               --out model.safetensors [--overwrite]
// An existing --out file or config.json beside it is never replaced without --overwrite: the folder
// may be another run's, whose config.json says what its checkpoints hold. Both files are written
// in full and fsynced before they replace anything, so a failed export (a full disk included)
// leaves the files that were there unchanged.
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <iostream>

#include "edit/core/atomic_file.h"
#include "model_loading.h"

int main(int argc, char** argv) {
  std::string run, checkpoint = "latest", weights = "anchor", out;
  bool overwrite = false;
  CLI::App app{"edit-export: a checkpoint as one safetensors file that PyTorch can load"};
  app.add_option("--run", run, "the --out-dir of an edit-train-gpt run (holds config.json)")->required();
  app.add_option("--checkpoint", checkpoint, "a checkpoint folder, or latest")->capture_default_str();
  app.add_option("--weights", weights,
                 "anchor: the last synced global model (Local SGD); local: replica 0's own")
      ->check(CLI::IsMember({"anchor", "local"}))
      ->capture_default_str();
  app.add_option("--out", out, "the .safetensors file to write (config.json goes beside it)")->required();
  app.add_flag("--overwrite", overwrite, "replace an existing --out file and the config.json beside it");
  CLI11_PARSE(app, argc, argv);
  namespace fs = std::filesystem;
  try {
    const fs::path model_path(out);
    const fs::path folder = model_path.parent_path();
    const fs::path config_path = folder / "config.json";
    EDIT_CHECK(!fs::is_directory(model_path), "--out ", out,
               " is a folder; pass the .safetensors file to write");
    // Before the checkpoint is read: refusing takes no time, and nothing has been written yet.
    for (const fs::path& path : {model_path, config_path}) {
      std::error_code ec;
      EDIT_CHECK(overwrite || !fs::exists(fs::symlink_status(path, ec)), path.string(),
                 " already exists (perhaps another run's); pass --overwrite to replace it, or export into a",
                 " folder of its own");
    }
    const auto loaded = edit::tools::load_run(run, checkpoint, weights == "anchor");
    const auto tensors = edit::train::export_parameters(*loaded.model);
    if (!folder.empty()) fs::create_directories(folder);
    // The model goes to a staged name first: a config.json that cannot be written then leaves the
    // old pair as it was, and the rename below cannot fail for lack of space.
    const std::string staged = out + ".staged-" + std::to_string(::getpid());
    try {
      edit::train::write_safetensors(staged, tensors,
                                     {{"format", "pt"}, {"source", loaded.checkpoint}, {"weights", weights}});
      edit::write_file_atomically(config_path.string(), loaded.model->config().to_json() + "\n");
      EDIT_CHECK(std::rename(staged.c_str(), out.c_str()) == 0, "cannot rename ", staged, " to ", out, ": ",
                 std::strerror(errno), "; check the permissions of the folder");
    } catch (...) {
      std::error_code ec;
      fs::remove(staged, ec);
      throw;
    }
    std::cout << "edit-export: " << tensors.size() << " tensors, " << loaded.model->config().num_parameters()
              << " parameters from " << loaded.checkpoint << " -> " << out << std::endl;
    EDIT_CHECK(std::cout.good(), "cannot write the summary to standard output; is the disk full?");
    return 0;
  } catch (const std::exception& e) {
    std::cerr << "edit-export: " << e.what() << "\n";
    return 1;
  }
}
