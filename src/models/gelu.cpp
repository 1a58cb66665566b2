#include "edit/models/gelu.h"

#include <ATen/ATen.h>
#include <torch/csrc/autograd/custom_function.h>

#include <cstdint>
#include <map>
#include <memory>
#include <utility>
#include <vector>

#include "edit/config.h"
#include "edit/core/check.h"
#include "edit/core/profile_scope.h"
#include "onednn.h"

#if EDIT_HAS_ONEDNN
#include <oneapi/dnnl/dnnl.h>
#endif
// oneDNN 3 replaced the operation descriptors this uses; there GELU stays at::gelu.
#if EDIT_HAS_ONEDNN && DNNL_VERSION_MAJOR == 2
#define EDIT_GELU_ONEDNN 1
#else
#define EDIT_GELU_ONEDNN 0
#endif

namespace edit::models {
namespace {

#if EDIT_GELU_ONEDNN
void check(dnnl_status_t status, const char* what) {
  EDIT_CHECK(status == dnnl_success, "oneDNN's GELU failed in ", what, " (status ", static_cast<int>(status),
             "); set EDIT_CPU_GEMM=aten to use LibTorch's instead");
}

// The forward and backward primitives for tensors of one size.
struct GeluPrimitives {
  dnnl_memory_desc_t desc{};
  dnnl_primitive_desc_t forward_pd = nullptr, backward_pd = nullptr;
  dnnl_primitive_t forward = nullptr, backward = nullptr;

  GeluPrimitives(dnnl_engine_t engine, std::int64_t n) {
    dnnl_dims_t dims = {n};
    check(dnnl_memory_desc_init_by_tag(&desc, 1, dims, dnnl_f32, dnnl_a), "a memory descriptor");
    dnnl_eltwise_desc_t forward_desc, backward_desc;
    check(dnnl_eltwise_forward_desc_init(&forward_desc, dnnl_forward_training, dnnl_eltwise_gelu_tanh, &desc, 0.f, 0.f),
          "the forward descriptor");
    check(dnnl_primitive_desc_create(&forward_pd, &forward_desc, nullptr, engine, nullptr), "the forward kernel");
    check(dnnl_primitive_create(&forward, forward_pd), "the forward kernel");
    check(dnnl_eltwise_backward_desc_init(&backward_desc, dnnl_eltwise_gelu_tanh, &desc, &desc, 0.f, 0.f),
          "the backward descriptor");
    check(dnnl_primitive_desc_create(&backward_pd, &backward_desc, nullptr, engine, forward_pd), "the backward kernel");
    check(dnnl_primitive_create(&backward, backward_pd), "the backward kernel");
  }
  ~GeluPrimitives() {
    if (backward != nullptr) dnnl_primitive_destroy(backward);
    if (backward_pd != nullptr) dnnl_primitive_desc_destroy(backward_pd);
    if (forward != nullptr) dnnl_primitive_destroy(forward);
    if (forward_pd != nullptr) dnnl_primitive_desc_destroy(forward_pd);
  }
  GeluPrimitives(const GeluPrimitives&) = delete;
  GeluPrimitives& operator=(const GeluPrimitives&) = delete;
};

// A CPU engine and stream per thread, and the primitives of each size it has seen (a training run
// sees a handful: the MLP's width times the batch shapes of training and evaluation).
class OneDnn {
 public:
  OneDnn() {
    check(dnnl_engine_create(&engine_, dnnl_cpu, 0), "creating a CPU engine");
    check(dnnl_stream_create(&stream_, engine_, dnnl_stream_default_flags), "creating a stream");
  }
  ~OneDnn() {
    by_size_.clear();
    dnnl_stream_destroy(stream_);
    dnnl_engine_destroy(engine_);
  }
  OneDnn(const OneDnn&) = delete;
  OneDnn& operator=(const OneDnn&) = delete;

  static OneDnn& of_this_thread() {
    thread_local OneDnn instance;
    return instance;
  }

