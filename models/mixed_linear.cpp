// Implementation of models/mixed_linear.h: an autograd function around three matrix products (forward, input
// gradient, weight gradient), with the weight cast and the weight gradient's dtype handled explicitly.
#include "models/mixed_linear.h"

#include <ATen/autocast_mode.h>

#include "common/error.h"
#include "models/fused_ops.h"
#include "models/tuned_matmul.h"
#include "models/weight_copies.h"

namespace cw {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

namespace {

struct MixedLinear : torch::autograd::Function<MixedLinear> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x, at::TensorList weights,
                               int64_t compute) {
    const auto dtype = static_cast<torch::ScalarType>(compute);
    const int64_t in = x.size(-1);
    std::vector<int64_t> rows;
    for (const auto& w : weights) rows.push_back(w.size(0));
    torch::Tensor wc;  // all weights, one under the other, in the compute dtype
    if (weights.size() == 1 && weights[0].scalar_type() == dtype) {
      wc = weights[0].contiguous();
    } else if (auto kept = weight_copy(weights, dtype); kept.defined()) {
      wc = kept;  // models/weight_copies.h: cast only where a weight changed since its copy was written
    } else {
      int64_t total = 0;
      for (int64_t r : rows) total += r;
      wc = torch::empty({total, in}, weights[0].options().dtype(dtype));
      int64_t at = 0;
      for (const auto& w : weights) wc.narrow(0, at, w.size(0)).copy_(w), at += w.size(0);
    }
    auto x2 = x.reshape({-1, in}).to(dtype);
    ctx->save_for_backward({x2, wc});
    ctx->saved_data["x_sizes"] = x.sizes().vec();
    ctx->saved_data["x_dtype"] = int64_t(x.scalar_type());
    ctx->saved_data["w_dtype"] = int64_t(weights[0].scalar_type());
    ctx->saved_data["rows"] = rows;
    auto out_sizes = x.sizes().vec();
    out_sizes.back() = wc.size(0);
    return tuned_mm(x2, wc.t()).view(out_sizes);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const auto &x2 = saved[0], &wc = saved[1];
    const auto rows = ctx->saved_data["rows"].toIntVector();
    const auto x_sizes = ctx->saved_data["x_sizes"].toIntVector();
    const auto x_dtype = static_cast<torch::ScalarType>(ctx->saved_data["x_dtype"].toInt());
    const auto w_dtype = static_cast<torch::ScalarType>(ctx->saved_data["w_dtype"].toInt());
    auto dy = grads[0].reshape({-1, wc.size(0)}).to(wc.scalar_type());

    variable_list out(rows.size() + 2);  // x, each weight, the dtype code
    if (ctx->needs_input_grad(0)) out[0] = tuned_mm(dy, wc).view(x_sizes).to(x_dtype);
    bool any_weight = false;
    for (size_t i = 0; i < rows.size(); ++i) any_weight = any_weight || ctx->needs_input_grad(i + 1);
    if (any_weight) {
      auto dw = tuned_mm(dy.t(), x2, w_dtype);  // [sum of rows, in]
      int64_t at = 0;
      for (size_t i = 0; i < rows.size(); ++i) {
        if (ctx->needs_input_grad(i + 1)) out[i + 1] = dw.narrow(0, at, rows[i]);
        at += rows[i];
      }
    }
    return out;
  }
};

}  // namespace

torch::Tensor mixed_linear(const torch::Tensor& x, const std::vector<torch::Tensor>& weights) {
  check(!weights.empty(), "mixed_linear: no weights");
  for (const auto& w : weights)
    check(w.dim() == 2 && w.size(1) == x.size(-1) && w.scalar_type() == weights[0].scalar_type() &&
              w.device() == x.device(),
          "mixed_linear: weight ", w.sizes(), " ", w.scalar_type(), " on ", w.device(), " does not take input ",
          x.sizes(), " on ", x.device(), " beside weights of ", weights[0].scalar_type());
  const auto type = x.device().type();
  const auto dtype = compute_dtype(weights[0]);  // autocast's dtype, else the weights'
  check(at::autocast::is_autocast_enabled(type) || x.scalar_type() == dtype, "mixed_linear: input ",
        x.scalar_type(), " and weights ", dtype, " differ outside autocast");
  AutocastOff off(type);
  return MixedLinear::apply(x, at::TensorList(weights), int64_t(dtype));  // a TensorList: one edge per weight
}

}  // namespace cw
