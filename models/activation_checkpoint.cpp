// Implementation of models/activation_checkpoint.h.
#include "models/activation_checkpoint.h"

#include <ATen/autocast_mode.h>

#include <mutex>

namespace cw {

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

struct Closure : torch::CustomClassHolder {
  std::function<torch::Tensor(const torch::Tensor&)> fn;
};

// The autocast settings of the CPU and CUDA at the first pass (the backward pass may run on another thread).
struct AutocastState {
  bool cpu = false, cuda = false;
  at::ScalarType cpu_dtype = at::kBFloat16, cuda_dtype = at::kBFloat16;
  static AutocastState now() {
    return {at::autocast::is_autocast_enabled(at::kCPU), at::autocast::is_autocast_enabled(at::kCUDA),
            at::autocast::get_autocast_dtype(at::kCPU), at::autocast::get_autocast_dtype(at::kCUDA)};
  }
  void apply() const {
    at::autocast::set_autocast_enabled(at::kCPU, cpu), at::autocast::set_autocast_dtype(at::kCPU, cpu_dtype);
    at::autocast::set_autocast_enabled(at::kCUDA, cuda), at::autocast::set_autocast_dtype(at::kCUDA, cuda_dtype);
  }
};

// The generator the layer draws from (dropout): the CPU's, or X's CUDA device's.
at::Generator generator_of(const torch::Tensor& x) {
  return x.is_cuda() ? at::globalContext().defaultGenerator(x.device()) : at::detail::getDefaultCPUGenerator();
}
torch::Tensor state_of(at::Generator g) {
  std::lock_guard<std::mutex> lock(g.mutex());
  return g.get_state();
}
void set_state(at::Generator g, const torch::Tensor& state) {
  std::lock_guard<std::mutex> lock(g.mutex());
  g.set_state(state);
}

struct Recompute : torch::autograd::Function<Recompute> {
  // ANCHOR requires gradients, so the output has a graph even when x has none (frozen embeddings under LoRA).
  static torch::Tensor forward(AutogradContext* ctx, torch::Tensor x, torch::Tensor anchor,
                               c10::intrusive_ptr<Closure> fn) {
    const auto state = AutocastState::now();
    ctx->saved_data["fn"] = c10::IValue::make_capsule(fn);
    ctx->saved_data["x_grad"] = x.requires_grad();
    ctx->saved_data["cpu"] = state.cpu, ctx->saved_data["cuda"] = state.cuda;
    ctx->saved_data["cpu_dtype"] = int64_t(state.cpu_dtype), ctx->saved_data["cuda_dtype"] = int64_t(state.cuda_dtype);
    ctx->save_for_backward({x});
    ctx->saved_data["rng"] = state_of(generator_of(x));  // the recompute draws the same dropout masks
    return fn->fn(x);  // gradients are off inside Function::forward
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto fn = c10::static_intrusive_pointer_cast<Closure>(ctx->saved_data["fn"].toCapsule());
    const bool x_grad = ctx->saved_data["x_grad"].toBool();
    auto x = ctx->get_saved_variables()[0].detach().requires_grad_(x_grad);
    AutocastState first{ctx->saved_data["cpu"].toBool(), ctx->saved_data["cuda"].toBool(),
                        at::ScalarType(ctx->saved_data["cpu_dtype"].toInt()),
                        at::ScalarType(ctx->saved_data["cuda_dtype"].toInt())};
    const auto here = AutocastState::now();
    auto gen = generator_of(x);
    const auto rng_now = state_of(gen);
    first.apply();
    set_state(gen, ctx->saved_data["rng"].toTensor());
    torch::Tensor y;
    {
      torch::AutoGradMode with_grad(true);
      y = fn->fn(x);
    }
    set_state(gen, rng_now);
    here.apply();
    if (y.requires_grad()) torch::autograd::backward({y}, {grads[0]});
    return {x_grad ? x.grad() : torch::Tensor(), torch::Tensor(), torch::Tensor()};
  }
};

}  // namespace

torch::Tensor recompute_in_backward(std::function<torch::Tensor(const torch::Tensor&)> fn, const torch::Tensor& x) {
  auto closure = c10::make_intrusive<Closure>();
  closure->fn = std::move(fn);
  auto anchor = torch::zeros({}, x.options().dtype(torch::kFloat32).requires_grad(true));
  return Recompute::apply(x, anchor, closure);
}

}  // namespace cw