  const GeluPrimitives& gelu(std::int64_t n) {
    auto found = by_size_.find(n);
    if (found != by_size_.end()) return *found->second;
    if (by_size_.size() >= 32) by_size_.clear();  // sizes that keep changing: keep a bounded set
    return *by_size_.emplace(n, std::make_unique<GeluPrimitives>(engine_, n)).first->second;
  }

  // Runs `primitive` on the buffers (argument id, data), each of `desc`'s shape, and waits.
  void run(dnnl_primitive_t primitive, const dnnl_memory_desc_t& desc,
           std::initializer_list<std::pair<int, void*>> buffers) {
    std::vector<dnnl_memory_t> memories;
    std::vector<dnnl_exec_arg_t> args;
    dnnl_status_t status = dnnl_success;
    for (const auto& [arg, data] : buffers) {
      dnnl_memory_t memory = nullptr;
      status = dnnl_memory_create(&memory, &desc, engine_, data);
      if (status != dnnl_success) break;
      memories.push_back(memory);
      args.push_back({arg, memory});
    }
    if (status == dnnl_success) {
      status = dnnl_primitive_execute(primitive, stream_, static_cast<int>(args.size()), args.data());
    }
    if (status == dnnl_success) status = dnnl_stream_wait(stream_);
    for (dnnl_memory_t memory : memories) dnnl_memory_destroy(memory);
    check(status, "running a kernel");
  }

 private:
  dnnl_engine_t engine_ = nullptr;
  dnnl_stream_t stream_ = nullptr;
  std::map<std::int64_t, std::unique_ptr<GeluPrimitives>> by_size_;
};

struct OneDnnGelu : public torch::autograd::Function<OneDnnGelu> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x) {
    const ProfileScope scope("models::gelu_tanh (oneDNN)");
    const at::Tensor input = x.contiguous();
    at::Tensor y = at::empty_like(input);
    if (input.numel() > 0) {
      OneDnn& onednn = OneDnn::of_this_thread();
      const GeluPrimitives& gelu = onednn.gelu(input.numel());
      onednn.run(gelu.forward, gelu.desc, {{DNNL_ARG_SRC, input.data_ptr<float>()}, {DNNL_ARG_DST, y.data_ptr<float>()}});
    }
    ctx->save_for_backward({input});
    return y;
  }

  static torch::autograd::tensor_list backward(torch::autograd::AutogradContext* ctx,
                                               torch::autograd::tensor_list grads) {
    const ProfileScope scope("models::gelu_tanh backward (oneDNN)");
    const at::Tensor x = ctx->get_saved_variables()[0];
    const at::Tensor dy = grads[0].contiguous();
    at::Tensor dx = at::empty_like(x);
    if (x.numel() > 0) {
      OneDnn& onednn = OneDnn::of_this_thread();
      const GeluPrimitives& gelu = onednn.gelu(x.numel());
      onednn.run(gelu.backward, gelu.desc,
                 {{DNNL_ARG_SRC, x.data_ptr<float>()},
                  {DNNL_ARG_DIFF_DST, dy.data_ptr<float>()},
                  {DNNL_ARG_DIFF_SRC, dx.data_ptr<float>()}});
    }
    return {dx};
  }
};
#endif

bool takes_onednn(const at::Tensor& x) {
  return EDIT_GELU_ONEDNN && detail::onednn_enabled() && x.device().is_cpu() && x.scalar_type() == at::kFloat &&
         x.layout() == at::kStrided;
}

}  // namespace

at::Tensor gelu_tanh(const at::Tensor& x) {
#if EDIT_GELU_ONEDNN
  if (takes_onednn(x)) return OneDnnGelu::apply(x);
#endif
  return at::gelu(x, "tanh");
}

const char* gelu_backend() { return takes_onednn(at::empty({0})) ? "onednn" : "aten"; }

}  // namespace edit::models
