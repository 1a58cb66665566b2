// Shared by edit-export and edit-generate: the model of a training run, filled from a checkpoint.
#pragma once

#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>

#include "edit/core/check.h"
#include "edit/models/gpt.h"
#include "edit/train/checkpoint.h"
#include "edit/train/export.h"

namespace edit::tools {

struct LoadedModel {
  std::shared_ptr<models::GptImpl> model;
  std::string checkpoint;  // the folder the weights came from
};

// The model configuration of the run in `run_dir` (its config.json).
inline models::GptConfig read_run_config(const std::string& run_dir) {
  const std::filesystem::path config_path = std::filesystem::path(run_dir) / "config.json";
  std::ifstream config_file(config_path);
  EDIT_CHECK(config_file.good(), "cannot read ", config_path.string(),
             "; pass the --out-dir of an edit-train-gpt run");
  std::stringstream text;
  text << config_file.rdbuf();
  return models::GptConfig::from_json(text.str());
}

// `run_dir` holds config.json and checkpoints/ (edit-train-gpt --out-dir); `checkpoint` is a
// folder or "latest".
inline LoadedModel load_run(const std::string& run_dir, const std::string& checkpoint, bool prefer_anchor) {
  namespace fs = std::filesystem;
  LoadedModel loaded;
  loaded.model = std::make_shared<models::GptImpl>(read_run_config(run_dir));
  loaded.checkpoint = checkpoint;
  if (checkpoint == "latest") {
    const fs::path root = fs::path(run_dir) / "checkpoints";
    const auto newest = train::latest_checkpoint(root.string());
    EDIT_CHECK(newest.has_value(), "no complete checkpoint under ", root.string(),
               "; train with --checkpoint-every N first, or pass --checkpoint PATH");
    loaded.checkpoint = *newest;
  }
  train::load_unsharded(loaded.checkpoint, *loaded.model, prefer_anchor);
  return loaded;
}

}  // namespace edit::tools
