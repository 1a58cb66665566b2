// The environment switches between libedit's own CPU paths and LibTorch's: EDIT_CPU_GEMM (matrix
// products through oneDNN) and EDIT_CROSS_ENTROPY (the fused loss). Unset or empty keeps libedit's
// path, "aten" (any case) selects LibTorch's. Anything else is refused by name: a misspelt value
// would otherwise keep the default without a word, and EDIT_CPU_GEMM=aten is a workaround users
// rely on (docs/reliability.md).
#pragma once

#include <cctype>
#include <cstdlib>
#include <string>

#include "edit/core/check.h"

namespace edit::models::detail {

inline bool env_selects_aten(const char* name) {
  const char* value = std::getenv(name);
  if (value == nullptr || *value == '\0') return false;
  std::string lower(value);
  for (char& ch : lower) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  EDIT_CHECK(lower == "aten", name, "='", value, "' is not a choice; set ", name,
             "=aten for LibTorch's path, or unset it for libedit's own");
  return true;
}

}  // namespace edit::models::detail
