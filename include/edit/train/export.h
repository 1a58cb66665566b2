// Getting a trained model out: an unsharded copy of a checkpoint, safetensors files that PyTorch
// (safetensors.torch.load_file) reads, and folders of them (the Hugging Face layout,
// models/hf_format.h).
#pragma once

#include <ATen/core/Tensor.h>
#include <torch/nn/module.h>

#include <map>
#include <string>
#include <utility>
#include <vector>

namespace edit::train {

// Fills the unsharded `model` (built with the configuration that trained it) from the checkpoint
// folder `checkpoint_dir`, whatever mesh saved it: the shards of replica 0 are joined unit by unit.
// With `prefer_anchor` the Local SGD anchor (the last synced, global model) is used where the
// checkpoint has one, else the worker's own parameters.
void load_unsharded(const std::string& checkpoint_dir, torch::nn::Module& model, bool prefer_anchor = true);

// Writes tensors in the safetensors format: an 8-byte little-endian header size, a JSON header
// {name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}} padded with
// spaces to a multiple of 8 bytes, then the raw little-endian data in header order. Atomic
// (edit::AtomicFile).
void write_safetensors(const std::string& path, const std::vector<std::pair<std::string, at::Tensor>>& tensors,
                       const std::map<std::string, std::string>& metadata = {});

// The model's parameters under export names ("block0.qkv.weight": the Unit wrappers' ".inner"
// dropped), in registration order.
std::vector<std::pair<std::string, at::Tensor>> export_parameters(torch::nn::Module& model);

// The files of an export folder: one safetensors file and text files, each named without a folder.
struct ExportFolder {
  std::string tensors_file = "model.safetensors";
  std::vector<std::pair<std::string, at::Tensor>> tensors;
  std::map<std::string, std::string> metadata;                  // the safetensors __metadata__
  std::vector<std::pair<std::string, std::string>> text_files;  // (name, content)
  // Names an earlier export of this kind may hold that this one does not write (a tokenizer it
  // lacks): removed from an overwritten folder, so no file of the old export is left mixed in.
  std::vector<std::string> stale;
};

// Refuses `dir` when it is not a folder, or a folder with files in it and `overwrite` is off
// (edit::Error naming it and --overwrite). Cheap: call it before reading a checkpoint.
void check_export_folder(const std::string& dir, bool overwrite);

// Writes `folder` into `dir` (created with its parents; check_export_folder first) so that nothing
// already there is lost on a failure: every file is written in full and fsynced into a staging
// folder beside `dir`, which then becomes `dir` by one rename (a new or empty `dir`) or moves file
// by file (an overwritten one: each file replaced by an atomic rename, then the stale names
// removed; files the export does not name stay). On an error the staging folder is removed.
void write_export_folder(const std::string& dir, const ExportFolder& folder, bool overwrite);

}  // namespace edit::train
