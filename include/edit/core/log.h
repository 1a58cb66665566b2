// Logging: spdlog's default logger, prefixed with the rank, level from a flag or EDIT_LOG_LEVEL.
//
//   edit::log::init(mesh.rank());          // once the rank is known (again is fine)
//   spdlog::info("step {} loss {:.4f}", step, loss);
#pragma once

#include <spdlog/spdlog.h>

#include <string>

namespace edit::log {

// "trace", "debug", "info", "warn" (or "warning"), "error", "critical", "off"; case-insensitive.
// Anything else throws edit::Error listing the valid names.
spdlog::level::level_enum parse_level(const std::string& name);

// Level precedence: the `level` argument, then the EDIT_LOG_LEVEL environment variable, then info.
// rank < 0 means "not known yet" and prints no rank prefix.
void init(int rank = -1, const std::string& level = "");

// The level init() would pick for `level` (exposed for tests and for --help texts).
spdlog::level::level_enum resolve_level(const std::string& level);

}  // namespace edit::log
