// bench_sync: the synchronization strategies side by side on one model and one data stream.
//
//   mpirun -np 4 --oversubscribe build/benchmarks/bench_sync --out bench_sync.csv
//
// For each link (the machine's own, then a slow sync group emulated with LinkEmulator) it trains
// the same small GPT-like model from the same seed with: no communication (the reference), Ddp
// (gradients every step), DiLoCo, EDiT and Streaming DiLoCo (fragments P, overlap tau,
// quantized exchange) at each H. Columns: tokens/s, ratio to no-communication, bytes sent per
// inner step per rank (shard + sync groups) on average and in the busiest step, time blocked in
// the strategy, on an emulated link the compute utilization (as in the sweep below), and the
// held-out loss after the run (mean over ranks), all from one run. EDiT has the pseudo-gradient
// penalty on; --penalty turns it on for DiLoCo and Streaming DiLoCo too.
// Communicators count an operation's bytes when it completes, so an overlapped exchange may be
// split over two steps in peak_bytes_per_step; peak_exchange_bytes (Streaming DiLoCo) counts the
// packets issued after one step, exactly: payload and scales, what each rank puts on the wire.
//
// --straggler-factors 2,4 adds a heterogeneous-cluster study: the last replica computes f times
// as slowly, and Ddp, EDiT (H steps) and A-EDiT run side by side at a constant learning rate.
// EDiT's run sets the wall-clock budget: A-EDiT gets the same time (its interval makes as many
// syncs as EDiT's), so its val loss is compared at equal wall-clock time. Columns add the tokens
// every worker would process alone at its own speed (own_speed_sum) and the job's share of it.
//
// --bandwidth-sweep: for Ddp, DiLoCo and Streaming DiLoCo (P fragments; + overlap; + fp4), the
// lowest emulated sync-group bandwidth (LinkEmulator, no latency) at which each keeps >= 95%
// compute utilization, found by bisection on a log scale; written to <out stem>_sweep.csv.
// Utilization is measured inside each run: 1 - (time blocked on the emulated link after every rank
// had issued the op) / (wall-clock time), on the worst rank, so no second run's noise enters it,
// nor the wait for a peer that a busy machine delayed. It is what the paper's "95% compute
// utilization" counts: communication that compute does not hide. Next to it, tokens/s against a
// no-communication run taken before each strategy's walk (noisier on a shared machine, and it also
// charges the strategy's own work, such as quantizing, as overhead).
#include <ATen/Parallel.h>
#include <c10/core/GradMode.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cmath>
#include <iostream>

#include "edit/comm/device_mesh.h"
#include "edit/comm/link_emulator.h"
#include "edit/core/check.h"
#include "edit/core/log.h"
#include "edit/shard/flat_adamw.h"
#include "edit/sync/factory.h"
#include "edit/train/trainer.h"
#include "support/model_shape.h"
#include "support/table.h"
#include "tiny_transformer.h"

namespace {

using edit::bench::fmt_num;
using edit::testing_support::TinyConfig;
using edit::testing_support::TinyTransformer;

struct Options {
  edit::bench::ModelShape model;
  int steps = 96;
  int shard_size = 1;
  std::vector<int> sync_every = {8, 32};
  std::string slow_link = "1Gbit@1ms";
  std::string out = "bench_sync.csv";
  bool quick = false;
  std::string straggler;                  // e.g. "1:2x": rank 1 computes twice as slowly
  std::vector<double> straggler_factors;  // the heterogeneous-cluster study; empty: none
  int study_H = 8;
  bool study_only = false;
  bool bandwidth_sweep = false;
  int sweep_fragments = 4;
  int sweep_overlap = 1;                           // tau of the overlapped Streaming DiLoCo rows of the sweep
  double sweep_target = 0.95;                      // the compute utilization a strategy must keep
  std::vector<int> fragments = {2, 4};             // P of the Streaming DiLoCo rows
  std::vector<std::string> quants;                 // empty: fp32 for P = 2, fp32 to fp4 for the others
  std::vector<std::string> layouts = {"strided"};  // fragment layouts of the Streaming DiLoCo rows
  bool penalty = false;                            // the penalty for DiLoCo and Streaming too (EDiT has it)
};

// A learnable stream: tokens follow a fixed random Markov chain in which every token has a few
// likely successors, so the loss can fall well below log(vocab) and strategies can be compared.
class MarkovData {
 public:
  MarkovData(int vocab, int seq) : vocab_(vocab), seq_(seq) {
    at::manual_seed(12345);
    at::Tensor logits = at::randn({vocab, vocab}) * 4.0;  // peaked rows
    transitions_ = at::softmax(logits, 1);
  }
  edit::train::Batch batch(std::int64_t stream, int rows) const {
    at::manual_seed(1'000'003 * stream + 17);
    at::Tensor tokens = at::empty({rows, seq_ + 1}, at::kLong);
    at::Tensor current = at::randint(0, vocab_, {rows}, at::kLong);
    tokens.select(1, 0).copy_(current);
    for (int t = 1; t <= seq_; ++t) {
      current = at::multinomial(transitions_.index_select(0, current), 1).squeeze(1);
      tokens.select(1, t).copy_(current);
    }
    return {tokens.narrow(1, 0, seq_), tokens.narrow(1, 1, seq_)};
  }

