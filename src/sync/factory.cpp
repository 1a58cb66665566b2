#include "edit/sync/factory.h"

#include <algorithm>

#include "edit/core/check.h"

namespace edit::sync {

const std::vector<std::string>& strategy_names() {
  static const std::vector<std::string> names = {"edit", "aedit", "diloco", "streaming", "ddp", "none"};
  return names;
}

bool is_local_sgd(const std::string& name) {
  return name == "edit" || name == "aedit" || name == "diloco" || name == "streaming";
}

bool default_penalty(const std::string& name) { return name == "edit" || name == "aedit"; }

void StrategyConfig::validate(int num_units) const {
  const auto& names = strategy_names();
  if (std::find(names.begin(), names.end(), name) == names.end()) {
    std::string known;
    for (const auto& n : names) known += (known.empty() ? "" : ", ") + n;
    EDIT_CHECK(false, "unknown strategy '", name, "'; use one of ", known);
  }
  EDIT_CHECK(!penalty.value_or(false) || is_local_sgd(name),
             "the pseudo-gradient penalty applies to Local SGD ",
             "(edit, aedit, diloco, streaming), but the strategy is ", name,
             "; drop the penalty or change the strategy");
  if (!is_local_sgd(name)) return;
  const LocalSgdOptions local = effective_local_options(*this);
  local.validate();
  if (name == "streaming") {
    StreamingOptions options = streaming;
    options.local = local;
    options.validate(num_units);
  }
  if (name == "aedit") {
    AEDiTOptions options = aedit;
    options.local = local;
    options.validate();
  }
}

LocalSgdOptions effective_local_options(const StrategyConfig& config) {
  LocalSgdOptions local = config.local;
  local.use_penalty = config.penalty.value_or(default_penalty(config.name));
  return local;
}

std::unique_ptr<SyncStrategy> make_strategy(const StrategyConfig& config, shard::ShardedModel& model,
                                            std::shared_ptr<comm::Communicator> sync_group) {
  config.validate(model.num_units());
  const LocalSgdOptions local = effective_local_options(config);
  if (config.name == "edit") return std::make_unique<EDiT>(model, std::move(sync_group), local);
  if (config.name == "aedit") {
    AEDiTOptions options = config.aedit;
    options.local = local;
    return std::make_unique<AEDiT>(model, std::move(sync_group), options);
  }
  if (config.name == "diloco") return std::make_unique<DiLoCo>(model, std::move(sync_group), local);
  if (config.name == "streaming") {
    StreamingOptions options = config.streaming;
    options.local = local;
    return std::make_unique<StreamingDiLoCo>(model, std::move(sync_group), options);
  }
  if (config.name == "ddp") return std::make_unique<Ddp>(model, std::move(sync_group));
  return std::make_unique<NoSync>();
}

}  // namespace edit::sync
