// RunDir's paths and config file, and LossTable: a resumed run keeps the rows up to its step.
#include "edit/train/run_dir.h"

#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <string>

#include "../data/temp_dir.h"

namespace {

using edit::testing_support::TempDir;

std::string read(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

TEST(RunDir, LayoutAndConfig) {
  TempDir dir;
  const edit::train::RunDir run(dir.path());
  EXPECT_EQ(run.config_path(), dir.path() + "/config.json");
  EXPECT_EQ(run.checkpoints(), dir.path() + "/checkpoints");
  EXPECT_EQ(run.metrics_path(), dir.path() + "/metrics.jsonl");
  EXPECT_EQ(run.loss_table_path(), dir.path() + "/loss.tsv");
  try {
    run.read_config();
    FAIL() << "a missing config.json was read";
  } catch (const std::exception& e) {
    EXPECT_NE(std::string(e.what()).find("config.json; pass the --out-dir of an edit-train-gpt run"),
              std::string::npos);
  }
  run.write_config(R"({"dim": 8})");
  EXPECT_EQ(run.read_config(), "{\"dim\": 8}\n");
  EXPECT_THROW(run.latest_checkpoint(), std::exception);
}

TEST(LossTable, KeepsRowsUpToTheResumedStep) {
  TempDir dir;
  const std::string path = dir.file("loss.tsv");
  {
    edit::train::LossTable table(path, 0);
    table.add(0, 0, NAN, 5.5);
    table.add(10, 1280, 4.25, 4.5);
    table.add(20, 2560, 3.25, 3.5);
  }
  EXPECT_EQ(
      read(path),
      "# step\ttokens\ttrain_loss\tval_loss\n0\t0\tnan\t5.5\n10\t1280\t4.25\t4.5\n20\t2560\t3.25\t3.5\n");
  {
    // Resumed from step 10: the row of step 20 came after that checkpoint and is written anew.
    edit::train::LossTable table(path, 10);
    table.add(20, 2560, 3.125, 3.375);
  }
  EXPECT_EQ(
      read(path),
      "# step\ttokens\ttrain_loss\tval_loss\n0\t0\tnan\t5.5\n10\t1280\t4.25\t4.5\n20\t2560\t3.125\t3.375\n");
  // A fresh run (step 0) starts the table over.
  { edit::train::LossTable table(path, 0); }
  EXPECT_EQ(read(path), "# step\ttokens\ttrain_loss\tval_loss\n");
}

}  // namespace
