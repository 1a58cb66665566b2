// Checkpoints on real ranks: an interrupted and resumed EDiT run follows the uninterrupted one
// exactly, also when it was saved with a layer-wise sync still pending; damaged files, unfinished
// saves, a different mesh and a missing component are reported, never loaded.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>

#include "edit/comm/device_mesh.h"
#include "edit/core/check.h"
#include "edit/shard/flat_adamw.h"
#include "edit/sync/local_sgd.h"
#include "edit/train/checkpoint.h"
#include "edit/train/trainer.h"
#include "mpi_test_env.h"
#include "tiny_transformer.h"

namespace {

namespace fs = std::filesystem;
using edit::testing_support::tiny_batch;
using edit::testing_support::TinyConfig;
using edit::testing_support::TinyTransformer;
using edit::testing_support::world;

int shard_size() { return world()->size() >= 4 ? 2 : 1; }

std::string fresh_root(edit::comm::DeviceMesh& mesh, const std::string& name) {
  const std::string root = name + "_np" + std::to_string(mesh.world_size());
  if (mesh.rank() == 0) fs::remove_all(root);
  mesh.world().barrier()->wait();
  return root;
}

// Everything one training run owns.
struct TrainingRun {
  TinyConfig config;
  std::shared_ptr<TinyTransformer> module;
  std::unique_ptr<edit::shard::ShardedModel> model;
  std::unique_ptr<edit::shard::FlatAdamW> adamw;
  std::unique_ptr<edit::sync::EDiT> strategy;
  std::unique_ptr<edit::train::Trainer> trainer;
  edit::train::CpuRngState rng;

