// A synchronization strategy from its name: the one place that knows which options each strategy
// reads and which ones it turns on by default (the penalty: EDiT and A-EDiT yes, DiLoCo and
// Streaming DiLoCo no). edit-train-gpt, the benchmarks and custom trainers build strategies here,
// so a strategy named the same is configured the same everywhere.
//
//   edit::sync::StrategyConfig config;
//   config.name = "streaming";
//   config.local.sync_every = 100;
//   config.streaming.fragments = 4;
//   auto strategy = edit::sync::make_strategy(config, model, mesh.sync_ptr());
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "edit/sync/aedit.h"
#include "edit/sync/streaming.h"

namespace edit::sync {

struct StrategyConfig {
  std::string name = "edit";  // edit, aedit, diloco, streaming, ddp, none (strategy_names())
  // The Local SGD options every Local SGD strategy shares: H, the outer optimizer, the penalty's
  // thresholds, replica checks. `streaming.local` and `aedit.local` are not read: this is.
  LocalSgdOptions local;
  // The pseudo-gradient penalty; unset: the strategy's default (default_penalty()).
  std::optional<bool> penalty;
  StreamingOptions streaming;  // P, layout, tau, alpha, quantization: read by "streaming" only
  AEDiTOptions aedit;          // T, step share, budget, time limit, clock: read by "aedit" only

  // Throws naming the field and the fix: an unknown name, a penalty for a strategy without one, and
  // the options of the strategy named (Local SGD's, Streaming DiLoCo's, A-EDiT's). num_units: the
  // model's, for Streaming DiLoCo's fragments (<= 0: not known yet, that check waits).
  void validate(int num_units = 0) const;
};

const std::vector<std::string>& strategy_names();
bool is_local_sgd(const std::string& name);     // edit, aedit, diloco, streaming: they sync every H steps
bool default_penalty(const std::string& name);  // edit and aedit
// `config.local` with the penalty switched as `config` says (or the strategy's default).
LocalSgdOptions effective_local_options(const StrategyConfig& config);

// Builds the strategy on `model`, syncing over `sync_group` (the mesh's sync group). Collective
// for Local SGD strategies: their construction makes the replicas equal.
std::unique_ptr<SyncStrategy> make_strategy(const StrategyConfig& config, shard::ShardedModel& model,
                                            std::shared_ptr<comm::Communicator> sync_group);

}  // namespace edit::sync
