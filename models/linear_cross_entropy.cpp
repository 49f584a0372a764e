// Implementation of models/linear_cross_entropy.h as a LibTorch autograd function.
#include "models/linear_cross_entropy.h"

#include "data/batch.h"
#include "models/fused_ops.h"

namespace cw {

namespace {

torch::Tensor stat_dtype(const torch::Tensor& x) { return x.scalar_type() == torch::kFloat64 ? x : x.to(torch::kFloat32); }

struct LinearCrossEntropy : torch::autograd::Function<LinearCrossEntropy> {
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& h, const torch::Tensor& w,
                               const torch::Tensor& targets, int64_t chunk, bool fused) {
    const int64_t n = h.size(0);
    fused = fused && fused_ops_support(h);
    auto lse = torch::empty({n}, h.options().dtype(h.scalar_type() == torch::kFloat64 ? torch::kFloat64 : torch::kFloat32));
    auto total = torch::zeros({}, lse.options());
    for (int64_t i = 0; i < n; i += chunk) {
      const int64_t m = std::min(chunk, n - i);
      auto t = targets.narrow(0, i, m);
      if (fused) {  // logits in h's dtype, statistics in fp32 by the fused kernel
        auto [rows, l] = cross_entropy_rows(torch::matmul(h.narrow(0, i, m), w.t()), t.contiguous());
        lse.narrow(0, i, m).copy_(l);
        total += rows.sum();
        continue;
      }
      auto logits = stat_dtype(torch::matmul(h.narrow(0, i, m), w.t()));
      auto valid = t.ne(kIgnoreIndex);
      auto l = logits.logsumexp(-1);
      lse.narrow(0, i, m).copy_(l);
      auto picked = logits.gather(1, t.clamp_min(0).unsqueeze(1)).squeeze(1);
      total += ((l - picked) * valid).sum();
    }
    ctx->save_for_backward({h, w, targets, lse});
    ctx->saved_data["chunk"] = chunk;
    ctx->saved_data["fused"] = fused;
    return total;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_out) {
    auto saved = ctx->get_saved_variables();
    const auto &h = saved[0], &w = saved[1], &targets = saved[2], &lse = saved[3];
    const int64_t chunk = ctx->saved_data["chunk"].toInt(), n = h.size(0);
    const bool fused = ctx->saved_data["fused"].toBool();
    auto g = grad_out[0];
    auto grad_h = torch::empty_like(h);
    auto grad_w = torch::zeros(w.sizes(), w.options().dtype(lse.scalar_type()));
    for (int64_t i = 0; i < n; i += chunk) {
      const int64_t m = std::min(chunk, n - i);
      auto hc = h.narrow(0, i, m);
      auto t = targets.narrow(0, i, m);
      if (fused) {  // d loss / d logits written over the recomputed logits
        auto logits = torch::matmul(hc, w.t());
        cross_entropy_grad_(logits, t.contiguous(), lse.narrow(0, i, m).contiguous(), g);
        grad_h.narrow(0, i, m).copy_(torch::matmul(logits, w));
        grad_w.add_(torch::matmul(logits.t(), hc).to(grad_w.scalar_type()));
        continue;
      }
      auto valid = t.ne(kIgnoreIndex).to(lse.scalar_type()).unsqueeze(1);
      auto p = (stat_dtype(torch::matmul(hc, w.t())) - lse.narrow(0, i, m).unsqueeze(1)).exp_();
      p.scatter_add_(1, t.clamp_min(0).unsqueeze(1), -torch::ones({m, 1}, p.options()));
      p.mul_(valid * g);  // d loss / d logits
      auto pd = p.to(h.scalar_type());
      grad_h.narrow(0, i, m).copy_(torch::matmul(pd, w.to(h.scalar_type())));
      grad_w.add_(torch::matmul(pd.t(), hc).to(grad_w.scalar_type()));
    }
    return {grad_h, grad_w.to(w.scalar_type()), torch::Tensor(), torch::Tensor(), torch::Tensor()};
  }
};

}  // namespace

torch::Tensor linear_cross_entropy(const torch::Tensor& h, const torch::Tensor& weight, const torch::Tensor& targets,
                                   int64_t chunk_rows, bool fused) {
  // Under autocast the products run in bf16: cast explicitly so forward and backward agree.
  const auto dtype = compute_dtype(h);
  AutocastOff off(h.device().type());
  auto loss = LinearCrossEntropy::apply(h.to(dtype), weight.to(dtype), targets, chunk_rows, fused);
  return loss;
}

torch::Tensor linear_cross_entropy_reference(const torch::Tensor& h, const torch::Tensor& weight,
                                             const torch::Tensor& targets) {
  auto logits = torch::matmul(h, weight.t());
  return torch::nn::functional::cross_entropy(
      stat_dtype(logits), targets,
      torch::nn::functional::CrossEntropyFuncOptions().ignore_index(kIgnoreIndex).reduction(torch::kSum));
}

}  // namespace cw