 private:
  int vocab_;
  int seq_;
  at::Tensor transitions_;
};

// One row: a strategy and, for Streaming DiLoCo, its fragments, overlap and quantization.
struct RunSpec {
  std::string strategy;
  int H = 1;
  int fragments = 1;
  int overlap = 0;
  std::string quant = "fp32";
  std::string layout = "strided";
  std::string straggler{};   // this run's slow ranks (else Options::straggler)
  double time_limit = 0;     // aedit: seconds of training (its end); the others run o.steps
  double interval = 0;       // aedit: seconds between syncs
  bool constant_lr = false;  // the study: no decay, so replicas at different steps train alike
};

struct Result {
  double tokens_per_s = 0;
  double bytes_per_step = 0;
  double peak_bytes_per_step = 0;
  double peak_exchange_bytes = 0;  // Streaming DiLoCo: the most packet bytes issued after one step
  double sync_wait_s = 0;
  double link_wait_share = 0;  // the most any rank spent blocked on the emulated link, over the wall clock
  double loss = 0;
  double seconds = 0;        // wall-clock of the timed part (the slowest rank's)
  double own_speed_sum = 0;  // tokens/s every rank would process alone: sum of tokens / compute time
  std::int64_t syncs = 0;
};

Result run_one(const Options& o, const MarkovData& data, const RunSpec& spec, const std::string& link) {
  const std::string& strategy_name = spec.strategy;
  const int H = spec.H;
  edit::comm::DeviceMesh mesh = edit::comm::DeviceMesh::from_env({o.shard_size});
  std::shared_ptr<edit::comm::LinkEmulator> emulator;
  if (!link.empty()) {
    emulator =
        std::make_shared<edit::comm::LinkEmulator>(mesh.sync_ptr(), edit::comm::LinkModel::parse(link));
    mesh.set_sync(emulator);
  }
  const TinyConfig config = o.model.config();
  at::manual_seed(0);
  auto module = std::make_shared<TinyTransformer>(config);
  edit::shard::ShardedModel model(module, mesh.shard_ptr());
  edit::shard::FlatAdamW inner(model, {1e-3});
  edit::sync::StrategyConfig sync;
  sync.name = strategy_name;
  sync.local.sync_every = H;
  if (o.penalty && edit::sync::is_local_sgd(strategy_name)) sync.penalty = true;
  sync.streaming.fragments = spec.fragments;
  sync.streaming.overlap = spec.overlap;
  sync.streaming.alpha = spec.overlap == 0 ? 0.0 : 0.5;
  sync.streaming.quant = {edit::sync::parse_quant_format(spec.quant), 128};
  sync.streaming.layout = edit::sync::parse_fragment_layout(spec.layout);
  sync.aedit.interval_s = spec.interval;
  sync.aedit.time_limit_s = spec.time_limit;
  const auto strategy = edit::sync::make_strategy(sync, model, mesh.sync_ptr());
  edit::train::TrainerOptions options;
  options.steps = o.steps;
  options.schedule = {1e-3, std::min<std::int64_t>(10, o.steps), o.steps, spec.constant_lr ? 1e-3 : 1e-4};
  options.log_every = 0;
  options.stragglers =
      edit::train::StragglerPlan::parse(spec.straggler.empty() ? o.straggler : spec.straggler);
  edit::train::Trainer trainer(mesh, model, inner, *strategy, options);
  const auto batch_of = [&](std::int64_t step, int) {
    return data.batch(step * mesh.world_size() + mesh.rank(), o.model.batch);
  };
  const auto loss_of = [&](const edit::train::Batch& b) { return module->loss(b.inputs, b.targets); };
  trainer.step(batch_of, loss_of);  // warm-up step, not timed
  mesh.shard().reset_stats();
  mesh.sync().reset_stats();
  mesh.world().barrier()->wait();
  const auto start = std::chrono::steady_clock::now();
  double blocked = 0.0, peak_bytes = 0.0, compute = 0.0;
  std::int64_t timed = 0;  // this rank's timed steps (A-EDiT: each rank its own count)
  while (!trainer.finished()) {
    const auto m = trainer.step(batch_of, loss_of);
    blocked += m.sync_wait_s;
    compute += m.seconds - m.sync_wait_s;
    ++timed;
    peak_bytes = std::max(peak_bytes, static_cast<double>(m.bytes_shard + m.bytes_sync));
  }
  strategy->finish();
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  const double link_wait = emulator ? emulator->link_wait_seconds() : 0.0;
  const auto all =
      mesh.world().all_gather_values({seconds, static_cast<double>(timed), compute, link_wait / seconds});
  double slowest = 0.0, steps = 0.0, own_speed_sum = 0.0, link_wait_share = 0.0;
  const double tokens_per_step = double(o.model.batch) * o.model.seq;
  for (size_t r = 0; r < all.size(); r += 4) {
    slowest = std::max(slowest, all[r]);
    steps += all[r + 1];
    own_speed_sum += tokens_per_step * all[r + 1] / all[r + 2];
    link_wait_share = std::max(link_wait_share, all[r + 3]);
  }

  Result result;
  result.seconds = slowest;
  result.own_speed_sum = own_speed_sum;
  result.syncs = strategy->stats().syncs;
  result.tokens_per_s = tokens_per_step * steps / slowest;
  result.bytes_per_step =
      double(mesh.shard().stats().bytes_sent + mesh.sync().stats().bytes_sent) / static_cast<double>(timed);
  result.peak_bytes_per_step = peak_bytes;
  if (const auto* streaming = dynamic_cast<const edit::sync::StreamingDiLoCo*>(strategy.get())) {
    result.peak_exchange_bytes = static_cast<double>(streaming->streaming_stats().max_step_bytes);
  }
  result.sync_wait_s = blocked;
  result.link_wait_share = link_wait_share;
  // Held-out loss: the same 4 batches on every rank, never trained on.
  c10::NoGradGuard no_grad;
  double loss = 0.0;
  for (int i = 0; i < 4; ++i) {
    const auto b = data.batch(-1 - i, o.model.batch);
    loss += module->loss(b.inputs, b.targets).item<double>() / 4;
  }
  double total = 0.0;
  for (double l : mesh.world().all_gather_values({loss})) total += l;
  result.loss = total / mesh.world_size();
  return result;
}

}  // namespace

