#include "edit/train/export.h"

#include <ATen/ATen.h>
#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <unordered_set>

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
  at::NoGradGuard no_grad;
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

// path + ".tmp", written in full, fsynced and renamed over `path` by commit(), so a reader sees the
// old file or the new one. Every write, the fsync and the close are checked (a full disk often
// shows only at the close); on failure the temporary is removed and `path` is as it was.
class AtomicFile {
 public:
  explicit AtomicFile(std::string path) : path_(std::move(path)), tmp_(path_ + ".tmp") {
    fd_ = ::open(tmp_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    EDIT_CHECK(fd_ >= 0, "cannot create ", tmp_, ": ", std::strerror(errno),
               "; check that the folder exists and is writable");
  }
  ~AtomicFile() {
    if (fd_ >= 0) ::close(fd_);
    if (!committed_) ::unlink(tmp_.c_str());
  }
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;

  void write(const void* data, std::size_t size) {
    const auto* bytes = static_cast<const char*>(data);
    while (size > 0) {
      const ssize_t written = ::write(fd_, bytes, size);
      if (written < 0 && errno == EINTR) continue;
      EDIT_CHECK(written > 0, "writing ", tmp_, " (for ", path_, ") failed: ", std::strerror(errno),
                 "; is the disk full?");
      bytes += written;
      size -= static_cast<std::size_t>(written);
    }
  }

  void commit() {
    EDIT_CHECK(::fsync(fd_) == 0, "fsync of ", tmp_, " (for ", path_, ") failed: ", std::strerror(errno),
               "; is the disk full?");
    const int fd = fd_;
    fd_ = -1;
    EDIT_CHECK(::close(fd) == 0, "closing ", tmp_, " (for ", path_, ") failed: ", std::strerror(errno),
               "; is the disk full?");
    EDIT_CHECK(std::rename(tmp_.c_str(), path_.c_str()) == 0, "cannot rename ", tmp_, " to ", path_, ": ",
               std::strerror(errno), "; check the permissions of the folder");
    committed_ = true;
    // Persist the rename (the folder's entry); best effort, some file systems refuse it.
    const fs::path folder = fs::path(path_).parent_path();
    const int dir = ::open(folder.empty() ? "." : folder.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dir >= 0) {
      ::fsync(dir);
      ::close(dir);
    }
  }

 private:
  std::string path_, tmp_;
  int fd_ = -1;
  bool committed_ = false;
};

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

void write_file_atomically(const std::string& path, const std::string& text) {
  AtomicFile out(path);
  out.write(text.data(), text.size());
  out.commit();
}

}  // namespace edit::train
