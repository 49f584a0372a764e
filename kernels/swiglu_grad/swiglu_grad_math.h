// SwiGLU for training: forward h = silu(g) * u and its backward over a fused [gate | up] row, stored as float
// or bf16 bits with fp32 arithmetic. The value functions are shared by the CUDA kernels (swiglu_grad.cu, which
// also move 16-byte packs) and the item functions that the CPU loop of models/fused_ops.cpp runs; the
// independent reference is torch::silu(g) * u under autograd. Compiles as plain C++ and as CUDA.
// Must not: allocate or depend on LibTorch.
#pragma once
#include <math.h>

#include "kernels/common/common.h"

namespace cw::kern {

CW_HD float swiglu_value(float g, float u) { return g / (1.f + expf(-g)) * u; }
// d silu(g)/dg = sig(g) (1 + g (1 - sig(g))).
CW_HD void swiglu_grads(float g, float u, float d, float& dg, float& du) {
  const float sig = 1.f / (1.f + expf(-g));
  dg = d * u * sig * (1.f + g * (1.f - sig));
  du = d * g * sig;
}

// gate_up [rows][2*ff] (gate first), h and dh [rows][ff], dgate_up [rows][2*ff]; item (r, i), i < ff.
template <typename T>
CW_HD void swiglu_forward_item(int64_t r, int64_t i, int64_t ff, const T* gate_up, T* h) {
  store_f(h, r * ff + i, swiglu_value(load_f(gate_up, r * 2 * ff + i), load_f(gate_up, r * 2 * ff + ff + i)));
}

template <typename T>
CW_HD void swiglu_backward_item(int64_t r, int64_t i, int64_t ff, const T* gate_up, const T* dh, T* dgate_up) {
  float dg, du;
  swiglu_grads(load_f(gate_up, r * 2 * ff + i), load_f(gate_up, r * 2 * ff + ff + i), load_f(dh, r * ff + i), dg, du);
  store_f(dgate_up, r * 2 * ff + i, dg);
  store_f(dgate_up, r * 2 * ff + ff + i, du);
}

}  // namespace cw::kern
