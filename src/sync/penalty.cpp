#include "edit/sync/penalty.h"

#include <algorithm>
#include <cmath>

#include "edit/core/check.h"

namespace edit::sync {

PseudoGradPenalty::Detector& PseudoGradPenalty::mutable_detector(int unit) {
  EDIT_CHECK(unit >= 0, "unit index ", unit, " is negative");
  if (detectors_.size() <= static_cast<size_t>(unit)) detectors_.resize(static_cast<size_t>(unit) + 1);
  return detectors_[static_cast<size_t>(unit)];
}

PenaltyDecision PseudoGradPenalty::decide(int unit, const std::vector<double>& norms) {
  EDIT_CHECK(!norms.empty(), "penalty for unit ", unit, " got no worker norms");
  Detector& detector = mutable_detector(unit);
  const size_t workers = norms.size();
  PenaltyDecision decision;
  decision.dropped.assign(workers, false);
  decision.weights.assign(workers, 0.0);

  const bool test = options_.anomaly_elimination && detector.syncs >= options_.warmup_syncs;
  // A floor under the deviation: with (near-)identical history a rounding-level difference must
  // not count as an anomaly.
  const double std_dev = std::max(std::sqrt(detector.var), 1e-3 * std::abs(detector.mean) + 1e-12);
  for (size_t i = 0; i < workers; ++i) {
    if (!std::isfinite(norms[i])) {
      decision.dropped[i] = true;
    } else if (test && (norms[i] - detector.mean) / std_dev > options_.z_threshold) {
      decision.dropped[i] = true;
    }
  }

  std::vector<size_t> kept;
  for (size_t i = 0; i < workers; ++i) {
    if (!decision.dropped[i]) kept.push_back(i);
  }
  ++detector.syncs;
  if (kept.empty()) {
    decision.skip = true;
    return decision;
  }

  if (options_.weighted_average) {
    double best = -INFINITY;
    for (size_t i : kept) best = std::max(best, -norms[i] / options_.temperature);
    double total = 0.0;
    for (size_t i : kept) total += (decision.weights[i] = std::exp(-norms[i] / options_.temperature - best));
    for (size_t i : kept) decision.weights[i] /= total;
  } else {
    for (size_t i : kept) decision.weights[i] = 1.0 / static_cast<double>(kept.size());
  }

  const double a = options_.ema_alpha;
  for (size_t i : kept) {
    const double x = norms[i];
    if (detector.observations == 0) {
      detector.mean = x;
      detector.var = 0.0;
    } else {
      const double old_mean = detector.mean;
      detector.mean += a * (x - detector.mean);
      detector.var = (1 - a) * (detector.var + a * (x - old_mean) * (x - detector.mean));
    }
    ++detector.observations;
  }
  return decision;
}

double PseudoGradPenalty::clip_scale(double aggregate_norm) const {
  if (!options_.clip) return 1.0;
  return std::min(1.0, options_.clip_norm / (aggregate_norm + 1e-6));
}

}  // namespace edit::sync
