#include "edit/core/log.h"

#include <gtest/gtest.h>

#include <cstdlib>
#include <string>

#include "edit/core/check.h"

namespace {

TEST(Log, ParsesEveryLevelCaseInsensitively) {
  EXPECT_EQ(edit::log::parse_level("trace"), spdlog::level::trace);
  EXPECT_EQ(edit::log::parse_level("DEBUG"), spdlog::level::debug);
  EXPECT_EQ(edit::log::parse_level("Info"), spdlog::level::info);
  EXPECT_EQ(edit::log::parse_level("warning"), spdlog::level::warn);
  EXPECT_EQ(edit::log::parse_level("error"), spdlog::level::err);
  EXPECT_EQ(edit::log::parse_level("off"), spdlog::level::off);
}

TEST(Log, UnknownLevelNamesTheValidOnes) {
  try {
    edit::log::parse_level("loud");
    FAIL() << "no error for an unknown level";
  } catch (const edit::Error& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("'loud'"), std::string::npos) << what;
    EXPECT_NE(what.find("trace, debug, info, warn"), std::string::npos) << what;
  }
}

TEST(Log, FlagBeatsEnvironmentBeatsDefault) {
  ::unsetenv("EDIT_LOG_LEVEL");
  EXPECT_EQ(edit::log::resolve_level(""), spdlog::level::info);
  ::setenv("EDIT_LOG_LEVEL", "debug", 1);
  EXPECT_EQ(edit::log::resolve_level(""), spdlog::level::debug);
  EXPECT_EQ(edit::log::resolve_level("error"), spdlog::level::err);
  ::unsetenv("EDIT_LOG_LEVEL");
}

TEST(Log, InitTwiceReplacesTheDefaultLoggerWithTheRankPrefix) {
  edit::log::init(-1, "warn");
  EXPECT_EQ(spdlog::default_logger()->level(), spdlog::level::warn);
  edit::log::init(3, "debug");  // must not throw "logger already exists"
  EXPECT_EQ(spdlog::default_logger()->level(), spdlog::level::debug);
  testing::internal::CaptureStderr();
  spdlog::info("hello {}", 7);
  spdlog::default_logger()->flush();
  const std::string out = testing::internal::GetCapturedStderr();
  EXPECT_NE(out.find("[rank 3]"), std::string::npos) << out;
  EXPECT_NE(out.find("hello 7"), std::string::npos) << out;
  edit::log::init(-1, "info");
}

}  // namespace
