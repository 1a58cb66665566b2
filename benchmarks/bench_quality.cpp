// bench_quality: how well each strategy trains under real schedules, at equal tokens.
//
//   build/tools/edit-prepare-text --out data/fortunes /usr/share/games/fortunes
//   mpirun -np 2 --oversubscribe build/benchmarks/bench_quality --data data/fortunes
//
// The byte-level GPT ("tiny" preset) trains on the fortunes shards from a different seed on every
// rank (the strategy makes the replicas equal), with one of these schedules and faults:
//   cosine        linear warm-up over 5 H steps, then cosine down to lr / 10
//   constant      the same warm-up, then a constant lr (the stable phase of a WSD schedule)
//   spike-noise   constant, and every k-th sync worker 1's parameters get Gaussian noise of 10x its
//                 pseudo-gradient's norm just before the sync (a blown-up worker)
//   spike-nan     constant, and every k-th sync one of worker 1's parameters becomes NaN
// for EDiT (with its pseudo-gradient penalty), EDiT without the penalty, DiLoCo, Streaming DiLoCo
// and Ddp (clean schedules only: Ddp has no pseudo-gradient to spike). `streaming` runs once for
// each combination of --fragments, --overlap, --alpha, --quant and --fragment-layout (lists), at
// the same H and outer optimizer as DiLoCo. Columns: the val loss of the model the
// replicas agree on (the anchor for Local SGD; mean over ranks of the same val batches), its ratio
// to DiLoCo's in the same scenario (clean) or to the strategy's own constant run (spiked), and the
// penalty's dropped workers, skipped units and level shifts over the run.
// --check exits 1 unless EDiT's val loss is at most DiLoCo's x 1.02 in the cosine scenario.
#include <ATen/ATen.h>
#include <c10/core/GradMode.h>
#include <ATen/Parallel.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cmath>
#include <filesystem>
#include <iostream>
#include <map>
#include <tuple>

#include "edit/comm/device_mesh.h"
#include "edit/core/check.h"
#include "edit/core/log.h"
#include "edit/data/token_dataset.h"
#include "edit/models/gpt.h"
#include "edit/shard/flat_adamw.h"
#include "edit/sync/factory.h"
#include "edit/train/trainer.h"
#include "support/table.h"

namespace {

using edit::bench::fmt_num;

struct Options {
  std::string data = "data/fortunes";
  std::int64_t steps = 480;
  int sync_every = 16;
  std::int64_t warmup = 0;  // 0: 5 H
  double lr = 3e-3;
  double outer_lr = 0.7, outer_momentum = 0.9;
  int spike_every = 4;  // syncs
  int batch = 8, seq = 64, eval_batches = 16;
  std::uint64_t seed = 1;
  std::vector<std::string> scenarios = {"cosine", "constant", "spike-noise", "spike-nan"};
  std::vector<std::string> strategies = {"edit", "edit-nopenalty", "diloco", "ddp"};
  // Streaming DiLoCo's rows: every combination of these.
  std::vector<int> fragments = {2};
  std::vector<int> overlaps = {1};
  std::vector<double> alphas = {0.5};
  std::vector<std::string> quants = {"fp4"};
  std::vector<std::string> layouts = {"balanced"};
  std::string out = "bench_quality.csv";
  bool quick = false;
  bool check = false;
};

// Wraps a strategy and damages worker 1's local parameters right before every k-th sync, so the
// pseudo-gradient it contributes is blown up (or NaN). Everything else goes to the wrapped one.
class SpikeInjector : public edit::sync::SyncStrategy {
 public:
  SpikeInjector(edit::sync::SyncStrategy& inner, edit::sync::PseudoGradientSync& core, edit::shard::ShardedModel& model,
                int replica, int sync_every, int spike_every, bool nan)
      : inner_(inner), core_(core), model_(model), replica_(replica), sync_every_(sync_every),
        spike_every_(spike_every), nan_(nan) {}
  std::string name() const override { return inner_.name(); }
  void before_step(std::int64_t step) override { inner_.before_step(step); }
  void after_step(std::int64_t step) override {
    const std::int64_t syncs = (step + 1) / sync_every_;
    if ((step + 1) % sync_every_ == 0 && syncs % spike_every_ == 0 && replica_ == 1) damage();
    inner_.after_step(step);
  }
  void finish() override { inner_.finish(); }
  edit::sync::SyncStats stats() const override { return inner_.stats(); }
  void with_global_model(const std::function<void()>& fn) override { inner_.with_global_model(fn); }

