// Fused rotate-half RoPE for training, on the output of the fused q/k/v product. The work of a row is cut
// into units, each writing N consecutive output elements (so a warp's stores are one contiguous run): an
// element y[i] of a q or k head needs x[i] and its partner x[i +- hd/2]; a v unit is a copy.
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

// Units per row for N (head_dim/2 a multiple of N): one per N output elements, q heads, k heads, then v.
template <int N>
CW_HD int rope_qkv_units_per_row(const RopeQkvShape& s) {
  return (s.heads + 2 * s.kv_heads) * s.head_dim / N;
}

// Output unit j of row r: y = x * cos + rotate_half(x) * sin, rotate_half(x) = [-x2 | x1]. The tables
// repeat after hd/2, so the first half's N entries serve both halves.
template <typename T, int N, typename Io>
CW_HD void rope_qkv_forward_unit(int64_t r, int j, const RopeQkvShape& s, const T* qkv, const float* cos,
                                 const float* sin, T* q, T* k, T* v) {
  const int hd = s.head_dim, half = hd / 2, col = j * N, h = col / hd, i = col % hd;
  const T* x = qkv + r * s.qkv_stride;
  float out[N];
  Io::template load<N>(x + col, out);
  if (h < s.heads + s.kv_heads) {
    const bool first = i < half;
    const int base = first ? i : i - half;
    float partner[N], c[N], sn[N];
    Io::template load<N>(x + h * hd + (first ? i + half : base), partner);
    Io::template load<N>(cos + r * hd + base, c);
    Io::template load<N>(sin + r * hd + base, sn);
    for (int e = 0; e < N; ++e) {  // first half: x1 c - x2 s; second half: x2 c + x1 s
      out[e] = first ? out[e] * c[e] - partner[e] * sn[e] : out[e] * c[e] + partner[e] * sn[e];
    }
    T* dst = h < s.heads ? q + (r * s.heads + h) * hd : k + (r * s.kv_heads + (h - s.heads)) * hd;
    Io::template store<N>(dst + i, out);
  } else {
    Io::template store<N>(v + r * s.kv_heads * hd + (col - (s.heads + s.kv_heads) * hd), out);
  }
}

// Unit j of d qkv's row r, the transposed rotation: dx1 = dy1 c + dy2 s, dx2 = dy2 c - dy1 s.
template <typename T, int N, typename Io>
CW_HD void rope_qkv_backward_unit(int64_t r, int j, const RopeQkvShape& s, const T* dq, const T* dk, const T* dv,
                                  const float* cos, const float* sin, T* dqkv) {
  const int hd = s.head_dim, half = hd / 2, col = j * N, h = col / hd, i = col % hd;
  T* dx = dqkv + r * int64_t(s.heads + 2 * s.kv_heads) * hd;
  float out[N];
  if (h < s.heads + s.kv_heads) {
    const T* dy = h < s.heads ? dq + (r * s.heads + h) * hd : dk + (r * s.kv_heads + (h - s.heads)) * hd;
    const bool first = i < half;
    const int base = first ? i : i - half;
    float partner[N], c[N], sn[N];
    Io::template load<N>(dy + i, out);
    Io::template load<N>(dy + (first ? i + half : base), partner);
    Io::template load<N>(cos + r * hd + base, c);
    Io::template load<N>(sin + r * hd + base, sn);
    for (int e = 0; e < N; ++e) {
      out[e] = first ? out[e] * c[e] + partner[e] * sn[e] : out[e] * c[e] - partner[e] * sn[e];
    }
  } else {
    Io::template load<N>(dv + r * s.kv_heads * hd + (col - (s.heads + s.kv_heads) * hd), out);
  }
  Io::template store<N>(dx + col, out);
}

// The unit width both paths use for bf16 (8) or fp32 (4) storage, 1 when head_dim/2 or the q/k/v row
// stride does not hold whole packs (the CUDA launcher also falls back to 1 for unaligned pointers). The
// fp32 cos/sin tables are then read N at a time too (hd a multiple of 2N keeps their rows aligned).
CW_HD int rope_qkv_pack(bool bf16, const RopeQkvShape& s, int64_t stride) {
  const int n = bf16 ? 8 : 4;
  return (s.head_dim / 2) % n == 0 && stride % n == 0 ? n : 1;
}

}  // namespace cw::kern
