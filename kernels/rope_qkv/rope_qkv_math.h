// Fused rotate-half RoPE for training, on the output of the fused q/k/v product. The work of a row is cut
// into units: in a q or k head, N pairs (x[i], x[i + hd/2]) that rotate together with one read of the cos and
// sin tables (so a warp's stores cover whole heads). The forward pass leaves v where it is (attention reads it
// from the q/k/v rows); the backward pass's units also copy dv into d qkv, 2N elements each.
// The unit functions run in the CUDA kernels (rope_qkv.cu, with 16-byte packs) and in the CPU loop of
// models/fused_ops.cpp (element by element) with the same N, so the CPU suite tests the GPU's indexing; the
// independent reference is apply_rope() in models/llama.cpp. Compiles as plain C++ and as CUDA.
// Must not: allocate or depend on LibTorch.
#pragma once
#include "kernels/common/common.h"

namespace cw::kern {

// qkv row r: [heads*hd q | kv_heads*hd k | kv_heads*hd v] at qkv + r*qkv_stride. cos and sin: fp32
// [rows][hd], rotate-half tables (both halves equal; the first half is read). The forward pass writes the
// rotated q and k at the same places of `out`, rows of the same stride (out may be qkv itself: each unit reads
// its pairs before it writes them). In the backward, dq [rows][heads][hd], dk and dv [rows][kv_heads][hd] and
// dqkv [rows][(heads + 2*kv_heads)*hd] are contiguous.
struct RopeQkvShape {
  int64_t rows = 0;
  int heads = 0, kv_heads = 0, head_dim = 0;
  int64_t qkv_stride = 0;
};

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

// Units per row for N (head_dim/2 a multiple of N): one per N rotated pairs of a q or k head (the forward
// pass), then, in the backward pass, one per 2N elements of dv.
template <int N>
CW_HD int rope_qkv_forward_units_per_row(const RopeQkvShape& s) {
  return (s.heads + s.kv_heads) * s.head_dim / (2 * N);
}
template <int N>
CW_HD int rope_qkv_backward_units_per_row(const RopeQkvShape& s) {
  return (s.heads + 2 * s.kv_heads) * s.head_dim / (2 * N);
}

// Unit j of row r: N pairs of a q or k head (x1 at i < hd/2, x2 at i + hd/2) rotated with one read of the
// tables: y1 = x1 c - x2 s, y2 = x2 c + x1 s (y = x * cos + rotate_half(x) * sin, rotate_half(x) = [-x2 | x1];
// the tables repeat after hd/2).
template <typename T, int N, typename Io>
CW_HD void rope_qkv_forward_unit(int64_t r, int j, const RopeQkvShape& s, const T* qkv, const float* cos,
                                 const float* sin, T* out) {
  const int hd = s.head_dim, half = hd / 2, per_head = half / N;
  const T* x = qkv + r * s.qkv_stride;
  const int h = j / per_head, i = (j % per_head) * N;
  float x1[N], x2[N], c[N], sn[N];
  Io::template load<N>(x + h * hd + i, x1);
  Io::template load<N>(x + h * hd + i + half, x2);
  Io::template load<N>(cos + r * hd + i, c);
  Io::template load<N>(sin + r * hd + i, sn);
  float y1[N], y2[N];
  for (int e = 0; e < N; ++e) {
    y1[e] = x1[e] * c[e] - x2[e] * sn[e];
    y2[e] = x2[e] * c[e] + x1[e] * sn[e];
  }
  T* dst = out + r * s.qkv_stride + h * hd;
  Io::template store<N>(dst + i, y1);
  Io::template store<N>(dst + i + half, y2);
}

// Unit j of d qkv's row r, the transposed rotation of the same pairs: dx1 = dy1 c + dy2 s, dx2 = dy2 c - dy1 s;
// v's units copy dv.
template <typename T, int N, typename Io>
CW_HD void rope_qkv_backward_unit(int64_t r, int j, const RopeQkvShape& s, const T* dq, const T* dk, const T* dv,
                                  const float* cos, const float* sin, T* dqkv) {
  const int hd = s.head_dim, half = hd / 2, per_head = half / N, rotated = (s.heads + s.kv_heads) * per_head;
  T* dx = dqkv + r * int64_t(s.heads + 2 * s.kv_heads) * hd;
  if (j < rotated) {
    const int h = j / per_head, i = (j % per_head) * N;
    const T* dy = h < s.heads ? dq + (r * s.heads + h) * hd : dk + (r * s.kv_heads + (h - s.heads)) * hd;
    float g1[N], g2[N], c[N], sn[N];
    Io::template load<N>(dy + i, g1);
    Io::template load<N>(dy + i + half, g2);
    Io::template load<N>(cos + r * hd + i, c);
    Io::template load<N>(sin + r * hd + i, sn);
    float d1[N], d2[N];
    for (int e = 0; e < N; ++e) {
      d1[e] = g1[e] * c[e] + g2[e] * sn[e];
      d2[e] = g2[e] * c[e] - g1[e] * sn[e];
    }
    Io::template store<N>(dx + h * hd + i, d1);
    Io::template store<N>(dx + h * hd + i + half, d2);
  } else {
    const int col = (j - rotated) * 2 * N;
    const T* src = dv + r * s.kv_heads * hd + col;
    T* dst = dx + (s.heads + s.kv_heads) * hd + col;
    float a[N], b[N];
    Io::template load<N>(src, a);
    Io::template load<N>(src + N, b);
    Io::template store<N>(dst, a);
    Io::template store<N>(dst + N, b);
  }
}

// The unit width both paths use for bf16 (8) or fp32 (4) storage, 1 when head_dim/2 or the q/k/v row
// stride does not hold whole packs (the CUDA launcher also falls back to 1 for unaligned pointers). The
// fp32 cos/sin tables are then read N at a time too (hd a multiple of 2N keeps their rows aligned).
CW_HD int rope_qkv_pack(bool bf16, const RopeQkvShape& s, int64_t stride) {
  const int n = bf16 ? 8 : 4;
  return (s.head_dim / 2) % n == 0 && stride % n == 0 ? n : 1;
}

}  // namespace cw::kern
