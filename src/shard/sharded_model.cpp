#include "edit/shard/sharded_model.h"

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>

#include <cmath>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "edit/core/check.h"
#include "edit/core/torch_compat.h"

namespace edit::shard {

const char* to_string(HookPoint point) {
  switch (point) {
    case HookPoint::kPreForward:
      return "pre_forward";
    case HookPoint::kPostForward:
      return "post_forward";
    case HookPoint::kPreBackward:
      return "pre_backward";
    case HookPoint::kPostBackward:
      return "post_backward";
    case HookPoint::kPreGather:
      return "pre_gather";
  }
  return "?";
}

at::Tensor FlatUnit::shard_mask(const std::function<bool(const std::string&, const at::Tensor&)>& predicate) const {
  at::Tensor full_mask = at::zeros({padded_numel_}, shard_.options());
  for (const Param& p : params_) {
    if (predicate(p.name, p.param)) full_mask.narrow(0, p.offset, p.numel).fill_(1);
  }
  return full_mask.narrow(0, shard_offset(), shard_numel()).clone();
}

namespace {

std::int64_t bytes_of(const at::Tensor& t) { return t.numel() * static_cast<std::int64_t>(t.element_size()); }

}  // namespace

ShardedModel::ShardedModel(std::shared_ptr<torch::nn::Module> model, std::shared_ptr<comm::Communicator> shard_group,
                           ShardOptions options)
    : model_(std::move(model)), group_(std::move(shard_group)), options_(options) {
  EDIT_CHECK(model_ != nullptr && group_ != nullptr, "ShardedModel needs a model and a shard group");
  const int group_size = group_->size();
  const int group_rank = group_->rank();

  // Names of every parameter, to report the ones no Unit owns.
  std::unordered_map<const c10::TensorImpl*, std::string> names;
  for (const auto& item : model_->named_parameters(/*recurse=*/true)) {
    names.emplace(item.value().unsafeGetTensorImpl(), item.key());
  }
  std::unordered_map<const c10::TensorImpl*, int> owner_of;  // parameter -> the unit that holds it

  for (const auto& module : model_->modules(/*include_self=*/false)) {
    auto unit = std::dynamic_pointer_cast<UnitImpl>(module);
    if (!unit) continue;
    for (const auto& inner : unit->modules(/*include_self=*/false)) {
      EDIT_CHECK(!std::dynamic_pointer_cast<UnitImpl>(inner), "a Unit is nested inside unit ", units_.size(),
                 "; units must not contain units: wrap the outer block or the inner ones, not both");
    }
    auto flat = std::make_unique<FlatUnit>();
    flat->index_ = static_cast<int>(units_.size());
    flat->module_ = unit;
    flat->group_size_ = group_size;
    flat->group_rank_ = group_rank;
    at::ScalarType dtype = at::kFloat;
    for (const auto& param : unit->parameters(/*recurse=*/true)) {
      const auto found = names.find(param.unsafeGetTensorImpl());
      const std::string name = found != names.end() ? found->second : "?";
      // A tied weight (GPT-2's embedding and head) lives in the first unit that has it; a later
      // unit borrows that unit's full buffer for its forward and backward.
      const auto owner = owner_of.find(param.unsafeGetTensorImpl());
      if (owner != owner_of.end()) {
        const int lender = owner->second;
        if (lender != flat->index_ &&
            std::find(flat->borrows_.begin(), flat->borrows_.end(), lender) == flat->borrows_.end()) {
          flat->borrows_.push_back(lender);
        }
        continue;
      }
      owner_of.emplace(param.unsafeGetTensorImpl(), flat->index_);
      if (flat->params_.empty()) {
        dtype = param.scalar_type();
        flat->name_ = name.substr(0, name.find(".inner."));
      }
      EDIT_CHECK(param.scalar_type() == dtype, "unit ", flat->name_, " mixes dtypes (", name, " is ", param.scalar_type(), ", others ", dtype,
                 "); give all parameters of a unit one dtype");
      flat->params_.push_back({name, param, flat->numel_, param.numel()});
      flat->numel_ += param.numel();
    }
    EDIT_CHECK(flat->numel_ > 0, "unit ", flat->index_, " has no parameters; wrap only blocks that have weights");
    flat->padded_numel_ = (flat->numel_ + group_size - 1) / group_size * group_size;
    units_.push_back(std::move(flat));
  }
  EDIT_CHECK(!units_.empty(), "the model has no edit::shard::Unit; register its blocks as Units (see unit.h)");

  std::string orphans;
  for (const auto& [impl, name] : names) {
    if (!owner_of.count(impl)) orphans += (orphans.empty() ? "" : ", ") + name;
  }
  EDIT_CHECK(orphans.empty(), "parameters outside every Unit: ", orphans,
             "; wrap the modules that hold them in edit::shard::Unit (embeddings and heads too)");

  for (auto& owned_unit : units_) {
    FlatUnit& unit = *owned_unit;
    const at::Tensor first = unit.params_.front().param;
    const at::ScalarType master = first.scalar_type();
    const at::ScalarType compute =
        options_.compute_dtype == at::ScalarType::Undefined ? master : options_.compute_dtype;
    const at::ScalarType reduce = options_.reduce_dtype == at::ScalarType::Undefined ? master : options_.reduce_dtype;
    EDIT_CHECK(unit.index_ == 0 || mixed_ == (compute != master), "unit ", unit.name_, " has dtype ", master,
               " unlike the units before it; give all units one dtype when computing in ", compute);
    mixed_ = compute != master;
    c10::NoGradGuard no_grad;
    at::Tensor master_full = at::zeros({unit.padded_numel_}, first.options().requires_grad(false));
    for (const auto& p : unit.params_) master_full.narrow(0, p.offset, p.numel).copy_(p.param.detach().reshape({-1}));
    // Every rank of the group must start from the same weights: shard rank 0's win.
    if (group_size > 1) group_->broadcast(master_full, 0)->wait();
    unit.full_ = mixed_ ? master_full.to(compute) : master_full;
    unit.full_grad_ = at::zeros_like(unit.full_);
    for (const auto& p : unit.params_) {
      p.param.set_data(unit.full_.narrow(0, p.offset, p.numel).view(p.param.sizes()));
      // Gradients accumulate in place into views of the flat gradient (autograd adds into an
      // existing .grad), so no per-parameter gradient tensors are ever created.
      p.param.mutable_grad() = unit.full_grad_.narrow(0, p.offset, p.numel).view(p.param.sizes());
    }
    memory_.model_param_bytes += unit.numel_ * static_cast<std::int64_t>(master_full.element_size());
    if (group_size == 1) {
      // Mixed precision keeps the master shard beside the compute copy (refreshed every forward)
      // and adds each backward's gradient into a master-dtype gradient.
      unit.shard_ = master_full;
      unit.grad_shard_ = mixed_ ? at::zeros_like(master_full) : unit.full_grad_;
      unit.full_allocated_ = unit.gathered_ = true;
    } else {
      unit.shard_ = master_full.narrow(0, unit.shard_offset(), unit.shard_numel()).clone();
      unit.grad_shard_ = at::zeros_like(unit.shard_);
      if (mixed_) unit.shard_compute_ = at::empty_like(unit.shard_, unit.shard_.options().dtype(compute));
      unit.scatter_out_ = at::empty_like(unit.shard_, unit.shard_.options().dtype(reduce));
      for (const auto& p : unit.params_) p.param.mutable_grad() = at::Tensor();
      compat::release_storage(unit.full_);
      compat::release_storage(unit.full_grad_);
    }
    memory_.shard_bytes += bytes_of(unit.shard_) + bytes_of(unit.grad_shard_);
    if (unit.shard_compute_.defined()) memory_.shard_bytes += bytes_of(unit.shard_compute_);
    if (group_size == 1 && mixed_) memory_.shard_bytes += bytes_of(unit.full_) + bytes_of(unit.full_grad_);
    const bool inner_unit = unit.index_ > 0 && unit.index_ + 1 < static_cast<int>(units_.size());
    unit.module_->attach(this, unit.index_, options_.activation_checkpointing && inner_unit);
  }
}

ShardedModel::~ShardedModel() {
  for (auto& unit : units_) {
    try {
      if (unit->gather_work_) unit->gather_work_->wait();
      if (unit->scatter_work_) unit->scatter_work_->wait();
    } catch (...) {
      // The group already failed; the error reached whoever waited first.
    }
    unit->module_->attach(nullptr, -1);
  }
}

int ShardedModel::add_hook(HookPoint point, Hook hook) {
  hooks_.push_back({next_hook_id_, point, std::move(hook)});
  return next_hook_id_++;
}

void ShardedModel::remove_hook(int id) {
  hooks_.erase(std::remove_if(hooks_.begin(), hooks_.end(), [id](const Subscription& s) { return s.id == id; }),
               hooks_.end());
}

void ShardedModel::fire(HookPoint point, int unit) {
  note(to_string(point), unit);
  for (const auto& subscription : hooks_) {
    if (subscription.point == point) subscription.hook(unit);
  }
}

void ShardedModel::note(const char* event, int unit) {
  if (options_.trace) trace_.push_back(std::string(event) + " " + std::to_string(unit));
}

// --- gather / free -----------------------------------------------------------------------------

void ShardedModel::allocate_full(FlatUnit& unit) {
  if (unit.full_allocated_) return;
  const auto bytes = bytes_of(unit.full_);
  compat::reallocate_storage(unit.full_, static_cast<size_t>(bytes));
  unit.full_allocated_ = true;
  memory_.full_param_bytes += bytes;
  memory_.peak_full_param_bytes = std::max(memory_.peak_full_param_bytes, memory_.full_param_bytes);
}

void ShardedModel::issue_gather(FlatUnit& unit, bool for_forward) {
  if (unit.gathered_ || unit.gather_work_) return;
  if (for_forward && !unit.pre_gather_fired_) {
    unit.pre_gather_fired_ = true;
    fire(HookPoint::kPreGather, unit.index_);
  }
  // A forward gathers what the shard holds now (after pre_gather's rewrite); a backward gathers
  // what its forward used: the shard does not change between the two.
  if (for_forward) cast_shard_for_compute(unit);
  allocate_full(unit);
  note("gather", unit.index_);
  unit.gather_work_ = group_->all_gather(unit.full_, mixed_ ? unit.shard_compute_ : unit.shard_);
}

void ShardedModel::ensure_gathered(FlatUnit& unit) {
  if (unit.gathered_) return;
  issue_gather(unit, /*for_forward=*/false);
  unit.gather_work_->wait();
  unit.gather_work_.reset();
  unit.gathered_ = true;
}

void ShardedModel::cast_shard_for_compute(FlatUnit& unit) {
  if (!mixed_) return;
  c10::NoGradGuard no_grad;
  (group_->size() == 1 ? unit.full_ : unit.shard_compute_).copy_(unit.shard_);
}

void ShardedModel::release_full(FlatUnit& unit) {
  if (group_->size() == 1 || !unit.full_allocated_) return;
  if (unit.gather_work_) {  // a prefetch nobody used: let it land before freeing its buffer
    unit.gather_work_->wait();
    unit.gather_work_.reset();
  }
  compat::release_storage(unit.full_);
  unit.full_allocated_ = false;
  unit.gathered_ = false;
  memory_.full_param_bytes -= bytes_of(unit.full_);
  note("free", unit.index_);
}

// --- forward -----------------------------------------------------------------------------------

void ShardedModel::before_unit_forward(int index, const at::Tensor& /*input*/) {
  fire(HookPoint::kPreForward, index);
  FlatUnit& unit = *units_[static_cast<size_t>(index)];
  if (group_->size() == 1) {
    fire(HookPoint::kPreGather, index);
    cast_shard_for_compute(unit);
    return;
  }
  issue_gather(unit, /*for_forward=*/true);
  if (options_.prefetch && index + 1 < num_units()) issue_gather(*units_[static_cast<size_t>(index) + 1], true);
  ensure_gathered(unit);
  for (int lender : unit.borrows_) ensure_gathered(*units_[static_cast<size_t>(lender)]);
}

at::Tensor ShardedModel::after_unit_forward(int index, at::Tensor output) {
  FlatUnit& unit = *units_[static_cast<size_t>(index)];
  unit.pre_gather_fired_ = false;  // the next forward gathers (and fires pre_gather) anew
  release_full(unit);
  for (int lender : unit.borrows_) release_full(*units_[static_cast<size_t>(lender)]);
  fire(HookPoint::kPostForward, index);
  unit.output_requires_grad_ = output.requires_grad();
  if (output.requires_grad()) {
    // pre_backward: the gradient of this unit's output is complete, its backward is next.
    output.register_hook([this, index](const at::Tensor&) { on_pre_backward(index); });
  }
  return output;
}

// --- backward ----------------------------------------------------------------------------------

void ShardedModel::on_pre_backward(int index) {
  // Units after this one have run their backward by now (their parameters' gradients are
  // accumulated before the engine moves on to this unit's nodes): scatter their gradients.
  finish_pending_backward(index);
  fire(HookPoint::kPreBackward, index);
  FlatUnit& unit = *units_[static_cast<size_t>(index)];
  start_backward(unit);
  // A borrowed (tied) weight's gradient accumulates into its lender's flat gradient, which stays
  // alive until the lender's own backward is done.
  for (int lender : unit.borrows_) start_backward(*units_[static_cast<size_t>(lender)]);
  // The previous unit runs its backward next, unless its output needed no grad (a frozen
  // embedding): then it has none, and a gather for it would only outlive the step.
  if (group_->size() > 1 && options_.prefetch && index > 0 &&
      units_[static_cast<size_t>(index) - 1]->output_requires_grad_) {
    issue_gather(*units_[static_cast<size_t>(index) - 1], /*for_forward=*/false);
  }
}

void ShardedModel::start_backward(FlatUnit& unit) {
  if (group_->size() > 1) ensure_gathered(unit);
  if (unit.in_backward_) return;  // a borrower started it: keep what has accumulated
  unit.in_backward_ = true;
  if (group_->size() == 1) return;
  const auto bytes = bytes_of(unit.full_grad_);
  compat::reallocate_storage(unit.full_grad_, static_cast<size_t>(bytes));
  unit.full_grad_.zero_();
  memory_.full_grad_bytes += bytes;
  memory_.peak_full_grad_bytes = std::max(memory_.peak_full_grad_bytes, memory_.full_grad_bytes);
  for (const auto& p : unit.params_) {
    p.param.mutable_grad() = unit.full_grad_.narrow(0, p.offset, p.numel).view(p.param.sizes());
  }
}

void ShardedModel::finish_pending_backward(int above_unit) {
  for (int u = num_units() - 1; u > above_unit; --u) {
    if (units_[static_cast<size_t>(u)]->in_backward_) post_backward(*units_[static_cast<size_t>(u)]);
  }
}

void ShardedModel::post_backward(FlatUnit& unit) {
  unit.in_backward_ = false;
  if (group_->size() > 1) {
    for (const auto& p : unit.params_) p.param.mutable_grad() = at::Tensor();
    note("reduce_scatter", unit.index_);
    at::Tensor input = unit.full_grad_;
    if (input.scalar_type() != unit.scatter_out_.scalar_type()) {
      unit.scatter_in_ = input.to(unit.scatter_out_.scalar_type());
      input = unit.scatter_in_;
    }
    unit.scatter_work_ = group_->reduce_scatter(unit.scatter_out_, input, {comm::ReduceOp::kAvg});
    release_full(unit);
    for (int lender : unit.borrows_) release_full(*units_[static_cast<size_t>(lender)]);
    // The previous unit's scatter was issued one unit of compute ago: land it and free its full
    // gradient, so at most two full gradients are alive at any time.
    for (int later = unit.index_ + 1; later < num_units(); ++later) wait_grad(later);
  } else if (mixed_) {
    // The compute-dtype gradient of this backward goes into the master-dtype one.
    c10::NoGradGuard no_grad;
    unit.grad_shard_.add_(unit.full_grad_);
    unit.full_grad_.zero_();
  }
  fire(HookPoint::kPostBackward, unit.index_);
}

void ShardedModel::wait_grad(int index) {
  FlatUnit& unit = *units_.at(static_cast<size_t>(index));
  if (!unit.scatter_work_) return;
  unit.scatter_work_->wait();
  unit.scatter_work_.reset();
  unit.scatter_in_ = at::Tensor();
  unit.grad_shard_.add_(unit.scatter_out_);
  compat::release_storage(unit.full_grad_);
  memory_.full_grad_bytes -= bytes_of(unit.full_grad_);
}

void ShardedModel::backward(const at::Tensor& loss) {
  loss.backward();
  finish_pending_backward(-1);
  for (int u = 0; u < num_units(); ++u) wait_grad(u);
  // A prefetch for a unit whose backward never came (its output was unused by the loss) must not
  // survive the step: the next forward would take that gather, made before the optimizer changed
  // the shard, for its own, read the old weights and skip pre_gather.
  for (auto& unit : units_) release_full(*unit);
}

void ShardedModel::zero_grad() {
  for (auto& unit : units_) unit->grad_shard_.zero_();
}

std::vector<at::Tensor> ShardedModel::grad_shards() const {
  std::vector<at::Tensor> grads;
  grads.reserve(units_.size());
  for (const auto& unit : units_) grads.push_back(unit->grad_shard_);
  return grads;
}

double ShardedModel::clip_grad_norm(double max_norm) { return clip_grad_norm_queued(max_norm).item<double>(); }

at::Tensor ShardedModel::grad_norm_queued() { return norm_of(grad_shards()); }

at::Tensor ShardedModel::norm_of(const std::vector<at::Tensor>& grads) {
  // Each unit's norm in the gradients' own dtype (asking for a double result makes LibTorch 1.13
  // copy the whole gradient to double first: 20x slower on the CPU), squared and summed in double
  // on the gradients' device. The foreach ops are one launch for all units on a GPU (per unit on
  // the CPU, the same kernels as before).
  at::Tensor sum_sq = at::stack(at::_foreach_norm(grads, 2)).to(at::kDouble).square().sum().reshape({1});
  if (group_->size() > 1) group_->all_reduce(sum_sq)->wait();
  return sum_sq.sqrt();
}

at::Tensor ShardedModel::clip_grad_norm_queued(double max_norm) {
  std::vector<at::Tensor> grads = grad_shards();
  const at::Tensor norm = norm_of(grads);
  if (!norm.is_cuda()) {
    // On the CPU the read costs nothing, and a step under the limit skips a pass over the gradients.
    const double coefficient = max_norm / (norm.item<double>() + 1e-6);
    if (coefficient < 1.0) at::_foreach_mul_(grads, coefficient);
    return norm;
  }
  // On a GPU the factor stays there (as torch's clip_grad_norm_ does it): a factor of 1 leaves the
  // gradients bit for bit as they were, and the host queues the optimizer without waiting.
  const at::Tensor coefficient = (at::full_like(norm, max_norm) / (norm + 1e-6)).clamp_max(1.0).to(grads.front().scalar_type());
  for (at::Tensor& grad : grads) grad.mul_(coefficient);
  return norm;
}

std::vector<std::pair<std::string, at::Tensor>> ShardedModel::gather_full_parameters() {
  std::vector<std::pair<std::string, at::Tensor>> out;
  for (auto& owned_unit : units_) {
    FlatUnit& unit = *owned_unit;
    at::Tensor full = at::empty({unit.padded_numel_}, unit.shard_.options());
    if (group_->size() > 1) {
      group_->all_gather(full, unit.shard_)->wait();
    } else {
      full.copy_(unit.shard_);
    }
    for (const auto& p : unit.params_) out.emplace_back(p.name, full.narrow(0, p.offset, p.numel).view(p.param.sizes()));
  }
  return out;
}

StateDict ShardedModel::state_dict() {
  StateDict state;
  for (auto& unit : units_) state.put("unit" + std::to_string(unit->index_) + ".shard", unit->shard_);
  return state;
}

void ShardedModel::load_state_dict(const StateDict& state) {
  for (auto& unit : units_) state.copy_into("the model", "unit" + std::to_string(unit->index_) + ".shard", unit->shard_);
}

ShardMemory ShardedModel::memory() const { return memory_; }

at::Device ShardedModel::device() const { return units_.front()->shard_.device(); }

void ShardedModel::reset_peak_memory() {
  memory_.peak_full_param_bytes = memory_.full_param_bytes;
  memory_.peak_full_grad_bytes = memory_.full_grad_bytes;
}

}  // namespace edit::shard
