// Streaming DiLoCo (Douillard et al. 2025; docs/architecture.md, sync/): DiLoCo whose units are split
// into P fragments that sync in turn, each exchange overlapped with the next inner steps and
// quantized down to 4 bits.
//
// Schedule: fragment p issues its exchange after inner step t (0-based) when
// (t + 1) mod H == (p H / P) mod H, i.e. fragment 0 after steps H-1, 2H-1, ... like DiLoCo and
// fragment p p H / P steps after fragment 0 (first after step p H / P - 1; H = 6, P = 3: fragments
// 1, 2, 0 after steps 1, 3, 5). It is a pure function of the step, so every rank issues the
// same collectives in the same order. The exchange is merged `overlap` (tau) inner steps later:
// the outer step moves the fragment's anchors to phi_new and the worker takes
// theta = alpha theta_local + (1 - alpha) phi_new. tau = 0 merges at once (blocking); with tau
// above H / P several fragments are in flight together.
//
// Exchange: each worker quantizes its pseudo-gradient shard (QuantOptions), the sync group
// all-gathers the packets, and every rank dequantizes every packet (its own too) and sums
// w_i x delta_i in rank order in fp32, so all ranks hold bit-identical anchors. The penalty
// (weights w_i, drops, clip) works per unit as in DiLoCo; with S > 1 each rank exchanges its shard.
// Its norms go out first, all of the fragment's units in one blocking exchange per group, then the
// packets, so the overlap still hides the packets (the clip's norm is summed at the merge).
// P = 1, tau = 0, alpha = 0 and fp32 is DiLoCo.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "edit/sync/local_sgd.h"
#include "edit/sync/quantize.h"

namespace edit::sync {

// How units are grouped into fragments. The first three hold whole units, so a fragment's bytes on
// the wire are the sum of its units' sizes (only `balanced` looks at them); `split` cuts units so
// that every fragment carries the same number of values, which whole units cannot always do (an
// embedding bigger than a block, fewer units than a multiple of P).
enum class FragmentLayout {
  kStrided,     // unit u in fragment u mod P
  kSequential,  // P runs of consecutive units
  kBalanced,    // sizes as equal as whole units allow (longest-processing-time greedy)
  kSplit,       // the shards end to end, cut into P equal runs: a unit may span two or more fragments
};
FragmentLayout parse_fragment_layout(const std::string& name);  // strided, sequential, balanced, split
const char* to_string(FragmentLayout layout);

struct StreamingOptions {
  LocalSgdOptions local;  // H (sync_every), outer optimizer, penalty, replica checks
  int fragments = 1;      // P
  FragmentLayout layout = FragmentLayout::kStrided;  // which units each fragment holds
  int overlap = 0;     // tau: inner steps between a fragment's exchange and its merge
  double alpha = 0.5;  // the merge's weight on the worker's own parameters
  QuantOptions quant;  // fp32 by default
  // Throws naming the option and the fix. num_units <= 0: the model is not known yet, and whether
  // it has units enough for the fragments is left to the check with the model.
  void validate(int num_units) const;
};

// A part of a fragment: the elements [begin, begin + length) of unit `unit`'s shard (the whole
// shard in the layouts of whole units).
struct FragmentPiece {
  int unit = 0;
  std::int64_t begin = 0;
  std::int64_t length = 0;
  bool operator==(const FragmentPiece& other) const {
    return unit == other.unit && begin == other.begin && length == other.length;
  }
};

// The units of each fragment, each list in ascending order; unit_sizes[u] is unit u's element
// count (>= 1), the same on every rank. Balanced: units by size descending (ties: lower index
// first), each to the fragment with the fewest elements so far (ties: lower fragment index). A pure
// function of its arguments, so every rank builds the same fragments. Split is refused here: its
// fragments are pieces of units (fragment_pieces).
std::vector<std::vector<int>> fragment_units(const std::vector<std::int64_t>& unit_sizes, int fragments,
                                             FragmentLayout layout);
// Each fragment's pieces, in unit order; shard_sizes[u] is unit u's shard length (>= 1), the same
// on every rank of a sync group. The layouts of whole units give one whole-shard piece per unit of
// fragment_units(); split cuts the concatenated shards at floor(p T / P) for p = 1 .. P - 1 (T the
// total), so fragments differ by at most one element. A pure function of its arguments.
std::vector<std::vector<FragmentPiece>> fragment_pieces(const std::vector<std::int64_t>& shard_sizes,
                                                        int fragments, FragmentLayout layout);
// The fragments whose exchange is issued after inner step `step`.
std::vector<int> fragments_due(std::int64_t step, int sync_every, int fragments);

struct StreamingStats {
  std::int64_t issued = 0;  // fragment exchanges issued
  std::int64_t merged = 0;
  std::int64_t merges_that_waited = 0;  // the exchange had not landed by its merge step
  std::int64_t max_in_flight = 0;
  std::int64_t payload_bytes = 0;  // sent by this rank: quantized values
  std::int64_t scale_bytes = 0;    // ... and their block scales
  // The most packet bytes (payload and scales) this rank issued after any one inner step: the
  // busiest step's exchange, counted when issued (a communicator counts bytes as an operation
  // completes, which may fall in the next step).
  std::int64_t max_step_bytes = 0;
  // Host bytes of the reusable exchange buffers: two fp32 scratch vectors of the largest shard,
  // and per exchange in flight at once, the biggest fragment's packets and their all-gather.
  // Sized in the first round, then constant.
  std::int64_t buffer_bytes = 0;
};

class StreamingDiLoCo : public SyncStrategy {
 public:
  StreamingDiLoCo(shard::ShardedModel& model, std::shared_ptr<comm::Communicator> sync_group,
                  StreamingOptions options);
  ~StreamingDiLoCo() override;
  std::string name() const override { return "streaming"; }
  void after_step(std::int64_t step) override;
  // Merges every exchange in flight now (the end of training).
  void finish() override;
  SyncStats stats() const override;
  void with_global_model(const std::function<void()>& fn) override { core_.with_anchors(fn); }
  // Anchors, momenta, penalty, and every exchange in flight (landed, not merged), so a resumed
  // run merges them at the same steps as an uninterrupted one.
  StateDict state_dict() override;
  void load_state_dict(const StateDict& state) override;
  const StreamingStats& streaming_stats() const { return streaming_; }
  std::int64_t in_flight() const { return static_cast<std::int64_t>(in_flight_.size()); }
  PseudoGradientSync& core() { return core_; }