 private:
  void damage() {
    c10::NoGradGuard no_grad;
    for (int u = 0; u < model_.num_units(); ++u) {
      at::Tensor theta = model_.unit(u).shard();
      if (nan_) {
        theta[0] = NAN;
      } else {
        // ||noise|| ~ 10 ||delta||, so the new pseudo-gradient's norm is ~10x the honest one.
        const at::Tensor delta = core_.outer().anchor(u) - theta;
        const double scale = 10.0 * delta.norm().item<double>() / std::sqrt(static_cast<double>(theta.numel()));
        theta.add_(at::randn_like(theta), scale);
      }
    }
  }

  edit::sync::SyncStrategy& inner_;
  edit::sync::PseudoGradientSync& core_;
  edit::shard::ShardedModel& model_;
  int replica_, sync_every_, spike_every_;
  bool nan_;
};

// One row's strategy: a name, and for Streaming DiLoCo its fragments, overlap, merge and exchange.
struct Variant {
  std::string strategy;
  int fragments = 1, overlap = 0;
  double alpha = 0.5;
  std::string quant = "fp32", layout = "strided";
  bool streaming() const { return strategy == "streaming"; }
  std::string label() const {
    if (!streaming()) return strategy;
    return "streaming P" + std::to_string(fragments) + " tau" + std::to_string(overlap) + " a" +
           edit::bench::fmt_num(alpha, 2) + " " + quant + " " + layout;
  }
};

struct Result {
  double val_loss = NAN;
  edit::sync::SyncStats stats;
};

Result run_one(const Options& o, edit::comm::DeviceMesh& mesh, edit::data::TokenDataset& train,
               edit::data::TokenDataset& val, const std::string& scenario, const Variant& variant) {
  const std::string& strategy_name = variant.strategy;
  auto config = edit::models::GptConfig::preset("tiny");
  config.seq_len = o.seq;
  at::manual_seed(o.seed + 1000 * static_cast<std::uint64_t>(mesh.rank()));  // replicas start apart
  auto module = std::make_shared<edit::models::GptImpl>(config);
  edit::shard::ShardedModel model(module, mesh.shard_ptr());
  edit::shard::FlatAdamW inner(model, {o.lr});

  edit::sync::StrategyConfig sync;
  sync.name = strategy_name == "edit-nopenalty" ? "edit" : strategy_name;
  if (strategy_name == "edit-nopenalty") sync.penalty = false;
  sync.local.sync_every = o.sync_every;
  sync.local.outer.lr = o.outer_lr;
  sync.local.outer.momentum = o.outer_momentum;
  sync.streaming.fragments = variant.fragments;
  sync.streaming.overlap = variant.overlap;
  sync.streaming.alpha = variant.alpha;
  sync.streaming.quant.format = edit::sync::parse_quant_format(variant.quant);
  sync.streaming.layout = edit::sync::parse_fragment_layout(variant.layout);
  const auto strategy = edit::sync::make_strategy(sync, model, mesh.sync_ptr());
  edit::sync::PseudoGradientSync* core = nullptr;  // the spike scenarios reach into its weights
  if (auto* diloco = dynamic_cast<edit::sync::DiLoCo*>(strategy.get())) core = &diloco->core();
  if (auto* edit_strategy = dynamic_cast<edit::sync::EDiT*>(strategy.get())) core = &edit_strategy->core();
  if (auto* streaming = dynamic_cast<edit::sync::StreamingDiLoCo*>(strategy.get())) core = &streaming->core();
  std::unique_ptr<SpikeInjector> spiked;
  if (scenario.rfind("spike", 0) == 0) {
    EDIT_CHECK(core != nullptr, "scenario ", scenario, " needs a Local SGD strategy, not ", strategy_name);
    spiked = std::make_unique<SpikeInjector>(*strategy, *core, model, mesh.sync().rank(), o.sync_every, o.spike_every,
                                             scenario == "spike-nan");
  }
  edit::sync::SyncStrategy& used = spiked ? static_cast<edit::sync::SyncStrategy&>(*spiked) : *strategy;

  edit::train::TrainerOptions options;
  options.steps = o.steps;
  const std::int64_t warmup = o.warmup > 0 ? o.warmup : 5LL * o.sync_every;
  options.schedule = {o.lr, warmup, o.steps, scenario == "cosine" ? o.lr / 10 : o.lr};
  options.log_every = 0;
  options.on_nonfinite = edit::train::NonFinitePolicy::kIgnore;  // the spiked scenarios show what a NaN does without the penalty
  edit::train::Trainer trainer(mesh, model, inner, used, options);
  train.set_cursor({});
  trainer.run([&](std::int64_t, int) {
                auto b = train.next_batch(o.batch, o.seq);
                return edit::train::Batch{b.inputs, b.targets};
              },
              [&](const edit::train::Batch& b) { return module->loss(b.inputs, b.targets); });

  Result result;
  double loss = 0.0;
  used.with_global_model([&] {
    c10::NoGradGuard no_grad;
    val.set_cursor({});
    for (int i = 0; i < o.eval_batches; ++i) {
      const auto b = val.next_batch(o.batch, o.seq);
      loss += module->loss(b.inputs, b.targets).item<double>() / o.eval_batches;
    }
  });
  double total = 0.0;
  for (double l : mesh.world().all_gather_values({loss})) total += l;
  result.val_loss = total / mesh.world_size();
  result.stats = used.stats();
  return result;
}

}  // namespace

