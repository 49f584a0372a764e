// Implementation of train/grad_clip.h.
#include "train/grad_clip.h"

#include <cmath>

#include "common/error.h"

namespace cw {

torch::Tensor clip_grad_norm(const std::vector<torch::Tensor>& params, double max_norm) {
  std::vector<torch::Tensor> grads;
  for (const auto& p : params)
    if (p.grad().defined()) grads.push_back(p.grad());
  if (grads.empty()) return torch::zeros({}, torch::kFloat32);
  for (const auto& g : grads)
    check(g.device() == grads.front().device() && g.scalar_type() == grads.front().scalar_type(),
          "gradient clipping: gradients on several devices or dtypes (", g.device(), " ", g.scalar_type(), ")");
  auto norms = at::_foreach_norm(grads, 2);
  auto total = torch::linalg_vector_norm(torch::stack(norms), 2, {}, false, torch::kFloat32);
  if (std::isfinite(max_norm)) {
    auto scale = (max_norm / (total + 1e-6)).clamp_max(1.0);
    at::_foreach_mul_(grads, scale.to(grads.front().scalar_type()));
  }
  return total;
}

torch::Tensor nonfinite_flag(const torch::Tensor& loss, const torch::Tensor& grad_norm) {
  return (torch::isfinite(loss) & torch::isfinite(grad_norm)).logical_not().to(torch::kFloat32).reshape({1});
}

}  // namespace cw
