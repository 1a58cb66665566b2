// Checkpoints: every rank writes its own shard file, rank 0 a manifest (docs/architecture.md, train/).
//
//   <root>/step_00000120/manifest.json      world size, shard size, step, components, per-rank size + CRC32
//   <root>/step_00000120/rank_00003.bin     this rank's named tensors and scalars, CRC32 at the end
// What goes in is what the tracked components hand over (Stateful): each one's keys are stored as
// "<component>/<key>", and the checkpointer knows none of them. edit-train-gpt tracks "model"
// (parameter shards), "inner" (the optimizer), "strategy", "data", "rng" and "trainer".
// A save writes into step_XXXXXXXX.tmp, fsyncs every file, then rank 0 renames the folder: a save
// killed half-way leaves only a .tmp folder, which loading ignores, so the previous checkpoint
// stays the latest. Loading verifies sizes and checksums and names the file and the entry that is
// wrong. "Newest" is by the order of writing, not by step: each manifest has a generation, one past
// the newest's, and loading a checkpoint older than the newest makes it the newest. So after a step
// back (resuming from an earlier checkpoint), --resume auto and pruning follow the resumed run,
// while the abandoned run's later steps stay on disk until pruned. The newest `keep` are kept. A
// manifest that cannot be read counts as the newest (loading it names the fault) and is not pruned.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "edit/comm/device_mesh.h"
#include "edit/core/state.h"

namespace edit::train {

// The manifest's "format"; 2: keys are "<component>/<key>".
inline constexpr char kCheckpointFormat[] = "edit-checkpoint-2";

// The CPU random generator (dropout, sampling) as a checkpointed component.
class CpuRngState : public Stateful {
 public:
  StateDict state_dict() override;
  void load_state_dict(const StateDict& state) override;
};

// One rank's file as saved: tensors in save order, and scalars. Verifies the trailing CRC32 (and
// size and checksum against the manifest's, when given). For tools that read checkpoints without
// a running job (edit-export, edit-generate).
struct RankFile {
  std::vector<std::pair<std::string, at::Tensor>> tensors;
  std::map<std::string, double> scalars;
};
RankFile read_rank_file(const std::string& path, std::optional<std::uint64_t> expected_bytes = std::nullopt,
                        std::optional<std::uint32_t> expected_crc = std::nullopt);

// The newest complete checkpoint folder under `root` (the last written or resumed from; a .tmp
// folder is a save that never finished and is ignored), if any. Needs no running job.
std::optional<std::string> latest_checkpoint(const std::string& root);

class Checkpointer {
 public:
  Checkpointer(comm::DeviceMesh& mesh, std::string root, int keep = 3);

  // Saves and loads `component` under `name` (unique; letters, digits, '_', '-', '.'). The
  // component must outlive the checkpointer.
  void track(const std::string& name, Stateful& component);

  // Collective: writes every tracked component's state for `step` atomically; returns the folder.
  std::string save(std::int64_t step);
  // latest_checkpoint(root).
  std::optional<std::string> latest() const;
  // Collective: reads `path` (a checkpoint folder, or "auto" for latest()) and hands every tracked
  // component its state; returns the saved step. Throws naming the file and the entry or
  // component that does not fit (a job whose load failed must not train on). A checkpoint under
  // root older than the newest becomes the newest.
  std::int64_t load(const std::string& path);

 private:
  comm::DeviceMesh& mesh_;
  std::string root_;
  int keep_;
  std::vector<std::pair<std::string, Stateful*>> components_;
};

// CRC-32 (IEEE), exposed for tests.
std::uint32_t crc32(const void* data, size_t size, std::uint32_t crc = 0);

}  // namespace edit::train
