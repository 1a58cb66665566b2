// PseudoGradPenalty: EDiT's defence against workers whose pseudo-gradient went wrong
// (docs/architecture.md, sync/).
//
// Per unit and sync, from the R norms ||delta_i|| (identical on every rank, in sync-group order):
//  1. anomaly elimination: one detector per unit keeps an EWMA of the norm's mean and variance;
//     a worker whose z-score exceeds the threshold (one-sided), or whose norm is NaN/Inf, is
//     dropped (weight 0, its delta counts as zero). No z-test during the first warm-up syncs; the
//     variance in the z-score is bias-corrected for its start at 0, as Adam's moments are.
//     When *every* finite worker fails the z-test, the detector is what is out of date, not all
//     workers at once: the common norm level moved (an LR warm-up, a schedule change, the end of
//     the first epoch). That sync is a level shift: a finite worker is kept unless its norm
//     exceeds peer_ratio x the smallest finite norm, so a lone spike is still dropped. Without
//     this rule a z-test against a slow EWMA drops every worker for dozens of syncs after any
//     rise of the common level, and each such sync throws away H steps of every worker.
//     If no worker is left (all non-finite), the unit's outer update is skipped.
//  2. weighted averaging: w_i = softmax over kept workers of (-||delta_i|| / temperature).
//  3. clipping: the aggregate Delta is scaled by min(1, clip / (||Delta|| + 1e-6)).
// The detector learns from the kept norms after every decision. Some finite worker is always kept,
// so it follows the level and never freezes, and an outlier it dropped does not widen the band
// that the next outlier is tested against.
// decide() is plain arithmetic on its inputs, so every rank computes bit-identical weights.
// Non-finite norms are dropped even with anomaly elimination off: a NaN must never reach phi.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace edit::sync {

struct PenaltyOptions {
  bool anomaly_elimination = true;
  double z_threshold = 3.0;   // drop a worker whose (norm - mean) / std exceeds this
  double ema_alpha = 0.02;    // EWMA weight of a new observation
  int warmup_syncs = 3;       // syncs observed before the z-test starts (at least 1)
  double peer_ratio = 3.0;    // in a level shift, drop a worker whose norm exceeds this x the smallest
  bool weighted_average = true;
  double temperature = 1.0;   // softmax temperature of the weights
  bool clip = true;
  double clip_norm = 10.0;    // max ||Delta|| per unit

  void validate() const;  // throws naming the option and its valid range
};

struct PenaltyDecision {
  std::vector<double> weights;   // one per worker; 0 for the dropped ones; sums to 1 unless skip
  std::vector<bool> dropped;
  bool skip = false;             // every worker dropped: leave the anchor as it is
  bool level_shift = false;      // every finite worker failed the z-test; kept by the peer rule
  int dropped_count() const;
};

class PseudoGradPenalty {
 public:
  explicit PseudoGradPenalty(PenaltyOptions options = {});

  // Decides the weights of one unit's sync and then updates that unit's detector.
  PenaltyDecision decide(int unit, const std::vector<double>& norms);
  // The factor for the aggregate of norm `aggregate_norm` (1 when clipping is off or not needed).
  double clip_scale(double aggregate_norm) const;

  struct Detector {
    double mean = 0.0;
    double var = 0.0;
    std::int64_t observations = 0;
    std::int64_t syncs = 0;
  };
  const Detector& detector(int unit) const { return detectors_.at(static_cast<size_t>(unit)); }
  Detector& mutable_detector(int unit);  // for checkpoints
  int num_detectors() const { return static_cast<int>(detectors_.size()); }
  const PenaltyOptions& options() const { return options_; }

 private:
  PenaltyOptions options_;
  std::vector<Detector> detectors_;
};

}  // namespace edit::sync
