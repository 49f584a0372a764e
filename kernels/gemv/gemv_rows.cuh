// The pieces every decode matrix-vector product shares (gemv.cu's register kernel and gemv_streamed.cuh's
// shared-memory ring): the bf16 dot product of 16-byte pieces, the streaming load, and the epilogues that
// decide what happens to a unit's row sums. Reference: matmul_ref.cpp composed with rope_append_ref.cpp /
// swiglu_ref.cpp.
// Must not: launch anything or hold state.
#pragma once
#include <cstdint>

#include "kernels/common/device.cuh"
#include "kernels/rope_append/rope_math.cuh"

namespace cw::kern::cuda {

__device__ __forceinline__ float dot8(uint4 a, uint4 b) {
  float2 a0 = dev::bf2_to_float2(a.x), a1 = dev::bf2_to_float2(a.y), a2 = dev::bf2_to_float2(a.z), a3 = dev::bf2_to_float2(a.w);
  float2 b0 = dev::bf2_to_float2(b.x), b1 = dev::bf2_to_float2(b.y), b2 = dev::bf2_to_float2(b.z), b3 = dev::bf2_to_float2(b.w);
  // A tree of depth four rather than a chain of eight dependent multiply-adds (latency, not arithmetic, bounds
  // a warp's row).
  return (fmaf(a0.x, b0.x, a0.y * b0.y) + fmaf(a1.x, b1.x, a1.y * b1.y)) +
         (fmaf(a2.x, b2.x, a2.y * b2.y) + fmaf(a3.x, b3.x, a3.y * b3.y));
}

__device__ __forceinline__ uint4 load_streaming(const uint4* p) {
  uint4 v;
  asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "l"(p));
  return v;
}

// Epilogues. A unit is the kRows output rows one warp computes; store(u, t, s, prior) receives their sums
// s[kRows] for row t of x (lane 0 only), with prior = prior(u, t), which a kernel may read before it computes
// the sums (a residual's old value: its load then overlaps the arithmetic). Step metadata (positions, slots)
// is read in store, after pdl_wait(), or once per block with with_row0() (the streamed kernel: one round trip
// beside x's, not one per unit behind the weights in flight).
struct StoreRows {  // y[t][row] = s, or s + y[t][row] with beta = 1
  static constexpr int kRows = 1;
  int out;
  float beta;
  float* y;
  __host__ __device__ int units() const { return out; }
  __device__ int row(int u, int) const { return u; }
  __device__ float prior(int u, int t) const { return beta == 0.f ? 0.f : y[int64_t(t) * out + u]; }
  __device__ StoreRows with_row0() const { return *this; }
  __device__ void store(int u, int t, const float* s, float prior) const {
    y[int64_t(t) * out + u] = beta == 0.f ? s[0] : s[0] + beta * prior;
  }
};

// The fused [q; k; v] product: unit u is the pair (i, i + hd/2) of head u / (hd/2), rotated as
// rope_append_kernel rotates it (same expressions); q into qkv (fp32), k and v to the caches in bf16.
struct RopeAppendRows {
  static constexpr int kRows = 2;
  int H, Hkv, hd;
  float theta;
  const int32_t *pos, *slot;
  float* qkv;
  uint16_t *k_cache, *v_cache;
  int pos0 = -1, slot0 = -1;  // row 0's position and slot, once with_row0() read them
  __host__ __device__ int units() const { return (H + 2 * Hkv) * hd / 2; }
  __device__ RopeAppendRows with_row0() const {
    RopeAppendRows e = *this;
    e.pos0 = pos[0], e.slot0 = slot[0];
    return e;
  }
  __device__ int row(int u, int j) const {
    const int half = hd / 2;
    return (u / half) * hd + u % half + j * half;
  }
  __device__ float prior(int, int) const { return 0.f; }
  __device__ void store(int u, int t, const float* s, float) const {
    const int half = hd / 2, h = u / half, i = u % half;
    const int p = t == 0 && pos0 >= 0 ? pos0 : pos[t], sl = t == 0 && slot0 >= 0 ? slot0 : slot[t];
    const int64_t base = int64_t(sl) * Hkv * hd;
    if (h >= H + Hkv) {  // v: appended as it is
      const int64_t o = base + int64_t(h - H - Hkv) * hd;
      v_cache[o + i] = dev::float_to_bf(s[0]), v_cache[o + i + half] = dev::float_to_bf(s[1]);
      return;
    }
    float sn, cs, y1, y2;
    dev::rope_angle(float(p), i, hd, theta, &sn, &cs);
    dev::rope_rotate(s[0], s[1], sn, cs, &y1, &y2);
    if (h < H) {
      float* q = qkv + int64_t(t) * (H + 2 * Hkv) * hd + int64_t(h) * hd;
      q[i] = y1, q[i + half] = y2;
    } else {
      const int64_t o = base + int64_t(h - H) * hd;
      k_cache[o + i] = dev::float_to_bf(y1), k_cache[o + i + half] = dev::float_to_bf(y2);
    }
  }
};

// The [gate; up] product: unit u is the pair (u, ff + u); h[t][u] = silu(gate) * up in bf16, as swiglu_kernel.
struct SwigluRows {
  static constexpr int kRows = 2;
  int ff;
  uint16_t* h;
  __host__ __device__ int units() const { return ff; }
  __device__ int row(int u, int j) const { return u + j * ff; }
  __device__ float prior(int, int) const { return 0.f; }
  __device__ SwigluRows with_row0() const { return *this; }
  __device__ void store(int u, int t, const float* s, float) const {
    const float g = s[0], up = s[1];
    h[int64_t(t) * ff + u] = dev::float_to_bf(g / (1.f + expf(-g)) * up);
  }
};

}  // namespace cw::kern::cuda
