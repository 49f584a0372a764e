// Implementation of train/adamw.h.
#include "train/adamw.h"

#include <ATen/Parallel.h>

#include <cmath>

#include "common/env.h"
#include "common/error.h"
#include "kernels/adamw/adamw_math.h"
#include "models/weight_copies.h"

#ifdef CHUNKWISE_CUDA
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include "kernels/train_ops.h"
#endif

namespace cw {

bool default_weight_decay(const std::string& name, const torch::Tensor& p, bool decay_embeddings, bool decay_norms) {
  if (p.dim() < 2) return decay_norms;
  if (name.find("embed") != std::string::npos) return decay_embeddings;
  return true;
}

AdamW::AdamW(const std::vector<std::pair<std::string, torch::Tensor>>& params, const std::vector<bool>& decay,
             AdamWOptions opt)
    : opt_(opt) {
  for (size_t i = 0; i < params.size(); ++i) {
    const auto& p = params[i].second;
    slots_.push_back({params[i].first, p, torch::zeros_like(p, torch::MemoryFormat::Preserve),
                      torch::zeros_like(p, torch::MemoryFormat::Preserve), decay[i]});
  }
}

namespace {

// CHUNKWISE_ADAMW_ATEN=1: ATen's fused kernel instead of ours (to measure one against the other).
EnvSwitch g_aten_adamw("CHUNKWISE_ADAMW_ATEN", false);

struct Group {
  std::vector<torch::Tensor> p, g, m, v;
};

// Ours takes contiguous fp32 tensors on one device; anything else goes to ATen's kernel.
bool ours_fits(const Group& gr) {
  for (size_t i = 0; i < gr.p.size(); ++i)
    for (const auto* t : {&gr.p[i], &gr.g[i], &gr.m[i], &gr.v[i]})
      if (t->scalar_type() != torch::kFloat32 || !t->is_contiguous() || t->device() != gr.p.front().device())
        return false;
  return gr.p.front().is_cpu() || gr.p.front().is_cuda();
}

// The bf16 copies the forward pass reads (models/weight_copies.h) of the group's parameters: a pointer per
// parameter, null where it has none.
std::vector<uint16_t*> bf16_copies(const Group& gr) {
  std::vector<uint16_t*> out;
  for (const auto& p : gr.p) {
    const auto c = registered_copy(p);
    const bool fits = c.defined() && c.scalar_type() == torch::kBFloat16 && c.is_contiguous() && c.numel() == p.numel();
    out.push_back(fits ? static_cast<uint16_t*>(c.data_ptr()) : nullptr);
  }
  return out;
}

// One group (one weight decay) through kernels/adamw: the CUDA kernel, or on the CPU the same element function
// in a parallel loop; either also writes each parameter's bf16 copy where it has one, and marks it current.
// LR (one element), STEP (0-dim, this step included), SKIP and DIVISOR (one element or undefined) are fp32
// tensors on the parameters' device.
void our_adamw(Group& gr, const torch::Tensor& lr, const torch::Tensor& step, const torch::Tensor& skip,
               const torch::Tensor& divisor, const AdamWOptions& o, double wd) {
  const std::vector<uint16_t*> copies = bf16_copies(gr);
  auto mark_copies = [&] {
    for (size_t i = 0; i < gr.p.size(); ++i)
      if (copies[i]) mark_copy_current(gr.p[i]);
  };
#ifdef CHUNKWISE_CUDA
  if (gr.p.front().is_cuda()) {
    c10::cuda::CUDAGuard guard(gr.p.front().device());
    std::vector<float*> p, m, v;
    std::vector<const float*> g;
    std::vector<int64_t> n;
    for (size_t i = 0; i < gr.p.size(); ++i)
      p.push_back(gr.p[i].data_ptr<float>()), g.push_back(gr.g[i].data_ptr<float>()),
          m.push_back(gr.m[i].data_ptr<float>()), v.push_back(gr.v[i].data_ptr<float>()), n.push_back(gr.p[i].numel());
    kern::cuda::AdamWDevice d;
    d.lr = lr.data_ptr<float>(), d.step = step.data_ptr<float>();
    if (skip.defined()) d.skip = skip.data_ptr<float>();
    if (divisor.defined()) d.divisor = divisor.data_ptr<float>();
    kern::cuda::adamw_update(int(p.size()), p.data(), g.data(), m.data(), v.data(), copies.data(), n.data(), d,
                             o.beta1, o.beta2, float(o.eps), float(wd),
                             at::cuda::getCurrentCUDAStream(gr.p.front().device().index()).stream());
    mark_copies();
    return;
  }
#endif
  if (skip.defined() && skip.item<float>() != 0.f) return mark_copies();  // nothing changed, copies included
  const auto s = kern::adamw_scalars(lr.item<float>(), step.item<float>(), o.beta1, o.beta2, float(o.eps),
                                     float(wd), divisor.defined() ? divisor.item<float>() : 1.f);
  for (size_t i = 0; i < gr.p.size(); ++i) {
    float *p = gr.p[i].data_ptr<float>(), *m = gr.m[i].data_ptr<float>(), *v = gr.v[i].data_ptr<float>();
    const float* g = gr.g[i].data_ptr<float>();
    uint16_t* copy = copies[i];
    at::parallel_for(0, gr.p[i].numel(), 4096, [&](int64_t b, int64_t e) {
      for (int64_t j = b; j < e; ++j) {
        kern::adamw_element(p[j], g[j], m[j], v[j], s);
        if (copy) copy[j] = kern::float_to_bf16(p[j]);
      }
    });
  }
  mark_copies();
}

}  // namespace

void AdamW::fused_step(double lr, const torch::Tensor& lr_tensor, const torch::Tensor& skip,
                       const torch::Tensor& grad_divisor) {
  if (slots_.empty()) return;
  if (!device_counts_) {
    step_tensor_ = torch::full({}, double(steps_), slots_.front().param.options().dtype(torch::kFloat32));
    device_counts_ = true;
  }
  step_tensor_.add_(1.0);  // the kernel reads the count including this step
  for (bool decay : {true, false}) {
    Group gr;
    std::vector<torch::Tensor> steps;
    for (size_t i = 0; i < slots_.size(); ++i) {
      auto& s = slots_[i];
      if (s.decay == decay && s.param.grad().defined() && updates(i))
        gr.p.push_back(s.param), gr.g.push_back(s.param.grad()), gr.m.push_back(s.exp_avg),
            gr.v.push_back(s.exp_avg_sq), steps.push_back(step_tensor_);
    }
    if (gr.p.empty()) continue;
    const double wd = decay ? opt_.weight_decay : 0.0;
    if (!g_aten_adamw.on() && ours_fits(gr)) {
      const auto lr_t = lr_tensor.defined() ? lr_tensor : torch::full({1}, lr, step_tensor_.options());
      our_adamw(gr, lr_t, step_tensor_, skip, grad_divisor, opt_, wd);
      continue;
    }
    std::optional<torch::Tensor> found_inf, grad_scale;
    if (skip.defined()) found_inf = skip.reshape({1});
    if (grad_divisor.defined()) grad_scale = grad_divisor.reshape({1});
    if (lr_tensor.defined())
      at::_fused_adamw_(gr.p, gr.g, gr.m, gr.v, {}, steps, lr_tensor, opt_.beta1, opt_.beta2, wd, opt_.eps,
                        /*amsgrad=*/false, /*maximize=*/false, grad_scale, found_inf);
    else
      at::_fused_adamw_(gr.p, gr.g, gr.m, gr.v, {}, steps, lr, opt_.beta1, opt_.beta2, wd, opt_.eps, /*amsgrad=*/false,
                        /*maximize=*/false, grad_scale, found_inf);
  }
  if (skip.defined()) step_tensor_.sub_(skip.reshape({}));  // a skipped step does not count
}

int64_t AdamW::steps() const {
  return device_counts_ ? int64_t(std::llround(step_tensor_.item<double>())) : steps_;
}

void AdamW::step(double lr) { step(lr, torch::Tensor()); }

void AdamW::step(const torch::Tensor& lr, const torch::Tensor& skip, const torch::Tensor& grad_divisor) {
  if (!opt_.fused) return step(lr.item<double>(), skip, grad_divisor);  // the reference loop reads it back
  torch::NoGradGuard ng;
  fused_step(0.0, lr.reshape({1}).to(torch::kFloat32), skip, grad_divisor);
}

void AdamW::step(double lr, const torch::Tensor& skip, const torch::Tensor& grad_divisor) {
  torch::NoGradGuard ng;
  if (opt_.fused) return fused_step(lr, torch::Tensor(), skip, grad_divisor);
  if (skip.defined() && skip.item<double>() != 0) return;  // the reference path reads the flag back
  const double divisor = grad_divisor.defined() ? grad_divisor.item<double>() : 1.0;
  ++steps_;
  const double bc1 = 1.0 - std::pow(opt_.beta1, double(steps_));
  const double bc2 = 1.0 - std::pow(opt_.beta2, double(steps_));
  for (size_t i = 0; i < slots_.size(); ++i) {
    auto& s = slots_[i];
    if (!s.param.grad().defined() || !updates(i)) continue;
    const auto g = divisor == 1.0 ? s.param.grad() : s.param.grad() / divisor;
    if (s.decay && opt_.weight_decay != 0) s.param.mul_(1.0 - lr * opt_.weight_decay);
    s.exp_avg.mul_(opt_.beta1).add_(g, 1.0 - opt_.beta1);
    s.exp_avg_sq.mul_(opt_.beta2).addcmul_(g, g, 1.0 - opt_.beta2);
    auto denom = (s.exp_avg_sq.sqrt() / std::sqrt(bc2)).add_(opt_.eps);
    s.param.addcdiv_(s.exp_avg, denom, -lr / bc1);
  }
}

void AdamW::zero_grad() {
  for (auto& s : slots_)
    if (s.param.grad().defined()) s.param.mutable_grad() = torch::Tensor();
}

std::vector<std::pair<std::string, torch::Tensor>> AdamW::state_tensors() const {
  std::vector<std::pair<std::string, torch::Tensor>> out;
  for (auto& s : slots_) out.emplace_back("exp_avg." + s.name, s.exp_avg);
  for (auto& s : slots_) out.emplace_back("exp_avg_sq." + s.name, s.exp_avg_sq);
  return out;
}

void AdamW::load_state(const std::map<std::string, torch::Tensor>& tensors, int64_t steps, const std::string& what) {
  torch::NoGradGuard ng;
  for (auto& s : slots_) {
    for (auto* pair : {&s.exp_avg, &s.exp_avg_sq}) {
      std::string key = (pair == &s.exp_avg ? "exp_avg." : "exp_avg_sq.") + s.name;
      auto it = tensors.find(key);
      check(it != tensors.end(), what, ": optimizer state '", key, "' is missing");
      if (!pair->defined()) *pair = torch::zeros_like(s.param, torch::MemoryFormat::Preserve);
      check(it->second.sizes() == pair->sizes(), what, ": optimizer state '", key, "' has shape ",
            it->second.sizes(), " but the parameter has ", pair->sizes());
      pair->copy_(it->second);
    }
  }
  check(tensors.size() == 2 * slots_.size(), what, ": optimizer state has ", tensors.size(),
        " tensors, expected ", 2 * slots_.size(), " (different model?)");
  steps_ = steps;
  device_counts_ = false;
  release_unowned();
}

void AdamW::set_owned(const std::vector<bool>& owned) {
  check(owned.size() == slots_.size(), "optimizer sharding: ", owned.size(), " flags for ", slots_.size(), " parameters");
  owned_ = owned;
  release_unowned();
}

void AdamW::materialize_state() {
  for (auto& s : slots_)
    if (!s.exp_avg.defined())
      s.exp_avg = torch::zeros_like(s.param, torch::MemoryFormat::Preserve),
      s.exp_avg_sq = torch::zeros_like(s.param, torch::MemoryFormat::Preserve);
}

void AdamW::release_unowned() {
  for (size_t i = 0; i < slots_.size(); ++i)
    if (!updates(i)) slots_[i].exp_avg = torch::Tensor(), slots_[i].exp_avg_sq = torch::Tensor();
}

}  // namespace cw