  explicit TrainingRun(edit::comm::DeviceMesh& mesh, int seed) {
    at::manual_seed(seed);  // a resumed run must not depend on its own initialisation
    module = std::make_shared<TinyTransformer>(config);
    model = std::make_unique<edit::shard::ShardedModel>(module, mesh.shard_ptr());
    adamw = std::make_unique<edit::shard::FlatAdamW>(*model, edit::shard::AdamWOptions{1e-2});
    auto local = edit::sync::EDiT::default_options();
    local.sync_every = 2;
    local.penalty.warmup_syncs = 1;
    strategy = std::make_unique<edit::sync::EDiT>(*model, mesh.sync_ptr(), local);
    edit::train::TrainerOptions options;
    options.steps = 8;
    options.schedule = {1e-2, 2, 8, 1e-3};
    options.log_every = 0;
    trainer = std::make_unique<edit::train::Trainer>(mesh, *model, *adamw, *strategy, options);
  }
  double step(edit::comm::DeviceMesh& mesh) {
    const auto batch = [&](std::int64_t s, int) {
      auto [x, y] = tiny_batch(config, static_cast<int>(s), mesh.rank(), 2);
      return edit::train::Batch{x, y};
    };
    return trainer->step(batch, [&](const edit::train::Batch& b) { return module->loss(b.inputs, b.targets); }).loss;
  }
  void track(edit::train::Checkpointer& checkpointer) {
    checkpointer.track("model", *model);
    checkpointer.track("inner", *adamw);
    checkpointer.track("strategy", *strategy);
    checkpointer.track("rng", rng);
    checkpointer.track("trainer", *trainer);
  }
};

// The losses of 8 steps without interruption (and the syncs it completed).
std::vector<double> straight_losses(edit::comm::DeviceMesh& mesh, std::int64_t* syncs = nullptr) {
  TrainingRun run(mesh, 0);
  std::vector<double> losses;
  for (int s = 0; s < 8; ++s) losses.push_back(run.step(mesh));
  if (syncs != nullptr) *syncs = run.strategy->stats().syncs;
  return losses;
}

// Trains 4 steps and saves them under `root`. The sync requested at step 3 runs inside step 4's
// forward: it is saved as pending.
void save_after_four_steps(edit::comm::DeviceMesh& mesh, const std::string& root) {
  TrainingRun first_half(mesh, 0);
  for (int s = 0; s < 4; ++s) first_half.step(mesh);
  ASSERT_TRUE(first_half.strategy->sync_pending());
  edit::train::Checkpointer checkpointer(mesh, root);
  first_half.track(checkpointer);
  checkpointer.save(4);
  ASSERT_TRUE(first_half.strategy->sync_pending()) << "saving must not complete the sync";
}

TEST(Checkpoint, ResumedEditRunFollowsTheUninterruptedOne) {
  edit::comm::DeviceMesh mesh = edit::comm::DeviceMesh::from_env({shard_size()});
  const std::string root = fresh_root(mesh, "ckpt_resume");
  std::int64_t straight_syncs = 0;
  const std::vector<double> straight = straight_losses(mesh, &straight_syncs);
  save_after_four_steps(mesh, root);
  TrainingRun resumed(mesh, 1234);
  edit::train::Checkpointer checkpointer(mesh, root);
  resumed.track(checkpointer);
  ASSERT_EQ(checkpointer.load("auto"), 4);
  EXPECT_EQ(resumed.trainer->current_step(), 4);
  EXPECT_TRUE(resumed.strategy->sync_pending());
  for (int s = 4; s < 8; ++s) EXPECT_NEAR(resumed.step(mesh), straight[static_cast<size_t>(s)], 1e-9) << "step " << s;
  // The sync count goes on from the checkpoint's: the metrics of a resumed run count every sync.
  EXPECT_EQ(resumed.strategy->stats().syncs, straight_syncs);
}

TEST(Checkpoint, ALostPendingSyncChangesTheRun) {
  // The converse of the test above, to show it can fail: a run resumed from a checkpoint whose
  // pending sync was dropped (the anchors of step 4, but no sync pending) leaves the straight path.
  edit::comm::DeviceMesh mesh = edit::comm::DeviceMesh::from_env({shard_size()});
  const std::string root = fresh_root(mesh, "ckpt_lost");
  const std::vector<double> straight = straight_losses(mesh);
  save_after_four_steps(mesh, root);
  TrainingRun resumed(mesh, 0);
  edit::train::Checkpointer checkpointer(mesh, root);
  resumed.track(checkpointer);
  checkpointer.load("auto");
  auto dropped = resumed.strategy->state_dict();
  dropped.put("edit.pending", std::int64_t{0});
  resumed.strategy->load_state_dict(dropped);
  double largest = 0.0;
  for (int s = 4; s < 8; ++s) largest = std::max(largest, std::abs(resumed.step(mesh) - straight[static_cast<size_t>(s)]));
  EXPECT_GT(largest, 1e-4);
}

TEST(Checkpoint, DamagedUnfinishedAndForeignCheckpointsAreRefused) {
  edit::comm::DeviceMesh mesh = edit::comm::DeviceMesh::from_env({shard_size()});
  const std::string root = fresh_root(mesh, "ckpt_damage");
  TrainingRun run(mesh, 0);
  edit::train::Checkpointer checkpointer(mesh, root, /*keep=*/2);
  run.track(checkpointer);
  for (int s = 1; s <= 3; ++s) checkpointer.save(s);
  // keep = 2: step 1 is gone; an unfinished save (a .tmp folder) is never "latest".
  if (mesh.rank() == 0) fs::create_directories(fs::path(root) / "step_00000009.tmp");
  mesh.world().barrier()->wait();
  EXPECT_FALSE(fs::exists(fs::path(root) / "step_00000001"));
  ASSERT_TRUE(checkpointer.latest().has_value());
  EXPECT_EQ(fs::path(*checkpointer.latest()).filename(), "step_00000003");

  const auto message_of = [&](const std::string& path) {
    try {
      checkpointer.load(path);
    } catch (const edit::Error& e) {
      return std::string(e.what());
    }
    return std::string("<loaded>");
  };
  const fs::path victim = fs::path(root) / "step_00000003" / "rank_00000.bin";
  mesh.world().barrier()->wait();
  if (mesh.rank() == 0) {  // flip one byte in the middle
    std::fstream file(victim, std::ios::in | std::ios::out | std::ios::binary);
    file.seekp(static_cast<std::streamoff>(fs::file_size(victim) / 2));
    file.put('\x5a');
  }
  mesh.world().barrier()->wait();
  {
    // Loading is collective: rank 0 names its file's fault, and every rank names rank 0.
    const std::string what = message_of((fs::path(root) / "step_00000003").string());
    EXPECT_NE(what.find("rank(s) 0 are damaged"), std::string::npos) << what;
    if (mesh.rank() == 0) {
      EXPECT_NE(what.find("fails its checksum"), std::string::npos) << what;
      EXPECT_NE(what.find("rank_00000.bin"), std::string::npos) << what;
    }
  }
  mesh.world().barrier()->wait();
  if (mesh.rank() == 0) fs::resize_file(victim, 100);
  mesh.world().barrier()->wait();
  {
    const std::string what = message_of((fs::path(root) / "step_00000003").string());
    if (mesh.rank() == 0) {
      EXPECT_NE(what.find("truncated"), std::string::npos) << what;
    }
  }
  // The older checkpoint is intact and loads.
  EXPECT_EQ(message_of((fs::path(root) / "step_00000002").string()), "<loaded>");
  EXPECT_NE(message_of((fs::path(root) / "step_00000009.tmp").string()).find("not a complete checkpoint"),
            std::string::npos);
  // A job that tracks a component the checkpoint does not have.
  {
    edit::train::CpuRngState extra;
    edit::train::Checkpointer wider(mesh, root);
    run.track(wider);
    wider.track("extra", extra);
    try {
      wider.load((fs::path(root) / "step_00000002").string());
      ADD_FAILURE() << "loaded a checkpoint without the component 'extra'";
    } catch (const edit::Error& e) {
      EXPECT_NE(std::string(e.what()).find("has no state for 'extra'"), std::string::npos) << e.what();
    }
  }
  // A checkpoint from another mesh.
  mesh.world().barrier()->wait();
  if (mesh.rank() == 0) {
    const fs::path manifest = fs::path(root) / "step_00000002" / "manifest.json";
    std::ifstream in(manifest);
    std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    const auto at = text.find("\"world_size\": ");
    text.replace(at, std::string("\"world_size\": ").size() + 1, "\"world_size\": 99");
    std::ofstream(manifest) << text;
  }
  mesh.world().barrier()->wait();
  EXPECT_NE(message_of((fs::path(root) / "step_00000002").string()).find("resume with the same number of ranks and --shard-size"), std::string::npos);
}


// A step back: checkpoints at steps 10, 20 and 30, then a resume from step 10 and a save at 15
// (keep 2). The resumed run is the newest from the moment it loads, whatever the step numbers: a
// requeue before its first save comes back to step 10 (not the abandoned run's 30), its save at 15
// is then the newest, and pruning removes the abandoned run's 20 and 30, never the save it just made.
// Then a checkpoint whose manifest is damaged.
TEST(Checkpoint, AfterAStepBackTheResumedRunIsTheNewest) {
  edit::comm::DeviceMesh mesh = edit::comm::DeviceMesh::from_env({shard_size()});
  const std::string root = fresh_root(mesh, "ckpt_step_back");
  TrainingRun run(mesh, 0);
  edit::train::Checkpointer checkpointer(mesh, root, /*keep=*/3);
  run.track(checkpointer);
  for (int s : {10, 20, 30}) checkpointer.save(s);
  const auto newest = [&] { return fs::path(checkpointer.latest().value()).filename().string(); };
  EXPECT_EQ(newest(), "step_00000030");

  edit::train::Checkpointer resumed(mesh, root, /*keep=*/2);
  run.track(resumed);
  EXPECT_EQ(resumed.load((fs::path(root) / "step_00000010").string()), 10);
  EXPECT_EQ(newest(), "step_00000010");
  EXPECT_EQ(resumed.load("auto"), 10) << "a requeue before the next save";
  resumed.save(15);
  EXPECT_EQ(newest(), "step_00000015");
  mesh.world().barrier()->wait();
  EXPECT_TRUE(fs::exists(fs::path(root) / "step_00000010"));
  EXPECT_TRUE(fs::exists(fs::path(root) / "step_00000015"));
  EXPECT_FALSE(fs::exists(fs::path(root) / "step_00000020"));
  EXPECT_FALSE(fs::exists(fs::path(root) / "step_00000030"));
  EXPECT_EQ(resumed.load("auto"), 15);
  // Loading the newest writes nothing: a checkpoint on a read-only disk loads as before.
  const auto stamp = fs::last_write_time(fs::path(root) / "step_00000015" / "manifest.json");
  EXPECT_EQ(resumed.load("auto"), 15);
  EXPECT_EQ(fs::last_write_time(fs::path(root) / "step_00000015" / "manifest.json"), stamp);

  // A manifest that cannot be read counts as the newest: --resume auto stops on it with the
  // loader's message, as before generations, instead of going back past it unnoticed; pruning
  // leaves it alone and keeps the newest readable ones.
  mesh.world().barrier()->wait();
  if (mesh.rank() == 0) {
    fs::create_directories(fs::path(root) / "step_00000005");
    std::ofstream(fs::path(root) / "step_00000005" / "manifest.json") << "{garbage";
  }
  mesh.world().barrier()->wait();
  EXPECT_EQ(newest(), "step_00000005");
  try {
    resumed.load("auto");
    ADD_FAILURE() << "loaded a checkpoint whose manifest is not JSON";
  } catch (const edit::Error& e) {
    EXPECT_NE(std::string(e.what()).find("is not valid JSON"), std::string::npos) << e.what();
  }
  resumed.save(16);
  mesh.world().barrier()->wait();
  EXPECT_TRUE(fs::exists(fs::path(root) / "step_00000005"));
  EXPECT_FALSE(fs::exists(fs::path(root) / "step_00000010"));
  EXPECT_TRUE(fs::exists(fs::path(root) / "step_00000015"));
  EXPECT_TRUE(fs::exists(fs::path(root) / "step_00000016"));
  mesh.world().barrier()->wait();
}

// An update that overflowed leaves Inf or NaN weights that no loss has shown yet: a save of them is
// refused on every rank (naming the rank and, there, the tensor), and the checkpoint before stays the
// newest and loads.
TEST(Checkpoint, NonFiniteStateIsNeverSaved) {
  edit::comm::DeviceMesh mesh = edit::comm::DeviceMesh::from_env({shard_size()});
  const std::string root = fresh_root(mesh, "ckpt_nonfinite");
  TrainingRun run(mesh, 0);
  edit::train::Checkpointer checkpointer(mesh, root);
  run.track(checkpointer);
  run.step(mesh);
  checkpointer.save(1);
  run.step(mesh);
  const int bad_rank = mesh.world_size() - 1;
  if (mesh.rank() == bad_rank) {
    c10::NoGradGuard no_grad;
    run.model->unit(1).shard()[0] = std::numeric_limits<float>::infinity();
  }
  std::string what;
  try {
    checkpointer.save(2);
  } catch (const edit::Error& e) {
    what = e.what();
  }
  EXPECT_NE(what.find("step 2: the state of rank(s) " + std::to_string(bad_rank) + " holds NaN or Inf"),
            std::string::npos)
      << what;
  EXPECT_NE(what.find("the newest is still"), std::string::npos) << what;
  if (mesh.rank() == bad_rank) {
    EXPECT_NE(what.find("(here in model/"), std::string::npos) << what;
  }
  mesh.world().barrier()->wait();
  EXPECT_FALSE(fs::exists(fs::path(root) / "step_00000002"));
  EXPECT_FALSE(fs::exists(fs::path(root) / "step_00000002.tmp"));
  ASSERT_TRUE(checkpointer.latest().has_value());
  EXPECT_EQ(fs::path(*checkpointer.latest()).filename(), "step_00000001");
  TrainingRun resumed(mesh, 1);
  edit::train::Checkpointer reader(mesh, root);
  resumed.track(reader);
  EXPECT_EQ(reader.load("auto"), 1);
}


// One tensor as a checkpoint component.
struct OneTensor : edit::Stateful {
  at::Tensor value;
  edit::StateDict state_dict() override {
    edit::StateDict state;
    state.put("value", value);
    return state;
  }
  void load_state_dict(const edit::StateDict& state) override { value = state.tensor("a test tensor", "value"); }
};

// The check reads the exponent bits of each floating dtype: NaN, +Inf and -Inf are refused in each,
// anywhere in a tensor of several vector widths, and the extremes of the finite values (the largest,
// the smallest subnormal, -0) are saved. The reference is the dtype's own std::numeric_limits.
TEST(Checkpoint, EveryFloatingDtypesNanAndInfAreFoundAndItsFiniteExtremesAreNot) {
  edit::comm::DeviceMesh mesh = edit::comm::DeviceMesh::from_env({1});
  const std::string root = fresh_root(mesh, "ckpt_dtypes");
  OneTensor component;
  edit::train::Checkpointer checkpointer(mesh, root);
  checkpointer.track("t", component);
  const auto saved = [&](const at::Tensor& value) {
    component.value = value;
    try {
      checkpointer.save(1);
      return true;
    } catch (const edit::Error& e) {
      EXPECT_NE(std::string(e.what()).find("holds NaN or Inf (here in t/value)"), std::string::npos) << e.what();
      return false;
    }
  };
  const double inf = std::numeric_limits<double>::infinity();
  for (const at::ScalarType dtype : {at::kFloat, at::kDouble, at::kBFloat16, at::kHalf}) {
    SCOPED_TRACE(c10::toString(dtype));
    for (const std::int64_t n : {1, 17, 1000}) {
      const at::Tensor ones = at::ones({n}, at::TensorOptions().dtype(dtype));
      EXPECT_TRUE(saved(ones));
      at::Tensor extremes = ones.clone();
      const at::Tensor limits = at::empty({3}, at::TensorOptions().dtype(dtype));
      AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, dtype, "limits", [&] {
        limits[0] = std::numeric_limits<scalar_t>::max();
        limits[1] = std::numeric_limits<scalar_t>::denorm_min();
        limits[2] = -std::numeric_limits<scalar_t>::max();
      });
      extremes.narrow(0, 0, std::min<std::int64_t>(n, 3)).copy_(limits.narrow(0, 0, std::min<std::int64_t>(n, 3)));
      if (n > 1) extremes[n - 1] = -0.0;
      EXPECT_TRUE(saved(extremes)) << "n " << n;
      for (const double bad : {std::nan(""), inf, -inf}) {
        at::Tensor with_bad = ones.clone();
        with_bad[n - 1 - (n / 2)] = bad;
        EXPECT_FALSE(saved(with_bad)) << "n " << n << " value " << bad;
      }
    }
  }
  // Integer state is never non-finite.
  EXPECT_TRUE(saved(at::full({5}, -1, at::TensorOptions().dtype(at::kLong))));
}

}  // namespace
