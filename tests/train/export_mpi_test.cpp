// Export: a checkpoint saved by a sharded run (S = world) is joined back into an unsharded model,
// and the safetensors file is parsed here independently (header size, JSON, offsets, dtypes, data).
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "edit/comm/device_mesh.h"
#include "edit/models/gpt.h"
#include "edit/shard/flat_adamw.h"
#include "edit/sync/local_sgd.h"
#include "edit/train/checkpoint.h"
#include "edit/train/export.h"
#include "mpi_test_env.h"

namespace {

namespace fs = std::filesystem;
using edit::testing_support::world;

TEST(Export, ShardedCheckpointBecomesOneSafetensorsFile) {
  edit::comm::DeviceMesh mesh = edit::comm::DeviceMesh::from_env({world()->size()});  // S = W, R = 1
  const std::string root = "export_np" + std::to_string(mesh.world_size());
  if (mesh.rank() == 0) fs::remove_all(root);
  mesh.world().barrier()->wait();

  auto config = edit::models::GptConfig::preset("tiny");
  config.style = edit::models::GptStyle::kLlama;
  at::manual_seed(0);
  auto module = std::make_shared<edit::models::GptImpl>(config);
  edit::shard::ShardedModel model(module, mesh.shard_ptr());
  edit::shard::FlatAdamW adamw(model, {1e-2});
  for (int step = 0; step < 2; ++step) {  // move the weights away from their initial values
    const at::Tensor data = at::randint(0, 256, {2, 17}, at::kLong);
    model.zero_grad();
    model.backward(module->loss(data.narrow(1, 0, 16), data.narrow(1, 1, 16)));
    adamw.step();
  }
  edit::train::Checkpointer checkpointer(mesh, root);
  checkpointer.track("model", model);
  checkpointer.track("inner", adamw);
  const std::string dir = checkpointer.save(2);
  const auto full = model.gather_full_parameters();
  if (mesh.rank() != 0) return;

  at::manual_seed(99);  // different initial weights: everything must come from the checkpoint
  edit::models::GptImpl restored(config);
  edit::train::load_unsharded(dir, restored);
  const auto exported = edit::train::export_parameters(restored);
  ASSERT_EQ(exported.size(), full.size());
  for (size_t i = 0; i < full.size(); ++i) {
    EXPECT_TRUE(at::equal(exported[i].second, full[i].second)) << full[i].first;
    std::string expected_name = full[i].first;
    expected_name.erase(expected_name.find(".inner."), 6);
    EXPECT_EQ(exported[i].first, expected_name);
  }

  const std::string path = root + "/model.safetensors";
  edit::train::write_safetensors(path, exported, {{"format", "pt"}});
  std::ifstream in(path, std::ios::binary);
  const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::uint64_t header_size = 0;
  std::memcpy(&header_size, bytes.data(), 8);
  ASSERT_LT(8 + header_size, bytes.size());
  EXPECT_EQ(header_size % 8, 0u) << "data must start 8-byte aligned";
  const auto header = nlohmann::json::parse(bytes.substr(8, header_size));
  EXPECT_EQ(header["__metadata__"]["format"], "pt");
  const char* data = bytes.data() + 8 + header_size;
  const std::uint64_t data_size = bytes.size() - 8 - header_size;
  std::vector<std::pair<std::uint64_t, std::uint64_t>> ranges;
  for (const auto& [name, tensor] : exported) {
    ASSERT_TRUE(header.contains(name)) << name;
    const auto& entry = header[name];
    EXPECT_EQ(entry["dtype"], "F32");
    EXPECT_EQ(entry["shape"].get<std::vector<std::int64_t>>(), tensor.sizes().vec());
    const auto begin = entry["data_offsets"][0].get<std::uint64_t>(), end = entry["data_offsets"][1].get<std::uint64_t>();
    ASSERT_EQ(end - begin, static_cast<std::uint64_t>(tensor.numel()) * 4) << name;
    ASSERT_LE(end, data_size);
    EXPECT_EQ(std::memcmp(data + begin, tensor.contiguous().data_ptr<float>(), end - begin), 0) << name;
    ranges.emplace_back(begin, end);
  }
  // The tensors tile the data section exactly: no gaps, no overlaps.
  std::sort(ranges.begin(), ranges.end());
  std::uint64_t cursor = 0;
  for (const auto& [begin, end] : ranges) {
    EXPECT_EQ(begin, cursor);
    cursor = end;
  }
  EXPECT_EQ(cursor, data_size);
}

// A Local SGD run exports the model its replicas agree on, the anchors of its last outer sync (the
// model edit-train-gpt evaluates), not replica 0's local weights, which drift between syncs; and
// the local weights on request (edit-export --weights local).
TEST(Export, LocalSgdCheckpointExportsTheAnchorsAndTheLocalWeightsOnRequest) {
  edit::comm::DeviceMesh mesh = edit::comm::DeviceMesh::from_env({1});  // S = 1, R = W
  const std::string root = "export_anchor_np" + std::to_string(mesh.world_size());
  if (mesh.rank() == 0) fs::remove_all(root);
  mesh.world().barrier()->wait();

  const auto config = edit::models::GptConfig::preset("tiny");
  at::manual_seed(0);
  auto module = std::make_shared<edit::models::GptImpl>(config);
  edit::shard::ShardedModel model(module, mesh.shard_ptr());
  edit::shard::FlatAdamW adamw(model, {1e-2});
  edit::sync::LocalSgdOptions options;
  options.sync_every = 4;
  edit::sync::DiLoCo diloco(model, mesh.sync_ptr(), options);
  at::manual_seed(static_cast<std::uint64_t>(1 + mesh.rank()));  // every replica its own data
  for (int step = 0; step < 6; ++step) {  // an outer sync after step 3, then two local steps
    const at::Tensor data = at::randint(0, 256, {2, 17}, at::kLong);
    model.zero_grad();
    model.backward(module->loss(data.narrow(1, 0, 16), data.narrow(1, 1, 16)));
    diloco.before_step(step);
    adamw.step();
    diloco.after_step(step);
  }
  edit::train::Checkpointer checkpointer(mesh, root);
  checkpointer.track("model", model);
  checkpointer.track("inner", adamw);
  checkpointer.track("strategy", diloco);
  const std::string dir = checkpointer.save(6);
  const auto local = model.gather_full_parameters();
  std::vector<std::pair<std::string, at::Tensor>> anchors;
  diloco.with_global_model([&] { anchors = model.gather_full_parameters(); });
  if (mesh.rank() != 0) return;

  bool moved = false;
  for (size_t i = 0; i < local.size(); ++i) moved = moved || !at::equal(local[i].second, anchors[i].second);
  ASSERT_TRUE(moved) << "the test needs local weights away from the anchors";
  for (const bool prefer_anchor : {true, false}) {
    at::manual_seed(99);
    edit::models::GptImpl restored(config);
    edit::train::load_unsharded(dir, restored, prefer_anchor);
    const auto exported = edit::train::export_parameters(restored);
    const auto& expected = prefer_anchor ? anchors : local;
    ASSERT_EQ(exported.size(), expected.size());
    for (size_t i = 0; i < expected.size(); ++i) {
      EXPECT_TRUE(at::equal(exported[i].second, expected[i].second))
          << expected[i].first << (prefer_anchor ? " (anchor)" : " (local)");
    }
  }
}

}  // namespace
