#include "edit/data/tokenizer_record.h"

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "edit/core/atomic_file.h"
#include "edit/core/check.h"

namespace edit::data {
namespace fs = std::filesystem;

namespace {

constexpr const char* kRecordFile = "tokenizer.json";
constexpr const char* kGpt2Files[] = {"encoder.json", "vocab.bpe"};

std::string read_all(const fs::path& path, const std::string& fix) {
  std::ifstream in(path, std::ios::binary);
  EDIT_CHECK(in.good(), "cannot read ", path.string(), "; ", fix);
  std::stringstream text;
  text << in.rdbuf();
  EDIT_CHECK(!in.bad(), "cannot read ", path.string(), "; ", fix);
  return text.str();
}

// The number of ids in GPT-2's encoder.json (its largest id + 1).
int gpt2_vocab_size(const fs::path& encoder) {
  nlohmann::json json;
  try {
    json = nlohmann::json::parse(read_all(encoder, "pass a folder holding GPT-2's encoder.json"));
  } catch (const nlohmann::json::exception& e) {
    EDIT_CHECK(false, encoder.string(), " is not JSON (", e.what(), "); is it GPT-2's encoder.json?");
  }
  EDIT_CHECK(json.is_object() && !json.empty(), encoder.string(),
             " is not GPT-2's encoder.json (a token -> id map)");
  int size = 0;
  for (const auto& item : json.items()) {
    EDIT_CHECK(item.value().is_number_integer(), encoder.string(), ": the id of ", item.key(),
               " is not an integer");
    size = std::max(size, item.value().get<int>() + 1);
  }
  return size;
}

}  // namespace

void write_tokenizer_record(const std::string& folder, const std::string& kind, const std::string& bpe_dir) {
  EDIT_CHECK(kind == "byte" || kind == "gpt2", "tokenizer kind '", kind, "' is not byte or gpt2");
  const fs::path dir = fs::path(folder) / kTokenizerFolder;
  fs::create_directories(dir);
  int vocab_size = 256;
  if (kind == "gpt2") {
    for (const char* name : kGpt2Files) {
      const std::string bytes =
          read_all(fs::path(bpe_dir) / name, "pass a folder holding GPT-2's encoder.json and vocab.bpe");
      write_file_atomically((dir / name).string(), bytes);
    }
    vocab_size = gpt2_vocab_size(dir / kGpt2Files[0]);
  } else {
    for (const char* name : kGpt2Files) fs::remove(dir / name);
  }
  const nlohmann::json record = {{"kind", kind}, {"vocab_size", vocab_size}};
  write_file_atomically((dir / kRecordFile).string(), record.dump() + "\n");
}

std::optional<TokenizerRecord> read_tokenizer_record(const std::string& folder) {
  const fs::path dir = fs::path(folder) / kTokenizerFolder;
  const fs::path file = dir / kRecordFile;
  if (!fs::exists(file)) return std::nullopt;
  const std::string fix =
      "remove the folder " + dir.string() + " (the tokenizer is then unknown) or write it anew";
  nlohmann::json json;
  try {
    json = nlohmann::json::parse(read_all(file, fix));
  } catch (const nlohmann::json::exception& e) {
    EDIT_CHECK(false, file.string(), " is not JSON (", e.what(), "); ", fix);
  }
  TokenizerRecord record;
  record.folder = dir.string();
  EDIT_CHECK(json.is_object() && json.contains("kind") && json["kind"].is_string() &&
                 json.contains("vocab_size") && json["vocab_size"].is_number_integer(),
             file.string(), " lacks \"kind\" or \"vocab_size\"; ", fix);
  record.kind = json["kind"].get<std::string>();
  record.vocab_size = json["vocab_size"].get<int>();
  EDIT_CHECK(record.kind == "byte" || record.kind == "gpt2", file.string(), ": kind '", record.kind,
             "' is not byte or gpt2; ", fix);
  EDIT_CHECK(record.vocab_size > 0, file.string(), ": vocab_size ", record.vocab_size, " is not positive; ",
             fix);
  if (record.kind == "gpt2") {
    for (const char* name : kGpt2Files) {
      EDIT_CHECK(fs::is_regular_file(dir / name), file.string(), " names GPT-2's tokenizer, but ",
                 (dir / name).string(), " is missing; ", fix);
    }
  }
  return record;
}

std::optional<TokenizerRecord> common_tokenizer_record(const std::vector<std::string>& files) {
  std::set<fs::path> folders;
  for (const auto& file : files) folders.insert(fs::absolute(file).parent_path());
  std::optional<TokenizerRecord> common;
  std::string common_bytes;  // the record's files, to compare folders by content
  for (const auto& folder : folders) {
    const auto record = read_tokenizer_record(folder.string());
    if (!record) continue;
    std::string bytes = read_all(fs::path(record->folder) / kRecordFile, "");
    if (record->kind == "gpt2") {
      for (const char* name : kGpt2Files) bytes += read_all(fs::path(record->folder) / name, "");
    }
    if (!common) {
      common = record;
      common_bytes = std::move(bytes);
      continue;
    }
    EDIT_CHECK(bytes == common_bytes,
               "the data files come from folders tokenized differently: ", common->folder, " (", common->kind,
               ") and ", record->folder, " (", record->kind, "); train on shards of one tokenizer");
  }
  return common;
}

void copy_tokenizer_record(const TokenizerRecord& record, const std::string& folder) {
  EDIT_CHECK(record.kind == "byte" || !record.folder.empty(), "copy_tokenizer_record: a ", record.kind,
             " record must come from a folder (read_tokenizer_record) that holds its files");
  write_tokenizer_record(folder, record.kind, record.folder);
}

}  // namespace edit::data
