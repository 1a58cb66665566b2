// Getting a trained model out: an unsharded copy of a checkpoint, and safetensors files that
// PyTorch (safetensors.torch.load_file) reads.
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

}  // namespace edit::train
