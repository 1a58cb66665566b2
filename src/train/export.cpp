#include "edit/train/export.h"

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>
#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <unordered_set>

#include "edit/core/atomic_file.h"
#include "edit/core/check.h"
#include "edit/shard/unit.h"
#include "edit/train/checkpoint.h"

namespace edit::train {
namespace fs = std::filesystem;

void load_unsharded(const std::string& checkpoint_dir, torch::nn::Module& model, bool prefer_anchor) {
  const fs::path manifest_path = fs::path(checkpoint_dir) / "manifest.json";
  EDIT_CHECK(fs::exists(manifest_path), manifest_path.string(), " does not exist; pass a checkpoint folder "
             "(<out-dir>/checkpoints/step_XXXXXXXX)");
  const auto manifest = nlohmann::json::parse(std::ifstream(manifest_path));
  EDIT_CHECK(manifest.value("format", std::string()) == kCheckpointFormat, checkpoint_dir, " has format '",
             manifest.value("format", std::string("?")), "' but this libedit reads '", kCheckpointFormat,
             "'; use the libedit version that wrote it");
  const int shard_size = manifest.at("shard_size").get<int>();
  // Replica 0 is world ranks 0..S-1; rank s holds slice s of every unit.
  std::vector<RankFile> files;
  for (int s = 0; s < shard_size; ++s) {
    const auto& entry = manifest.at("ranks").at(static_cast<size_t>(s));
    files.push_back(read_rank_file((fs::path(checkpoint_dir) / entry.at("file").get<std::string>()).string(),
                                   entry.at("bytes").get<std::uint64_t>(), entry.at("crc32").get<std::uint32_t>()));
  }
  const auto find = [&](const RankFile& file, const std::string& key) -> const at::Tensor* {
    for (const auto& [name, tensor] : file.tensors) {
      if (name == key) return &tensor;
    }
    return nullptr;
  };
  // The keys edit-train-gpt's components save under: the model's shards ("model/") and the Local
  // SGD anchors ("strategy/").
  const auto shard_key = [](int unit) { return "model/unit" + std::to_string(unit) + ".shard"; };
  const auto anchor_key = [](int unit) { return "strategy/unit" + std::to_string(unit) + ".anchor"; };
  c10::NoGradGuard no_grad;
  std::unordered_set<const c10::TensorImpl*> seen;  // a tied weight is stored once, in its first unit
  int unit = 0;
  for (const auto& module : model.modules(/*include_self=*/false)) {
    if (!std::dynamic_pointer_cast<shard::UnitImpl>(module)) continue;
    const bool anchor = prefer_anchor && find(files[0], anchor_key(unit)) != nullptr;
    std::vector<at::Tensor> slices;
    for (const auto& file : files) {
      const at::Tensor* slice = find(file, anchor ? anchor_key(unit) : shard_key(unit));
      EDIT_CHECK(slice != nullptr, checkpoint_dir, " has no weights for unit ", unit,
                 "; the model has more units than the one that was trained (check the model configuration)");
      slices.push_back(*slice);
    }
    const at::Tensor flat = at::cat(slices);
    std::int64_t offset = 0;
    for (auto& param : module->parameters(/*recurse=*/true)) {
      if (!seen.insert(param.unsafeGetTensorImpl()).second) continue;
      EDIT_CHECK(offset + param.numel() <= flat.numel(), "unit ", unit, " of ", checkpoint_dir, " holds ",
                 flat.numel(), " values, fewer than the model's parameters need; check the model configuration");
      param.copy_(flat.narrow(0, offset, param.numel()).view(param.sizes()));
      offset += param.numel();
    }
    EDIT_CHECK(flat.numel() - offset < shard_size, "unit ", unit, " of ", checkpoint_dir, " holds ", flat.numel(),
               " values but the model's parameters use only ", offset, "; check the model configuration");
    ++unit;
  }
  for (const auto& file : files) {
    EDIT_CHECK(find(file, shard_key(unit)) == nullptr, checkpoint_dir,
               " has more units than the model (", unit, "); check the model configuration");
  }
}

std::vector<std::pair<std::string, at::Tensor>> export_parameters(torch::nn::Module& model) {
  std::vector<std::pair<std::string, at::Tensor>> out;
  for (const auto& item : model.named_parameters(/*recurse=*/true)) {
    std::string name = item.key();
    for (auto at = name.find(".inner."); at != std::string::npos; at = name.find(".inner.")) name.erase(at, 6);
    out.emplace_back(name, item.value().detach());
  }
  return out;
}

namespace {

const char* safetensors_dtype(at::ScalarType type) {
  switch (type) {
    case at::kFloat: return "F32";
    case at::kDouble: return "F64";
    case at::kHalf: return "F16";
    case at::kBFloat16: return "BF16";
    case at::kLong: return "I64";
    case at::kInt: return "I32";
    case at::kByte: return "U8";
    default: EDIT_FAIL("safetensors export of dtype ", type, " is not supported; convert to float32 first");
  }
}

}  // namespace

void write_safetensors(const std::string& path, const std::vector<std::pair<std::string, at::Tensor>>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  nlohmann::json header = nlohmann::json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::vector<at::Tensor> data;
  std::uint64_t offset = 0;
  for (const auto& [name, tensor] : tensors) {
    EDIT_CHECK(!header.contains(name), "two tensors are named '", name, "'; safetensors names must be unique");
    at::Tensor t = tensor.detach().to(at::kCPU).contiguous();
    const std::uint64_t bytes = static_cast<std::uint64_t>(t.numel()) * t.element_size();
    header[name] = {{"dtype", safetensors_dtype(t.scalar_type())}, {"shape", t.sizes().vec()},
                    {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
    data.push_back(std::move(t));
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');  // the data starts 8-byte aligned
  AtomicFile out(path);
  const std::uint64_t size = text.size();  // little-endian on every platform we build for
  out.write(&size, sizeof(size));
  out.write(text.data(), text.size());
  for (const auto& t : data) out.write(t.data_ptr(), static_cast<std::size_t>(t.numel()) * t.element_size());
  out.commit();
}

}  // namespace edit::train
