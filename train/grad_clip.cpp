// Implementation of train/grad_clip.h.
#include "train/grad_clip.h"

#include <cmath>

#include "common/error.h"

namespace cw {

namespace {
std::vector<torch::Tensor> defined_grads(const std::vector<torch::Tensor>& params) {
  std::vector<torch::Tensor> grads;
  for (const auto& p : params)
    if (p.grad().defined()) grads.push_back(p.grad());
  for (const auto& g : grads)
    check(g.device() == grads.front().device() && g.scalar_type() == grads.front().scalar_type(),
          "gradient clipping: gradients on several devices or dtypes (", g.device(), " ", g.scalar_type(), ")");
  return grads;
}
torch::Tensor norm_of(const std::vector<torch::Tensor>& grads) {
  if (grads.empty()) return torch::zeros({}, torch::kFloat32);
  auto norms = at::_foreach_norm(grads, 2);
  return torch::linalg_vector_norm(torch::stack(norms), 2, {}, false, torch::kFloat32);
}
}  // namespace

torch::Tensor grad_norm(const std::vector<torch::Tensor>& params) { return norm_of(defined_grads(params)); }

torch::Tensor clip_grad_norm(const std::vector<torch::Tensor>& params, double max_norm) {
  const auto grads = defined_grads(params);
  auto total = norm_of(grads);
  if (!grads.empty() && std::isfinite(max_norm)) {
    auto scale = (max_norm / (total + 1e-6)).clamp_max(1.0);
    at::_foreach_mul_(grads, scale.to(grads.front().scalar_type()));
  }
  return total;
}

torch::Tensor clip_divisor(const torch::Tensor& norm, double max_norm) {
  check(std::isfinite(max_norm) && max_norm > 0, "clip_divisor: max_norm must be finite and positive");
  return ((norm.to(torch::kFloat32) + 1e-6) / max_norm).clamp_min(1.0).reshape({1});
}

torch::Tensor nonfinite_flag(const torch::Tensor& loss, const torch::Tensor& grad_norm) {
  return (torch::isfinite(loss) & torch::isfinite(grad_norm)).logical_not().to(torch::kFloat32).reshape({1});
}

}  // namespace cw
