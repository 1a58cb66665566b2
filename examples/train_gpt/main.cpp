// edit-train-gpt: GPT pretraining with Local SGD on the library's public API.
//
//   mpirun -np 2 edit-train-gpt --model small --train-data 'data/fortunes/train_*.bin'
//       --val-data 'data/fortunes/val_*.bin' --strategy edit --sync-every 16 --steps 300 --out-dir runs/demo
//
// Every option can also come from a TOML/INI file (--config FILE); the command line wins.
// Writes <out-dir>/metrics.jsonl (one line per step), <out-dir>/loss.tsv (train and val loss per
// evaluation) and checkpoints in <out-dir>/checkpoints (resumable with --resume auto).
#include <ATen/Parallel.h>
#include <torch/nn/functional/loss.h>

#include <CLI/CLI.hpp>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <iostream>

#include "edit/comm/device_mesh.h"
#include "edit/comm/mpi_runtime.h"
#include "edit/core/check.h"
#include "edit/core/log.h"
#include "edit/data/byte_tokenizer.h"
#include "edit/data/token_dataset.h"
#include "edit/models/gpt.h"
#include "edit/shard/flat_adamw.h"
#include "edit/sync/local_sgd.h"
#include "edit/train/checkpoint.h"
#include "edit/train/trainer.h"

