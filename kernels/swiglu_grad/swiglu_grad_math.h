// SwiGLU for training: forward h = silu(g) * u and its backward over a fused [gate | up] row, one element
// per item, stored as float or bf16 bits with fp32 arithmetic. The same item functions run in the CUDA
// kernel (swiglu_grad.cu) and in the CPU loop of models/fused_ops.cpp; the independent reference is
// torch::silu(g) * u under autograd. Compiles as plain C++ and as CUDA.
// Must not: allocate or depend on LibTorch.
#pragma once
#include <math.h>

#include "kernels/common/common.h"

namespace cw::kern {

// gate_up [rows][2*ff] (gate first), h and dh [rows][ff], dgate_up [rows][2*ff]; item (r, i), i < ff.
template <typename T>
CW_HD void swiglu_forward_item(int64_t r, int64_t i, int64_t ff, const T* gate_up, T* h) {
  const int64_t e = r * ff + i;
  const float g = load_f(gate_up, r * 2 * ff + i), u = load_f(gate_up, r * 2 * ff + ff + i);
  store_f(h, e, g / (1.f + expf(-g)) * u);
}

// d silu(g)/dg = sig(g) (1 + g (1 - sig(g))).
template <typename T>
CW_HD void swiglu_backward_item(int64_t r, int64_t i, int64_t ff, const T* gate_up, const T* dh, T* dgate_up) {
  const int64_t e = r * ff + i;
  const float g = load_f(gate_up, r * 2 * ff + i), u = load_f(gate_up, r * 2 * ff + ff + i), d = load_f(dh, e);
  const float sig = 1.f / (1.f + expf(-g));
  store_f(dgate_up, r * 2 * ff + i, d * u * sig * (1.f + g * (1.f - sig)));
  store_f(dgate_up, r * 2 * ff + ff + i, d * g * sig);
}

}  // namespace cw::kern
