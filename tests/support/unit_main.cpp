// main() of the single-process test binary: one torch thread (tests run side by side on 2 cores).
#include <ATen/Parallel.h>
#include <gtest/gtest.h>

#include "edit/core/log.h"

int main(int argc, char** argv) {
  testing::InitGoogleTest(&argc, argv);
  at::set_num_threads(1);
  edit::log::init(-1, "warn");
  return RUN_ALL_TESTS();
}
