#include "edit/sync/streaming.h"

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>

#include <algorithm>
#include <chrono>
#include <cmath>

#include "edit/core/check.h"
#include "edit/sync/pseudo_grad.h"
#include "fused_cuda.h"
#include "rank_sum.h"

#if EDIT_SYNC_CUDA_KERNELS
#include <c10/core/DeviceGuard.h>

#include "edit/comm/cuda_stream.h"
#include "edit/kernels/quantize.h"
#endif

namespace edit::sync {

void StreamingOptions::validate(int num_units) const {
  local.validate();
  const int H = local.sync_every;
  if (layout == FragmentLayout::kSplit) {
    EDIT_CHECK(fragments >= 1, "--fragments ", fragments, "; use 1 or more");
    EDIT_CHECK(!local.use_penalty,
               "--fragment-layout split cuts units between fragments, but the penalty "
               "judges whole units (one norm per unit and worker); drop --penalty or use another layout");
  } else {
    EDIT_CHECK(fragments >= 1, "--fragments ", fragments, "; use 1 or more");
    EDIT_CHECK(num_units <= 0 || fragments <= num_units, "--fragments ", fragments, " with a model of ",
               num_units, " units; use 1 to ", num_units,
               " fragments (each holds at least one unit), or --fragment-layout split");
  }
  EDIT_CHECK(H % fragments == 0, "--sync-every ", H, " is not divisible by --fragments ", fragments,
             ": fragments sync every H / P steps in turn; pick H a multiple of P");
  EDIT_CHECK(overlap >= 0 && overlap < H, "--overlap ", overlap, " must lie in [0, --sync-every ", H,
             "): a fragment's exchange must merge before the fragment syncs again");
  EDIT_CHECK(alpha >= 0.0 && alpha <= 1.0, "--alpha ", alpha,
             " must lie in [0, 1] (0: restart from the new anchor)");
  quant.validate();
}

FragmentLayout parse_fragment_layout(const std::string& name) {
  if (name == "strided") return FragmentLayout::kStrided;
  if (name == "sequential") return FragmentLayout::kSequential;
  if (name == "balanced") return FragmentLayout::kBalanced;
  if (name == "split") return FragmentLayout::kSplit;
  EDIT_FAIL("unknown fragment layout '", name, "'; use strided, sequential, balanced or split");
}

const char* to_string(FragmentLayout layout) {
  switch (layout) {
    case FragmentLayout::kStrided:
      return "strided";
    case FragmentLayout::kSequential:
      return "sequential";
    case FragmentLayout::kBalanced:
      return "balanced";
    case FragmentLayout::kSplit:
      return "split";
  }
  return "?";
}

std::vector<std::vector<int>> fragment_units(const std::vector<std::int64_t>& unit_sizes, int fragments,
                                             FragmentLayout layout) {
  const int num_units = static_cast<int>(unit_sizes.size());
  EDIT_CHECK(layout != FragmentLayout::kSplit,
             "the split layout cuts units; its fragments are fragment_pieces()");
  EDIT_CHECK(fragments >= 1 && fragments <= num_units, fragments, " fragments of ", num_units,
             " units; use 1 to ", num_units, " fragments (each holds at least one unit)");
  std::vector<std::vector<int>> out(static_cast<size_t>(fragments));
  if (layout != FragmentLayout::kBalanced) {
    for (int u = 0; u < num_units; ++u) {
      const int p = layout == FragmentLayout::kStrided
                        ? u % fragments
                        : static_cast<int>(static_cast<std::int64_t>(u) * fragments / num_units);
      out[static_cast<size_t>(p)].push_back(u);
    }
    return out;
  }
  // Longest processing time first: the biggest units are placed while every fragment is still
  // light, the small ones then even out the rest. Positive sizes put one of the first P units in
  // each fragment, so none stays empty.
  for (int u = 0; u < num_units; ++u) {
    EDIT_CHECK(unit_sizes[static_cast<size_t>(u)] >= 1, "unit ", u, " has ",
               unit_sizes[static_cast<size_t>(u)],
               " elements; a balanced layout needs every unit's size (>= 1)");
  }
  std::vector<int> order(static_cast<size_t>(num_units));
  for (int u = 0; u < num_units; ++u) order[static_cast<size_t>(u)] = u;
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) {
    return unit_sizes[static_cast<size_t>(a)] > unit_sizes[static_cast<size_t>(b)];
  });
  std::vector<std::int64_t> load(static_cast<size_t>(fragments), 0);
  for (int u : order) {
    // The lightest fragment; the first one among equals.
    const auto lightest = std::min_element(load.begin(), load.end()) - load.begin();
    load[static_cast<size_t>(lightest)] += unit_sizes[static_cast<size_t>(u)];
    out[static_cast<size_t>(lightest)].push_back(u);
  }
  for (auto& units : out) std::sort(units.begin(), units.end());
  return out;
}