int main(int argc, char** argv) try {
  Options o;
  CLI::App app{
      "bench_quality: val loss of EDiT, EDiT without the penalty, DiLoCo, Streaming DiLoCo and Ddp under "
      "real schedules"};
  app.add_option("--data", o.data, "folder with train_*.bin and val_*.bin (edit-prepare-text --out)")->capture_default_str();
  app.add_option("--steps", o.steps, "inner steps per run")->capture_default_str();
  app.add_option("--sync-every", o.sync_every, "H")->capture_default_str();
  app.add_option("--warmup", o.warmup, "warm-up steps (0: 5 H)")->capture_default_str();
  app.add_option("--lr", o.lr, "peak inner learning rate (AdamW)")->capture_default_str();
  app.add_option("--outer-lr", o.outer_lr, "outer learning rate")->capture_default_str();
  app.add_option("--outer-momentum", o.outer_momentum, "outer Nesterov momentum")->capture_default_str();
  app.add_option("--spike-every", o.spike_every, "spiked scenarios: damage worker 1 every k-th sync")->capture_default_str();
  app.add_option("--batch", o.batch, "sequences per rank per step")->capture_default_str();
  app.add_option("--seq", o.seq, "sequence length")->capture_default_str();
  app.add_option("--eval-batches", o.eval_batches, "val batches per rank")->capture_default_str();
  app.add_option("--seed", o.seed, "model seed (rank r uses seed + 1000 r)")->capture_default_str();
  app.add_option("--scenarios", o.scenarios, "cosine, constant, spike-noise, spike-nan")->delimiter(',')->capture_default_str();
  app.add_option("--strategies", o.strategies, "edit, edit-nopenalty, diloco, streaming, ddp")
      ->delimiter(',')
      ->capture_default_str();
  app.add_option("--fragments", o.fragments, "streaming: values of P")->delimiter(',')->capture_default_str();
  app.add_option("--overlap", o.overlaps, "streaming: values of tau")->delimiter(',')->capture_default_str();
  app.add_option("--alpha", o.alphas, "streaming: values of the merge's alpha")
      ->delimiter(',')
      ->capture_default_str();
  app.add_option("--quant", o.quants, "streaming: exchange formats (fp32, bf16, int8, int4, fp4)")
      ->delimiter(',')
      ->capture_default_str();
  app.add_option("--fragment-layout", o.layouts, "streaming: strided, sequential, balanced, split")
      ->delimiter(',')
      ->capture_default_str();
  app.add_option("--out", o.out, "CSV path")->capture_default_str();
  app.add_flag("--quick", o.quick, "160 steps, H 8, the cosine scenario, EDiT and DiLoCo: about a minute");
  app.add_flag("--check", o.check, "exit 1 unless EDiT's val loss <= DiLoCo's x 1.02 (cosine)");
  CLI11_PARSE(app, argc, argv);
  if (o.quick) {
    o.steps = 160;
    o.sync_every = 8;
    o.scenarios = {"cosine"};
    o.strategies = {"edit", "diloco"};
  }
  for (const auto& s : o.scenarios) {
    EDIT_CHECK(s == "cosine" || s == "constant" || s == "spike-noise" || s == "spike-nan", "unknown scenario '", s,
               "'; use cosine, constant, spike-noise or spike-nan");
  }
  for (const auto& s : o.strategies) {
    EDIT_CHECK(s == "edit" || s == "edit-nopenalty" || s == "diloco" || s == "streaming" || s == "ddp",
               "unknown strategy '", s, "'; use edit, edit-nopenalty, diloco, streaming or ddp");
  }
  for (const auto& q : o.quants) edit::sync::parse_quant_format(q);  // a bad name fails before any run
  for (const auto& l : o.layouts) edit::sync::parse_fragment_layout(l);
  std::vector<Variant> variants;
  for (const auto& s : o.strategies) {
    if (s != "streaming") {
      variants.push_back({s});
      continue;
    }
    for (int P : o.fragments) {
      EDIT_CHECK(P >= 1 && o.sync_every % P == 0, "--fragments ", P, " does not divide --sync-every ",
                 o.sync_every, "; pick values of P that divide H");
      for (int tau : o.overlaps) {
        for (double alpha : o.alphas) {
          for (const auto& quant : o.quants) {
            for (const auto& layout : o.layouts) variants.push_back({s, P, tau, alpha, quant, layout});
          }
        }
      }
    }
  }
  const auto has = [](const std::vector<std::string>& list, const std::string& item) {
    return std::find(list.begin(), list.end(), item) != list.end();
  };
  EDIT_CHECK(!o.check || (has(o.scenarios, "cosine") && has(o.strategies, "edit") && has(o.strategies, "diloco")),
             "--check compares EDiT with DiLoCo in the cosine scenario: keep cosine, edit and diloco in the lists");
  EDIT_CHECK(5LL * o.sync_every < o.steps || o.warmup > 0, "the warm-up of 5 H = ", 5 * o.sync_every,
             " steps does not fit in --steps ", o.steps, "; raise --steps or lower --sync-every");
  at::set_num_threads(1);
  edit::comm::DeviceMesh mesh = edit::comm::DeviceMesh::from_env({1});
  edit::log::init(mesh.rank(), "warn");
  EDIT_CHECK(mesh.sync().size() >= 2, "bench_quality compares replicas: run it with at least 2 ranks (mpirun -np 2)");

  edit::data::TokenDatasetOptions data_options;
  data_options.seq_len = o.seq;
  data_options.rank = mesh.rank();
  data_options.world_size = mesh.world_size();
  namespace fs = std::filesystem;
  EDIT_CHECK(fs::is_directory(o.data), "no data folder ", o.data,
             "; make one with: edit-prepare-text --out ", o.data, " /usr/share/games/fortunes");
  edit::data::TokenDataset train((fs::path(o.data) / "train_*.bin").string(), data_options);
  edit::data::TokenDataset val((fs::path(o.data) / "val_*.bin").string(), data_options);

  edit::bench::Table table({"scenario", "strategy", "fragments", "overlap", "alpha", "quant", "layout",
                            "ranks", "H", "steps", "val_loss", "ratio", "ratio_to", "dropped_workers",
                            "skipped_units", "level_shifts"});
  std::map<std::string, double> loss_of;  // "scenario/label"
  std::vector<std::tuple<std::string, Variant, Result>> runs;
  for (const auto& scenario : o.scenarios) {
    const bool spiked = scenario.rfind("spike", 0) == 0;
    for (const Variant& variant : variants) {
      if (spiked && variant.strategy == "ddp") continue;
      const Result r = run_one(o, mesh, train, val, scenario, variant);
      loss_of[scenario + "/" + variant.label()] = r.val_loss;
      runs.emplace_back(scenario, variant, r);
      if (mesh.rank() == 0) {
        std::cout << scenario << " / " << variant.label() << ": val loss " << fmt_num(r.val_loss, 4)
                  << std::endl;
      }
    }
  }
  for (const auto& [scenario, variant, r] : runs) {
    const std::string strategy = variant.label();
    const bool streaming = variant.streaming();
    // Clean runs compare with DiLoCo in the same scenario; spiked runs with their own constant run.
    const std::string reference = scenario.rfind("spike", 0) == 0 ? "constant/" + strategy : scenario + "/diloco";
    const auto ref = loss_of.find(reference);
    const bool compared = ref != loss_of.end() && reference != scenario + "/" + strategy;
    table.add_row({scenario, variant.strategy, streaming ? std::to_string(variant.fragments) : "-",
                   streaming ? std::to_string(variant.overlap) : "-",
                   streaming ? fmt_num(variant.alpha, 2) : "-", streaming ? variant.quant : "-",
                   streaming ? variant.layout : "-", std::to_string(mesh.world_size()),
                   std::to_string(o.sync_every), std::to_string(o.steps), fmt_num(r.val_loss, 4),
                   compared ? fmt_num(r.val_loss / ref->second, 4) : "-", compared ? reference : "-",
                   std::to_string(r.stats.dropped_workers), std::to_string(r.stats.skipped_units),
                   std::to_string(r.stats.level_shifts)});
  }
  int status = 0;
  if (mesh.rank() == 0) {
    table.print("bench_quality: tiny byte GPT, " + std::to_string(o.steps) + " steps, H " + std::to_string(o.sync_every) +
                ", lr " + fmt_num(o.lr, 4) + ", outer (" + fmt_num(o.outer_lr, 2) + ", " + fmt_num(o.outer_momentum, 2) +
                "), " + std::to_string(mesh.world_size()) + " ranks");
    table.write_csv(o.out);
    std::cout << "\nwrote " << o.out << "\n";
    if (o.check) {
      const double edit_loss = loss_of.at("cosine/edit"), diloco_loss = loss_of.at("cosine/diloco");
      const bool ok = edit_loss <= 1.02 * diloco_loss;  // false for a NaN too
      std::cout << "check: EDiT " << fmt_num(edit_loss, 4) << " vs DiLoCo " << fmt_num(diloco_loss, 4) << " x 1.02 = "
                << fmt_num(1.02 * diloco_loss, 4) << (ok ? ": ok" : ": FAILED") << "\n";
      status = ok ? 0 : 1;
    }
  }
  return static_cast<int>(mesh.world().all_gather_values({static_cast<double>(status)}).front());
} catch (const std::exception& e) {
  std::cerr << "bench_quality: " << e.what() << "\n";
  return 1;
}
