// Checkpoints: every rank writes its own shard file, rank 0 a manifest (DESIGN.md section 7).
//
//   <root>/step_00000120/manifest.json      world size, shard size, step, per-rank size + CRC32
//   <root>/step_00000120/rank_00003.bin     this rank's named tensors and scalars, CRC32 at the end
// A save writes into step_XXXXXXXX.tmp, fsyncs every file, then rank 0 renames the folder: a save
// killed half-way leaves only a .tmp folder, which loading ignores, so the previous checkpoint
// stays the latest. Loading verifies sizes and checksums and names the file and the entry that is
// wrong. The last `keep` checkpoints are kept.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "edit/comm/device_mesh.h"
#include "edit/shard/flat_adamw.h"
#include "edit/shard/sharded_model.h"
#include "edit/sync/local_sgd.h"

namespace edit::train {

// What one rank saves and restores. Tensors are referenced, so load() writes into the live ones.
struct RankState {
  std::vector<std::pair<std::string, at::Tensor>> tensors;
  std::map<std::string, double> scalars;  // step counts, EMA statistics, data cursors, ...
};

// The training state of this rank: parameter shards, AdamW moments and step count, Local SGD
// anchors, momenta and penalty detectors (when given), the CPU RNG. `step` is the next step.
RankState collect_state(shard::ShardedModel& model, shard::FlatAdamW* adamw, sync::PseudoGradientSync* local_sgd,
                        std::int64_t step);
// Writes the scalars of a loaded RankState back into the objects collect_state() read them from.
void apply_scalars(const RankState& state, shard::FlatAdamW* adamw, sync::PseudoGradientSync* local_sgd);

// One rank's file as saved: tensors in save order, and scalars. Verifies the trailing CRC32 (and
// size and checksum against the manifest's, when given). For tools that read checkpoints without
// a running job (edit-export, edit-generate).
struct RankFile {
  std::vector<std::pair<std::string, at::Tensor>> tensors;
  std::map<std::string, double> scalars;
};
RankFile read_rank_file(const std::string& path, std::optional<std::uint64_t> expected_bytes = std::nullopt,
                        std::optional<std::uint32_t> expected_crc = std::nullopt);

// The newest complete checkpoint folder under `root` (a .tmp folder is a save that never
// finished and is ignored), if any. Needs no running job.
std::optional<std::string> latest_checkpoint(const std::string& root);

class Checkpointer {
 public:
  Checkpointer(comm::DeviceMesh& mesh, std::string root, int keep = 3);

  // Collective: writes `state` for `step` atomically; returns the checkpoint's folder.
  std::string save(std::int64_t step, const RankState& state);
  // The newest complete checkpoint under root (ignoring .tmp folders), if any.
  std::optional<std::string> latest() const;
  // Collective: reads `path` (a checkpoint folder, or "auto" for latest()) into `state`'s tensors
  // and scalars; returns the saved step. Throws naming the file and entry on any mismatch.
  std::int64_t load(const std::string& path, RankState& state);

 private:
  comm::DeviceMesh& mesh_;
  std::string root_;
  int keep_;
};

// CRC-32 (IEEE), exposed for tests.
std::uint32_t crc32(const void* data, size_t size, std::uint32_t crc = 0);

}  // namespace edit::train