std::vector<std::vector<FragmentPiece>> fragment_pieces(const std::vector<std::int64_t>& shard_sizes,
                                                        int fragments, FragmentLayout layout) {
  std::vector<std::vector<FragmentPiece>> out(static_cast<size_t>(std::max(fragments, 0)));
  if (layout != FragmentLayout::kSplit) {
    const auto units = fragment_units(shard_sizes, fragments, layout);
    for (size_t p = 0; p < units.size(); ++p) {
      for (int u : units[p]) out[p].push_back({u, 0, shard_sizes[static_cast<size_t>(u)]});
    }
    return out;
  }
  std::int64_t total = 0;
  for (std::int64_t size : shard_sizes) {
    EDIT_CHECK(size >= 1, "a unit's shard of ", size,
               " elements; the split layout needs every shard's size (>= 1)");
    total += size;
  }
  EDIT_CHECK(fragments >= 1 && fragments <= total, fragments, " fragments of ", total, " values; use 1 to ",
             total, " fragments");
  // Walk the concatenated shards; fragment p takes [floor(p T / P), floor((p + 1) T / P)).
  int unit = 0;
  std::int64_t at = 0;  // within `unit`
  for (int p = 0; p < fragments; ++p) {
    std::int64_t left = (p + 1) * total / fragments - p * total / fragments;
    while (left > 0) {
      const std::int64_t take = std::min(left, shard_sizes[static_cast<size_t>(unit)] - at);
      out[static_cast<size_t>(p)].push_back({unit, at, take});
      left -= take;
      at += take;
      if (at == shard_sizes[static_cast<size_t>(unit)]) {
        ++unit;
        at = 0;
      }
    }
  }
  return out;
}

std::vector<int> fragments_due(std::int64_t step, int sync_every, int fragments) {
  std::vector<int> due;
  const std::int64_t phase = (step + 1) % sync_every;
  for (int p = 0; p < fragments; ++p) {
    if (phase == static_cast<std::int64_t>(p) * sync_every / fragments % sync_every) due.push_back(p);
  }
  return due;
}

StreamingDiLoCo::StreamingDiLoCo(shard::ShardedModel& model, std::shared_ptr<comm::Communicator> sync_group,
                                 StreamingOptions options)
    : options_(std::move(options)),
      model_(model),
      sync_(sync_group),
      core_(model, std::move(sync_group), options_.local) {
  options_.validate(model.num_units());
  std::vector<std::int64_t> sizes;
  for (int u = 0; u < model.num_units(); ++u) sizes.push_back(model.unit(u).shard_numel());
  fragments_ = fragment_pieces(sizes, options_.fragments, options_.layout);
  // The buffers every exchange reuses: scratch for the largest shard, slots for the biggest fragment.
  const std::int64_t largest = *std::max_element(sizes.begin(), sizes.end());
  scratch_ = at::empty({largest}, at::kFloat);
  aggregate_ = at::empty({largest}, at::kFloat);
  streaming_.buffer_bytes = 2 * largest * static_cast<std::int64_t>(sizeof(float));
  for (const auto& pieces : fragments_) {
    std::int64_t bytes = 0;
    for (const FragmentPiece& piece : pieces) bytes += packet_bytes(piece.length, options_.quant);
    slot_bytes_ = std::max(slot_bytes_, bytes);
  }
}

