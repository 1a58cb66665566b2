// A named span of work that LibTorch's profiler records (a user scope), for the phases of a step:
// edit::train::StepProfiler reports each span's whole time, its nested ops included. Costs a
// check of a flag when no profiler runs.
//
//   { ProfileScope scope("edit::backward"); model.backward(loss); }
#pragma once

#include <ATen/record_function.h>

namespace edit {

class ProfileScope {
 public:
  explicit ProfileScope(const char* name) : guard_(at::RecordScope::USER_SCOPE) {
    if (guard_.isActive()) at::detail::record_function_with_scope(guard_, name, c10::ArrayRef<const c10::IValue>{});
  }
  ProfileScope(const ProfileScope&) = delete;
  ProfileScope& operator=(const ProfileScope&) = delete;

 private:
  at::RecordFunction guard_;
};

}  // namespace edit