namespace {

namespace fs = std::filesystem;

// Every knob, with its default; the CLI below is built from these fields.
struct Config {
  // model
  std::string model = "small";
  std::string style = "gpt2";
  int vocab_size = 0, seq_len = 0, dim = 0, heads = 0, layers = 0;  // 0: the preset's
  std::string tie_embeddings = "auto";  // auto: tied for gpt2, untied for llama
  // data
  std::vector<std::string> train_data;
  std::vector<std::string> val_data;
  std::string data_format = "tokens";
  double val_fraction = 0.05;  // used when --val-data is not given
  std::uint64_t seed = 1337;
  // batch and optimizer
  int batch_size = 8;
  int grad_accum = 1;
  std::int64_t steps = 1000;
  double lr = 1e-3, min_lr = 1e-4;
  std::int64_t warmup_steps = 50;
  double weight_decay = 0.1, beta1 = 0.9, beta2 = 0.95, clip = 1.0;
  // strategy and mesh
  std::string strategy = "edit";
  int sync_every = 32;
  std::string outer = "nesterov";
  double outer_lr = 0.7, outer_momentum = 0.9;
  bool no_penalty = false;
  double penalty_clip = 10.0, penalty_z = 3.0;
  int penalty_warmup = 3;
  int check_replicas_every = 0;
  int shard_size = 1;
  // evaluation, logging, checkpoints
  int eval_every = 100, eval_batches = 8, log_every = 10;
  std::string out_dir = "runs/train";
  int checkpoint_every = 0, keep_checkpoints = 3;
  std::string resume = "none";
  int sample_tokens = 0;
  std::string log_level;
};

void add_options(CLI::App& app, Config& c) {
  app.set_config("--config", "", "read options from a TOML/INI file (command-line options win)");
  auto* model = "Model";
  app.add_option("--model", c.model, "size preset: tiny, small, 124m, 1b")->group(model)->capture_default_str();
  app.add_option("--style", c.style, "gpt2 or llama")->group(model)->capture_default_str();
  app.add_option("--vocab-size", c.vocab_size, "override the preset's vocabulary")->group(model);
  app.add_option("--seq-len", c.seq_len, "override the context length")->group(model);
  app.add_option("--dim", c.dim, "override the width")->group(model);
  app.add_option("--heads", c.heads, "override the attention heads")->group(model);
  app.add_option("--layers", c.layers, "override the number of blocks")->group(model);
  app.add_option("--tie-embeddings", c.tie_embeddings, "head reuses the token embedding: auto (gpt2 yes, llama no), on, off")
      ->group(model)->check(CLI::IsMember({"auto", "on", "off"}))->capture_default_str();
  auto* data = "Data";
  app.add_option("--train-data", c.train_data, "token shards or text files (globs allowed)")->group(data)->required();
  app.add_option("--val-data", c.val_data, "held-out files; default: the last --val-fraction of --train-data")->group(data);
  app.add_option("--data-format", c.data_format, "tokens (llm.c .bin) or text (bytes)")->group(data)->capture_default_str();
  app.add_option("--val-fraction", c.val_fraction, "held-out share when --val-data is absent")->group(data)->capture_default_str();
  app.add_option("--seed", c.seed, "data order seed (the same on every rank)")->group(data)->capture_default_str();
  auto* optim = "Optimization";
  app.add_option("--batch-size", c.batch_size, "sequences per rank per micro-batch")->group(optim)->capture_default_str();
  app.add_option("--grad-accum", c.grad_accum, "micro-batches per step")->group(optim)->capture_default_str();
  app.add_option("--steps", c.steps, "inner steps")->group(optim)->capture_default_str();
  app.add_option("--lr", c.lr, "peak learning rate (AdamW)")->group(optim)->capture_default_str();
  app.add_option("--min-lr", c.min_lr, "learning rate at the end of the cosine")->group(optim)->capture_default_str();
  app.add_option("--warmup-steps", c.warmup_steps, "linear warm-up steps")->group(optim)->capture_default_str();
  app.add_option("--weight-decay", c.weight_decay, "decoupled weight decay (matrices)")->group(optim)->capture_default_str();
  app.add_option("--beta1", c.beta1, "AdamW beta1")->group(optim)->capture_default_str();
  app.add_option("--beta2", c.beta2, "AdamW beta2")->group(optim)->capture_default_str();
  app.add_option("--clip", c.clip, "gradient-norm clip (0: off)")->group(optim)->capture_default_str();
  auto* sync = "Synchronization";
  app.add_option("--strategy", c.strategy, "edit, diloco, ddp or none")->group(sync)
      ->check(CLI::IsMember({"edit", "diloco", "ddp", "none"}))->capture_default_str();
  app.add_option("--sync-every", c.sync_every, "H: inner steps between outer syncs")->group(sync)->capture_default_str();
  app.add_option("--outer", c.outer, "outer optimizer: nesterov, average, sign")->group(sync)->capture_default_str();
  app.add_option("--outer-lr", c.outer_lr, "outer learning rate")->group(sync)->capture_default_str();
  app.add_option("--outer-momentum", c.outer_momentum, "outer momentum")->group(sync)->capture_default_str();
  app.add_flag("--no-penalty", c.no_penalty, "EDiT without the pseudo-gradient penalty")->group(sync);
  app.add_option("--penalty-clip", c.penalty_clip, "max norm of a unit's aggregate pseudo-gradient")->group(sync)->capture_default_str();
  app.add_option("--penalty-z", c.penalty_z, "anomaly z-score threshold")->group(sync)->capture_default_str();
  app.add_option("--penalty-warmup", c.penalty_warmup, "syncs before anomaly tests start (>= 1)")->group(sync)->capture_default_str();
  app.add_option("--check-replicas-every", c.check_replicas_every,
                 "compare a checksum of the replicas' anchors every N syncs (0: only at the start)")->group(sync)->capture_default_str();
  app.add_option("--shard-size", c.shard_size, "S: ranks sharing one model replica (ZeRO-3)")->group(sync)->capture_default_str();
  auto* run = "Evaluation, logging and checkpoints";
  app.add_option("--eval-every", c.eval_every, "evaluate on the val split every N steps (0: only at the end)")->group(run)->capture_default_str();
  app.add_option("--eval-batches", c.eval_batches, "val batches per evaluation and rank")->group(run)->capture_default_str();
  app.add_option("--log-every", c.log_every, "readable log line every N steps")->group(run)->capture_default_str();
  app.add_option("--out-dir", c.out_dir, "metrics, loss table and checkpoints go here")->group(run)->capture_default_str();
  app.add_option("--checkpoint-every", c.checkpoint_every, "checkpoint every N steps (0: never)")->group(run)->capture_default_str();
  app.add_option("--keep-checkpoints", c.keep_checkpoints, "how many checkpoints to keep")->group(run)->capture_default_str();
  app.add_option("--resume", c.resume, "auto (latest in out-dir), a checkpoint folder, or none")->group(run)->capture_default_str();
  app.add_option("--sample-tokens", c.sample_tokens, "print a sample of N tokens at the end (byte tokenizer)")->group(run);
  app.add_option("--log-level", c.log_level, "trace, debug, info, warn, error (default: EDIT_LOG_LEVEL or info)")->group(run);
}

edit::models::GptConfig model_config(const Config& c) {
  auto m = edit::models::GptConfig::preset(c.model);
  m.style = edit::models::parse_style(c.style);
  if (c.vocab_size) m.vocab_size = c.vocab_size;
  if (c.seq_len) m.seq_len = c.seq_len;
  if (c.dim) m.dim = c.dim;
  if (c.heads) m.heads = c.heads;
  if (c.layers) m.layers = c.layers;
  m.tie_embeddings = c.tie_embeddings == "on" || (c.tie_embeddings == "auto" && m.style == edit::models::GptStyle::kGpt2);
  m.validate();
  return m;
}

double world_mean(edit::comm::DeviceMesh& mesh, double value) {
  double total = 0.0;
  for (double v : mesh.world().all_gather_values({value})) total += v;
  return total / mesh.world_size();
}

}  // namespace

