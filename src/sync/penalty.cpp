#include "edit/sync/penalty.h"

#include <algorithm>
#include <cmath>

#include "edit/core/check.h"

namespace edit::sync {

void PenaltyOptions::validate() const {
  EDIT_CHECK(warmup_syncs >= 1, "penalty warm-up of ", warmup_syncs,
             " syncs: the detector has nothing to test against before its first sync; use "
             "--penalty-warmup >= 1");
  EDIT_CHECK(z_threshold > 0, "penalty z threshold ", z_threshold, " must be positive (--penalty-z)");
  EDIT_CHECK(ema_alpha > 0 && ema_alpha <= 1, "penalty EMA alpha ", ema_alpha, " must lie in (0, 1]");
  EDIT_CHECK(peer_ratio > 1, "penalty peer ratio ", peer_ratio, " must exceed 1");
  EDIT_CHECK(temperature > 0, "penalty temperature ", temperature, " must be positive");
  EDIT_CHECK(clip_norm > 0, "penalty clip norm ", clip_norm, " must be positive (--penalty-clip)");
}

int PenaltyDecision::dropped_count() const {
  return static_cast<int>(std::count(dropped.begin(), dropped.end(), true));
}

PseudoGradPenalty::PseudoGradPenalty(PenaltyOptions options) : options_(options) { options_.validate(); }

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

  std::vector<size_t> finite;
  for (size_t i = 0; i < workers; ++i) {
    if (std::isfinite(norms[i])) {
      finite.push_back(i);
    } else {
      decision.dropped[i] = true;
    }
  }
  const bool test = options_.anomaly_elimination && detector.syncs >= options_.warmup_syncs && !finite.empty();
  if (test) {
    // The EWMA variance starts at 0 and only reaches the level of the observations' spread after
    // ~1/alpha of them; divide by its weight so far, 1 - (1 - a)^(n - 1) (Adam's bias correction),
    // or the first tests after the warm-up see a tiny spread and drop ordinary workers. A floor
    // under the deviation: with (near-)identical history a rounding-level difference must not count
    // as an anomaly.
    const double weight = detector.observations > 1
                              ? 1.0 - std::pow(1.0 - options_.ema_alpha, static_cast<double>(detector.observations - 1))
                              : 1.0;
    const double std_dev = std::max(std::sqrt(detector.var / weight), 1e-3 * std::abs(detector.mean) + 1e-12);
    bool any_passed = false;
    for (size_t i : finite) {
      decision.dropped[i] = (norms[i] - detector.mean) / std_dev > options_.z_threshold;
      any_passed = any_passed || !decision.dropped[i];
    }
    if (!any_passed) {
      // Every finite worker is "anomalous": the level moved. Judge the workers against each other.
      decision.level_shift = true;
      double smallest = INFINITY;
      for (size_t i : finite) smallest = std::min(smallest, norms[i]);
      for (size_t i : finite) decision.dropped[i] = norms[i] > options_.peer_ratio * smallest;
    }
  }
  ++detector.syncs;

  std::vector<size_t> kept;
  for (size_t i = 0; i < workers; ++i) {
    if (!decision.dropped[i]) kept.push_back(i);
  }
  if (kept.empty()) {
    decision.skip = true;
  } else if (options_.weighted_average) {
    double best = -INFINITY;
    for (size_t i : kept) best = std::max(best, -norms[i] / options_.temperature);
    double total = 0.0;
    for (size_t i : kept) total += (decision.weights[i] = std::exp(-norms[i] / options_.temperature - best));
    for (size_t i : kept) decision.weights[i] /= total;
  } else {
    for (size_t i : kept) decision.weights[i] = 1.0 / static_cast<double>(kept.size());
  }

  // The detector learns from the kept norms. Some finite worker is always kept (the smallest one
  // survives a level shift), so the detector follows the level and never freezes.
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
