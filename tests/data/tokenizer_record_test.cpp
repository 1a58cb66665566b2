// The tokenizer record (data/tokenizer_record.h): written, read back, copied, compared across the
// folders of a data set, and refused with a message when broken.
#include "edit/data/tokenizer_record.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <string>

#include "error_of.h"
#include "temp_dir.h"

namespace {

namespace fs = std::filesystem;
using edit::testing_support::error_of;
using edit::testing_support::TempDir;

void write(const std::string& path, const std::string& text) {
  fs::create_directories(fs::path(path).parent_path());
  std::ofstream(path, std::ios::binary) << text;
}

std::string read(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

// A GPT-2-shaped pair of files: ids 0..4 (so vocab 5), one merge.
void write_bpe(const std::string& dir) {
  write(dir + "/encoder.json", R"({"a": 0, "b": 1, "c": 2, "ab": 3, "\u0120": 4})");
  write(dir + "/vocab.bpe", "#version: 0.2\na b\n");
}

TEST(TokenizerRecord, ByteRoundTripAndAbsence) {
  TempDir dir;
  EXPECT_FALSE(edit::data::read_tokenizer_record(dir.path()).has_value());
  edit::data::write_tokenizer_record(dir.path(), "byte");
  const auto record = edit::data::read_tokenizer_record(dir.path());
  ASSERT_TRUE(record.has_value());
  EXPECT_EQ(record->kind, "byte");
  EXPECT_EQ(record->vocab_size, 256);
  EXPECT_EQ(record->folder, dir.path() + "/tokenizer");
}

TEST(TokenizerRecord, Gpt2FilesAreCopiedAndCounted) {
  TempDir bpe, data, run;
  write_bpe(bpe.path());
  edit::data::write_tokenizer_record(data.path(), "gpt2", bpe.path());
  const auto record = edit::data::read_tokenizer_record(data.path());
  ASSERT_TRUE(record.has_value());
  EXPECT_EQ(record->kind, "gpt2");
  EXPECT_EQ(record->vocab_size, 5);  // the largest id of encoder.json, plus one
  EXPECT_EQ(read(record->folder + "/encoder.json"), read(bpe.file("encoder.json")));
  EXPECT_EQ(read(record->folder + "/vocab.bpe"), read(bpe.file("vocab.bpe")));

  // A run's copy holds the same files; a byte record written over it drops GPT-2's.
  edit::data::copy_tokenizer_record(*record, run.path());
  EXPECT_EQ(read(run.path() + "/tokenizer/vocab.bpe"), read(bpe.file("vocab.bpe")));
  edit::data::copy_tokenizer_record({"byte", 256, ""}, run.path());
  EXPECT_EQ(edit::data::read_tokenizer_record(run.path())->kind, "byte");
  EXPECT_FALSE(fs::exists(run.path() + "/tokenizer/encoder.json"));
}

TEST(TokenizerRecord, BrokenRecordsNameTheFileAndTheFix) {
  TempDir dir;
  write(dir.path() + "/tokenizer/tokenizer.json", "{not json");
  EXPECT_NE(
      error_of([&] { edit::data::read_tokenizer_record(dir.path()); }).find("tokenizer.json is not JSON"),
      std::string::npos);
  write(dir.path() + "/tokenizer/tokenizer.json", R"({"kind": "sentencepiece", "vocab_size": 32000})");
  EXPECT_NE(error_of([&] {
              edit::data::read_tokenizer_record(dir.path());
            }).find("'sentencepiece' is not byte or gpt2"),
            std::string::npos);
  write(dir.path() + "/tokenizer/tokenizer.json", R"({"kind": "gpt2", "vocab_size": 50257})");
  const std::string missing = error_of([&] { edit::data::read_tokenizer_record(dir.path()); });
  EXPECT_NE(missing.find("encoder.json is missing"), std::string::npos) << missing;
  EXPECT_NE(missing.find("remove the folder"), std::string::npos) << missing;
  TempDir empty_bpe, out;
  EXPECT_NE(error_of([&] {
              edit::data::write_tokenizer_record(out.path(), "gpt2", empty_bpe.path());
            }).find("encoder.json"),
            std::string::npos);
}

TEST(TokenizerRecord, DataFoldersMustAgree) {
  TempDir bpe, a, b, c;
  write_bpe(bpe.path());
  edit::data::write_tokenizer_record(a.path(), "gpt2", bpe.path());
  edit::data::write_tokenizer_record(b.path(), "gpt2", bpe.path());
  edit::data::write_tokenizer_record(c.path(), "byte");
  for (const auto* dir : {&a, &b, &c}) write(dir->file("train_000000.bin"), "x");
  // No record at all (shards from elsewhere), one folder, two folders with the same files.
  TempDir bare;
  write(bare.file("train_000000.bin"), "x");
  EXPECT_FALSE(edit::data::common_tokenizer_record({bare.file("train_000000.bin")}).has_value());
  EXPECT_EQ(edit::data::common_tokenizer_record({a.file("train_000000.bin")})->kind, "gpt2");
  EXPECT_EQ(
      edit::data::common_tokenizer_record({a.file("train_000000.bin"), b.file("train_000000.bin")})->kind,
      "gpt2");
  const std::string mixed = error_of([&] {
    edit::data::common_tokenizer_record({a.file("train_000000.bin"), c.file("train_000000.bin")});
  });
  EXPECT_NE(mixed.find("tokenized differently"), std::string::npos) << mixed;
  // The same kind with other files is a different tokenizer too.
  write(b.path() + "/tokenizer/vocab.bpe", "#version: 0.2\nb c\n");
  EXPECT_NE(error_of([&] {
              edit::data::common_tokenizer_record({a.file("train_000000.bin"), b.file("train_000000.bin")});
            }).find("tokenized differently"),
            std::string::npos);
}

}  // namespace
