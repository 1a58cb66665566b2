// The folder of one training run: what edit-train-gpt writes, edit-export and edit-generate read,
// and a custom trainer can write the same way.
//
//   config.json     the model's configuration (models::GptConfig::to_json)
//   tokenizer/      what tokenized the training data, when known (data/tokenizer_record.h)
//   checkpoints/    one folder per checkpoint (Checkpointer)
//   metrics.jsonl   one JSON line per step (TrainerOptions::metrics_path)
//   loss.tsv        step, tokens, train loss, val loss per evaluation (LossTable)
//   loss.png        a plot of loss.tsv, when one was drawn
#pragma once

#include <cstdint>
#include <fstream>
#include <string>
#include <vector>

namespace edit::comm {
class DeviceMesh;
}

namespace edit::train {

class RunDir {
 public:
  explicit RunDir(std::string path);

  const std::string& path() const { return path_; }
  std::string config_path() const;
  std::string checkpoints() const;
  std::string metrics_path() const;
  std::string loss_table_path() const;

  // Collective over the mesh's world, before anything is trained. A folder that holds a previous
  // run (checkpoints, metrics or loss table) is refused unless `resuming`, or emptied of them with
  // `overwrite`; then every rank checks that it can write into checkpoints/ (each writes its own
  // checkpoint files). Every rank gets the same verdict; errors name the folder and the fix.
  void prepare(comm::DeviceMesh& mesh, bool resuming, bool overwrite) const;

  // config.json, written atomically (one rank writes it), and read back with a message naming the
  // file when it is not there.
  void write_config(const std::string& json) const;
  std::string read_config() const;

  // The newest complete checkpoint folder; throws naming the fix when there is none.
  std::string latest_checkpoint() const;

  // A run that starts over where an earlier attempt left logs but no checkpoint (--resume auto
  // before the first save): renames its non-empty metrics.jsonl and loss.tsv to NAME.1 (.2, ...:
  // the first free number), so that the new run's logs do not replace them. Returns the new names.
  std::vector<std::string> set_aside_logs() const;

 private:
  std::string path_;
};

// loss.tsv: "# step  tokens  train_loss  val_loss", a row per evaluation. Opened for a run that
// starts at `start_step`: rows past it came from a run that stopped after its last checkpoint and
// are dropped (the kept rows are rewritten beside the table and renamed over it, so a crash loses
// none). Opened by one rank.
class LossTable {
 public:
  LossTable(const std::string& path, std::int64_t start_step);
  void add(std::int64_t step, std::int64_t tokens, double train_loss, double val_loss);

 private:
  std::string path_;
  std::ofstream out_;
};

}  // namespace edit::train
