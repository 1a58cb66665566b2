#include "edit/train/straggler.h"

#include <cstdlib>
#include <sstream>

#include "edit/core/check.h"

namespace edit::train {
namespace {

const char* const kForms = "; use RANK:FACTORx or RANK:+MSms, optionally @FROM-TO, e.g. 1:3x@100-300,0:+50ms";

double parse_number(const std::string& text, const std::string& rule) {
  char* end = nullptr;
  const double value = std::strtod(text.c_str(), &end);
  EDIT_CHECK(!text.empty() && end == text.c_str() + text.size(), "straggler rule '", rule, "': '", text,
             "' is not a number", kForms);
  return value;
}

}  // namespace

void StragglerPlan::check_ranks(int world_size) const {
  for (const StragglerRule& rule : rules_) {
    EDIT_CHECK(rule.rank < world_size, "a straggler rule slows rank ", rule.rank, ", but the job has ", world_size,
               " rank(s), 0 to ", world_size - 1, "; name one of them");
  }
}

StragglerPlan StragglerPlan::parse(const std::string& spec) {
  StragglerPlan plan;
  std::stringstream list(spec);
  for (std::string rule; std::getline(list, rule, ',');) {
    if (rule.empty()) continue;
    const auto colon = rule.find(':');
    EDIT_CHECK(colon != std::string::npos && colon > 0, "straggler rule '", rule, "' has no RANK:", kForms);
    StragglerRule r;
    const double rank = parse_number(rule.substr(0, colon), rule);
    EDIT_CHECK(rank >= 0 && rank == static_cast<int>(rank), "straggler rule '", rule, "': the rank must be an integer >= 0",
               kForms);
    r.rank = static_cast<int>(rank);
    std::string slowdown = rule.substr(colon + 1);
    const auto at = slowdown.find('@');
    if (at != std::string::npos) {
      const std::string window = slowdown.substr(at + 1);
      slowdown = slowdown.substr(0, at);
      const auto dash = window.find('-');
      EDIT_CHECK(dash != std::string::npos, "straggler rule '", rule, "': the steps must read FROM-TO", kForms);
      r.from = static_cast<std::int64_t>(parse_number(window.substr(0, dash), rule));
      r.to = static_cast<std::int64_t>(parse_number(window.substr(dash + 1), rule));
      EDIT_CHECK(r.from >= 0 && r.to > r.from, "straggler rule '", rule, "': steps ", r.from, "-", r.to,
                 " are empty; FROM must be below TO", kForms);
    }
    if (slowdown.size() > 1 && slowdown.back() == 'x') {
      r.factor = parse_number(slowdown.substr(0, slowdown.size() - 1), rule);
      EDIT_CHECK(r.factor >= 1.0, "straggler rule '", rule, "': a slow-down factor must be >= 1", kForms);
    } else if (slowdown.size() > 3 && slowdown[0] == '+' && slowdown.compare(slowdown.size() - 2, 2, "ms") == 0) {
      r.extra_seconds = parse_number(slowdown.substr(1, slowdown.size() - 3), rule) / 1000.0;
      EDIT_CHECK(r.extra_seconds >= 0, "straggler rule '", rule, "': the extra delay must be >= 0", kForms);
    } else {
      EDIT_FAIL("straggler rule '", rule, "': '", slowdown, "' is neither a factor (3x) nor a delay (+50ms)", kForms);
    }
    plan.rules_.push_back(r);
  }
  return plan;
}

double StragglerPlan::delay(int rank, std::int64_t step, double compute_seconds) const {
  double seconds = 0.0;
  for (const StragglerRule& r : rules_) {
    if (r.rank != rank || step < r.from || (r.to >= 0 && step >= r.to)) continue;
    seconds += (r.factor - 1.0) * compute_seconds + r.extra_seconds;
  }
  return seconds;
}

}  // namespace edit::train