int main(int argc, char** argv) try {
  Options o;
  CLI::App app{
      "bench_sync: Ddp, DiLoCo, EDiT and Streaming DiLoCo against no communication, on a fast and a slow "
      "link"};
  o.model.add_flags(app);
  app.add_option("--steps", o.steps, "inner steps per run")->capture_default_str();
  app.add_option("--shard-size", o.shard_size, "S: ranks per model replica")->capture_default_str();
  app.add_option("--sync-every", o.sync_every, "values of H for DiLoCo and EDiT")
      ->delimiter(',')
      ->capture_default_str();
  app.add_option("--slow-link", o.slow_link, "the emulated slow sync group ('' to skip)")
      ->capture_default_str();
  app.add_option("--out", o.out, "CSV path")->capture_default_str();
  app.add_option("--straggler", o.straggler, "slow ranks, as edit-train-gpt's --straggler (e.g. 1:2x)")
      ->capture_default_str();
  app.add_option("--straggler-factors", o.straggler_factors,
                 "the study: the last replica computes f times as slowly, "
                 "for each f (e.g. 2,4); Ddp, EDiT and A-EDiT at equal wall-clock time")
      ->delimiter(',');
  app.add_option("--study-H", o.study_H, "EDiT's H in the straggler study")->capture_default_str();
  app.add_flag("--study-only", o.study_only,
               "run the straggler study or the sweep alone (not the strategy matrix)");
  app.add_flag("--bandwidth-sweep", o.bandwidth_sweep,
               "the lowest sync bandwidth at which each strategy keeps 95% "
               "compute utilization (H: the first --sync-every)");
  app.add_option("--sweep-fragments", o.sweep_fragments, "P of Streaming DiLoCo in the sweep")
      ->capture_default_str();
  app.add_option("--sweep-overlap", o.sweep_overlap,
                 "tau of the overlapped Streaming DiLoCo rows of the sweep")
      ->capture_default_str();
  app.add_option("--sweep-target", o.sweep_target,
                 "the compute utilization each strategy must keep in the sweep")
      ->check(CLI::Range(0.5, 0.999))
      ->capture_default_str();
  app.add_option("--fragments", o.fragments, "values of P for the Streaming DiLoCo rows")
      ->delimiter(',')
      ->capture_default_str();
  app.add_option("--quants", o.quants,
                 "quantizations of the Streaming DiLoCo rows, each for every P (default: fp32 "
                 "for P = 2; fp32, int8, int4 and fp4 for the others)")
      ->delimiter(',');
  app.add_option("--fragment-layout", o.layouts,
                 "fragment layouts of the Streaming DiLoCo rows: strided, sequential, "
                 "balanced, split (a list runs each)")
      ->delimiter(',')
      ->capture_default_str();
  app.add_flag("--penalty", o.penalty,
               "the pseudo-gradient penalty for the DiLoCo and Streaming DiLoCo rows as well (EDiT has it)");
  app.add_flag("--quick", o.quick, "a reduced matrix (small model, 40 steps, H = 8): under a minute");
  CLI11_PARSE(app, argc, argv);
  if (o.quick) {
    o.model.dim = 64;
    o.model.layers = 2;
    o.model.seq = 32;
    o.steps = 40;
    o.sync_every = {8};
  }
  for (const auto& layout : o.layouts) edit::sync::parse_fragment_layout(layout);  // refuses a bad name early
  for (const auto& quant : o.quants) edit::sync::parse_quant_format(quant);
  at::set_num_threads(1);
  edit::comm::DeviceMesh top = edit::comm::DeviceMesh::from_env({o.shard_size});
  edit::log::init(top.rank(), "warn");
  const MarkovData data(o.model.vocab, o.model.seq);

  edit::bench::Table table({"strategy",
                            "ranks",
                            "shard_size",
                            "H",
                            "interval_s",
                            "fragments",
                            "layout",
                            "overlap",
                            "quant",
                            "link",
                            "straggler",
                            "seconds",
                            "syncs",
                            "tokens_per_s",
                            "ratio_to_nocomm",
                            "own_speed_sum",
                            "job_over_own",
                            "bytes_per_step_per_rank",
                            "peak_bytes_per_step",
                            "peak_exchange_bytes",
                            "sync_wait_s",
                            "utilization",
                            "loss"});
  const auto add_row = [&](const RunSpec& spec, const Result& r, const std::string& link, double reference) {
    const bool local_sgd = spec.strategy != "none" && spec.strategy != "ddp";
    const bool streaming = spec.strategy == "streaming";
    const std::string straggler = spec.straggler.empty() ? o.straggler : spec.straggler;
    table.add_row({spec.strategy,
                   std::to_string(top.world_size()),
                   std::to_string(o.shard_size),
                   local_sgd && spec.strategy != "aedit" ? std::to_string(spec.H) : "-",
                   spec.strategy == "aedit" ? fmt_num(spec.interval, 3) : "-",
                   streaming ? std::to_string(spec.fragments) : "-",
                   streaming ? spec.layout : "-",
                   streaming ? std::to_string(spec.overlap) : "-",
                   streaming ? spec.quant : "-",
                   link.empty() ? "local" : link,
                   straggler.empty() ? "-" : straggler,
                   fmt_num(r.seconds, 2),
                   std::to_string(r.syncs),
                   fmt_num(r.tokens_per_s, 0),
                   fmt_num(r.tokens_per_s / reference, 3),
                   fmt_num(r.own_speed_sum, 0),
                   fmt_num(r.tokens_per_s / r.own_speed_sum, 3),
                   fmt_num(r.bytes_per_step, 0),
                   fmt_num(r.peak_bytes_per_step, 0),
                   streaming ? fmt_num(r.peak_exchange_bytes, 0) : "-",
                   fmt_num(r.sync_wait_s, 3),
                   link.empty() ? "-" : fmt_num(1.0 - r.link_wait_share, 3),
                   fmt_num(r.loss, 4)});
  };
  std::vector<std::string> links;
  if (!o.study_only) links.push_back("");
  if (!o.study_only && !o.slow_link.empty()) links.push_back(o.slow_link);
  for (const std::string& link : links) {
    std::vector<RunSpec> runs = {{"none"}, {"ddp"}};
    for (int H : o.sync_every) {
      runs.push_back({"diloco", H});
      runs.push_back({"edit", H});
      // Streaming DiLoCo: one fragment blocking (DiLoCo itself), then P fragments overlapped by
      // one step and quantized ever more coarsely, in each layout.
      if (!o.quick) runs.push_back({"streaming", H, 1, 0, "fp32"});
      for (int P : o.quick ? std::vector<int>{2} : o.fragments) {
        if (H % P != 0) continue;
        std::vector<std::string> quants = o.quants;
        if (quants.empty() && o.quick) quants = {"fp4"};
        if (quants.empty())
          quants = P == 2 ? std::vector<std::string>{"fp32"}
                          : std::vector<std::string>{"fp32", "int8", "int4", "fp4"};
        for (const std::string& quant : quants) {
          for (const std::string& layout : o.layouts) runs.push_back({"streaming", H, P, 1, quant, layout});
        }
      }
    }
    double reference = 0.0;
    for (const RunSpec& spec : runs) {
      RunSpec run = spec;
      run.H = std::max(run.H, 1);
      const Result r = run_one(o, data, run, link);
      if (spec.strategy == "none") reference = r.tokens_per_s;
      add_row(spec, r, link, reference);
    }
  }
  for (double factor : o.straggler_factors) {
    EDIT_CHECK(factor >= 1, "--straggler-factors: a slow-down below 1 (", factor,
               ") is a speed-up; use values >= 1");
    EDIT_CHECK(top.num_replicas() >= 2,
               "the straggler study needs 2 or more replicas; run more ranks or a smaller --shard-size");
    // Every rank of the last replica, f times as slow.
    std::string plan;
    for (int rank = (top.num_replicas() - 1) * o.shard_size; rank < top.world_size(); ++rank) {
      plan += (plan.empty() ? "" : ",") + std::to_string(rank) + ":" + fmt_num(factor, 2) + "x";
    }
    const auto study = [&](RunSpec spec) {
      spec.straggler = plan;
      spec.constant_lr = true;
      return spec;
    };
    const RunSpec none = study({"none"}), ddp = study({"ddp"}), edit_spec = study({"edit", o.study_H});
    const Result r_none = run_one(o, data, none, "");
    add_row(none, r_none, "", r_none.tokens_per_s);
    add_row(ddp, run_one(o, data, ddp, ""), "", r_none.tokens_per_s);
    const Result r_edit = run_one(o, data, edit_spec, "");
    add_row(edit_spec, r_edit, "", r_none.tokens_per_s);
    // A-EDiT in EDiT's wall-clock time, with as many syncs.
    RunSpec aedit = study({"aedit", o.study_H});
    aedit.time_limit = r_edit.seconds;
    aedit.interval = r_edit.seconds / static_cast<double>(std::max<std::int64_t>(1, r_edit.syncs));
    add_row(aedit, run_one(o, data, aedit, ""), "", r_none.tokens_per_s);
  }
  if (o.bandwidth_sweep) {
    const int H = o.sync_every.at(0);
    EDIT_CHECK(top.num_replicas() >= 2,
               "--bandwidth-sweep needs 2 or more replicas to put a link between; run more "
               "ranks (mpirun -np 2 or more) or a smaller --shard-size");
    EDIT_CHECK(H % o.sweep_fragments == 0, "--bandwidth-sweep: H = ", H,
               " is not divisible by --sweep-fragments ", o.sweep_fragments, "; pick values that divide");
    // The paper's columns: DP, DiLoCo, Streaming, + overlap, + FP4.
    const std::vector<RunSpec> specs = {{"ddp"},
                                        {"diloco", H},
                                        {"streaming", H, o.sweep_fragments, 0, "fp32"},
                                        {"streaming", H, o.sweep_fragments, o.sweep_overlap, "fp32"},
                                        {"streaming", H, o.sweep_fragments, o.sweep_overlap, "fp4"}};
    const auto link_at = [](double bits) { return fmt_num(bits / 1e3, 0) + "Kbit@0ms"; };
    edit::bench::Table sweep({"strategy", "ranks", "H", "fragments", "overlap", "quant", "lowest_gbit_per_s",
                              "utilization_at_lowest", "ratio_to_nocomm_at_lowest", "ddp_bandwidth_over_this",
                              "bytes_per_step_per_rank", "peak_bytes_per_step", "runs"});
    double ddp_lowest = 0.0;
    for (const RunSpec& spec : specs) {
      // Bisection on log(bandwidth) between 100 kbit/s and 100 Gbit/s, to within 5%: utilization
      // only falls as the link slows. `pass` is the slowest link seen to keep the target.
      double fast = 1e11, slow = 1e5;
      Result pass;
      double pass_bits = 0.0;
      int runs = 0;
      const double reference = run_one(o, data, {"none"}, "").tokens_per_s;  // measured next to each walk
      const auto keeps = [&](double bits) {
        const Result r = run_one(o, data, spec, link_at(bits));
        ++runs;
        if (1.0 - r.link_wait_share < o.sweep_target) return false;
        pass = r;
        pass_bits = bits;
        return true;
      };
      if (keeps(fast)) {
        while (fast / slow > 1.05) {
          const double mid = std::sqrt(fast * slow);
          (keeps(mid) ? fast : slow) = mid;
        }
      }
      if (spec.strategy == "ddp") ddp_lowest = pass_bits;
      const bool streaming = spec.strategy == "streaming";
      const bool found = pass_bits > 0;
      sweep.add_row({spec.strategy, std::to_string(top.world_size()),
                     spec.strategy == "ddp" ? "-" : std::to_string(spec.H),
                     streaming ? std::to_string(spec.fragments) : "-",
                     streaming ? std::to_string(spec.overlap) : "-", streaming ? spec.quant : "-",
                     found ? fmt_num(pass_bits / 1e9, 5) : "> 100",
                     found ? fmt_num(1.0 - pass.link_wait_share, 3) : "-",
                     found ? fmt_num(pass.tokens_per_s / reference, 3) : "-",
                     found && ddp_lowest > 0 ? fmt_num(ddp_lowest / pass_bits, 1) : "-",
                     found ? fmt_num(pass.bytes_per_step, 0) : "-",
                     found ? fmt_num(pass.peak_bytes_per_step, 0) : "-", std::to_string(runs)});
    }
    if (top.rank() == 0) {
      sweep.print(
          "bandwidth sweep: the lowest sync bandwidth keeping >= " + fmt_num(100 * o.sweep_target, 1) +
          "% compute utilization (" + std::to_string(o.steps) + " steps, H = " + std::to_string(H) + ")");
      std::string path = o.out;
      const auto dot = path.rfind(".csv");
      path = (dot == std::string::npos ? path : path.substr(0, dot)) + "_sweep.csv";
      sweep.write_csv(path);
      std::cout << "\nwrote " << path << "\n";
    }
  }
  if (top.rank() == 0) {
    table.print("bench_sync: " + std::to_string(o.steps) + " steps, " + std::to_string(o.model.layers) +
                " blocks, dim " + std::to_string(o.model.dim) + ", S = " + std::to_string(o.shard_size));
    table.write_csv(o.out);
    std::cout << "\nwrote " << o.out << "\n";
  }
  return 0;
} catch (const std::exception& e) {
  std::cerr << "bench_sync: " << e.what() << "\n";
  return 1;
}
