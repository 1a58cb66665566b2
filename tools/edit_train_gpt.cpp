// edit-train-gpt: GPT pretraining with Local SGD on the library's public API.
//
//   mpirun -np 2 edit-train-gpt --model small --train-data 'data/fortunes/train_*.bin'
//       --val-data 'data/fortunes/val_*.bin' --strategy edit --sync-every 16 --steps 300 --out-dir runs/demo
//
// Every option can also come from a TOML/INI file (--config FILE); the command line wins.
// Writes <out-dir>/metrics.jsonl (one line per step), <out-dir>/loss.tsv (train and val loss per
// evaluation) and checkpoints in <out-dir>/checkpoints (resumable with --resume auto).
#include <ATen/Parallel.h>
#include <c10/core/GradMode.h>
#include <torch/nn/functional/loss.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <csignal>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <limits>
#include <map>
#include <optional>
#include <set>
#include <sstream>
#include <thread>
#include <tuple>

#include "edit/comm/device_mesh.h"
#include "edit/comm/mpi_communicator.h"
#include "edit/comm/mpi_runtime.h"
#include "edit/core/check.h"
#include "edit/core/device.h"
#include "edit/core/log.h"
#include "edit/data/byte_tokenizer.h"
#include "edit/data/gpt2_tokenizer.h"
#include "edit/data/token_dataset.h"
#include "edit/data/tokenizer_record.h"
#include "edit/models/cross_entropy.h"
#include "edit/models/gpt.h"
#include "edit/shard/flat_adamw.h"
#include "edit/sync/factory.h"
#include "edit/train/checkpoint.h"
#include "edit/train/run_dir.h"
#include "edit/train/stop_signal.h"
#include "edit/train/trainer.h"
#include "model_loading.h"

