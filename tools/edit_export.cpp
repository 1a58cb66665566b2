// edit-export: a training run's checkpoint, whatever mesh trained it, as files other programs load.
//   edit-export --run runs/quickstart [--checkpoint latest|PATH] [--weights anchor|local]
//               [--format libedit|hf] [--bpe DIR] --out PATH [--overwrite]
// --format libedit (the default): --out is one safetensors file with libedit's names, config.json
//   goes beside it; PyTorch reads it with safetensors.torch.load_file(). An existing --out file or
//   config.json beside it is never replaced without --overwrite: the folder may be another run's,
//   whose config.json says what its checkpoints hold.
// --format hf: --out is a folder in Hugging Face transformers' layout (model.safetensors,
//   config.json, and GPT-2's tokenizer files when the run recorded them in <run>/tokenizer or --bpe
//   names them) that AutoModelForCausalLM.from_pretrained loads; an existing folder with files in
//   it is refused without --overwrite.
// Every file is written in full and fsynced before it replaces anything, so a failed export (a
// full disk included) leaves the files that were there unchanged.
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <optional>

#include "edit/core/atomic_file.h"
#include "edit/models/hf_format.h"
#include "edit/data/tokenizer_record.h"
#include "model_loading.h"

namespace {

namespace fs = std::filesystem;

struct Options {
  std::string run, checkpoint = "latest", weights = "anchor", format = "libedit", bpe, out;
  bool overwrite = false;
};

// An export writes config.json into its folder. A training run's folder has one that says what its
// checkpoints hold (edit-train-gpt, edit-export and edit-generate read it): never replaced, not
// even with --overwrite.
void refuse_run_folder(const fs::path& folder) {
  const fs::path dir = folder.empty() ? fs::path(".") : folder;
  std::error_code ec;
  for (const char* mark : {"checkpoints", "metrics.jsonl"}) {
    EDIT_CHECK(!fs::exists(dir / mark, ec), "--out would write config.json into ", dir.string(),
               ", a training run's folder (it holds ", mark, "), and replace the run's own; export into a ",
               "folder of its own, e.g. ", (dir / "export").string());
  }
}

// --format hf: the folder, in transformers' layout.
void export_hf(const Options& o) {
  // Everything that can be refused is refused before the checkpoint is read.
  refuse_run_folder(o.out);
  edit::train::check_export_folder(o.out, o.overwrite);
  std::optional<edit::models::HfTokenizer> tokenizer;
  // The run's record of its data's tokenizer (edit-train-gpt copies it from the shards' folder).
  const auto recorded = edit::data::read_tokenizer_record(o.run);
  if (!o.bpe.empty()) {
    tokenizer = edit::models::read_gpt2_bpe(o.bpe);
  } else if (recorded && recorded->kind == "gpt2") {
    tokenizer = edit::models::read_gpt2_bpe(recorded->folder);
  }
  const edit::models::GptConfig config = edit::tools::read_run_config(o.run);
  edit::train::ExportFolder folder;
  folder.text_files = edit::models::hf_text_files(config, tokenizer);
  folder.stale = edit::models::hf_text_file_names();

  const auto loaded = edit::tools::load_run(o.run, o.checkpoint, o.weights == "anchor");
  folder.tensors = edit::models::hf_tensors(*loaded.model);
  folder.metadata = {{"format", "pt"}, {"source", loaded.checkpoint}, {"weights", o.weights}};
  edit::train::write_export_folder(o.out, folder, o.overwrite);

  std::cout << "edit-export: " << edit::models::hf_architecture(config.style) << ", " << folder.tensors.size()
            << " tensors, " << config.num_parameters() << " parameters from " << loaded.checkpoint << " -> "
            << o.out << " (" << folder.tensors_file;
  for (const auto& [name, text] : folder.text_files) std::cout << ", " << name;
  std::cout << ")";
  if (tokenizer) {
    std::cout << "; tokenizer from " << tokenizer->source;
  } else {
    if (recorded) {
      std::cout << "; no tokenizer files: the run was trained on " << recorded->kind
                << " tokens, and a byte-vocabulary model has no Hugging Face tokenizer";
    } else {
      std::cout << "; no tokenizer files: the run has no tokenizer record and no --bpe was given"
                << (config.vocab_size == 256 ? " (a byte-vocabulary model has no Hugging Face tokenizer)"
                                             : " (pass --bpe DIR for a GPT-2 BPE run)");
    }
  }
  std::cout << std::endl;
}

// --format libedit: one safetensors file with libedit's names, config.json beside it.
void export_libedit(const Options& o) {
  const std::string& out = o.out;
  EDIT_CHECK(o.bpe.empty(), "--bpe is for --format hf; a libedit export holds no tokenizer");
  const fs::path model_path(out);
  const fs::path folder = model_path.parent_path();
  const fs::path config_path = folder / "config.json";
  EDIT_CHECK(model_path.has_filename() && !fs::is_directory(model_path), "--out '", out,
             "' is a folder; pass the .safetensors file to write, e.g. ",
             (model_path / "model.safetensors").string());
  refuse_run_folder(folder);
  // Before the checkpoint is read: refusing takes no time, and nothing has been written yet.
  for (const fs::path& path : {model_path, config_path}) {
    std::error_code ec;
    EDIT_CHECK(o.overwrite || !fs::exists(fs::symlink_status(path, ec)), path.string(),
               " already exists (perhaps another run's); pass --overwrite to replace it, or export into a",
               " folder of its own");
  }
  const auto loaded = edit::tools::load_run(o.run, o.checkpoint, o.weights == "anchor");
  const auto tensors = edit::train::export_parameters(*loaded.model);
  if (!folder.empty()) fs::create_directories(folder);
  // Both files go to staged names first and are renamed once both are written: a failure on the
  // way (a full disk, a folder that cannot be written) leaves the old pair, or nothing, as it was.
  const std::string suffix = ".staged-" + std::to_string(::getpid());
  const std::string staged = out + suffix;
  const std::string staged_config = config_path.string() + suffix;
  const auto move = [](const std::string& from, const std::string& to) {
    EDIT_CHECK(std::rename(from.c_str(), to.c_str()) == 0, "cannot rename ", from, " to ", to, ": ",
               std::strerror(errno), "; check the folder's permissions and free space");
  };
  try {
    edit::train::write_safetensors(staged, tensors,
                                   {{"format", "pt"}, {"source", loaded.checkpoint}, {"weights", o.weights}});
    edit::write_file_atomically(staged_config, loaded.model->config().to_json() + "\n");
    move(staged, out);
    move(staged_config, config_path.string());
  } catch (...) {
    std::error_code ec;
    fs::remove(staged, ec);
    fs::remove(staged_config, ec);
    throw;
  }
  std::cout << "edit-export: " << tensors.size() << " tensors, " << loaded.model->config().num_parameters()
            << " parameters from " << loaded.checkpoint << " -> " << out << std::endl;
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  CLI::App app{"edit-export: a checkpoint as safetensors that PyTorch or Hugging Face transformers load"};
  app.add_option("--run", o.run, "the --out-dir of an edit-train-gpt run (holds config.json)")->required();
  app.add_option("--checkpoint", o.checkpoint, "a checkpoint folder, or latest")->capture_default_str();
  app.add_option("--weights", o.weights,
                 "anchor: the last synced global model (Local SGD); local: replica 0's own")
      ->check(CLI::IsMember({"anchor", "local"}))
      ->capture_default_str();
  app.add_option(
         "--format", o.format,
         "libedit: one .safetensors file with libedit's names; hf: a Hugging Face transformers folder "
         "(GPT2LMHeadModel or LlamaForCausalLM)")
      ->check(CLI::IsMember({"libedit", "hf"}))
      ->capture_default_str();
  app.add_option("--bpe", o.bpe,
                 "hf: a folder with GPT-2's encoder.json and vocab.bpe for the export's tokenizer files "
                 "(default: <run>/tokenizer when the run recorded one)");
  app.add_option(
         "--out", o.out,
         "libedit: the .safetensors file to write (config.json goes beside it); hf: the folder to write")
      ->required();
  app.add_flag(
      "--overwrite", o.overwrite,
      "libedit: replace an existing --out file and the config.json beside it; hf: write into a folder "
      "that has files, replacing the export's");
  CLI11_PARSE(app, argc, argv);
  try {
    if (o.format == "hf") {
      export_hf(o);
    } else {
      export_libedit(o);
    }
    EDIT_CHECK(std::cout.good(), "cannot write the summary to standard output; is the disk full?");
    return 0;
  } catch (const std::exception& e) {
    std::cerr << "edit-export: " << e.what() << "\n";
    return 1;
  }
}
