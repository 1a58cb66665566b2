#include "edit/train/run_dir.h"

#include <cstdlib>
#include <filesystem>
#include <sstream>
#include <vector>

#include "edit/comm/device_mesh.h"
#include "edit/core/atomic_file.h"
#include "edit/core/check.h"
#include "edit/core/log.h"
#include "edit/train/checkpoint.h"

namespace edit::train {
namespace fs = std::filesystem;

namespace {
// What makes a folder hold a run; --overwrite removes these (and the plot).
constexpr const char* kRunFiles[] = {"checkpoints", "metrics.jsonl", "loss.tsv"};
}  // namespace

RunDir::RunDir(std::string path) : path_(std::move(path)) {}

std::string RunDir::config_path() const { return (fs::path(path_) / "config.json").string(); }
std::string RunDir::checkpoints() const { return (fs::path(path_) / "checkpoints").string(); }
std::string RunDir::metrics_path() const { return (fs::path(path_) / "metrics.jsonl").string(); }
std::string RunDir::loss_table_path() const { return (fs::path(path_) / "loss.tsv").string(); }

void RunDir::prepare(comm::DeviceMesh& mesh, bool resuming, bool overwrite) const {
  const fs::path dir(path_);
  std::string previous;
  double refused = 0.0;
  if (mesh.rank() == 0) {
    for (const char* name : kRunFiles) {
      // Empty ones hold nothing to lose: a start refused after the write probe below leaves an
      // empty checkpoints folder, and the corrected command must not be refused for it.
      std::error_code error;
      if (fs::exists(dir / name) && !fs::is_empty(dir / name, error)) {
        previous += (previous.empty() ? "" : ", ") + std::string(name);
      }
    }
    if (!previous.empty() && !resuming) {
      if (overwrite) {
        for (const char* name : kRunFiles) fs::remove_all(dir / name);
        fs::remove(dir / "loss.png");
        spdlog::info("--overwrite: removed the previous run's {} from {}", previous, path_);
      } else {
        refused = 1.0;
      }
    }
  }
  EDIT_CHECK(mesh.world().all_gather_values({refused}).front() == 0.0, "--out-dir ", path_,
             " holds a previous run", previous.empty() ? std::string() : " (" + previous + ")",
             "; pass --resume auto to continue it, --overwrite to start over (its checkpoints and logs are "
             "deleted), or choose another --out-dir");
  std::string problem;
  try {
    const fs::path probe = fs::path(checkpoints()) / (".write-test-" + std::to_string(mesh.rank()));
    fs::create_directories(probe.parent_path());
    std::ofstream(probe) << "ok\n";
    EDIT_CHECK(fs::file_size(probe) == 3, "cannot write ", probe.string());
    fs::remove(probe);
  } catch (const std::exception& e) {
    problem = e.what();
  }
  std::string failed;
  const auto flags = mesh.world().all_gather_values({problem.empty() ? 0.0 : 1.0});
  for (size_t r = 0; r < flags.size(); ++r) {
    if (flags[r] != 0.0) failed += (failed.empty() ? "" : ", ") + std::to_string(r);
  }
  EDIT_CHECK(failed.empty(), "rank(s) ", failed, " cannot write into ", checkpoints(),
             problem.empty() ? std::string() : " (" + problem + ")",
             "; choose an --out-dir every rank can write");
}

void RunDir::write_config(const std::string& json) const {
  write_file_atomically(config_path(), json + "\n");
}

std::string RunDir::read_config() const {
  std::ifstream in(config_path());
  EDIT_CHECK(in.good(), "cannot read ", config_path(), "; pass the --out-dir of an edit-train-gpt run");
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

std::vector<std::string> RunDir::set_aside_logs() const {
  std::vector<std::string> moved;
  for (const std::string& log : {metrics_path(), loss_table_path()}) {
    std::error_code error;
    if (!fs::exists(log) || fs::is_empty(log, error)) continue;
    int n = 1;
    while (fs::exists(log + "." + std::to_string(n))) ++n;
    const std::string aside = log + "." + std::to_string(n);
    fs::rename(log, aside);
    moved.push_back(aside);
  }
  return moved;
}

std::string RunDir::latest_checkpoint() const {
  const auto newest = train::latest_checkpoint(checkpoints());
  EDIT_CHECK(newest.has_value(), "no complete checkpoint under ", checkpoints(),
             ": the run stopped before its first save, or ran with --checkpoint-every -1 (which saves "
             "none); pass --checkpoint PATH, or train without -1");
  return *newest;
}

LossTable::LossTable(const std::string& path, std::int64_t start_step) : path_(path) {
  std::vector<std::string> rows;
  if (start_step > 0) {
    std::ifstream old_table(path_);
    for (std::string row; std::getline(old_table, row);) {
      if (row.rfind("#", 0) == 0 || std::atoll(row.c_str()) <= start_step) rows.push_back(row);
    }
  }
  if (rows.empty()) rows.push_back("# step\ttokens\ttrain_loss\tval_loss");
  {
    std::ofstream rewritten(path_ + ".tmp", std::ios::trunc);
    for (const auto& row : rows) rewritten << row << '\n';
    EDIT_CHECK(rewritten.flush().good(), "cannot write ", path_, ".tmp; is the disk full?");
  }
  fs::rename(path_ + ".tmp", path_);
  out_.open(path_, std::ios::app);
  EDIT_CHECK(out_.good(), "cannot append to ", path_, "; check the folder's permissions");
}

void LossTable::add(std::int64_t step, std::int64_t tokens, double train_loss, double val_loss) {
  out_ << step << '\t' << tokens << '\t' << train_loss << '\t' << val_loss << std::endl;
  EDIT_CHECK(out_.good(), "writing ", path_, " failed; is the disk full?");
}

}  // namespace edit::train
