#include "edit/train/export.h"

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
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
  // A Local SGD checkpoint has an anchor for every unit: all or none, never a mix.
  const bool anchor = prefer_anchor && find(files[0], anchor_key(0)) != nullptr;
  c10::NoGradGuard no_grad;
  std::unordered_set<const c10::TensorImpl*> seen;  // a tied weight is stored once, in its first unit
  int unit = 0;
  for (const auto& module : model.modules(/*include_self=*/false)) {
    if (!std::dynamic_pointer_cast<shard::UnitImpl>(module)) continue;
    EDIT_CHECK(!anchor || unit == 0 || find(files[0], anchor_key(unit)) != nullptr, checkpoint_dir,
               " holds Local SGD anchors for unit 0 but not for unit ", unit,
               "; the model has more units than the one that was trained (check the model configuration)");
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

namespace {

// `dir` as an absolute path without a trailing separator, so that its parent and a folder beside
// it can be named ("." and "runs/x/" included).
fs::path absolute_folder(const std::string& dir) {
  EDIT_CHECK(!dir.empty(), "the export folder is an empty path; name the folder to export into");
  fs::path path = fs::absolute(fs::path(dir)).lexically_normal();
  if (!path.has_filename() && path.has_parent_path() && path != path.root_path()) path = path.parent_path();
  return path;
}

void rename_or_throw(const fs::path& from, const fs::path& to) {
  EDIT_CHECK(std::rename(from.c_str(), to.c_str()) == 0, "cannot rename ", from.string(), " to ", to.string(),
             ": ", std::strerror(errno), "; check the permissions of ", to.parent_path().string());
}

// Persists the renames in `folder` (its entries); best effort, as AtomicFile's.
void fsync_folder(const fs::path& folder) {
  const int fd = ::open(folder.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd >= 0) {
    ::fsync(fd);
    ::close(fd);
  }
}

}  // namespace

void check_export_folder(const std::string& dir, bool overwrite) {
  const fs::path path = absolute_folder(dir);
  std::error_code ec;
  const auto status = fs::status(path, ec);
  if (!fs::exists(status)) return;
  EDIT_CHECK(fs::is_directory(status), dir, " exists and is not a folder; name a folder to export into");
  const bool empty = fs::is_empty(path, ec);
  EDIT_CHECK(!ec, "cannot list ", dir, ": ", ec.message(), "; check its permissions");
  EDIT_CHECK(empty || overwrite, dir,
             " is a folder with files in it (perhaps another export or a run); pass ",
             "--overwrite to replace the export's files in it, or export into a new folder");
}

void write_export_folder(const std::string& dir, const ExportFolder& folder, bool overwrite) {
  check_export_folder(dir, overwrite);
  const fs::path target = absolute_folder(dir);
  std::vector<std::string> names{folder.tensors_file};
  for (const auto& [name, text] : folder.text_files) names.push_back(name);
  for (std::size_t i = 0; i < names.size(); ++i) {
    const std::string& name = names[i];
    EDIT_CHECK(!name.empty() && name.find('/') == std::string::npos && name != "." && name != "..",
               "an export file is named '", name, "'; export files need plain names, without a folder");
    EDIT_CHECK(std::find(names.begin(), names.begin() + static_cast<std::ptrdiff_t>(i), name) ==
                   names.begin() + static_cast<std::ptrdiff_t>(i),
               "two export files are named '", name, "'");
  }
  std::error_code ec;
  fs::create_directories(target.parent_path(), ec);
  EDIT_CHECK(!ec, "cannot create ", target.parent_path().string(), ": ", ec.message(),
             "; check the permissions of the folders above it");
  // Beside the target, on its file system, so that the renames below are atomic and need no space.
  fs::path staging = target;
  staging += ".staged-" + std::to_string(::getpid());
  fs::remove_all(staging, ec);
  fs::create_directory(staging, ec);
  EDIT_CHECK(!ec, "cannot create ", staging.string(), ": ", ec.message(), "; check the permissions of ",
             target.parent_path().string());
  try {
    write_safetensors((staging / folder.tensors_file).string(), folder.tensors, folder.metadata);
    for (const auto& [name, text] : folder.text_files) write_file_atomically((staging / name).string(), text);
    const bool fresh = !fs::exists(target, ec) || fs::is_empty(target, ec);
    if (fresh) {
      rename_or_throw(staging, target);  // replaces an empty folder too
      fsync_folder(target.parent_path());
      return;
    }
    for (const auto& name : names) rename_or_throw(staging / name, target / name);
    for (const auto& name : folder.stale) {
      if (std::find(names.begin(), names.end(), name) != names.end()) continue;
      fs::remove(target / name, ec);
      EDIT_CHECK(!ec, "cannot remove ", (target / name).string(),
                 ", left by an earlier export: ", ec.message(),
                 "; remove it by hand, it does not belong to the new export");
    }
    fsync_folder(target);
    fs::remove(staging, ec);
  } catch (...) {
    fs::remove_all(staging, ec);
    throw;
  }
}

}  // namespace edit::train
