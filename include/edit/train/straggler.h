// Straggler simulation: make chosen ranks slower, for tests and benchmarks of heterogeneous
// clusters (A-EDiT, docs/architecture.md, sync/). The Trainer applies it after each step's compute, before
// the strategy, so a slowed rank reaches every sync late exactly as a slower GPU would.
//
// A spec is a comma-separated list of rules "RANK:SLOWDOWN[@FROM-TO]":
//   1:3x          rank 1 takes 3 times as long for its compute (sleeps 2x the compute it timed)
//   0:+50ms       rank 0 waits 50 ms more every step
//   1:2x@100-300  from step 100 up to (not including) step 300 only
// Several rules may name one rank; their delays add up.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace edit::train {

struct StragglerRule {
  int rank = 0;
  double factor = 1.0;        // compute time x factor
  double extra_seconds = 0.0;
  std::int64_t from = 0;      // first step it applies to
  std::int64_t to = -1;       // first step it no longer applies to; -1: never ends
};

class StragglerPlan {
 public:
  StragglerPlan() = default;
  // Throws edit::Error naming the bad rule and the accepted forms.
  static StragglerPlan parse(const std::string& spec);
  // Throws edit::Error when a rule names a rank outside a job of `world_size` ranks.
  void check_ranks(int world_size) const;
  // Seconds `rank` sleeps after step `step` whose compute took `compute_seconds`.
  double delay(int rank, std::int64_t step, double compute_seconds) const;
  bool empty() const { return rules_.empty(); }
  const std::vector<StragglerRule>& rules() const { return rules_; }

 private:
  std::vector<StragglerRule> rules_;
};

}  // namespace edit::train
