// StragglerPlan: the rules of a spec, the delay each gives, and errors naming the bad rule.
#include "edit/train/straggler.h"

#include <gtest/gtest.h>

#include "edit/core/check.h"

namespace {

using edit::train::StragglerPlan;

TEST(StragglerPlan, RulesGiveTheirDelaysInTheirWindows) {
  const StragglerPlan plan = StragglerPlan::parse("1:3x@100-300,0:+50ms,1:+10ms");
  ASSERT_EQ(plan.rules().size(), 3u);
  // Rank 1, step 150, 0.2 s of compute: 2 x 0.2 s (3x) + 10 ms.
  EXPECT_DOUBLE_EQ(plan.delay(1, 150, 0.2), 2 * 0.2 + 0.010);
  EXPECT_DOUBLE_EQ(plan.delay(1, 99, 0.2), 0.010);   // before the window
  EXPECT_DOUBLE_EQ(plan.delay(1, 300, 0.2), 0.010);  // TO is the first step it no longer applies to
  EXPECT_DOUBLE_EQ(plan.delay(0, 7, 0.2), 0.050);
  EXPECT_DOUBLE_EQ(plan.delay(2, 7, 0.2), 0.0);
  EXPECT_TRUE(StragglerPlan::parse("").empty());
}

TEST(StragglerPlan, BadRulesAreErrorsThatNameThem) {
  for (const char* bad : {"1", "x:2x", "1:0.5x", "1:2", "1:+5s", "1:2x@300-100", "1:2x@5", "-1:2x"}) {
    try {
      StragglerPlan::parse(bad);
      ADD_FAILURE() << "accepted '" << bad << "'";
    } catch (const edit::Error& e) {
      EXPECT_NE(std::string(e.what()).find("RANK:FACTORx"), std::string::npos) << e.what();
    }
  }
}

TEST(StragglerPlan, ARuleForARankOutsideTheJobIsAnError) {
  const StragglerPlan plan = StragglerPlan::parse("0:2x,3:+5ms");
  EXPECT_NO_THROW(plan.check_ranks(4));
  try {
    plan.check_ranks(3);
    ADD_FAILURE() << "rank 3 accepted in a job of 3 ranks";
  } catch (const edit::Error& e) {
    EXPECT_NE(std::string(e.what()).find("slows rank 3, but the job has 3 rank(s), 0 to 2"), std::string::npos)
        << e.what();
  }
}

}  // namespace