StreamingDiLoCo::~StreamingDiLoCo() {
  for (auto& exchange : in_flight_) {
    for (auto& unit : exchange.units) {
      try {
        if (unit.work) unit.work->wait();
      } catch (...) {
        // The group failed; whoever waited first got the error.
      }
    }
  }
}

size_t StreamingDiLoCo::acquire_slot() {
  for (size_t k = 0; k < slots_.size(); ++k) {
    if (!slots_[k].busy) {
      slots_[k].busy = true;
      return k;
    }
  }
  Slot slot;
  slot.packets = at::empty({slot_bytes_}, at::kByte);
  slot.gathered = at::empty({slot_bytes_ * sync_->size()}, at::kByte);
  slot.busy = true;
  streaming_.buffer_bytes += slot.packets.numel() + slot.gathered.numel();
  slots_.push_back(std::move(slot));
  return slots_.size() - 1;
}

void StreamingDiLoCo::add_pieces(Exchange& exchange) const {
  for (const FragmentPiece& piece : fragments_.at(static_cast<size_t>(exchange.fragment))) {
    static_cast<FragmentPiece&>(exchange.units.emplace_back()) = piece;
  }
}

void StreamingDiLoCo::place_packets(Exchange& exchange) {
  const Slot& slot = slots_.at(exchange.slot);
  const std::int64_t workers = sync_->size();
  std::int64_t offset = 0;
  for (UnitExchange& unit : exchange.units) {
    const std::int64_t bytes = packet_bytes(unit.length, options_.quant);
    unit.packet = slot.packets.narrow(0, offset, bytes);
    unit.gathered = slot.gathered.narrow(0, offset * workers, bytes * workers);
    offset += bytes;
  }
}

namespace {

bool host_float(const at::Tensor& t) {
  return t.device().is_cpu() && t.scalar_type() == at::kFloat && t.is_contiguous();
}

// A CUDA float tensor the kernels of kernels/ can quantize and dequantize in place of the host.
bool device_quantizable(const at::Tensor& t) {
  return EDIT_SYNC_CUDA_KERNELS && t.is_cuda() && t.scalar_type() == at::kFloat && t.is_contiguous();
}

// The exchange's piece of a unit's flat shard (or of its anchor): a view.
at::Tensor piece_of(const at::Tensor& shard, const FragmentPiece& piece) {
  return shard.view({-1}).narrow(0, piece.begin, piece.length);
}

// `buffer` holding at least n elements of `options` on `device`, grown (reallocated) when not.
at::Tensor sized(at::Tensor& buffer, std::int64_t n, const at::TensorOptions& options) {
  if (!buffer.defined() || buffer.numel() < n || buffer.device() != options.device()) {
    buffer = at::empty({n}, options);
  }
  return buffer.narrow(0, 0, n);
}

}  // namespace

void StreamingDiLoCo::quantize_into(const at::Tensor& delta, at::Tensor& packet) {
#if EDIT_SYNC_CUDA_KERNELS
  if (device_quantizable(delta)) {
    const c10::DeviceGuard guard(delta.device());  // the launch and the current stream: delta's device
    at::Tensor on_device = sized(device_packet_, packet.numel(), delta.options().dtype(at::kByte));
    kernels::quantize_cuda(delta.data_ptr<float>(), delta.numel(), options_.quant,
                           on_device.data_ptr<std::uint8_t>(), comm::torch_current_stream()());
    packet.copy_(on_device);  // waits for the kernel: the packet goes out next
    return;
  }
#endif
  EDIT_CHECK(host_float(delta), "Streaming DiLoCo quantizes fp32 pseudo-gradients; got ", delta.scalar_type(),
             " on ", delta.device().str());
  quantize(delta.data_ptr<float>(), delta.numel(), options_.quant, packet.data_ptr<std::uint8_t>());
}

