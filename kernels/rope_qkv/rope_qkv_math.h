// Fused rotate-half RoPE for training, on the output of the fused q/k/v product: item j of row r rotates one
// pair (i, i + head_dim/2) of one q or k head, or copies one v element (32-bit index arithmetic within a
// row). The same item functions run in the CUDA kernel (rope_qkv.cu) and in the CPU loop of
// models/fused_ops.cpp; the independent reference is apply_rope() in models/llama.cpp. Compiles as plain
// C++ and as CUDA.
// Must not: allocate or depend on LibTorch.
#pragma once
#include "kernels/common/common.h"

namespace cw::kern {

// qkv row r: [heads*hd q | kv_heads*hd k | kv_heads*hd v] at qkv + r*qkv_stride. cos and sin: fp32
// [rows][hd], rotate-half tables (both halves equal; the first half is read). q [rows][heads][hd],
// k and v [rows][kv_heads][hd] are contiguous; so is dqkv [rows][(heads + 2*kv_heads)*hd] in the backward.
struct RopeQkvShape {
  int64_t rows = 0;
  int heads = 0, kv_heads = 0, head_dim = 0;
  int64_t qkv_stride = 0;
};

CW_HD int rope_qkv_rotated_per_row(const RopeQkvShape& s) { return (s.heads + s.kv_heads) * (s.head_dim / 2); }
CW_HD int rope_qkv_items_per_row(const RopeQkvShape& s) { return rope_qkv_rotated_per_row(s) + s.kv_heads * s.head_dim; }

template <typename T>
CW_HD void rope_qkv_forward_item(int64_t r, int j, const RopeQkvShape& s, const T* qkv, const float* cos,
                                 const float* sin, T* q, T* k, T* v) {
  const int hd = s.head_dim, half = hd / 2, rotated = rope_qkv_rotated_per_row(s);
  const T* x = qkv + r * s.qkv_stride;
  if (j < rotated) {
    const int h = j / half, i = j % half;
    const float x1 = load_f(x, int64_t(h) * hd + i), x2 = load_f(x, int64_t(h) * hd + i + half);
    const float c = cos[r * hd + i], sn = sin[r * hd + i];
    T* out = h < s.heads ? q + (r * s.heads + h) * hd : k + (r * s.kv_heads + (h - s.heads)) * hd;
    store_f(out, i, x1 * c - x2 * sn);
    store_f(out, i + half, x2 * c + x1 * sn);
  } else {
    const int c = j - rotated;  // element of the row's v heads
    v[r * s.kv_heads * hd + c] = x[int64_t(s.heads + s.kv_heads) * hd + c];
  }
}

// The transpose of the rotation: dx1 = dy1 c + dy2 s, dx2 = dy2 c - dy1 s; dv is copied.
template <typename T>
CW_HD void rope_qkv_backward_item(int64_t r, int j, const RopeQkvShape& s, const T* dq, const T* dk, const T* dv,
                                  const float* cos, const float* sin, T* dqkv) {
  const int hd = s.head_dim, half = hd / 2, rotated = rope_qkv_rotated_per_row(s);
  T* dx = dqkv + r * int64_t(s.heads + 2 * s.kv_heads) * hd;
  if (j < rotated) {
    const int h = j / half, i = j % half;
    const T* dy = h < s.heads ? dq + (r * s.heads + h) * hd : dk + (r * s.kv_heads + (h - s.heads)) * hd;
    const float dy1 = load_f(dy, i), dy2 = load_f(dy, i + half);
    const float c = cos[r * hd + i], sn = sin[r * hd + i];
    store_f(dx, int64_t(h) * hd + i, dy1 * c + dy2 * sn);
    store_f(dx, int64_t(h) * hd + i + half, dy2 * c - dy1 * sn);
  } else {
    const int c = j - rotated;
    dx[int64_t(s.heads + s.kv_heads) * hd + c] = dv[r * s.kv_heads * hd + c];
  }
}

}  // namespace cw::kern
