// Fused rotate-half RoPE for training, on the output of the fused q/k/v product. The work of a row is cut
// into units: N consecutive pairs (i, i + head_dim/2) of one q or k head, or N consecutive v elements to copy.
// The unit functions run in the CUDA kernels (rope_qkv.cu, with 16-byte packs) and in the CPU loop of
// models/fused_ops.cpp (element by element) with the same N, so the CPU suite tests the GPU's indexing; the
// independent reference is apply_rope() in models/llama.cpp. Compiles as plain C++ and as CUDA.
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

// The rotation of one pair and its transpose.
CW_HD void rope_rotate(float x1, float x2, float c, float s, float& y1, float& y2) {
  y1 = x1 * c - x2 * s;
  y2 = x2 * c + x1 * s;
}
CW_HD void rope_unrotate(float dy1, float dy2, float c, float s, float& dx1, float& dx2) {
  dx1 = dy1 * c + dy2 * s;
  dx2 = dy2 * c - dy1 * s;
}

// N elements moved one at a time (the CPU); the CUDA kernels pass dev::PackIo (one 16-byte access).
struct ElementIo {
  template <int N, typename T>
  static CW_HD void load(const T* p, float (&out)[N]) {
    for (int k = 0; k < N; ++k) out[k] = load_f(p, k);
  }
  template <int N, typename T>
  static CW_HD void store(T* p, const float (&in)[N]) {
    for (int k = 0; k < N; ++k) store_f(p, k, in[k]);
  }
};

// Units per row for N (head_dim/2 a multiple of N): rotated units first, then v units.
template <int N>
CW_HD int rope_qkv_units_per_row(const RopeQkvShape& s) {
  return (s.heads + s.kv_heads) * (s.head_dim / 2 / N) + s.kv_heads * s.head_dim / N;
}

template <typename T, int N, typename Io>
CW_HD void rope_qkv_forward_unit(int64_t r, int j, const RopeQkvShape& s, const T* qkv, const float* cos,
                                 const float* sin, T* q, T* k, T* v) {
  const int hd = s.head_dim, half = hd / 2, per_head = half / N, rotated = (s.heads + s.kv_heads) * per_head;
  const T* x = qkv + r * s.qkv_stride;
  if (j < rotated) {
    const int h = j / per_head, i = (j % per_head) * N;
    float x1[N], x2[N], y1[N], y2[N];
    Io::template load<N>(x + h * hd + i, x1);
    Io::template load<N>(x + h * hd + i + half, x2);
    for (int e = 0; e < N; ++e) rope_rotate(x1[e], x2[e], cos[r * hd + i + e], sin[r * hd + i + e], y1[e], y2[e]);
    T* out = h < s.heads ? q + (r * s.heads + h) * hd : k + (r * s.kv_heads + (h - s.heads)) * hd;
    Io::template store<N>(out + i, y1);
    Io::template store<N>(out + i + half, y2);
  } else {
    const int c = (j - rotated) * N;
    float t[N];
    Io::template load<N>(x + (s.heads + s.kv_heads) * hd + c, t);
    Io::template store<N>(v + r * s.kv_heads * hd + c, t);
  }
}

template <typename T, int N, typename Io>
CW_HD void rope_qkv_backward_unit(int64_t r, int j, const RopeQkvShape& s, const T* dq, const T* dk, const T* dv,
                                  const float* cos, const float* sin, T* dqkv) {
  const int hd = s.head_dim, half = hd / 2, per_head = half / N, rotated = (s.heads + s.kv_heads) * per_head;
  T* dx = dqkv + r * int64_t(s.heads + 2 * s.kv_heads) * hd;
  if (j < rotated) {
    const int h = j / per_head, i = (j % per_head) * N;
    const T* dy = h < s.heads ? dq + (r * s.heads + h) * hd : dk + (r * s.kv_heads + (h - s.heads)) * hd;
    float dy1[N], dy2[N], dx1[N], dx2[N];
    Io::template load<N>(dy + i, dy1);
    Io::template load<N>(dy + i + half, dy2);
    for (int e = 0; e < N; ++e) rope_unrotate(dy1[e], dy2[e], cos[r * hd + i + e], sin[r * hd + i + e], dx1[e], dx2[e]);
    Io::template store<N>(dx + h * hd + i, dx1);
    Io::template store<N>(dx + h * hd + i + half, dx2);
  } else {
    const int c = (j - rotated) * N;
    float t[N];
    Io::template load<N>(dv + r * s.kv_heads * hd + c, t);
    Io::template store<N>(dx + (s.heads + s.kv_heads) * hd + c, t);
  }
}

// The unit width both paths use for bf16 (8) or fp32 (4) storage, 1 when head_dim/2 or the q/k/v row
// stride does not hold whole packs (the CUDA launcher also falls back to 1 for unaligned pointers).
CW_HD int rope_qkv_pack(bool bf16, const RopeQkvShape& s, int64_t stride) {
  const int n = bf16 ? 8 : 4;
  return (s.head_dim / 2) % n == 0 && stride % n == 0 ? n : 1;
}

}  // namespace cw::kern