at::Tensor StreamingDiLoCo::weighted_sum(const UnitExchange& unit, std::int64_t n, const at::Device& device) {
  // A dropped worker (w = 0) is left out, not multiplied: 0 x NaN is NaN.
  const int workers = sync_->size();
  const std::int64_t bytes = packet_bytes(n, options_.quant);
#if EDIT_SYNC_CUDA_KERNELS
  if (device.is_cuda()) {
    const c10::DeviceGuard guard(device);
    const at::TensorOptions on_gpu = at::TensorOptions().device(device);
    at::Tensor gathered =
        sized(device_gathered_, bytes * workers, on_gpu.dtype(at::kByte)).copy_(unit.gathered);
    at::Tensor aggregate =
        sized(aggregate_on_device_, aggregate_.numel(), on_gpu.dtype(at::kFloat)).narrow(0, 0, n);
    at::Tensor part = sized(device_part_, n, on_gpu.dtype(at::kFloat));
    aggregate.zero_();
    for (int i = 0; i < workers; ++i) {
      const double weight = unit.decision.weights.at(static_cast<size_t>(i));
      if (weight == 0.0) continue;
      kernels::dequantize_cuda(gathered.data_ptr<std::uint8_t>() + bytes * i, n, options_.quant,
                               part.data_ptr<float>(), comm::torch_current_stream()());
      aggregate.add_(part.mul_(weight));
    }
    return aggregate;
  }
#endif
  EDIT_CHECK(device.is_cpu(), "no CUDA kernels in this build to sum packets on ", device.str());
  at::Tensor aggregate = aggregate_.narrow(0, 0, n).zero_();
  at::Tensor part = scratch_.narrow(0, 0, n);
  const std::uint8_t* gathered = unit.gathered.data_ptr<std::uint8_t>();
  for (int i = 0; i < workers; ++i) {
    const double weight = unit.decision.weights.at(static_cast<size_t>(i));
    if (weight == 0.0) continue;
    dequantize(gathered + bytes * i, n, options_.quant, part.data_ptr<float>());
    aggregate.add_(part.mul_(weight));
  }
  return aggregate;
}

std::int64_t StreamingDiLoCo::issue(int fragment, std::int64_t step) {
  c10::NoGradGuard no_grad;
  const int workers = sync_->size();
  std::int64_t issued_bytes = 0;
  Exchange exchange;
  exchange.fragment = fragment;
  exchange.merge_after = step + options_.overlap;
  exchange.slot = acquire_slot();
  add_pieces(exchange);
  place_packets(exchange);
  PseudoGradPenalty* penalty = core_.penalty();
  const auto anchor_of = [&](const UnitExchange& u) { return piece_of(core_.outer().anchor(u.unit), u); };
  const auto local_of = [&](const UnitExchange& u) { return piece_of(model_.unit(u.unit).shard(), u); };
  // A unit's pseudo-gradient on the host, in the scratch buffer: the fused pass of
  // pseudo_gradient() when the shard is a host float tensor, else computed where it lives (and
  // quantized there when its GPU can).
  const auto pseudo_gradient_of = [&](const UnitExchange& unit) {
    const at::Tensor anchor = anchor_of(unit);
    const at::Tensor local = local_of(unit);
    at::Tensor delta = scratch_.narrow(0, 0, unit.length);
    if (host_float(anchor) && host_float(local)) {
      pseudo_grad_sqnorm_cpu(anchor.data_ptr<float>(), local.data_ptr<float>(), delta.data_ptr<float>(),
                             unit.length);
      return delta;
    }
    at::Tensor where_it_lives = pseudo_gradient(anchor, local, nullptr);
    return device_quantizable(where_it_lives) ? where_it_lives : delta.copy_(where_it_lives);
  };
  // The penalty's norms, every unit's at once, before any packet goes out: one blocking exchange
  // per group and fragment. A blocking exchange waits for every collective queued before it on
  // its group, so one per unit, between the units' packets, would wait for each packet in turn
  // and leave the overlap (tau) nothing to hide. On the host the norm pass only reads the shards;
  // the packets' pass computes the pseudo-gradients.
  std::vector<double> norms;  // worker-major: worker i's norm of the k-th unit at [i units + k]
  if (penalty) {
    std::vector<double> sqnorms;
    for (const UnitExchange& unit : exchange.units) {
      sqnorms.push_back(pseudo_grad_sqnorm(anchor_of(unit), local_of(unit)));
    }
    norms = sync_->all_gather_values(norms_over_shards(model_.shard_group(), sqnorms));
  }
  for (size_t k = 0; k < exchange.units.size(); ++k) {
    UnitExchange& unit = exchange.units[k];
    const std::int64_t n = unit.length;
    const at::Tensor delta = pseudo_gradient_of(unit);
    if (penalty) {
      std::vector<double> unit_norms(static_cast<size_t>(workers));
      for (size_t i = 0; i < unit_norms.size(); ++i) unit_norms[i] = norms[i * exchange.units.size() + k];
      unit.decision = penalty->decide(unit.unit, unit_norms);
      dropped_workers_ += unit.decision.dropped_count();
      level_shifts_ += unit.decision.level_shift ? 1 : 0;
    } else {
      unit.decision = PenaltyDecision{std::vector<double>(static_cast<size_t>(workers), 1.0 / workers),
                                      std::vector<bool>(static_cast<size_t>(workers), false), false};
    }
    if (unit.decision.skip) {
      ++skipped_units_;
      continue;
    }
    quantize_into(delta, unit.packet);
    unit.work = sync_->all_gather(unit.gathered, unit.packet);
    streaming_.payload_bytes += payload_bytes(n, options_.quant);
    streaming_.scale_bytes += scale_bytes(n, options_.quant);
    issued_bytes += packet_bytes(n, options_.quant);
  }
  ++streaming_.issued;
  in_flight_.push_back(std::move(exchange));
  streaming_.max_in_flight = std::max<std::int64_t>(streaming_.max_in_flight, in_flight());
  return issued_bytes;
}