namespace {

// The number `text` holds, or NaN (which no option takes) when it holds none.
double number_of(const std::string& text) {
  try {
    return std::stod(text);
  } catch (const std::exception&) {
    return NAN;
  }
}

// A number above zero (kPositive) or not below it (kNonNegative). CLI11's PositiveNumber and
// NonNegativeNumber would say "not in range 0.000000 to 179769313486231570814527...".
CLI::Validator number_check(bool zero_allowed) {
  return CLI::Validator(
      [zero_allowed](std::string& text) -> std::string {
        const double value = number_of(text);
        if (std::isnan(value)) return "Value " + text + " is not a number";
        if (value > 0 || (zero_allowed && value == 0)) return {};
        return "Value " + text + (zero_allowed ? " must not be negative" : " must be above 0");
      },
      zero_allowed ? "NONNEGATIVE" : "POSITIVE");
}
const CLI::Validator kPositive = number_check(false);
const CLI::Validator kNonNegative = number_check(true);

// A number in [lo, hi]. CLI::Range lets NaN through: every comparison with it is false.
CLI::Validator number_in(double lo, double hi) {
  std::ostringstream range;
  range << lo << " to " << hi;
  return CLI::Validator(
      [lo, hi, range = range.str()](std::string& text) -> std::string {
        const double value = number_of(text);
        if (std::isnan(value)) return "Value " + text + " is not a number";
        if (value < lo || value > hi) return "Value " + text + " is not in range " + range;
        return {};
      },
      "FLOAT in [" + range.str() + "]");
}
// Any number, infinities included, but not NaN.
const CLI::Validator kNumber = number_in(-INFINITY, INFINITY);

// Every knob. The library's option structs hold the defaults; the CLI binds to their fields and
// prints their values, so a default is stated once. The program's own choices are set in Config().
struct Config {
  Config() {
    trainer.steps = 1000;
    trainer.schedule.warmup_steps = 50;  // shrinks to --steps in a shorter run; a given value must fit
    trainer.schedule.min_lr = 1e-4;
    sync.local.sync_every = 32;
  }
  // model
  std::string model = "small";
  std::string style = "gpt2";
  int vocab_size = 0, seq_len = 0, dim = 0, heads = 0, layers = 0;  // 0: the preset's
  std::string tie_embeddings = "auto";                              // auto: tied for gpt2, untied for llama
  // data
  std::vector<std::string> train_data;
  std::vector<std::string> val_data;
  std::string data_format = "tokens";
  double val_fraction = 0.05;  // used when --val-data is not given
  std::uint64_t seed = 1337;
  int batch_size = 8;
  // the inner optimizer (--lr is also the schedule's peak), the loop, the synchronization
  edit::shard::AdamWOptions adamw;
  edit::train::TrainerOptions trainer;
  edit::sync::StrategyConfig sync;
  std::string outer = edit::sync::to_string(sync.local.outer.method);
  std::string quant = edit::sync::to_string(sync.streaming.quant.format);
  std::string fragment_layout = edit::sync::to_string(sync.streaming.layout);
  bool penalty = false, no_penalty = false;
  std::string streaming_flags_given;  // the Streaming DiLoCo options on the command line, for validate()
  std::string aedit_flags_given;
  bool warmup_given = false;
  bool outer_given = false;  // --outer, --outer-lr or --outer-momentum on the command line
  int shard_size = 1;
  // evaluation, logging, checkpoints
  int eval_every = 100, eval_batches = 8;
  std::string out_dir = "runs/train";
  int checkpoint_every = 0, keep_checkpoints = 3;
  std::string resume = "none";
  bool overwrite = false;
  int sample_tokens = 0;
  std::string log_level;
  double comm_timeout = 0;  // seconds, when --comm-timeout is given; else EDIT_COMM_TIMEOUT_S, else 600
  bool comm_timeout_given = false;
  bool val_fraction_given = false;
  std::vector<std::string> stop_signals = {"usr1", "term"};  // save a checkpoint and stop on these
  // device and precision
  std::string device = "auto";        // auto: one GPU per local rank when CUDA is there, else the CPU
  std::string dtype = "auto";         // compute dtype; auto: bf16 on CUDA, fp32 on the CPU
  std::string reduce_dtype = "fp32";  // gradient reduce-scatter over the shard group
  bool activation_checkpointing = false;  // recompute each block's forward in its backward
  std::string comm_backend = "auto";
  std::string on_nonfinite = "stop";  // a NaN/Inf loss or gradient norm: stop or skip the step
  std::string straggler;  // simulated slow ranks, e.g. "1:3x@100-300"
  std::string profile_steps;  // "FIRST:COUNT": profile those steps; empty: none
};

void add_options(CLI::App& app, Config& c) {
  app.set_config("--config", "", "read options from a TOML/INI file (command-line options win)");
  auto* model = "Model";
  app.add_option("--model", c.model, "size preset: tiny, small, 124m, 1b")
      ->group(model)
      ->capture_default_str();
  app.add_option("--style", c.style, "gpt2 or llama")->group(model)->capture_default_str();
  app.add_option("--vocab-size", c.vocab_size, "override the preset's vocabulary")
      ->group(model)
      ->check(kPositive);
  app.add_option("--seq-len", c.seq_len, "override the context length")
      ->group(model)
      ->check(kPositive);
  app.add_option("--dim", c.dim, "override the width")->group(model)->check(kPositive);
  app.add_option("--heads", c.heads, "override the attention heads")
      ->group(model)
      ->check(kPositive);
  app.add_option("--layers", c.layers, "override the number of blocks")
      ->group(model)
      ->check(kPositive);
  app.add_option("--tie-embeddings", c.tie_embeddings,
                 "head reuses the token embedding: auto (gpt2 yes, llama no), on, off")
      ->group(model)
      ->check(CLI::IsMember({"auto", "on", "off"}))
      ->capture_default_str();
  auto* data = "Data";
  app.add_option("--train-data", c.train_data, "token shards or text files (globs allowed)")
      ->group(data)
      ->required();
  app.add_option("--val-data", c.val_data, "held-out files; default: the last --val-fraction of --train-data")
      ->group(data);
  app.add_option("--data-format", c.data_format, "tokens (llm.c .bin) or text (bytes)")
      ->group(data)
      ->check(CLI::IsMember({"tokens", "text"}))
      ->capture_default_str();
  app.add_option("--val-fraction", c.val_fraction, "held-out share when --val-data is absent")
      ->group(data)
      ->check(number_in(0.0, 0.5))
      ->capture_default_str();
  app.add_option("--seed", c.seed, "data order seed (the same on every rank)")
      ->group(data)
      ->capture_default_str();
  auto* optim = "Optimization";
  app.add_option("--batch-size", c.batch_size, "sequences per rank per micro-batch")
      ->group(optim)
      ->check(kPositive)
      ->capture_default_str();
  app.add_option("--grad-accum", c.trainer.accumulation, "micro-batches per step")
      ->group(optim)
      ->check(kPositive)
      ->capture_default_str();
  app.add_option("--steps", c.trainer.steps, "inner steps")
      ->group(optim)
      ->check(kPositive)
      ->capture_default_str();
  app.add_option("--lr", c.adamw.lr, "peak learning rate (AdamW)")
      ->group(optim)
      ->check(kPositive)
      ->capture_default_str();
  app.add_option("--min-lr", c.trainer.schedule.min_lr, "learning rate at the end of the cosine")
      ->group(optim)
      ->check(kNonNegative)
      ->capture_default_str();
  app.add_option("--warmup-steps", c.trainer.schedule.warmup_steps, "linear warm-up steps")
      ->group(optim)
      ->check(kNonNegative)
      ->capture_default_str();
  app.add_option("--weight-decay", c.adamw.weight_decay, "decoupled weight decay (matrices)")
      ->group(optim)
      ->capture_default_str();
  app.add_option("--beta1", c.adamw.beta1, "AdamW beta1")->group(optim)->capture_default_str();
  app.add_option("--beta2", c.adamw.beta2, "AdamW beta2")->group(optim)->capture_default_str();
  app.add_option("--clip", c.trainer.clip_norm, "gradient-norm clip (0: off)")
      ->group(optim)
      ->check(kNonNegative)
      ->capture_default_str();
  app.add_option("--on-nonfinite", c.on_nonfinite,
                 "a NaN/Inf loss or gradient norm: stop (before the update; resume from a checkpoint) or "
                 "skip (leave that step's update out and go on)")
      ->group(optim)
      ->check(CLI::IsMember({"stop", "skip"}))
      ->capture_default_str();
  app.add_option("--max-skipped-steps", c.trainer.max_skipped_steps,
                 "--on-nonfinite skip: the steps a replica may skip in the whole run; the next non-finite one stops it")
      ->group(optim)
      ->check(kPositive)
      ->capture_default_str();
  auto* sync = "Synchronization";
  app.add_option("--strategy", c.sync.name, "edit, aedit (asynchronous EDiT), diloco, streaming, ddp or none")
      ->group(sync)
      ->check(CLI::IsMember(edit::sync::strategy_names()))
      ->capture_default_str();
  const std::string aedit =
      "A-EDiT (--strategy aedit): replicas sync on a wall clock, so each takes as many steps as it can";
  app.add_option("--sync-interval", c.sync.aedit.interval_s,
                 "T: seconds between syncs (replaces --sync-every)")
      ->group(aedit)
      ->check(kPositive)
      ->capture_default_str();
  app.add_option("--time-limit", c.sync.aedit.time_limit_s,
                 "end at the last sync within this many seconds (0: --steps alone ends it)")
      ->group(aedit)
      ->check(kNonNegative)
      ->capture_default_str();
  app.add_option("--step-share", c.sync.aedit.step_share,
                 "r: weight w = (1 - r) penalty weight + r share of the inner steps")
      ->group(aedit)
      ->check(number_in(0.0, 1.0))
      ->capture_default_str();
  const std::string streaming = "Streaming DiLoCo (--strategy streaming)";
  app.add_option("--fragments", c.sync.streaming.fragments,
                 "P: fragments of units that sync in turn, every H / P steps")
      ->group(streaming)
      ->check(kPositive)
      ->capture_default_str();
  app.add_option("--fragment-layout", c.fragment_layout,
                 "strided (unit u in fragment u mod P), sequential (runs of consecutive units), balanced "
                 "(fragments of equal bytes, as far as whole units allow) or split (equal bytes exactly: "
                 "units cut between fragments; not with --penalty)")
      ->group(streaming)
      ->check(CLI::IsMember({"strided", "sequential", "balanced", "split"}))
      ->capture_default_str();
  app.add_option("--overlap", c.sync.streaming.overlap,
                 "tau: inner steps between a fragment's exchange and its merge (0: blocking)")
      ->group(streaming)
      ->check(kNonNegative)
      ->capture_default_str();
  app.add_option("--alpha", c.sync.streaming.alpha, "merge: theta = alpha theta_local + (1 - alpha) phi_new")
      ->group(streaming)
      ->check(number_in(0.0, 1.0))
      ->capture_default_str();
  app.add_option("--quant", c.quant, "pseudo-gradient exchange: fp32, bf16, int8, int4, fp4 (e2m1), fp4e3m0")
      ->group(streaming)
      ->check(CLI::IsMember({"fp32", "bf16", "int8", "int4", "fp4", "fp4e2m1", "fp4e3m0"}))
      ->capture_default_str();
  app.add_option("--quant-block", c.sync.streaming.quant.block, "values per quantization scale")
      ->group(streaming)
      ->check(kPositive)
      ->capture_default_str();
  app.add_flag("--penalty", c.penalty,
               "the pseudo-gradient penalty for diloco and streaming as well (edit has it on)")
      ->group(streaming);
  app.add_option("--sync-every", c.sync.local.sync_every, "H: inner steps between outer syncs")
      ->group(sync)
      ->check(kPositive)
      ->capture_default_str();
  app.add_option("--outer", c.outer, "outer optimizer: nesterov, average, sign")
      ->group(sync)
      ->check(CLI::IsMember({"nesterov", "average", "sign"}))
      ->capture_default_str();
  app.add_option("--outer-lr", c.sync.local.outer.lr, "outer learning rate")
      ->group(sync)
      ->capture_default_str();
  app.add_option("--outer-momentum", c.sync.local.outer.momentum, "outer momentum")
      ->group(sync)
      ->capture_default_str();
  app.add_flag("--no-penalty", c.no_penalty, "EDiT without the pseudo-gradient penalty")->group(sync);
  app.add_option("--penalty-clip", c.sync.local.penalty.clip_norm,
                 "max norm of a unit's aggregate pseudo-gradient")
      ->group(sync)
      ->check(kNumber)
      ->capture_default_str();
  app.add_option("--penalty-z", c.sync.local.penalty.z_threshold, "anomaly z-score threshold")
      ->group(sync)
      ->capture_default_str();
  app.add_option("--penalty-warmup", c.sync.local.penalty.warmup_syncs,
                 "syncs before anomaly tests start (>= 1)")
      ->group(sync)
      ->capture_default_str();
  app.add_option("--check-replicas-every", c.sync.local.check_replicas_every,
                 "compare a checksum of the replicas' anchors every N syncs (0: only at the start)")
      ->group(sync)
      ->capture_default_str();
  app.add_option("--shard-size", c.shard_size, "S: ranks sharing one model replica (ZeRO-3)")
      ->group(sync)
      ->check(kPositive)
      ->capture_default_str();
  auto* run = "Evaluation, logging and checkpoints";
  app.add_option("--eval-every", c.eval_every, "evaluate on the val split every N steps (0: only at the end)")
      ->group(run)
      ->check(kNonNegative)
      ->capture_default_str();
  app.add_option("--eval-batches", c.eval_batches, "val batches per evaluation and rank")
      ->group(run)
      ->check(kPositive)
      ->capture_default_str();
  app.add_option("--log-every", c.trainer.log_every, "readable log line every N steps (0: none)")
      ->group(run)
      ->check(kNonNegative)
      ->capture_default_str();
  app.add_option("--out-dir", c.out_dir, "metrics, loss table and checkpoints go here")
      ->group(run)
      ->capture_default_str();
  app.add_option("--checkpoint-every", c.checkpoint_every,
                 "checkpoint every N steps, and the last step (0: only the last; -1: never, for benchmarks)")
      ->group(run)
      ->check(CLI::Range(-1, std::numeric_limits<int>::max()))
      ->capture_default_str();
  app.add_option("--keep-checkpoints", c.keep_checkpoints, "how many checkpoints to keep")
      ->group(run)
      ->check(kPositive)
      ->capture_default_str();
  app.add_option("--resume", c.resume, "auto (latest in out-dir), a checkpoint folder, or none")
      ->group(run)
      ->capture_default_str();
  app.add_flag("--overwrite", c.overwrite,
               "start over in an --out-dir that holds a previous run (deletes its checkpoints and logs)")
      ->group(run);
  app.add_option("--stop-signals", c.stop_signals,
                 "on any of these signals (usr1, usr2, term, hup, int; none: off) every rank stops at the same "
                 "step soon after, saves a checkpoint and exits with 128 + the signal's number. mpirun forwards "
                 "SIGUSR1 to every rank but kills them on its own SIGTERM; SLURM sends SIGTERM to every task")
      ->group(run)
      ->delimiter(',')
      ->check(CLI::IsMember({"usr1", "usr2", "term", "hup", "int", "none"}, CLI::ignore_case))
      ->capture_default_str();
  app.add_option("--comm-timeout", c.comm_timeout,
                 "seconds a collective may wait for a peer before the job fails "
                 "(default: EDIT_COMM_TIMEOUT_S, else 600; inf: practically never)")
      ->group(run)
      ->check(kNonNegative);
  app.add_option("--sample-tokens", c.sample_tokens,
                 "print a sample of N tokens at the end (decoded with the data's recorded tokenizer)")
      ->group(run)
      ->check(kNonNegative);
  app.add_option("--profile-steps", c.profile_steps,
                 "profile steps FIRST:COUNT (e.g. 20:3): time per kernel kind, busiest kernels and host ops "
                 "(logged; CSV and trace in --out-dir)")
      ->group(run);
  app.add_option("--log-level", c.log_level,
                 "trace, debug, info, warn, error (default: EDIT_LOG_LEVEL or info)")
      ->group(run)
      ->check(CLI::IsMember({"trace", "debug", "info", "warn", "error"}));
  const std::string device = "Device and precision";
  app.add_option("--device", c.device, "auto (a GPU per local rank when CUDA is there), cpu, cuda or cuda:N")
      ->group(device)
      ->check([](const std::string& v) {
        return v == "auto" || v == "cpu" || v == "cuda" || v.rfind("cuda:", 0) == 0
                   ? std::string()
                   : "use auto, cpu, cuda or cuda:N";
      })
      ->capture_default_str();
  app.add_option("--dtype", c.dtype,
                 "compute dtype (master weights stay fp32): auto (bf16 on CUDA), fp32, bf16")
      ->group(device)
      ->check(CLI::IsMember({"auto", "fp32", "bf16"}))
      ->capture_default_str();
  app.add_option("--reduce-dtype", c.reduce_dtype,
                 "gradient reduce-scatter dtype: fp32 or bf16 (half the bytes)")
      ->group(device)
      ->check(CLI::IsMember({"fp32", "bf16"}))
      ->capture_default_str();
  app.add_flag("--activation-checkpointing", c.activation_checkpointing,
               "keep only each block's input through the forward and recompute the block in its backward: "
               "most activation memory saved for about one more forward of compute")
      ->group(device);
  app.add_option("--comm-backend", c.comm_backend, "CUDA collectives: auto, nccl, or mpi (host staging)")
      ->group(device)
      ->check(CLI::IsMember({"auto", "nccl", "mpi"}))
      ->capture_default_str();
  app.add_option("--straggler", c.straggler,
                 "simulate slow ranks: RANK:FACTORx or RANK:+MSms, optionally "
                 "@FROM-TO steps, comma-separated (e.g. 1:3x@100-300)")
      ->group(run);
  app.add_flag("--offload-outer", c.sync.local.outer.offload,
               "keep the outer optimizer's anchors and momentum in pinned host memory")
      ->group(device);
}

edit::models::GptConfig model_config(const Config& c) {
  auto m = edit::models::GptConfig::preset(c.model);
  m.style = edit::models::parse_style(c.style);
  if (c.vocab_size) m.vocab_size = c.vocab_size;
  if (c.seq_len) m.seq_len = c.seq_len;
  if (c.dim) m.dim = c.dim;
  if (c.heads) m.heads = c.heads;
  if (c.layers) m.layers = c.layers;
  m.tie_embeddings =
      c.tie_embeddings == "on" || (c.tie_embeddings == "auto" && m.style == edit::models::GptStyle::kGpt2);
  m.validate();
  return m;
}

// --stop-signals as signal numbers (none: empty).
std::vector<int> stop_signals(const std::vector<std::string>& names) {
  const std::map<std::string, int> known = {
      {"usr1", SIGUSR1}, {"usr2", SIGUSR2}, {"term", SIGTERM}, {"hup", SIGHUP}, {"int", SIGINT}};
  std::vector<int> signals;
  for (const std::string& name : names) {
    const std::string lower = CLI::detail::to_lower(name);
    if (lower == "none") {
      EDIT_CHECK(names.size() == 1, "--stop-signals none turns the signals off, so it cannot come with others; "
                 "give either none or a list such as usr1,term");
      return {};
    }
    signals.push_back(known.at(lower));  // (CLI11 checked the names)
  }
  return signals;
}

// --profile-steps "FIRST:COUNT" -> {FIRST, COUNT}.
std::pair<std::int64_t, std::int64_t> profile_window(const std::string& text) {
  const auto colon = text.find(':');
  std::int64_t first = -1, count = 0;
  try {
    std::size_t used_first = 0, used_count = 0;
    if (colon != std::string::npos) {
      first = std::stoll(text.substr(0, colon), &used_first);
      count = std::stoll(text.substr(colon + 1), &used_count);
    }
    if (used_first != colon || used_count != text.size() - colon - 1) first = -1;
  } catch (const std::exception&) {
    first = -1;
  }
  EDIT_CHECK(first >= 0 && count >= 1, "--profile-steps ", text,
             " is not FIRST:COUNT with FIRST >= 0 and COUNT >= 1; e.g. --profile-steps 20:3 profiles steps 20, 21 "
             "and 22 (leave the first steps out: they pick kernels and warm the allocator)");
  return {first, count};
}

// Local SGD evaluates and exports the anchor, the model of the last outer sync: inner steps after
// it never reach what evaluations report and exports hold. Says so when a run has such steps.
void note_steps_after_the_last_sync(const Config& c) {
  const std::int64_t steps = c.trainer.steps, h = c.sync.local.sync_every;
  if ((c.sync.name != "edit" && c.sync.name != "diloco") || steps % h == 0) return;
  if (steps < h) {
    spdlog::warn(
        "--steps {} is below --sync-every {}: no outer sync happens, so the model that evaluations and exports "
        "use (the anchor) stays the initial one; train at least {} steps or lower --sync-every",
        steps, h, h);
    return;
  }
  // Less than one round is left out: worth knowing, not a fault (the defaults do it).
  spdlog::info(
      "--steps {} is not a multiple of --sync-every {}: the last {} inner steps come after the last outer sync "
      "and do not reach the anchor that evaluations and exports use (--steps {} or {} would end on a sync)",
      steps, h, steps % h, steps - steps % h, steps - steps % h + h);
}

// DiLoCo's outer defaults were tuned for H in the hundreds; bench_quality found them the best from
// H = 16 up, and 12-14% worse than (0.5, 0.5) at H = 8 (docs/benchmarks.md).
void note_outer_defaults_at_small_h(const Config& c) {
  const std::int64_t h = c.sync.local.sync_every;
  // (A-EDiT syncs on a clock: its H is not --sync-every.)
  const bool by_steps = edit::sync::is_local_sgd(c.sync.name) && c.sync.name != "aedit";
  if (!by_steps || c.outer_given || h >= 16) return;
  spdlog::warn(
      "--sync-every {} with the outer optimizer's defaults (Nesterov, lr {}, momentum {}; tuned for H of 16 and "
      "more): at H 8 they ended 12-14% above --outer-lr 0.5 --outer-momentum 0.5 in our measurements "
      "(docs/benchmarks.md); consider those, or a larger --sync-every",
      h, c.sync.local.outer.lr, c.sync.local.outer.momentum);
}

// The strategy's options as the command line gives them (the A-EDiT budget is set once the mesh
// is known).
edit::sync::StrategyConfig strategy_config(const Config& c) {
  edit::sync::StrategyConfig sync = c.sync;
  sync.local.outer.method = edit::sync::parse_outer_method(c.outer);
  sync.streaming.layout = edit::sync::parse_fragment_layout(c.fragment_layout);
  sync.streaming.quant.format = edit::sync::parse_quant_format(c.quant);
  if (c.penalty) sync.penalty = true;
  if (c.no_penalty) sync.penalty = false;
  return sync;
}

// Contradictions no single option's check can see, and the library's checks of the values. Every
// rank reaches the same verdict.
void validate(const Config& c) {
  const double lr = c.adamw.lr;
  const std::int64_t steps = c.trainer.steps;
  const std::string& strategy = c.sync.name;
  EDIT_CHECK(std::isfinite(lr), "--lr ", lr, " is not a finite number");
  EDIT_CHECK(c.trainer.schedule.min_lr <= lr, "--min-lr ", c.trainer.schedule.min_lr, " is above --lr ", lr,
             "; the cosine decays from --lr down to --min-lr, so --min-lr must be at most --lr");
  EDIT_CHECK(!c.warmup_given || c.trainer.schedule.warmup_steps <= steps, "--warmup-steps ",
             c.trainer.schedule.warmup_steps, " is longer than the run (--steps ", steps,
             "); shorten the warm-up or train longer");
  EDIT_CHECK(!c.no_penalty || edit::sync::default_penalty(strategy),
             "--no-penalty switches off EDiT's "
             "pseudo-gradient penalty, but --strategy is ",
             strategy, "; drop --no-penalty or use --strategy edit");
  // "--quant applies only to ... drop it" / "--quant, --alpha apply only to ... drop them".
  const auto misplaced = [&strategy](const std::string& flags, const std::string& owner,
                                     const std::string& name) {
    const bool one = flags.find(',') == std::string::npos;
    return flags + (one ? " applies" : " apply") + " only to " + owner + ", but --strategy is " + strategy +
           "; add --strategy " + name + " or drop " + (one ? "it" : "them");
  };
  EDIT_CHECK(c.streaming_flags_given.empty() || strategy == "streaming",
             misplaced(c.streaming_flags_given, "Streaming DiLoCo", "streaming"));
  EDIT_CHECK(c.aedit_flags_given.empty() || strategy == "aedit",
             misplaced(c.aedit_flags_given, "A-EDiT", "aedit"));
  EDIT_CHECK(!c.penalty || edit::sync::is_local_sgd(strategy),
             "--penalty applies to Local SGD (diloco, streaming; ",
             "edit and aedit have it on), but --strategy is ", strategy);
  EDIT_CHECK(!c.overwrite || c.resume == "none", "--overwrite (start over) and --resume ", c.resume,
             " (continue) contradict each other; pass one of them");
  if (!c.profile_steps.empty()) {
    const auto [first, count] = profile_window(c.profile_steps);
    EDIT_CHECK(strategy == "aedit" || first + count <= steps, "--profile-steps ", c.profile_steps,
               " ends after the run (--steps ", steps, "); profile earlier steps or train longer");
  }
  const double outer_lr = c.sync.local.outer.lr;
  EDIT_CHECK(std::isfinite(outer_lr) && outer_lr > 0, "--outer-lr ", outer_lr, " must be a positive number");
  EDIT_CHECK(!c.val_data.empty() || c.val_fraction > 0, "--val-fraction 0 leaves no val split of --train-data; "
             "give a share such as 0.05, or held-out files with --val-data");
  // The library's own checks of the optimizers and the strategy, here, so that a bad value is
  // refused before MPI starts (exit 2) instead of by every rank once the job runs.
  c.adamw.validate();
  edit::sync::StrategyConfig sync = strategy_config(c);
  sync.aedit.budget_steps = steps;  // (steps x replicas once the job runs: as positive as this)
  sync.validate(model_config(c).num_units());
}

// Refuses to resume a checkpoint into a model that would load its weights with the same shapes
// but another meaning (other heads), checked against the config.json of the run that saved it:
// with --resume auto this run's own (rewritten only after the load), otherwise the one beside the
// checkpoint's checkpoints/ folder. A run without one (or with one damaged) is not checked.
void check_resumed_model(const edit::models::GptConfig& gpt, const std::string& resume,
                         const edit::train::RunDir& run) {
  namespace fs = std::filesystem;
  std::string saved_run = run.path();
  if (resume != "auto") {
    fs::path folder = fs::path(resume).lexically_normal();
    if (!folder.has_filename()) folder = folder.parent_path();  // "step_8/"
    saved_run = folder.parent_path().parent_path().string();
  }
  const std::string config = edit::train::RunDir(saved_run).config_path();
  std::error_code error;
  if (!fs::is_regular_file(config, error)) return;
  edit::models::GptConfig saved;
  try {
    saved = edit::tools::read_run_config(saved_run);
  } catch (const std::exception& e) {
    spdlog::warn("the model configuration of the checkpoint's run is unreadable ({}); the model is not "
                 "checked against it",
                 e.what());
    return;
  }
  const std::string differences = gpt.resume_differences(saved);
  EDIT_CHECK(differences.empty(), "the checkpoint was saved by another model (", differences, ", per ",
             config, "); resume with the same model options (--model, --style, --vocab-size, --seq-len, "
             "--dim, --heads, --layers, --tie-embeddings), or train the new model in another --out-dir");
}

// A rough lower bound of one step's activation memory per rank: the logits (B, T, V) with their
// softmax and gradient, and one block's attention scores (B, heads, T, T) with their gradient.
// A configuration far beyond the machine is an error that names the options, not an allocator
// trace for hundreds of GB.
void check_memory(const edit::models::GptConfig& gpt, const Config& c) {
  const double B = c.batch_size, T = gpt.seq_len;
  const double bytes = 4.0 * B * T * (3.0 * gpt.vocab_size + 2.0 * gpt.heads * T);
  const double ram =
      static_cast<double>(::sysconf(_SC_PHYS_PAGES)) * static_cast<double>(::sysconf(_SC_PAGE_SIZE));
  EDIT_CHECK(ram <= 0 || bytes < ram, "--batch-size ", c.batch_size, " x --seq-len ", gpt.seq_len,
             " (vocabulary ", gpt.vocab_size, ", ", gpt.heads, " heads) needs at least ",
             std::ceil(bytes / 1e9),
             " GB per rank for logits and attention scores, more than this machine's ", std::floor(ram / 1e9),
             " GB; lower --seq-len or --batch-size");
}

// CLI11 reads --config files leniently: unknown keys, keys under a [table], repeated keys and
// garbage are ignored, so a user's file can be dropped whole without a word. This reads the file
// first, strictly: one `key = value` per line (# starts a comment), keys are long option names,
// each at most once. Every error names the file and the line.
void check_config_file(const CLI::App& app, const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  EDIT_CHECK(in.good(), "cannot read the --config file ", path, "; check the path");
  std::set<std::string> known;
  for (const CLI::Option* option : app.get_options()) {
    for (const auto& name : option->get_lnames()) known.insert(name);
  }
  known.erase("config");
  known.erase("help");
  std::map<std::string, int> seen;  // key -> line
  int number = 0;
  for (std::string line; std::getline(in, line);) {
    ++number;
    const std::string where = path + ":" + std::to_string(number) + ": ";
    for (char ch : line) {
      const auto byte = static_cast<unsigned char>(ch);
      EDIT_CHECK(byte >= 0x20 || ch == '\t' || ch == '\r', where, "byte 0x", std::hex, static_cast<int>(byte),
                 " is not text; is this the right file?");
    }
    // Strip a comment (a # outside quotes), then blanks.
    bool quoted = false;
    for (size_t i = 0; i < line.size(); ++i) {
      if (line[i] == '"') quoted = !quoted;
      if (line[i] == '#' && !quoted) {
        line.erase(i);
        break;
      }
    }
    const auto trim = [](std::string text) {
      const auto first = text.find_first_not_of(" \t\r");
      if (first == std::string::npos) return std::string();
      return text.substr(first, text.find_last_not_of(" \t\r") - first + 1);
    };
    line = trim(line);
    if (line.empty()) continue;
    EDIT_CHECK(line.front() != '[', where, "sections like ", line,
               " are not read; put every option at the top level of the file");
    const auto equals = line.find('=');
    EDIT_CHECK(equals != std::string::npos, where, "expected 'option = value', found '", line, "'");
    const std::string key = trim(line.substr(0, equals));
    const std::string value = trim(line.substr(equals + 1));
    EDIT_CHECK(known.count(key), where, "unknown option '", key,
               "'; use the long names of edit-train-gpt --help ", "without the dashes, e.g. sync-every = 32");
    EDIT_CHECK(!value.empty(), where, "'", key, "' has no value");
    const auto [previous, inserted] = seen.emplace(key, number);
    EDIT_CHECK(inserted, where, "'", key, "' is set twice (first on line ", previous->second, "); keep one");
  }
}

// The mean over all ranks; with `finite_only`, over the ranks whose value is finite (the loss of a
// step skipped for a NaN is not), NaN if none is.
double world_mean(edit::comm::DeviceMesh& mesh, double value, bool finite_only = false) {
  double total = 0.0;
  int counted = 0;
  for (double v : mesh.world().all_gather_values({value})) {
    if (finite_only && !std::isfinite(v)) continue;
    total += v;
    ++counted;
  }
  return counted > 0 ? total / counted : NAN;
}

// Where this process sits in the job, as its launcher says (before MPI starts; rank -1 alone).
const edit::comm::LaunchInfo& launch() {
  static const edit::comm::LaunchInfo info = [] {
    try {
      return edit::comm::detect_launch();
    } catch (const std::exception&) {
      return edit::comm::LaunchInfo{};  // (an inconsistent environment: DeviceMesh says so)
    }
  }();
  return info;
}

// An error on stderr in one write: ranks that fail at once would otherwise interleave their
// messages mid-line. Labelled with the rank in a job of several.
void say_error(const std::string& message, bool label_rank) {
  std::string text = "edit-train-gpt";
  if (label_rank && launch().world_size > 1) {
    text += " (rank " + std::to_string(launch().rank) + " of " + std::to_string(launch().world_size) + ")";
  }
  text += ": " + message + "\n";
  for (std::size_t done = 0; done < text.size();) {
    const ssize_t n = ::write(STDERR_FILENO, text.data() + done, text.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return;
    done += static_cast<std::size_t>(n);
  }
}

// A fault in the command line or the options, which every rank finds alike: rank 0 says it once.
// The other ranks give mpirun, which ends the job when rank 0 exits with an error, time to do so,
// and speak only if it did not (a launcher that lets ranks run on, or a --config file that rank 0
// could read and this one cannot).
int usage_error(const std::string& message, int exit_code) {
  if (launch().rank > 0) std::this_thread::sleep_for(std::chrono::seconds(3));
  say_error(message, /*label_rank=*/launch().rank > 0);
  return exit_code;
}

}  // namespace

int main(int argc, char** argv) {
  Config c;
  CLI::App app{"edit-train-gpt: GPT pretraining with DiLoCo / EDiT / DDP on MPI ranks"};
  add_options(app, c);
  std::vector<int> signals;
  edit::models::GptConfig gpt;
  // Built inside the checks: its defaults read EDIT_COMM_TIMEOUT_S, whose bad value is a usage error.
  std::optional<edit::comm::MeshOptions> mesh_options;
  // What is wrong with the command line, every rank finds alike before MPI starts.
  try {
    // The --config file is checked before CLI11 reads it (CLI11 would drop what it does not know).
    for (int i = 1; i < argc; ++i) {
      const std::string arg = argv[i];
      if (arg == "--config" && i + 1 < argc) check_config_file(app, argv[i + 1]);
      if (arg.rfind("--config=", 0) == 0) check_config_file(app, arg.substr(9));
    }
    try {
      app.parse(argc, argv);
    } catch (const CLI::ParseError& e) {
      // --help, or CLI11's own verdict on a flag: printed as CLI11 words it, by rank 0.
      std::ostringstream out, err;
      const int code = app.exit(e, out, err);
      if (code == 0) {
        if (launch().rank <= 0) std::cout << out.str() << std::flush;
        return 0;
      }
      std::string text = err.str();
      while (!text.empty() && text.back() == '\n') text.pop_back();
      return usage_error(text, code);
    }
    c.warmup_given = app.count("--warmup-steps") > 0;
    c.comm_timeout_given = app.count("--comm-timeout") > 0;
    c.val_fraction_given = app.count("--val-fraction") > 0;
    c.outer_given = app.count("--outer") + app.count("--outer-lr") + app.count("--outer-momentum") > 0;
    // The flags of a strategy's own group that the command line set, as "--a, --b".
    const auto given = [&app](std::initializer_list<const char*> flags) {
      std::string out;
      for (const char* flag : flags) {
        if (app.count(flag) > 0) out += (out.empty() ? "" : ", ") + std::string(flag);
      }
      return out;
    };
    c.streaming_flags_given =
        given({"--fragments", "--fragment-layout", "--overlap", "--alpha", "--quant", "--quant-block"});
    c.aedit_flags_given = given({"--sync-interval", "--time-limit", "--step-share"});
    EDIT_CHECK(c.sync.name != "aedit" || app.count("--sync-every") == 0,
               "--sync-every counts steps, but A-EDiT syncs on a wall clock; drop --sync-every and give "
               "--sync-interval SECONDS");
    validate(c);
    gpt = model_config(c);
    signals = stop_signals(c.stop_signals);
    // Before any thread starts (CUDA's, when the device is resolved), so that none but
    // StopOnSignal's own ever takes these signals.
    if (!signals.empty()) edit::train::StopOnSignal::block(signals);
    mesh_options.emplace();
    mesh_options->shard_size = c.shard_size;
    mesh_options->backend = edit::comm::parse_comm_backend(c.comm_backend);
    if (c.comm_timeout_given) {
      mesh_options->comm.timeout = edit::comm::CommOptions::timeout_from_seconds(c.comm_timeout, "--comm-timeout");
    }
    mesh_options->device = edit::resolve_device(c.device, launch().local_rank);
    if (!mesh_options->device.is_cuda()) check_memory(gpt, c);
    // Where the launcher tells the world's size already: the mesh's shape and the stragglers' ranks.
    const int world_size = launch().world_size;
    const auto stragglers = edit::train::StragglerPlan::parse(c.straggler);
    if (world_size > 0) {
      edit::comm::MeshLayout::make(world_size, c.shard_size, 0);
      stragglers.check_ranks(world_size);
    }
  } catch (const std::exception& e) {
    return usage_error(e.what(), 2);
  }
  try {
    at::set_num_threads(1);
    edit::comm::DeviceMesh mesh = edit::comm::DeviceMesh::from_env(*mesh_options);
    edit::log::init(mesh.rank(), c.log_level);
    if (c.val_fraction_given && !c.val_data.empty() && mesh.rank() == 0) {
      spdlog::warn("--val-fraction is not used: --val-data gives the held-out files");
    }
    const at::Device device = mesh.device();
    const edit::train::RunDir run(c.out_dir);
    run.prepare(mesh, c.resume != "none", c.overwrite);

    // What tokenized the data (text is read as bytes; shards of edit-prepare-text carry a record),
    // checked against the model before the shards' ids are.
    std::optional<edit::data::TokenizerRecord> tokenizer;
    if (c.data_format == "text") {
      tokenizer = edit::data::TokenizerRecord{"byte", 256, ""};
    } else {
      tokenizer = edit::data::common_tokenizer_record(edit::data::expand_data_files(c.train_data));
    }
    // (Bytes are not checked here: text that uses fewer ids fits a smaller vocabulary, and every
    // id is checked against it as the shards are read.)
    EDIT_CHECK(!tokenizer || tokenizer->kind == "byte" || tokenizer->vocab_size <= gpt.vocab_size,
               "the training data was tokenized by ", tokenizer->kind, " (", tokenizer->vocab_size,
               " ids, recorded in ", tokenizer->folder, "), more than the model's vocabulary of ",
               gpt.vocab_size, "; pass --vocab-size ", (tokenizer->vocab_size + 63) / 64 * 64,
               " (a multiple of 64 at least as large)");

    // Data: each rank its own disjoint stream; val from --val-data or the tail of --train-data.
    edit::data::TokenDatasetOptions data_options;
    data_options.format = c.data_format;
    data_options.seq_len = gpt.seq_len;
    data_options.vocab_size = gpt.vocab_size;
    data_options.seed = c.seed;
    data_options.rank = mesh.rank();
    data_options.world_size = mesh.world_size();
    auto val_options = data_options;
    if (c.val_data.empty()) {
      data_options.split = "train";
      val_options.split = "val";
      data_options.val_fraction = val_options.val_fraction = c.val_fraction;
    }
    edit::data::TokenDataset train(c.train_data, data_options);
    edit::data::TokenDataset val(c.val_data.empty() ? c.train_data : c.val_data, val_options);
    {
      // Past the batches the val split holds, an evaluation reads the same windows again: their
      // mean weights some twice and costs time for nothing. The fewest any rank holds (sharded
      // forwards are collective, so every rank evaluates as many batches).
      const auto held = mesh.world().all_gather_values({static_cast<double>(val.windows_per_epoch() / c.batch_size)});
      const auto distinct = static_cast<int>(std::max(1.0, *std::min_element(held.begin(), held.end())));
      if (c.eval_batches > distinct) {
        if (mesh.rank() == 0) {
          spdlog::warn("--eval-batches {} is more than the val split holds ({} batches of {} sequences per rank); "
                       "evaluating on those {}",
                       c.eval_batches, distinct, c.batch_size, distinct);
        }
        c.eval_batches = distinct;
      }
    }

    at::manual_seed(static_cast<std::uint64_t>(c.seed));
    auto module =
        std::make_shared<edit::models::GptImpl>(gpt);  // initialised on the CPU: any device starts alike
    module->to(device);
    edit::shard::ShardOptions shard_options;
    shard_options.compute_dtype = edit::resolve_dtype(c.dtype, device);
    shard_options.reduce_dtype = edit::resolve_dtype(c.reduce_dtype, device);
    shard_options.activation_checkpointing = c.activation_checkpointing;
    edit::shard::ShardedModel model(module, mesh.shard_ptr(), shard_options);
    edit::shard::FlatAdamW adamw(model, c.adamw);
    if (mesh.rank() == 0) {
      const at::Tensor logits = at::empty({0}, at::TensorOptions(device).dtype(shard_options.compute_dtype));
      spdlog::info("device {} ({} ranks), compute {}, gradient reduce {}, collectives {}{}, cross-entropy {}", device.str(),
                   mesh.world_size(), c10::toString(shard_options.compute_dtype),
                   c10::toString(shard_options.reduce_dtype), edit::comm::to_string(mesh.backend()),
                   adamw.fused() ? ", fused AdamW" : "", edit::models::cross_entropy_path(logits));
    }

    edit::sync::StrategyConfig sync = strategy_config(c);
    // --steps is per replica on average: the replicas together take steps x replicas.
    sync.aedit.budget_steps = c.trainer.steps * mesh.num_replicas();
    const auto strategy = edit::sync::make_strategy(sync, model, mesh.sync_ptr());
    // --strategy aedit: its rounds decide evaluations, checkpoints and the end.
    auto* aedit = dynamic_cast<edit::sync::AEDiT*>(strategy.get());

    edit::train::TrainerOptions options = c.trainer;
    const std::int64_t steps = c.trainer.steps;
    options.schedule = {c.adamw.lr, std::min(options.schedule.warmup_steps, steps),
                        std::max<std::int64_t>(1, steps), std::min(options.schedule.min_lr, c.adamw.lr)};
    if (aedit != nullptr && c.sync.aedit.time_limit_s > 0 && options.schedule.min_lr < c.adamw.lr &&
        mesh.rank() == 0) {
      spdlog::warn(
          "--time-limit ends this run on the clock, but the learning rate decays over --steps {}: "
          "if the replicas take far fewer steps in {} s, it barely decays. Set --steps to about the "
          "steps a replica takes in that time (the log shows the pace), or --min-lr {} for a "
          "constant rate",
          steps, c.sync.aedit.time_limit_s, c.adamw.lr);
    }
    if (mesh.rank() == 0) {
      note_steps_after_the_last_sync(c);
      note_outer_defaults_at_small_h(c);
    }
    options.metrics_path = run.metrics_path();
    options.stragglers = edit::train::StragglerPlan::parse(c.straggler);
    options.on_nonfinite = c.on_nonfinite == "skip" ? edit::train::NonFinitePolicy::kSkip
                                                    : edit::train::NonFinitePolicy::kStop;
    if (!c.profile_steps.empty()) {
      std::tie(options.profile_first, options.profile_steps) = profile_window(c.profile_steps);
      options.profile_dir = run.path();
    }
    edit::train::Trainer trainer(mesh, model, adamw, *strategy, options);

    // Every stateful component saves and loads itself; a pending EDiT sync is saved as pending.
    edit::train::Checkpointer checkpointer(mesh, run.checkpoints(), c.keep_checkpoints);
    edit::train::CpuRngState rng;
    checkpointer.track("model", model);
    checkpointer.track("inner", adamw);
    checkpointer.track("strategy", *strategy);
    checkpointer.track("data", train);
    checkpointer.track("rng", rng);
    checkpointer.track("trainer", trainer);
    // One scan of the checkpoints folder: whether --resume auto finds anything to load.
    const bool nothing_to_resume = c.resume == "auto" && !checkpointer.latest();
    if (nothing_to_resume && mesh.rank() == 0) {
      // A requeued job that died before its first save: it starts over, and keeps the earlier logs.
      std::string moved;
      for (const auto& name : run.set_aside_logs()) moved += (moved.empty() ? "" : ", ") + name;
      // A warning when an earlier attempt trained without saving: its steps are lost.
      spdlog::log(moved.empty() ? spdlog::level::info : spdlog::level::warn,
                  "--resume auto: no checkpoint under {} yet; starting from step 0{}", run.checkpoints(),
                  moved.empty() ? std::string() : " (the earlier attempt's logs are kept as " + moved + ")");
    }
    if (c.resume != "none" && !nothing_to_resume) {
      check_resumed_model(gpt, c.resume, run);
      const auto step = checkpointer.load(c.resume);
      EDIT_CHECK(step <= steps, "the checkpoint is at step ", step, ", past --steps ", steps,
                 "; pass --steps above ", step, " to train on from it");
      if (mesh.rank() == 0) spdlog::info("resumed from step {} ({})", step, c.resume);
    }
    // The model's configuration, for edit-export and edit-generate: written once every option and
    // the checkpoint have been checked, and atomically, so a refused start never breaks a run.
    // With it, what tokenized the training data, when its folder says (edit-prepare-text records it).
    if (mesh.rank() == 0) {
      run.write_config(gpt.to_json());
      if (tokenizer) edit::data::copy_tokenizer_record(*tokenizer, run.path());
    }

    // To a GPU the batch goes from pinned memory, queued: a copy from pageable memory would make
    // the host wait for all the work queued before it, once per micro-batch.
    const auto upload = [&](const at::Tensor& tokens) {
      if (!device.is_cuda()) return tokens.to(device);
      return tokens.pin_memory().to(at::TensorOptions().device(device), /*non_blocking=*/true);
    };
    const auto next_batch = [&](std::int64_t, int) {
      auto b = train.next_batch(c.batch_size, gpt.seq_len);
      return edit::train::Batch{upload(b.inputs), upload(b.targets)};
    };
    const auto loss_of = [&](const edit::train::Batch& b) { return module->loss(b.inputs, b.targets); };
    // Evaluates the model the replicas agree on: with Local SGD the anchor, i.e. the model of the
    // last outer sync (a pending EDiT sync is completed first); with ddp the live model; with none
    // each rank's own model. The val loss is the mean over all ranks' val batches.
    const auto evaluate = [&] {
      double loss = 0.0;
      strategy->with_global_model([&] {
        c10::NoGradGuard no_grad;
        val.set_cursor({});  // the same val batches every time
        for (int i = 0; i < c.eval_batches; ++i) {
          const auto b = val.next_batch(c.batch_size, gpt.seq_len);
          loss += module->loss(b.inputs.to(device), b.targets.to(device)).item<double>() / c.eval_batches;
        }
      });
      return world_mean(mesh, loss);
    };
    // Progress in steps per replica. With A-EDiT the replicas are at different steps: progress is
    // their mean as of the last round, and evaluations and checkpoints happen at rounds only (the
    // one point all replicas share), the first round at or past each multiple of N steps.
    const auto progress = [&] {
      return aedit ? aedit->total_steps() / mesh.num_replicas() : trainer.current_step();
    };
    std::optional<edit::train::LossTable> loss_table;
    if (mesh.rank() == 0) loss_table.emplace(run.loss_table_path(), progress());
    if (progress() == 0) {  // the starting point of the curves (no train loss yet)
      const double val_loss = evaluate();
      if (loss_table) loss_table->add(0, 0, NAN, val_loss);
    }
    const double tokens_per_step =
        double(c.batch_size) * gpt.seq_len * c.trainer.accumulation * mesh.world_size();
    const auto crossed = [](std::int64_t before, std::int64_t now, int every) {
      return every > 0 && now / every > before / every;
    };
    // A signal (a scheduler's warning before it kills the job) stops every rank at one step, with a
    // checkpoint. The votes go over a communicator of their own, so they never queue behind the
    // model's collectives: with A-EDiT at its rounds (where all replicas meet anyway), else at
    // every step, read two steps later so that no rank waits for them unless a peer is 2 steps behind.
    std::optional<edit::train::StopOnSignal> stop;
    if (!signals.empty()) {
      edit::comm::CommOptions vote_options = mesh_options->comm;
      vote_options.poll_max = std::chrono::milliseconds(1);  // a vote is never urgent
      stop.emplace(edit::comm::MpiCommunicator::world(edit::comm::MpiRuntime::acquire(), vote_options, "stop_vote"),
                   signals, aedit ? 0 : 2);
    }
    std::int64_t saved_at = -1;
    std::string saved_to;
    while (!trainer.finished()) {
      const std::int64_t before = progress();
      const auto m = trainer.step(next_batch, loss_of);
      if (!strategy->replicas_meet()) continue;
      const std::int64_t done = progress();
      const bool eval_now = crossed(before, done, c.eval_every) || trainer.finished();
      if (eval_now) {
        const double train_loss = world_mean(mesh, m.loss, /*finite_only=*/true);  // this step's, all ranks
        const double val_loss = evaluate();
        if (mesh.rank() == 0) {
          spdlog::info("eval at step {}: val loss {:.4f} (train {:.4f})", done, val_loss, train_loss);
          loss_table->add(done, static_cast<std::int64_t>(done * tokens_per_step), train_loss, val_loss);
        }
      }
      // The run's product, its last step, is saved unless asked not to (-1): a run is not lost for a
      // missing flag.
      if (crossed(before, done, c.checkpoint_every) || (trainer.finished() && c.checkpoint_every >= 0)) {
        saved_to = checkpointer.save(done);
        saved_at = done;
        if (mesh.rank() == 0) spdlog::info("checkpoint: {}", saved_to);
      }
      if (const int signal = stop ? stop->poll() : 0; signal != 0) {
        if (saved_at != done) saved_to = checkpointer.save(done);
        if (mesh.rank() == 0) {
          spdlog::warn("{} reached {} of {} rank(s): every rank stopped at step {} of {}, with a checkpoint in {}. "
                       "To go on, run the same command with --resume auto",
                       edit::train::StopOnSignal::name(signal), stop->ranks_that_saw(), mesh.world_size(), done,
                       steps, saved_to);
        }
        strategy->finish();
        return 128 + signal;
      }
    }
    // A signal from the last polls on is not voted on any more: training is complete and saved as
    // asked, and what is left (a sample) is skipped. Signals after this one act as they would
    // without edit-train-gpt's handling (SIGTERM and SIGUSR1 end the process).
    int late_signal = 0;
    if (stop) {
      stop->finish();
      late_signal = stop->seen_here();
      stop.reset();
      edit::train::StopOnSignal::unblock(signals);
    }
    strategy->finish();
    if (late_signal != 0) {
      spdlog::warn("{} came as training ended: the run is complete; nothing more is done",
                   edit::train::StopOnSignal::name(late_signal));
      return 0;
    }

    if (c.sample_tokens > 0) {
      // Decoded with the data's tokenizer: GPT-2's when recorded, else bytes (a model of more than
      // 256 ids without a record has no known decoding, so it is not sampled).
      std::optional<edit::data::Gpt2Tokenizer> gpt2;
      if (tokenizer && tokenizer->kind == "gpt2")
        gpt2.emplace(edit::data::Gpt2Tokenizer::from_dir(tokenizer->folder));
      const std::int64_t known_ids = gpt2 ? gpt2->vocab_size() : 256;
      if (!gpt2 && gpt.vocab_size > 256) {
        if (mesh.rank() == 0)
          spdlog::warn("no sample: the data's tokenizer is not recorded beside its shards");
        return 0;
      }
      // Every rank samples the same way (same seed), as sharded forwards are collective.
      c10::NoGradGuard no_grad;
      at::manual_seed(7);
      std::vector<std::int64_t> prompt = {gpt2 ? std::int64_t{gpt2->encode("\n").front()}
                                               : std::int64_t{'\n'}};
      at::Tensor tokens = at::tensor(prompt, at::kLong).unsqueeze(0);
      // From the model the replicas agree on (with Local SGD the anchor, which the evaluations and
      // exports use too), not from this rank's own since the last sync.
      strategy->with_global_model([&] {
        for (int i = 0; i < c.sample_tokens; ++i) {
          const at::Tensor window = tokens.narrow(1, std::max<std::int64_t>(0, tokens.size(1) - gpt.seq_len),
                                                  std::min<std::int64_t>(tokens.size(1), gpt.seq_len));
          const at::Tensor logits = module->forward(window.to(device)).select(1, -1).to(at::kCPU, at::kFloat);
          // Temperature 0.8, among the ids the tokenizer can decode (a padded vocabulary has more).
          const at::Tensor probs =
              at::softmax(logits.narrow(-1, 0, std::min<std::int64_t>(known_ids, gpt.vocab_size)) / 0.8, -1);
          tokens = at::cat({tokens, at::multinomial(probs, 1)}, 1);
        }
      });
      if (mesh.rank() == 0) {
        std::vector<std::uint32_t> ids;
        for (std::int64_t i = 0; i < tokens.size(1); ++i)
          ids.push_back(static_cast<std::uint32_t>(tokens[0][i].item<std::int64_t>()));
        std::string text;
        if (gpt2) {
          text = gpt2->decode(ids);
        } else {
          text = edit::data::ByteTokenizer().decode(std::vector<std::uint16_t>(ids.begin(), ids.end()));
        }
        std::cout << "----- sample -----" << text << "\n------------------" << std::endl;
      }
    }
    return 0;
  } catch (const std::exception& e) {
    say_error(e.what(), /*label_rank=*/true);
    // Peers may be inside a collective with us: end the whole job rather than leave them waiting.
    edit::comm::MpiRuntime::abort_job(1);
  }
}
