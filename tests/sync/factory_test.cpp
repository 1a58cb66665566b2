// make_strategy: each name builds its strategy with the penalty the strategy defaults to, an
// explicit penalty wins, and bad configurations are refused by name. Single process: a world of
// one rank (the loopback communicator) is a mesh of one replica.
#include "edit/sync/factory.h"

#include <gtest/gtest.h>

#include "loopback_communicator.h"
#include "tiny_transformer.h"

namespace {

using edit::sync::StrategyConfig;

TEST(StrategyFactory, DefaultPenaltyPerStrategy) {
  EXPECT_TRUE(edit::sync::default_penalty("edit"));
  EXPECT_TRUE(edit::sync::default_penalty("aedit"));
  EXPECT_FALSE(edit::sync::default_penalty("diloco"));
  EXPECT_FALSE(edit::sync::default_penalty("streaming"));
  StrategyConfig config;
  config.name = "diloco";
  EXPECT_FALSE(edit::sync::effective_local_options(config).use_penalty);
  config.penalty = true;
  EXPECT_TRUE(edit::sync::effective_local_options(config).use_penalty);
  config.name = "edit";
  config.penalty.reset();
  EXPECT_TRUE(edit::sync::effective_local_options(config).use_penalty);
  config.penalty = false;
  EXPECT_FALSE(edit::sync::effective_local_options(config).use_penalty);
}

TEST(StrategyFactory, RefusesUnknownNamesAndMisplacedPenalty) {
  StrategyConfig config;
  config.name = "dilcoo";
  try {
    config.validate();
    FAIL() << "an unknown name was accepted";
  } catch (const std::exception& e) {
    EXPECT_NE(std::string(e.what()).find("unknown strategy 'dilcoo'; use one of edit, aedit, diloco"),
              std::string::npos)
        << e.what();
  }
  config.name = "ddp";
  config.penalty = true;
  EXPECT_THROW(config.validate(), std::exception);
  config.penalty = false;
  EXPECT_NO_THROW(config.validate());
}

TEST(StrategyFactory, BuildsEachStrategyByName) {
  auto comm = std::make_shared<edit::testing_support::LoopbackCommunicator>();
  EXPECT_EQ(edit::sync::strategy_names(),
            (std::vector<std::string>{"edit", "aedit", "diloco", "streaming", "ddp", "none"}));
  for (const auto& name : edit::sync::strategy_names()) {
    auto module =
        std::make_shared<edit::testing_support::TinyTransformer>(edit::testing_support::TinyConfig{});
    edit::shard::ShardedModel model(module, comm);
    StrategyConfig config;
    config.name = name;
    config.local.sync_every = 4;
    config.aedit.budget_steps = 8;  // A-EDiT needs an end
    const auto strategy = edit::sync::make_strategy(config, model, comm);
    EXPECT_EQ(strategy->name(), name);
  }
}

}  // namespace