void StreamingDiLoCo::merge(Exchange& exchange) {
  c10::NoGradGuard no_grad;
  const double alpha = options_.alpha;
  PseudoGradPenalty* penalty = core_.penalty();
  bool waited = false;
  // theta = alpha theta + (1 - alpha) phi on the piece; alpha = 0 is the restart from phi.
  const auto merge_with_anchor = [&](const UnitExchange& unit, at::Tensor& theta) {
    if (alpha == 0.0) {
      core_.outer().reset_to_anchor(unit.unit, unit.begin, unit.length);
    } else {
      theta.mul_(alpha).add_(piece_of(core_.outer().anchor(unit.unit), unit).to(theta.device()), 1.0 - alpha);
    }
  };
  for (UnitExchange& unit : exchange.units) {
    at::Tensor theta = piece_of(model_.unit(unit.unit).shard(), unit);  // a view: merged in place
    if (unit.decision.skip) {
      merge_with_anchor(unit, theta);  // every worker was dropped: the anchor stays
      continue;
    }
    if (unit.work) {
      waited = waited || !unit.work->is_completed();
      unit.work->wait();
      unit.work.reset();
    }
    // The weighted sum on theta's GPU when the kernels can, else on the host (weighted_sum).
    const std::int64_t n = theta.numel();
    at::Tensor aggregate =
        weighted_sum(unit, n, device_quantizable(theta) ? theta.device() : at::Device(at::kCPU));
    if (penalty && penalty->options().clip) {
      const double norm = norms_over_shards(model_.shard_group(), {squared_norm(aggregate)}).front();
      const double scale = penalty->clip_scale(norm);
      if (scale < 1.0) aggregate.mul_(scale);
    }
    if (aggregate.device() != theta.device()) {
      aggregate = sized(aggregate_on_device_, aggregate_.numel(), theta.options().dtype(at::kFloat))
                      .narrow(0, 0, n)
                      .copy_(aggregate);
    }
    if (alpha == 0.0) {
      core_.outer().step_and_reset(unit.unit, aggregate, unit.begin);  // DiLoCo's path, in one pass
    } else {
      core_.outer().step(unit.unit, aggregate, unit.begin);
      merge_with_anchor(unit, theta);
    }
    unit.gathered = at::Tensor();
    unit.packet = at::Tensor();
  }
  slots_.at(exchange.slot).busy = false;
  ++streaming_.merged;
  streaming_.merges_that_waited += waited ? 1 : 0;
  core_.end_sync();
}