 private:
  // The exchange of one piece of a fragment (unit, begin, length: what it carries).
  struct UnitExchange : FragmentPiece {
    at::Tensor packet;    // this rank's quantized pseudo-gradient shard (a view into its slot)
    at::Tensor gathered;  // every worker's packet, in rank order (a view into its slot)
    comm::WorkPtr work;
    PenaltyDecision decision;
  };
  struct Exchange {
    int fragment = 0;
    std::int64_t merge_after = 0;  // merged in after_step of this step
    size_t slot = 0;               // the buffers its packets live in
    std::vector<UnitExchange> units;
  };
  // The packets of one exchange in flight, sized once for the biggest fragment and reused: the
  // schedule bounds how many exchanges are in flight together (one when tau < H / P), so the
  // slots stop growing after the first round.
  struct Slot {
    at::Tensor packets;   // (biggest fragment's packet bytes,) uint8
    at::Tensor gathered;  // (workers x that,) uint8
    bool busy = false;
  };
  std::int64_t issue(int fragment, std::int64_t step);  // returns the packet bytes issued
  void merge(Exchange& exchange);
  size_t acquire_slot();
  // One UnitExchange per piece of the exchange's fragment, in the fragment's order.
  void add_pieces(Exchange& exchange) const;
  // Views of the exchange's slot for each of its units, in the fragment's order.
  void place_packets(Exchange& exchange);
  // This rank's packet of `delta` into `packet` (host bytes): on the host, or by the CUDA kernel
  // when delta is on a GPU, so that only the packet (1/8 of the fp32 bytes at 4 bits) crosses.
  void quantize_into(const at::Tensor& delta, at::Tensor& packet);
  // sum_i w_i dequantize(packet_i) over the unit's gathered packets, in rank order, in fp32, on
  // `device` (the host, or with the CUDA kernels theta's GPU): the same floats on every rank.
  at::Tensor weighted_sum(const UnitExchange& unit, std::int64_t n, const at::Device& device);

  StreamingOptions options_;
  shard::ShardedModel& model_;
  std::shared_ptr<comm::Communicator> sync_;
  PseudoGradientSync core_;  // anchors, outer optimizer, penalty, replica checks, state
  std::vector<std::vector<FragmentPiece>> fragments_;
  std::vector<Exchange> in_flight_;  // in issue order
  std::vector<Slot> slots_;
  std::int64_t slot_bytes_ = 0;  // the biggest fragment's packet bytes
  // (largest shard,) fp32 scratch, sized once: the pseudo-gradient at an issue, then the
  // aggregate and each dequantized packet at a merge (on theta's device too when it is not the
  // host).
  at::Tensor scratch_, aggregate_, aggregate_on_device_;
  // The GPU's counterparts (CUDA shards with the kernels): a packet, the gathered packets and a
  // dequantized part, sized at first use.
  at::Tensor device_packet_, device_gathered_, device_part_;
  StreamingStats streaming_;
  std::int64_t dropped_workers_ = 0, skipped_units_ = 0, level_shifts_ = 0;
};

}  // namespace edit::sync
