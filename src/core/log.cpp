#include "edit/core/log.h"

#include <spdlog/sinks/stdout_color_sinks.h>

#include <algorithm>
#include <cctype>
#include <cstdlib>

#include "edit/core/check.h"

namespace edit::log {

spdlog::level::level_enum parse_level(const std::string& name) {
  std::string lower = name;
  std::transform(lower.begin(), lower.end(), lower.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  if (lower == "trace") return spdlog::level::trace;
  if (lower == "debug") return spdlog::level::debug;
  if (lower == "info") return spdlog::level::info;
  if (lower == "warn" || lower == "warning") return spdlog::level::warn;
  if (lower == "error") return spdlog::level::err;
  if (lower == "critical") return spdlog::level::critical;
  if (lower == "off") return spdlog::level::off;
  EDIT_FAIL("unknown log level '", name,
            "'; use one of trace, debug, info, warn, error, critical, off (flag or EDIT_LOG_LEVEL)");
}

spdlog::level::level_enum resolve_level(const std::string& level) {
  if (!level.empty()) return parse_level(level);
  if (const char* env = std::getenv("EDIT_LOG_LEVEL"); env != nullptr && *env != '\0') {
    return parse_level(env);
  }
  return spdlog::level::info;
}

void init(int rank, const std::string& level) {
  const auto resolved = resolve_level(level);
  // Logs go to stderr so that stdout stays clean for tables and CSV a program prints.
  auto logger = std::make_shared<spdlog::logger>(
      "edit", std::make_shared<spdlog::sinks::stderr_color_sink_mt>());
  logger->set_level(resolved);
  logger->set_pattern(rank >= 0 ? "[%H:%M:%S.%e] [rank " + std::to_string(rank) + "] [%^%l%$] %v"
                                : std::string("[%H:%M:%S.%e] [%^%l%$] %v"));
  spdlog::set_default_logger(logger);
}

}  // namespace edit::log
