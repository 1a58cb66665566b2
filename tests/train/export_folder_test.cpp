// Export folders: created whole, a folder with files refused without overwrite, an overwrite that
// replaces the export's files, removes its stale ones and keeps what is not the export's.
#include <ATen/Functions.h>
#include <gtest/gtest.h>

#include <filesystem>

#include "../data/temp_dir.h"
#include "edit/core/check.h"
#include "edit/train/export.h"

namespace {

namespace fs = std::filesystem;
using edit::testing_support::read_bytes;
using edit::testing_support::TempDir;
using edit::testing_support::write_bytes;

edit::train::ExportFolder folder_with(const std::string& text) {
  edit::train::ExportFolder folder;
  folder.tensors = {{"w", at::ones({2, 3})}};
  folder.metadata = {{"format", "pt"}};
  folder.text_files = {{"config.json", text}};
  folder.stale = {"config.json", "vocab.json"};
  return folder;
}

TEST(ExportFolder, NewAndEmptyFoldersAreWrittenWhole) {
  TempDir dir;
  edit::train::write_export_folder(dir.file("a/b/export"), folder_with("{}"), /*overwrite=*/false);
  EXPECT_EQ(read_bytes(dir.file("a/b/export/config.json")), "{}");
  EXPECT_TRUE(fs::is_regular_file(dir.file("a/b/export/model.safetensors")));
  fs::create_directory(dir.file("empty"));
  edit::train::write_export_folder(dir.file("empty/"), folder_with("{}"), /*overwrite=*/false);
  EXPECT_EQ(read_bytes(dir.file("empty/config.json")), "{}");
  for (const auto& entry : fs::directory_iterator(dir.file("a/b"))) {
    EXPECT_EQ(entry.path().filename(), "export") << "left behind: " << entry.path();
  }
}

TEST(ExportFolder, AFolderWithFilesIsRefusedUnlessOverwriteWhichKeepsForeignFiles) {
  TempDir dir;
  const std::string out = dir.file("export");
  fs::create_directory(out);
  write_bytes(out + "/vocab.json", "old tokenizer");
  write_bytes(out + "/NOTES.txt", "mine");
  EXPECT_THROW(edit::train::check_export_folder(out, false), edit::Error);
  EXPECT_THROW(edit::train::write_export_folder(out, folder_with("{}"), false), edit::Error);
  EXPECT_EQ(read_bytes(out + "/vocab.json"), "old tokenizer");
  EXPECT_FALSE(fs::exists(out + "/config.json"));

  edit::train::write_export_folder(out, folder_with("{\"new\": 1}"), /*overwrite=*/true);
  EXPECT_EQ(read_bytes(out + "/config.json"), "{\"new\": 1}");
  EXPECT_FALSE(fs::exists(out + "/vocab.json")) << "a stale file of an earlier export stays mixed in";
  EXPECT_EQ(read_bytes(out + "/NOTES.txt"), "mine");
  std::size_t entries = 0;
  for (const auto& entry : fs::directory_iterator(dir.path()))
    entries += entry.path().filename() == "export" ? 0 : 1;
  EXPECT_EQ(entries, 0u) << "a staging folder was left";
}

TEST(ExportFolder, AFileIsNotAFolderAndNamesMustBePlain) {
  TempDir dir;
  write_bytes(dir.file("file"), "x");
  EXPECT_THROW(edit::train::check_export_folder(dir.file("file"), /*overwrite=*/true), edit::Error);
  auto folder = folder_with("{}");
  folder.text_files.emplace_back("../escape.json", "{}");
  EXPECT_THROW(edit::train::write_export_folder(dir.file("out"), folder, false), edit::Error);
  EXPECT_FALSE(fs::exists(dir.file("escape.json")));
}

}  // namespace
