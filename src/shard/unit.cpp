#include "edit/shard/unit.h"

namespace edit::shard {

at::Tensor UnitImpl::forward(const at::Tensor& input) {
  if (listener_ == nullptr) return inner_.forward<at::Tensor>(input);
  listener_->before_unit_forward(index_, input);
  at::Tensor output = inner_.forward<at::Tensor>(input);
  return listener_->after_unit_forward(index_, std::move(output));
}

}  // namespace edit::shard
