#include "edit/shard/flat_adamw.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/core/GradMode.h>

#include <cmath>

#include "edit/core/check.h"
#include "edit/core/torch_compat.h"
#include "adamw_pass.h"

namespace edit::shard {

namespace {

bool fits_cpu_pass(const at::Tensor& t) {
  return t.device().is_cpu() && t.scalar_type() == at::kFloat && t.is_contiguous();
}

}  // namespace

FrozenElements::FrozenElements(ShardedModel& model) {
  const auto frozen = [](const std::string&, const at::Tensor& param) { return !param.requires_grad(); };
  const auto trainable = [](const std::string&, const at::Tensor& param) { return param.requires_grad(); };
  for (int u = 0; u < model.num_units(); ++u) {
    const FlatUnit& unit = model.unit(u);
    // Padding belongs to no parameter: it is in neither mask and stays zero by itself (zero
    // gradient, zero moments), so only a unit with frozen elements pays for keeping them.
    const at::Tensor positions = unit.shard_mask(frozen).nonzero().reshape({-1});
    positions_.push_back(positions.numel() > 0 ? positions : at::Tensor());
    whole_unit_.push_back(unit.shard_mask(trainable).sum().item<double>() == 0.0);
  }
}

std::vector<at::Tensor> FrozenElements::keep(int unit, std::initializer_list<at::Tensor> tensors) const {
  std::vector<at::Tensor> kept;
  const at::Tensor& positions = positions_.at(static_cast<size_t>(unit));
  if (!positions.defined()) return kept;
  for (const at::Tensor& t : tensors) kept.push_back(t.index_select(0, positions));
  return kept;
}

void FrozenElements::put_back(int unit, std::initializer_list<at::Tensor> tensors,
                              const std::vector<at::Tensor>& kept) const {
  if (kept.empty()) return;
  const at::Tensor& positions = positions_.at(static_cast<size_t>(unit));
  size_t i = 0;
  for (at::Tensor t : tensors) t.index_copy_(0, positions, kept.at(i++));
}

FlatSgd::FlatSgd(ShardedModel& model, double lr) : model_(model), lr_(lr), frozen_(model) {}

void FlatSgd::step() {
  c10::NoGradGuard no_grad;
  for (int u = 0; u < model_.num_units(); ++u) {
    if (frozen_.whole_unit(u)) continue;
    at::Tensor& shard = model_.unit(u).shard();
    const auto kept = frozen_.keep(u, {shard});
    shard.add_(model_.unit(u).grad_shard(), -lr_);
    frozen_.put_back(u, {shard}, kept);
  }
}

bool decay_matrices_only(const std::string& /*name*/, const at::Tensor& param) { return param.dim() >= 2; }

void AdamWOptions::validate() const {
  EDIT_CHECK(lr >= 0 && std::isfinite(lr), "AdamW lr ", lr, " out of range; use a finite lr >= 0 (--lr)");
  EDIT_CHECK(eps > 0 && std::isfinite(eps), "AdamW eps ", eps, " out of range; use a finite eps > 0");
  EDIT_CHECK(weight_decay >= 0 && std::isfinite(weight_decay), "AdamW weight decay ", weight_decay,
             " out of range; use a finite value >= 0 (--weight-decay; 0: none)");
  EDIT_CHECK(beta1 >= 0 && beta1 < 1 && beta2 >= 0 && beta2 < 1, "AdamW betas (", beta1, ", ", beta2,
             ") must lie in [0, 1) (--beta1, --beta2)");
}

FlatAdamW::FlatAdamW(ShardedModel& model, AdamWOptions options, DecayPredicate decay)
    : model_(model), options_(options), frozen_(model) {
  options_.validate();
  for (int u = 0; u < model.num_units(); ++u) {
    FlatUnit& unit = model.unit(u);
    exp_avg_.push_back(at::zeros_like(unit.shard()));
    exp_avg_sq_.push_back(at::zeros_like(unit.shard()));
    // Runs of consecutive decaying elements, read off the mask once.
    const at::Tensor mask = unit.shard_mask(decay).to(at::kCPU, at::kBool).contiguous();
    const bool* is_decay = mask.data_ptr<bool>();
    std::vector<std::pair<std::int64_t, std::int64_t>> runs;
    for (std::int64_t i = 0; i < mask.numel(); ++i) {
      if (!is_decay[i]) continue;
      if (!runs.empty() && runs.back().first + runs.back().second == i) {
        ++runs.back().second;
      } else {
        runs.emplace_back(i, 1);
      }
    }
    decay_runs_.push_back(std::move(runs));
  }
  const at::Tensor& first = model.unit(0).shard();
  use_fused_ = options_.fused && EDIT_TORCH_AT_LEAST(2, 1) && first.is_cuda() && first.scalar_type() == at::kFloat;
}

void FlatAdamW::fused_step() {
#if EDIT_TORCH_AT_LEAST(2, 1)
  // Two lists of shard slices, decaying and not, each one launch of the multi-tensor kernel.
  std::vector<at::Tensor> params[2], grads[2], ms[2], vs[2];
  std::vector<std::vector<at::Tensor>> kept(static_cast<size_t>(model_.num_units()));
  const auto add = [&](int decays, int u, std::int64_t begin, std::int64_t length) {
    if (length == 0) return;
    FlatUnit& unit = model_.unit(u);
    params[decays].push_back(unit.shard().narrow(0, begin, length));
    grads[decays].push_back(unit.grad_shard().narrow(0, begin, length));
    ms[decays].push_back(exp_avg_[static_cast<size_t>(u)].narrow(0, begin, length));
    vs[decays].push_back(exp_avg_sq_[static_cast<size_t>(u)].narrow(0, begin, length));
  };
  for (int u = 0; u < model_.num_units(); ++u) {
    if (frozen_.whole_unit(u)) continue;
    kept[static_cast<size_t>(u)] =
        frozen_.keep(u, {model_.unit(u).shard(), exp_avg_[static_cast<size_t>(u)], exp_avg_sq_[static_cast<size_t>(u)]});
    std::int64_t at = 0;
    for (const auto& [begin, length] : decay_runs_[static_cast<size_t>(u)]) {
      add(0, u, at, begin - at);
      add(options_.weight_decay != 0 ? 1 : 0, u, begin, length);
      at = begin + length;
    }
    add(0, u, at, model_.unit(u).shard().numel() - at);
  }
  // The kernel reads the step count (already advanced) from a device tensor per slice. Nothing to
  // step on this rank (every parameter frozen) launches nothing.
  at::Tensor step;
  for (int decays = 0; decays < 2; ++decays) {
    if (params[decays].empty()) continue;
    if (!step.defined()) step = at::full({}, static_cast<double>(steps_), params[decays][0].options());
    const std::vector<at::Tensor> steps(params[decays].size(), step);
    at::_fused_adamw_(params[decays], grads[decays], ms[decays], vs[decays], {}, steps, options_.lr, options_.beta1,
                      options_.beta2, decays ? options_.weight_decay : 0.0, options_.eps, /*amsgrad=*/false,
                      /*maximize=*/false);
  }
  for (int u = 0; u < model_.num_units(); ++u) {
    frozen_.put_back(u, {model_.unit(u).shard(), exp_avg_[static_cast<size_t>(u)], exp_avg_sq_[static_cast<size_t>(u)]},
                     kept[static_cast<size_t>(u)]);
  }
#else
  EDIT_FAIL("the fused AdamW needs LibTorch 2.1 or later");
#endif
}

void FlatAdamW::step() {
  ++steps_;
  const double lr = options_.lr;
  const double bias_correction1 = 1.0 - std::pow(options_.beta1, static_cast<double>(steps_));
  const double bias_correction2 = 1.0 - std::pow(options_.beta2, static_cast<double>(steps_));
  const double step_size = lr / bias_correction1;
  const double bias_correction2_sqrt = std::sqrt(bias_correction2);
  c10::NoGradGuard no_grad;
  if (use_fused_) {
    fused_step();
    return;
  }
  const detail::AdamWFactors factors{
      static_cast<float>(options_.beta1),        static_cast<float>(1.0 - options_.beta1),
      static_cast<float>(options_.beta2),        static_cast<float>(1.0 - options_.beta2),
      static_cast<float>(bias_correction2_sqrt), static_cast<float>(options_.eps),
      static_cast<float>(-step_size)};
  const float decay = static_cast<float>(1.0 - lr * options_.weight_decay);
  for (int u = 0; u < model_.num_units(); ++u) {
    if (frozen_.whole_unit(u)) continue;
    FlatUnit& unit = model_.unit(u);
    at::Tensor& param = unit.shard();
    const at::Tensor& grad = unit.grad_shard();
    at::Tensor& m = exp_avg_[static_cast<size_t>(u)];
    at::Tensor& v = exp_avg_sq_[static_cast<size_t>(u)];
    // One pass over the whole shard, then the frozen elements get their values back: the
    // trainable ones see exactly torch's arithmetic, and nothing is copied when none is frozen.
    const auto kept = frozen_.keep(u, {param, m, v});
    if (options_.fused && fits_cpu_pass(param) && fits_cpu_pass(grad) && fits_cpu_pass(m) && fits_cpu_pass(v)) {
      // The runs that decay and the gaps between them, each split over the intra-op threads.
      const auto pass = [&](std::int64_t begin, std::int64_t length, float factor) {
        at::parallel_for(begin, begin + length, 1 << 15, [&](std::int64_t from, std::int64_t to) {
          detail::adamw_pass(param.data_ptr<float>() + from, grad.data_ptr<float>() + from,
                             m.data_ptr<float>() + from, v.data_ptr<float>() + from, to - from, factor, factors);
        });
      };
      std::int64_t at = 0;
      for (const auto& [begin, length] : decay_runs_[static_cast<size_t>(u)]) {
        pass(at, begin - at, 1.0f);
        pass(begin, length, decay);
        at = begin + length;
      }
      pass(at, param.numel() - at, 1.0f);
      frozen_.put_back(u, {param, m, v}, kept);
      continue;
    }
    if (options_.weight_decay != 0) {
      // torch's p.mul_(1 - lr * wd) (the same float factor), on the decaying elements only.
      for (const auto& [begin, length] : decay_runs_[static_cast<size_t>(u)]) {
        param.narrow(0, begin, length).mul_(1.0 - lr * options_.weight_decay);
      }
    }
    m.mul_(options_.beta1).add_(grad, 1.0 - options_.beta1);
    v.mul_(options_.beta2).addcmul_(grad, grad, 1.0 - options_.beta2);
    const at::Tensor denom = (v.sqrt() / bias_correction2_sqrt).add_(options_.eps);
    param.addcdiv_(m, denom, -step_size);
    frozen_.put_back(u, {param, m, v}, kept);
  }
}

StateDict FlatAdamW::state_dict() {
  StateDict state;
  state.put("steps", steps_);
  for (int u = 0; u < model_.num_units(); ++u) {
    state.put("unit" + std::to_string(u) + ".exp_avg", exp_avg_[static_cast<size_t>(u)]);
    state.put("unit" + std::to_string(u) + ".exp_avg_sq", exp_avg_sq_[static_cast<size_t>(u)]);
  }
  return state;
}

void FlatAdamW::load_state_dict(const StateDict& state) {
  steps_ = state.integer("AdamW", "steps");
  for (int u = 0; u < model_.num_units(); ++u) {
    state.copy_into("AdamW", "unit" + std::to_string(u) + ".exp_avg", exp_avg_[static_cast<size_t>(u)]);
    state.copy_into("AdamW", "unit" + std::to_string(u) + ".exp_avg_sq", exp_avg_sq_[static_cast<size_t>(u)]);
  }
}

}  // namespace edit::shard
