#include "edit/core/check.h"

#include <gtest/gtest.h>

#include <string>

namespace {

int checked_divide(int a, int b) {
  EDIT_CHECK(b != 0, "cannot divide ", a, " by zero; pass a non-zero divisor");
  return a / b;
}

TEST(Check, PassingCheckReturnsNormally) { EXPECT_EQ(checked_divide(6, 3), 2); }

TEST(Check, FailingCheckThrowsWithFileLineAndMessage) {
  try {
    checked_divide(7, 0);
    FAIL() << "EDIT_CHECK did not throw";
  } catch (const edit::Error& e) {
    const std::string what = e.what();
    // The path is shortened to the repository-relative part and followed by the line number.
    EXPECT_EQ(what.rfind("tests/core/check_test.cpp:", 0), 0u) << what;
    EXPECT_NE(what.find("cannot divide 7 by zero; pass a non-zero divisor"), std::string::npos) << what;
  }
}

TEST(Check, EmptyMessageFallsBackToTheCondition) {
  try {
    EDIT_CHECK(1 + 1 == 3, "");
    FAIL() << "EDIT_CHECK did not throw";
  } catch (const edit::Error& e) {
    EXPECT_NE(std::string(e.what()).find("check failed: 1 + 1 == 3"), std::string::npos) << e.what();
  }
}

TEST(Check, ErrorIsAStdRuntimeError) {
  EXPECT_THROW(EDIT_FAIL("unreachable state ", 42), std::runtime_error);
}

}  // namespace
