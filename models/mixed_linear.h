// One matrix product y = x · [w_1; w_2; ...]^T for weights that share an input width (q/k/v, gate/up, or a
// single weight), run in the dtype matrix products take here (autocast's: bf16 while training in mixed
// precision) with the weights kept in their own dtype (fp32 master weights).
// What it saves over torch::linear(x, torch::cat(weights)) under autocast: the weights are cast straight into
// one low-precision buffer (no fp32 concatenation first), a buffer kept from step to step and written by the
// optimizer (models/weight_copies.h: a weight is cast again only where something else changed it); and each
// weight's gradient is written by the product itself in the weight's dtype (fp32 on CUDA: no bf16 rounding and
// no conversion kernel afterwards), the gradients being views of that one product's output. The three products
// go through tuned_mm (models/tuned_matmul.h: at::mm unless CHUNKWISE_TUNED_PRODUCTS=1 chooses cuBLASLt
// algorithms by timing).
// Reference: torch::linear(x, torch::cat(weights)) under the same autocast (tests/test_fused_ops.cpp, and
// the GPU training tests on CUDA).
// Must not: change the weights, or be used where the weights differ in dtype or input width.
#pragma once
#include <torch/torch.h>

#include <vector>

namespace cw {

torch::Tensor mixed_linear(const torch::Tensor& x, const std::vector<torch::Tensor>& weights);

}  // namespace cw
