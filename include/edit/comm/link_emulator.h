// LinkEmulator: a communicator that behaves as if its group were behind a slower link.
//
// Each op is handed to the wrapped communicator at once, but its Work completes no earlier than the
// end of an emulated transfer that
//   - starts when the LAST rank of the group has issued the op, or when the link has finished the
//     previous op (one op on the link at a time), whichever is later. Time a rank spends waiting
//     for a straggler is waiting, not link time: every rank finishes at about the straggler's
//     issue + the transfer, as on a real link, and busy_seconds counts the transfer only;
//   - lasts steps x latency + bytes_sent / bandwidth, where bytes_sent is the ring-model count of
//     CommStats and steps the ring's latency terms for a group of R ranks: 2(R-1) for all_reduce
//     (reduce-scatter, then all-gather), R-1 for all_gather, reduce_scatter and all_gather_values,
//     R-1 for broadcast (the data crosses R-1 hops of the ring, pipelined) and for barrier (a ring
//     barrier is a zero-byte all_gather: after R-1 steps every rank has heard from every other).
// When the last rank issued is observed, not computed from clocks (ranks may sit on different
// machines): the emulator issues a barrier on the wrapped group right before each op, and its link
// thread notes when that barrier completes (so the wrapped group runs two ops per emulated one).
// The real transfer runs meanwhile, hidden inside the emulated one whenever the emulated link is
// the slower (the point of emulating it). The delay is waited out, not computed, so it overlaps
// with compute exactly like a real slow transfer. This is how benchmarks show a fast shard group
// inside a node next to a slow sync group between nodes, on one machine.
#pragma once

#include <chrono>
#include <functional>
#include <limits>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "edit/comm/communicator.h"

namespace edit::comm {

struct LinkModel {
  double latency_s = 0.0;
  double bandwidth_bytes_per_s = std::numeric_limits<double>::infinity();

  // "1Gbit@1ms", "100Mbit@5ms", "10GB@20us", "inf@0": bandwidth in bit/s (Kbit, Mbit, Gbit) or
  // byte/s (KB, MB, GB, decimal), then '@' and a latency in s, ms or us. Throws naming the format.
  static LinkModel parse(const std::string& text);
  std::string to_string() const;
  // Seconds the link needs for `bytes` in one message.
  double delay_s(std::int64_t bytes) const;
  // Seconds for `bytes` sent in `latency_steps` dependent messages (the steps of a ring).
  double delay_s(std::int64_t bytes, int latency_steps) const;
};

// Latency terms of one collective on a ring of `group_size` ranks (see the header comment).
int ring_steps_all_reduce(int group_size);  // 2
int ring_steps_all_gather(int group_size);  // also reduce_scatter, broadcast and barrier

class LinkEmulator : public Communicator {
 public:
  LinkEmulator(std::shared_ptr<Communicator> inner, LinkModel link);
  // Books every op still waiting for its last rank first: wait() on every Work before, as with
  // any communicator, or this waits for the wrapped group's timeout.
  ~LinkEmulator() override;

  int rank() const override { return inner_->rank(); }
  int size() const override { return inner_->size(); }
  const std::string& name() const override { return inner_->name(); }

  WorkPtr all_reduce(at::Tensor tensor, AllReduceOptions options = {}) override;
  WorkPtr all_gather(at::Tensor output, at::Tensor input) override;
  WorkPtr reduce_scatter(at::Tensor output, at::Tensor input, ReduceScatterOptions options = {}) override;
  WorkPtr broadcast(at::Tensor tensor, int root) override;
  WorkPtr barrier() override;
  std::vector<double> all_gather_values(const std::vector<double>& mine) override;

  // Counts from this wrapper: wait_seconds includes the emulated delay, busy_seconds is the
  // emulated link time.
  CommStats stats() const override;
  void reset_stats() override;
  // The part of wait_seconds spent after the op's last rank had issued it: blocked on the link
  // itself (its queue and the transfer), not on a peer that arrived late. This is communication
  // that compute did not hide, what a compute-utilization figure charges; waiting for a slower
  // peer is load imbalance, which a faster link would not remove.
  double link_wait_seconds() const;

  const LinkModel& link() const { return link_; }

  using Clock = std::chrono::steady_clock;
  struct State;  // shared with the Work handles, which may outlive the emulator

 private:
  // Issues the join barrier, then the op (`issue`), on the wrapped group, and hands the op to the
  // link thread, which books the link for it once the barrier shows that every rank has issued it.
  WorkPtr delayed(const std::function<WorkPtr()>& issue, std::int64_t bytes_sent, std::int64_t bytes_on_wire,
                  int latency_steps);

  std::shared_ptr<Communicator> inner_;
  LinkModel link_;
  std::shared_ptr<State> state_;
  std::mutex issue_mutex_;  // keeps each join barrier next to its op in the wrapped group's order
  std::thread thread_;      // the link: books the ops in issue order as their last rank joins
};

}  // namespace edit::comm
