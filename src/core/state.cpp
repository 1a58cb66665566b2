#include "edit/core/state.h"

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>

#include <cmath>

#include "edit/core/check.h"

namespace edit {

const at::Tensor& StateDict::tensor(const std::string& owner, const std::string& key) const {
  for (const auto& [name, value] : tensors) {
    if (name == key) return value;
  }
  EDIT_FAIL("the saved state of ", owner, " has no tensor '", key,
            "'; it was saved with a different model, optimizer or strategy: resume with the same configuration");
}

double StateDict::scalar(const std::string& owner, const std::string& key) const {
  const auto it = scalars.find(key);
  EDIT_CHECK(it != scalars.end(), "the saved state of ", owner, " has no value '", key,
             "'; it was saved with a different model, optimizer or strategy: resume with the same configuration");
  return it->second;
}

std::int64_t StateDict::integer(const std::string& owner, const std::string& key) const {
  const double value = scalar(owner, key);
  EDIT_CHECK(std::isfinite(value) && value == std::floor(value), "the saved state of ", owner, ": '", key, "' is ",
             value, ", not an integer; the checkpoint is damaged, load an older one");
  return static_cast<std::int64_t>(value);
}

void StateDict::copy_into(const std::string& owner, const std::string& key, at::Tensor& live) const {
  const at::Tensor& saved = tensor(owner, key);
  EDIT_CHECK(saved.scalar_type() == live.scalar_type() && saved.sizes() == live.sizes(), "the saved state of ", owner,
             ": '", key, "' is ", saved.scalar_type(), saved.sizes(), " but this job has ", live.scalar_type(),
             live.sizes(), "; resume with the same model configuration and mesh");
  c10::NoGradGuard no_grad;
  live.copy_(saved);
}

}  // namespace edit
