// The message of the edit::Error a callable throws, for tests that check what an error says.
#pragma once

#include <string>
#include <utility>

#include "edit/core/check.h"

namespace edit::testing_support {

// e.what() of the edit::Error `fn` throws, or "(no error)" when it returns normally (so a
// find() on the result fails the test instead of matching an empty string).
template <typename F>
std::string error_of(F&& fn) {
  try {
    std::forward<F>(fn)();
  } catch (const edit::Error& e) {
    return e.what();
  }
  return "(no error)";
}

}  // namespace edit::testing_support
