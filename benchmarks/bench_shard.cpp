// bench_shard: training throughput and per-rank memory of a ShardedModel for S = 1, 2, 4 on the same
// model, next to the plain unsharded model with torch::optim::AdamW.
//
//   mpirun -np 4 --oversubscribe build/benchmarks/bench_shard --out bench_shard.csv
//
// Memory is what a rank keeps for parameters, gradients and AdamW state: between steps
// (shards) plus the peak of full unit buffers gathered during the step. Replicas (R = W / S) train
// independently here; syncing them is the sync layer's business (bench_sync).
//
// A second table (rank 0, --optimizer-out) times the AdamW step alone on the same model, S = 1:
// FlatAdamW's one-pass CPU update, FlatAdamW as one ATen op per term (fused = false), and
// torch::optim::AdamW on the unsharded parameters, in alternating rounds.
#include <ATen/Parallel.h>
#include <torch/optim/adamw.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <functional>
#include <iostream>

#include "edit/comm/device_mesh.h"
#include "edit/core/check.h"
#include "edit/core/log.h"
#include "edit/shard/flat_adamw.h"
#include "edit/shard/sharded_model.h"
#include "support/model_shape.h"
#include "support/table.h"
#include "tiny_transformer.h"

namespace {

using Clock = std::chrono::steady_clock;
using edit::bench::fmt_num;
using edit::testing_support::tiny_batch;
using edit::testing_support::TinyConfig;
using edit::testing_support::TinyTransformer;

struct Options {
  edit::bench::ModelShape model;
  int steps = 10;                // timed steps (after 2 warm-up steps)
  std::vector<int> shard_sizes = {1, 2, 4};
  std::string out = "bench_shard.csv";
  std::string optimizer_out = "bench_shard_optimizer.csv";
  int rounds = 3;                // optimizer table: alternating rounds, the fastest of each counts
  bool quick = false;
};

double seconds_since(Clock::time_point start) { return std::chrono::duration<double>(Clock::now() - start).count(); }

// The AdamW step alone, S = 1, random gradients: the fastest round of each kind, milliseconds a step.
void time_optimizers(const TinyConfig& config, const Options& options,
                     const std::shared_ptr<edit::comm::Communicator>& alone) {
  at::manual_seed(0);
  auto module_one_pass = std::make_shared<TinyTransformer>(config);
  auto module_ops = std::make_shared<TinyTransformer>(config);
  auto module_torch = std::make_shared<TinyTransformer>(config);
  edit::shard::ShardedModel one_pass_model(module_one_pass, alone);
  edit::shard::ShardedModel ops_model(module_ops, alone);
  edit::shard::AdamWOptions adamw{1e-3};
  edit::shard::FlatAdamW one_pass(one_pass_model, adamw);
  adamw.fused = false;
  edit::shard::FlatAdamW ops(ops_model, adamw);
  torch::optim::AdamW plain(module_torch->parameters(), torch::optim::AdamWOptions(1e-3).betas({0.9, 0.95}).weight_decay(0.1));
  std::int64_t params = 0;
  for (auto& p : module_torch->parameters()) {
    p.mutable_grad() = at::randn_like(p);
    params += p.numel();
  }
  for (auto* model : {&one_pass_model, &ops_model}) {
    for (int u = 0; u < model->num_units(); ++u) model->unit(u).grad_shard().normal_();
  }
  const std::vector<std::pair<std::string, std::function<void()>>> kinds = {
      {"FlatAdamW, one pass (fused)", [&] { one_pass.step(); }},
      {"FlatAdamW, ATen ops (fused = false)", [&] { ops.step(); }},
      {"torch::optim::AdamW", [&] { plain.step(); }}};
  std::vector<double> best(kinds.size(), 1e300);
  for (int round = 0; round < options.rounds; ++round) {
    for (size_t k = 0; k < kinds.size(); ++k) {
      kinds[k].second();  // warm: first touch of the moments
      const auto start = Clock::now();
      for (int s = 0; s < options.steps; ++s) kinds[k].second();
      best[k] = std::min(best[k], seconds_since(start) / options.steps);
    }
  }
  edit::bench::Table table({"optimizer", "params", "ms_per_step", "ratio_to_torch"});
  for (size_t k = 0; k < kinds.size(); ++k) {
    table.add_row({kinds[k].first, std::to_string(params), fmt_num(1e3 * best[k], 3), fmt_num(best.back() / best[k], 2)});
  }
  table.print("The AdamW step alone (S = 1, one thread; the fastest of " + std::to_string(options.rounds) +
              " alternating rounds of " + std::to_string(options.steps) + " steps)");
  table.write_csv(options.optimizer_out);
  std::cout << "\nwrote " << options.optimizer_out << "\n\n";
}

}  // namespace