void StreamingDiLoCo::after_step(std::int64_t step) {
  const auto start = std::chrono::steady_clock::now();
  // Merges due now first (in issue order), then the exchanges due now; tau = 0 merges at once.
  while (!in_flight_.empty() && in_flight_.front().merge_after <= step) {
    merge(in_flight_.front());
    in_flight_.erase(in_flight_.begin());
  }
  std::int64_t step_bytes = 0;
  for (int fragment : fragments_due(step, options_.local.sync_every, options_.fragments)) {
    step_bytes += issue(fragment, step);
    if (options_.overlap == 0) {
      merge(in_flight_.back());
      in_flight_.pop_back();
    }
  }
  streaming_.max_step_bytes = std::max(streaming_.max_step_bytes, step_bytes);
  stats_.blocked_seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

void StreamingDiLoCo::finish() {
  const auto start = std::chrono::steady_clock::now();
  for (auto& exchange : in_flight_) merge(exchange);
  in_flight_.clear();
  stats_.blocked_seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

SyncStats StreamingDiLoCo::stats() const {
  SyncStats out = stats_;
  out.syncs = streaming_.merged;
  out.dropped_workers = dropped_workers_;
  out.skipped_units = skipped_units_;
  out.level_shifts = level_shifts_;
  return out;
}

StateDict StreamingDiLoCo::state_dict() {
  StateDict state = core_.state_dict();
  state.put("streaming.in_flight", in_flight());
  for (size_t k = 0; k < in_flight_.size(); ++k) {
    Exchange& exchange = in_flight_[k];
    const std::string prefix = "streaming." + std::to_string(k) + ".";
    state.put(prefix + "fragment", static_cast<std::int64_t>(exchange.fragment));
    state.put(prefix + "merge_after", exchange.merge_after);
    for (size_t j = 0; j < exchange.units.size(); ++j) {
      UnitExchange& unit = exchange.units[j];
      if (unit.work) {  // landed, not merged: it merges at its step after the resume
        unit.work->wait();
        unit.work.reset();
      }
      const std::string key = prefix + "unit" + std::to_string(unit.unit) + ".";
      state.put(key + "begin", unit.begin);
      state.put(key + "length", unit.length);
      state.put(key + "weights", at::tensor(unit.decision.weights, at::kDouble));
      state.put(key + "skip", static_cast<std::int64_t>(unit.decision.skip ? 1 : 0));
      if (!unit.decision.skip) state.put(key + "gathered", unit.gathered);
    }
  }
  state.put("streaming.dropped_workers", dropped_workers_);
  state.put("streaming.skipped_units", skipped_units_);
  state.put("streaming.level_shifts", level_shifts_);
  state.put("streaming.issued", streaming_.issued);
  state.put("streaming.merged", streaming_.merged);
  return state;
}

void StreamingDiLoCo::load_state_dict(const StateDict& state) {
  const std::string owner = "Streaming DiLoCo";
  core_.load_state_dict(state);
  // Exchanges of this run still on the wire write into their slots: let them land first.
  for (auto& exchange : in_flight_) {
    for (auto& unit : exchange.units) {
      if (unit.work) unit.work->wait();
    }
  }
  in_flight_.clear();
  for (Slot& slot : slots_) slot.busy = false;
  const std::int64_t count = state.integer(owner, "streaming.in_flight");
  for (std::int64_t k = 0; k < count; ++k) {
    const std::string prefix = "streaming." + std::to_string(k) + ".";
    Exchange exchange;
    exchange.fragment = static_cast<int>(state.integer(owner, prefix + "fragment"));
    EDIT_CHECK(exchange.fragment >= 0 && exchange.fragment < options_.fragments,
               "the checkpoint has an exchange of fragment ", exchange.fragment,
               " in flight, but this job has ", options_.fragments,
               " fragments; resume with the same --fragments");
    exchange.merge_after = state.integer(owner, prefix + "merge_after");
    // The units the checkpoint's exchange carries (one "unit<u>.skip" each) must be this job's
    // fragment: another --fragment-layout or model regroups them.
    std::vector<int> saved;
    for (const auto& [key, value] : state.scalars) {
      const std::string unit_prefix = prefix + "unit";
      const std::string suffix = ".skip";
      if (key.rfind(unit_prefix, 0) != 0 || key.size() <= unit_prefix.size() + suffix.size() ||
          key.compare(key.size() - suffix.size(), suffix.size(), suffix) != 0) {
        continue;
      }
      saved.push_back(
          std::stoi(key.substr(unit_prefix.size(), key.size() - unit_prefix.size() - suffix.size())));
    }
    std::sort(saved.begin(), saved.end());
    std::vector<int> units;
    for (const FragmentPiece& piece : fragments_[static_cast<size_t>(exchange.fragment)])
      units.push_back(piece.unit);
    if (saved != units) {
      const auto list = [](const std::vector<int>& v) {
        std::string out;
        for (int u : v) out += (out.empty() ? "" : ",") + std::to_string(u);
        return "{" + out + "}";
      };
      EDIT_FAIL("the checkpoint has an exchange of fragment ", exchange.fragment, " in flight with units ",
                list(saved), ", but this job's fragment ", exchange.fragment, " holds units ", list(units),
                " (--fragment-layout ", to_string(options_.layout),
                "); resume with the same --fragments and --fragment-layout");
    }
    exchange.slot = acquire_slot();
    add_pieces(exchange);
    place_packets(exchange);
    for (UnitExchange& unit : exchange.units) {
      const int u = unit.unit;
      const std::string key = prefix + "unit" + std::to_string(u) + ".";
      // Which part of the unit (checkpoints from before split fragments carry whole units).
      const std::int64_t begin = state.has_scalar(key + "begin") ? state.integer(owner, key + "begin") : 0;
      const std::int64_t length = state.has_scalar(key + "length") ? state.integer(owner, key + "length")
                                                                   : model_.unit(u).shard_numel();
      EDIT_CHECK(begin == unit.begin && length == unit.length, "the checkpoint's exchange of fragment ",
                 exchange.fragment, " carries elements [", begin, ", ", begin + length, ") of unit ", u,
                 ", this job's fragment [", unit.begin, ", ", unit.begin + unit.length,
                 ") (--fragment-layout ", to_string(options_.layout),
                 "); resume with the same --fragments, --fragment-layout and --shard-size");
      const at::Tensor weights = state.tensor(owner, key + "weights").to(at::kDouble).contiguous();
      EDIT_CHECK(weights.numel() == sync_->size(), "the checkpoint's exchange has ", weights.numel(),
                 " workers, this job ", sync_->size(), "; resume with the same number of replicas");
      unit.decision.weights.assign(weights.data_ptr<double>(), weights.data_ptr<double>() + weights.numel());
      unit.decision.dropped.assign(static_cast<size_t>(weights.numel()), false);
      unit.decision.skip = state.integer(owner, key + "skip") != 0;
      if (!unit.decision.skip) {
        const at::Tensor& gathered = state.tensor(owner, key + "gathered");
        EDIT_CHECK(gathered.numel() == unit.gathered.numel() && gathered.scalar_type() == at::kByte,
                   "the checkpoint's exchange of unit ", u, " has ", gathered.numel(),
                   " bytes, which does not fit this job's shard and --quant (", unit.gathered.numel(),
                   "); resume with the same configuration");
        unit.gathered.copy_(gathered);
      }
    }
    in_flight_.push_back(std::move(exchange));
  }
  dropped_workers_ = state.integer(owner, "streaming.dropped_workers");
  skipped_units_ = state.integer(owner, "streaming.skipped_units");
  level_shifts_ = state.integer(owner, "streaming.level_shifts");
  streaming_.issued = state.integer(owner, "streaming.issued");
  streaming_.merged = state.integer(owner, "streaming.merged");
}

}  // namespace edit::sync