int main(int argc, char** argv) {
  Config c;
  CLI::App app{"edit-train-gpt: GPT pretraining with DiLoCo / EDiT / DDP on MPI ranks"};
  add_options(app, c);
  CLI11_PARSE(app, argc, argv);
  try {
    at::set_num_threads(1);
    edit::comm::DeviceMesh mesh = edit::comm::DeviceMesh::from_env({c.shard_size});
    edit::log::init(mesh.rank(), c.log_level);
    const auto gpt = model_config(c);
    if (mesh.rank() == 0) {
      fs::create_directories(c.out_dir);
      std::ofstream(fs::path(c.out_dir) / "config.json") << gpt.to_json() << "\n";  // for edit-export / edit-generate
    }
    mesh.world().barrier()->wait();

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

    at::manual_seed(static_cast<std::uint64_t>(c.seed));
    auto module = std::make_shared<edit::models::GptImpl>(gpt);
    edit::shard::ShardedModel model(module, mesh.shard_ptr());
    edit::shard::FlatAdamW adamw(model, {c.lr, c.beta1, c.beta2, 1e-8, c.weight_decay});

    edit::sync::LocalSgdOptions local;
    local.sync_every = c.sync_every;
    local.outer = {edit::sync::parse_outer_method(c.outer), c.outer_lr, c.outer_momentum, false};
    local.use_penalty = c.strategy == "edit" && !c.no_penalty;
    local.penalty.clip_norm = c.penalty_clip;
    local.penalty.z_threshold = c.penalty_z;
    local.penalty.warmup_syncs = c.penalty_warmup;
    local.check_replicas_every = c.check_replicas_every;
    std::unique_ptr<edit::sync::SyncStrategy> strategy;
    if (c.strategy == "edit") {
      strategy = std::make_unique<edit::sync::EDiT>(model, mesh.sync_ptr(), local);
    } else if (c.strategy == "diloco") {
      strategy = std::make_unique<edit::sync::DiLoCo>(model, mesh.sync_ptr(), local);
    } else if (c.strategy == "ddp") {
      strategy = std::make_unique<edit::sync::Ddp>(model, mesh.sync_ptr());
    } else {
      strategy = std::make_unique<edit::sync::NoSync>();
    }

    edit::train::TrainerOptions options;
    options.steps = c.steps;
    options.accumulation = c.grad_accum;
    options.clip_norm = c.clip;
    options.schedule = {c.lr, std::min(c.warmup_steps, c.steps), std::max<std::int64_t>(1, c.steps), std::min(c.min_lr, c.lr)};
    options.metrics_path = (fs::path(c.out_dir) / "metrics.jsonl").string();
    options.log_every = c.log_every;
    edit::train::Trainer trainer(mesh, model, adamw, *strategy, options);

    // Every stateful component saves and loads itself; a pending EDiT sync is saved as pending.
    edit::train::Checkpointer checkpointer(mesh, (fs::path(c.out_dir) / "checkpoints").string(), c.keep_checkpoints);
    edit::train::CpuRngState rng;
    checkpointer.track("model", model);
    checkpointer.track("inner", adamw);
    checkpointer.track("strategy", *strategy);
    checkpointer.track("data", train);
    checkpointer.track("rng", rng);
    checkpointer.track("trainer", trainer);
    if (c.resume != "none" && !(c.resume == "auto" && !checkpointer.latest())) {
      const auto step = checkpointer.load(c.resume);
      if (mesh.rank() == 0) spdlog::info("resumed from step {} ({})", step, c.resume);
    }

    const auto next_batch = [&](std::int64_t, int) {
      auto b = train.next_batch(c.batch_size, gpt.seq_len);
      return edit::train::Batch{b.inputs, b.targets};
    };
    const auto loss_of = [&](const edit::train::Batch& b) { return module->loss(b.inputs, b.targets); };
    // Evaluates the model the replicas agree on: with Local SGD the anchor, i.e. the model of the
    // last outer sync (a pending EDiT sync is completed first); with ddp the live model; with none
    // each rank's own model. The val loss is the mean over all ranks' val batches.
    const auto evaluate = [&] {
      double loss = 0.0;
      strategy->with_global_model([&] {
        at::NoGradGuard no_grad;
        val.set_cursor({});  // the same val batches every time
        for (int i = 0; i < c.eval_batches; ++i) {
          const auto b = val.next_batch(c.batch_size, gpt.seq_len);
          loss += module->loss(b.inputs, b.targets).item<double>() / c.eval_batches;
        }
      });
      return world_mean(mesh, loss);
    };
    std::ofstream loss_table;
    if (mesh.rank() == 0) {
      const fs::path table_path = fs::path(c.out_dir) / "loss.tsv";
      // Rows after the step this run starts from came from a run that stopped after its last
      // checkpoint; they are written anew.
      std::vector<std::string> rows;
      if (trainer.current_step() > 0) {
        std::ifstream old_table(table_path);
        for (std::string row; std::getline(old_table, row);) {
          if (row.rfind("#", 0) == 0 || std::atoll(row.c_str()) <= trainer.current_step()) rows.push_back(row);
        }
      }
      if (rows.empty()) rows.push_back("# step\ttokens\ttrain_loss\tval_loss");
      {  // written beside the table and renamed over it: a crash now loses none of the kept rows
        std::ofstream rewritten(table_path.string() + ".tmp", std::ios::trunc);
        for (const auto& row : rows) rewritten << row << '\n';
        EDIT_CHECK(rewritten.flush().good(), "cannot write ", table_path.string(), ".tmp; is the disk full?");
      }
      fs::rename(table_path.string() + ".tmp", table_path);
      loss_table.open(table_path, std::ios::app);
    }
    if (trainer.current_step() == 0) {  // the starting point of the curves (no train loss yet)
      const double val_loss = evaluate();
      if (mesh.rank() == 0) loss_table << "0\t0\tnan\t" << val_loss << std::endl;
    }
    const double tokens_per_step = double(c.batch_size) * gpt.seq_len * c.grad_accum * mesh.world_size();
    while (trainer.current_step() < c.steps) {
      const auto m = trainer.step(next_batch, loss_of);
      const std::int64_t done = trainer.current_step();
      const bool eval_now = (c.eval_every > 0 && done % c.eval_every == 0) || done == c.steps;
      if (eval_now) {
        const double train_loss = world_mean(mesh, m.loss);  // this step's, over all ranks
        const double val_loss = evaluate();
        if (mesh.rank() == 0) {
          spdlog::info("eval at step {}: val loss {:.4f} (train {:.4f})", done, val_loss, train_loss);
          loss_table << done << '\t' << static_cast<std::int64_t>(done * tokens_per_step) << '\t' << train_loss << '\t'
                     << val_loss << std::endl;
        }
      }
      if (c.checkpoint_every > 0 && (done % c.checkpoint_every == 0 || done == c.steps)) {
        const auto path = checkpointer.save(done);
        if (mesh.rank() == 0) spdlog::info("checkpoint: {}", path);
      }
    }
    strategy->finish();

    if (c.sample_tokens > 0) {
      // Every rank samples the same way (same seed), as sharded forwards are collective.
      at::NoGradGuard no_grad;
      at::manual_seed(7);
      const edit::data::ByteTokenizer tokenizer;
      auto prompt = tokenizer.encode("\n");
      at::Tensor tokens = at::tensor(std::vector<std::int64_t>(prompt.begin(), prompt.end()), at::kLong).unsqueeze(0);
      for (int i = 0; i < c.sample_tokens; ++i) {
        const at::Tensor window = tokens.narrow(1, std::max<std::int64_t>(0, tokens.size(1) - gpt.seq_len),
                                                std::min<std::int64_t>(tokens.size(1), gpt.seq_len));
        const at::Tensor logits = module->forward(window).select(1, -1) / 0.8;  // temperature 0.8
        tokens = at::cat({tokens, at::multinomial(at::softmax(logits, -1), 1)}, 1);
      }
      if (mesh.rank() == 0) {
        std::vector<std::uint16_t> ids;
        for (std::int64_t i = 0; i < tokens.size(1); ++i) ids.push_back(static_cast<std::uint16_t>(tokens[0][i].item<std::int64_t>()));
        std::cout << "----- sample -----" << tokenizer.decode(ids) << "\n------------------" << std::endl;
      }
    }
    return 0;
  } catch (const std::exception& e) {
    std::cerr << "edit-train-gpt: " << e.what() << std::endl;
    // Peers may be inside a collective with us: end the whole job rather than leave them waiting.
    edit::comm::MpiRuntime::abort_job(1);
  }
}