int main(int argc, char** argv) try {
  Options options;
  CLI::App app{"bench_shard: ShardedModel throughput and memory per rank for several shard sizes"};
  options.model.add_flags(app);
  app.add_option("--steps", options.steps, "timed steps")->capture_default_str();
  app.add_option("--shard-sizes", options.shard_sizes, "shard sizes to run (each must divide the world)")
      ->delimiter(',')->capture_default_str();
  app.add_option("--out", options.out, "CSV path")->capture_default_str();
  app.add_option("--optimizer-out", options.optimizer_out, "CSV path of the optimizer-step table")
      ->capture_default_str();
  app.add_option("--rounds", options.rounds, "alternating rounds of the optimizer-step table")
      ->check(CLI::Range(1, 1000))->capture_default_str();
  app.add_flag("--quick", options.quick, "a small model and 3 steps (seconds)");
  CLI11_PARSE(app, argc, argv);
  if (options.quick) {
    options.model.dim = 64;
    options.model.layers = 2;
    options.steps = 3;
  }
  at::set_num_threads(1);
  const TinyConfig config = options.model.config();

  edit::comm::DeviceMesh world_mesh = edit::comm::DeviceMesh::from_env();
  edit::log::init(world_mesh.rank());
  const int world = world_mesh.world_size();
  const double tokens_per_step = double(options.model.batch) * options.model.seq * world;
  edit::bench::Table table({"mode", "ranks", "shard_size", "params", "tokens_per_s", "ratio_to_unsharded",
                            "mem_per_rank_MiB", "mem_ratio_to_unsharded", "peak_full_params_KiB"});

  // Unsharded reference: every rank a full model and torch::optim::AdamW (params, grads, m, v).
  at::manual_seed(0);
  auto plain = std::make_shared<TinyTransformer>(config);
  torch::optim::AdamW plain_optimizer(plain->parameters(), torch::optim::AdamWOptions(1e-3));
  std::int64_t params = 0;
  for (const auto& p : plain->parameters()) params += p.numel();
  auto run_plain = [&](int step) {
    auto [x, y] = tiny_batch(config, step, world_mesh.rank(), options.model.batch);
    plain_optimizer.zero_grad();
    plain->loss(x, y).backward();
    plain_optimizer.step();
  };
  for (int s = 0; s < 2; ++s) run_plain(s);
  world_mesh.world().barrier()->wait();
  auto start = Clock::now();
  for (int s = 0; s < options.steps; ++s) run_plain(s);
  const auto plain_times = world_mesh.world().all_gather_values({seconds_since(start)});
  const double plain_s = *std::max_element(plain_times.begin(), plain_times.end());
  const double plain_tps = tokens_per_step * options.steps / plain_s;
  const double plain_mem = 4.0 * params * 4;  // fp32 params, grads, exp_avg, exp_avg_sq
  table.add_row({"unsharded", std::to_string(world), "-", std::to_string(params), fmt_num(plain_tps, 0), "1.000",
                 fmt_num(plain_mem / (1 << 20), 3), "1.000", "-"});

  for (int S : options.shard_sizes) {
    if (S > world || world % S != 0) {
      if (world_mesh.rank() == 0) std::cerr << "skipping --shard-sizes " << S << ": does not divide " << world << " ranks\n";
      continue;
    }
    edit::comm::DeviceMesh mesh = edit::comm::DeviceMesh::from_env({S});
    at::manual_seed(0);
    auto model = std::make_shared<TinyTransformer>(config);
    edit::shard::ShardedModel sharded(model, mesh.shard_ptr());
    edit::shard::FlatAdamW optimizer(sharded, {1e-3});
    auto run = [&](int step) {
      auto [x, y] = tiny_batch(config, step, mesh.rank(), options.model.batch);
      sharded.zero_grad();
      sharded.backward(model->loss(x, y));
      optimizer.step();
    };
    for (int s = 0; s < 2; ++s) run(s);
    sharded.reset_peak_memory();
    mesh.world().barrier()->wait();
    start = Clock::now();
    for (int s = 0; s < options.steps; ++s) run(s);
    const auto times = mesh.world().all_gather_values({seconds_since(start)});
    const double seconds = *std::max_element(times.begin(), times.end());
    const double tps = tokens_per_step * options.steps / seconds;
    const auto memory = sharded.memory();
    // shard params + grad shard + 2 AdamW moments per shard element + full buffers at their peak.
    const double mem = 2.0 * memory.shard_bytes + memory.peak_full_param_bytes + memory.peak_full_grad_bytes;
    table.add_row({"sharded", std::to_string(world), std::to_string(S), std::to_string(params), fmt_num(tps, 0),
                   fmt_num(tps / plain_tps, 3), fmt_num(mem / (1 << 20), 3), fmt_num(mem / plain_mem, 3),
                   fmt_num(memory.peak_full_param_bytes / 1024.0, 1)});
  }
  // S = 1 on every rank (its shard group is the rank alone); rank 0 times the optimizers on it.
  edit::comm::DeviceMesh unsharded_mesh = edit::comm::DeviceMesh::from_env({1});
  if (world_mesh.rank() == 0) {
    time_optimizers(config, options, unsharded_mesh.shard_ptr());
    table.print("ShardedModel: throughput and parameter+gradient+AdamW memory per rank (" +
                std::to_string(options.model.layers) + " blocks, dim " + std::to_string(options.model.dim) + ")");
    table.write_csv(options.out);
    std::cout << "\nwrote " << options.out << "\n";
  }
  return 0;
} catch (const std::exception& e) {
  std::cerr << "bench_shard: " << e.what() << "\n";
  return 1;
}
