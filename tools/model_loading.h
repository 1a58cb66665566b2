// Shared by edit-export and edit-generate: the model of a training run, filled from a checkpoint.
#pragma once

#include <memory>
#include <string>

#include "edit/core/check.h"
#include "edit/models/gpt.h"
#include "edit/train/export.h"
#include "edit/train/run_dir.h"

namespace edit::tools {

struct LoadedModel {
  std::shared_ptr<models::GptImpl> model;
  std::string checkpoint;  // the folder the weights came from
};

// The model configuration of the run in `run_dir` (its config.json).
inline models::GptConfig read_run_config(const std::string& run_dir) {
  return models::GptConfig::from_json(train::RunDir(run_dir).read_config());
}

// `run_dir` holds config.json and checkpoints/ (edit-train-gpt --out-dir); `checkpoint` is a
// folder or "latest".
inline LoadedModel load_run(const std::string& run_dir, const std::string& checkpoint, bool prefer_anchor) {
  const train::RunDir run(run_dir);
  LoadedModel loaded;
  loaded.model = std::make_shared<models::GptImpl>(models::GptConfig::from_json(run.read_config()));
  loaded.checkpoint = checkpoint == "latest" ? run.latest_checkpoint() : checkpoint;
  train::load_unsharded(loaded.checkpoint, *loaded.model, prefer_anchor);
  return loaded;
}

}  // namespace edit::tools
