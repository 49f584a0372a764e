// Decode attention on tensor cores: one warp per (decode row, KV head, split). The KV group's query heads are
// the 16 rows of mma.sync m16n8k16 tiles (rows past the group are zero), so each K/V tile read from the
// pages serves every head of the group in two small matrix products: S = Q K^T (4 tiles of 8 keys), then
// O += P V after an online softmax (base 2) across the quad of lanes that shares a row. Writes the same
// partial state as paged_attention (and merges in the last split's warp when asked).
// Reference: paged_attention_ref.cpp (bf16 tolerance: q and p are rounded to bf16 for the products).
#include <cstdlib>

#include "common/error.h"
#include "kernels/common/device.cuh"
#include "kernels/common/launch.cuh"
#include "kernels/cuda.h"

namespace cw::kern::cuda {

namespace {

constexpr int kKeys = 32;
constexpr float kLog2e = 1.4426950408889634f, kLn2 = 0.6931471805599453f;

__device__ __forceinline__ void mma_bf16(float* c, const uint32_t* a, uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
  __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  uint32_t u;
  memcpy(&u, &v, 4);
  return u;
}
__device__ __forceinline__ uint32_t ld32(const uint16_t* p) { return *reinterpret_cast<const uint32_t*>(p); }

template <int HD>
__global__ void __launch_bounds__(32)
    paged_decode_mma_kernel(const float* q, const int32_t* q_pos, AttnLevel L, const int32_t* tile_item,
                            const int32_t* tile_row0, AttnShape S, const uint16_t* k_cache, const uint16_t* v_cache,
                            int splits, int slot0, float* o_part, float* lse_part, AttnMerge merge) {
  constexpr int KST = HD + 8, VST = kKeys + 8, QST = HD + 8, NT = HD / 8, KS = HD / 16;
  __shared__ __align__(16) uint16_t Ks[kKeys * KST];  // [key][dim]
  __shared__ __align__(16) uint16_t Vt[HD * VST];     // [dim][key]
  __shared__ __align__(16) uint16_t Qs[16 * QST];     // [head][dim]
  __shared__ bool last;
  dev::pdl_trigger();
  const int lane = threadIdx.x, g = lane >> 2, tq = lane & 3;
  const int group = S.heads / S.kv_heads;
  const int item = tile_item[blockIdx.x], r = tile_row0[blockIdx.x], kvh = blockIdx.y, split = blockIdx.z;
  const int kv_len = L.kv_len[item], part = split_size(kv_len, splits), begin = split * part;
  const int end = min(kv_len, begin + part), pos0 = L.kv_pos0[item];
  const int32_t* pages = L.kv_pages + L.kv_indptr[item];
  const int lim = min(end, q_pos[r] - pos0 + 1);  // keys [begin, lim)
  dev::pdl_wait();

  for (int e = lane; e < 16 * HD; e += 32) {
    const int hh = e / HD, d = e % HD;
    const float v = hh < group ? q[int64_t(r) * S.q_stride + (kvh * group + hh) * HD + d] * (S.scale * kLog2e) : 0.f;
    Qs[hh * QST + d] = dev::float_to_bf(v);
  }
  __syncwarp();
  uint32_t qa[KS][4];
#pragma unroll
  for (int ks = 0; ks < KS; ++ks) {
    const uint16_t* b = Qs + ks * 16 + tq * 2;
    qa[ks][0] = ld32(b + g * QST), qa[ks][1] = ld32(b + (g + 8) * QST);
    qa[ks][2] = ld32(b + g * QST + 8), qa[ks][3] = ld32(b + (g + 8) * QST + 8);
  }
  float m0 = -INFINITY, m1 = -INFINITY, l0 = 0, l1 = 0, acc[NT][4];
#pragma unroll
  for (int n = 0; n < NT; ++n) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0;

  for (int t0 = begin; t0 < lim; t0 += kKeys) {
    // Lane j copies key t0 + j: K row pieces as they are, V transposed (so P V's fragments are 32-bit pairs).
    const int t = t0 + lane;
    const uint16_t *kp = nullptr, *vp = nullptr;
    if (t < lim) {
      const int64_t off = ((int64_t(pages[t / S.page_size]) * S.page_size + t % S.page_size) * S.kv_heads + kvh) * HD;
      kp = k_cache + off, vp = v_cache + off;
    }
#pragma unroll 4
    for (int d = 0; d < HD; d += 8) {
      uint4 kb = make_uint4(0, 0, 0, 0), vb = kb;
      if (kp) kb = *reinterpret_cast<const uint4*>(kp + d), vb = *reinterpret_cast<const uint4*>(vp + d);
      *reinterpret_cast<uint4*>(Ks + lane * KST + d) = kb;
      const uint16_t* vv = reinterpret_cast<const uint16_t*>(&vb);
#pragma unroll
      for (int i = 0; i < 8; ++i) Vt[(d + i) * VST + lane] = vv[i];
    }
    __syncwarp();
    float s[4][4];
#pragma unroll
    for (int nt = 0; nt < 4; ++nt) {
      s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0;
#pragma unroll
      for (int ks = 0; ks < KS; ++ks) {
        const uint16_t* b = Ks + (nt * 8 + g) * KST + ks * 16 + tq * 2;
        mma_bf16(s[nt], qa[ks], ld32(b), ld32(b + 8));
      }
#pragma unroll
      for (int c = 0; c < 4; ++c)
        if (t0 + nt * 8 + tq * 2 + (c & 1) >= lim) s[nt][c] = -INFINITY;
    }
    float mx0 = -INFINITY, mx1 = -INFINITY;
#pragma unroll
    for (int nt = 0; nt < 4; ++nt) mx0 = fmaxf(mx0, fmaxf(s[nt][0], s[nt][1])), mx1 = fmaxf(mx1, fmaxf(s[nt][2], s[nt][3]));
    mx0 = fmaxf(mx0, __shfl_xor_sync(dev::kFull, mx0, 1)), mx0 = fmaxf(mx0, __shfl_xor_sync(dev::kFull, mx0, 2));
    mx1 = fmaxf(mx1, __shfl_xor_sync(dev::kFull, mx1, 1)), mx1 = fmaxf(mx1, __shfl_xor_sync(dev::kFull, mx1, 2));
    const float n0 = fmaxf(m0, mx0), n1 = fmaxf(m1, mx1);  // finite: key t0 is visible to every row
    const float c0 = exp2f(m0 - n0), c1 = exp2f(m1 - n1);
    float ls0 = 0, ls1 = 0;
#pragma unroll
    for (int nt = 0; nt < 4; ++nt) {
      s[nt][0] = exp2f(s[nt][0] - n0), s[nt][1] = exp2f(s[nt][1] - n0);
      s[nt][2] = exp2f(s[nt][2] - n1), s[nt][3] = exp2f(s[nt][3] - n1);
      ls0 += s[nt][0] + s[nt][1], ls1 += s[nt][2] + s[nt][3];
    }
    ls0 += __shfl_xor_sync(dev::kFull, ls0, 1), ls0 += __shfl_xor_sync(dev::kFull, ls0, 2);
    ls1 += __shfl_xor_sync(dev::kFull, ls1, 1), ls1 += __shfl_xor_sync(dev::kFull, ls1, 2);
    l0 = l0 * c0 + ls0, l1 = l1 * c1 + ls1, m0 = n0, m1 = n1;
#pragma unroll
    for (int n = 0; n < NT; ++n) acc[n][0] *= c0, acc[n][1] *= c0, acc[n][2] *= c1, acc[n][3] *= c1;
#pragma unroll
    for (int kk = 0; kk < 2; ++kk) {  // 16 keys per step: the S fragments of two key tiles form P's A fragment
      const uint32_t pa[4] = {pack_bf16(s[2 * kk][0], s[2 * kk][1]), pack_bf16(s[2 * kk][2], s[2 * kk][3]),
                              pack_bf16(s[2 * kk + 1][0], s[2 * kk + 1][1]), pack_bf16(s[2 * kk + 1][2], s[2 * kk + 1][3])};
#pragma unroll
      for (int n = 0; n < NT; ++n) {
        const uint16_t* b = Vt + (n * 8 + g) * VST + kk * 16 + tq * 2;
        mma_bf16(acc[n], pa, ld32(b), ld32(b + 8));
      }
    }
    __syncwarp();
  }

  const int h0 = kvh * group + g, h1 = h0 + 8;
  const int64_t base = int64_t(slot0 + split) * S.rows + r;
#pragma unroll
  for (int n = 0; n < NT; ++n) {
    const int d = n * 8 + tq * 2;
    if (g < group) {
      float* o = o_part + (base * S.heads + h0) * HD + d;
      o[0] = l0 > 0 ? acc[n][0] / l0 : 0.f, o[1] = l0 > 0 ? acc[n][1] / l0 : 0.f;
    }
    if (g + 8 < group) {
      float* o = o_part + (base * S.heads + h1) * HD + d;
      o[0] = l1 > 0 ? acc[n][2] / l1 : 0.f, o[1] = l1 > 0 ? acc[n][3] / l1 : 0.f;
    }
  }
  if (tq == 0) {
    if (g < group) lse_part[base * S.heads + h0] = l0 > 0 ? (m0 + log2f(l0)) * kLn2 : -INFINITY;
    if (g + 8 < group) lse_part[base * S.heads + h1] = l1 > 0 ? (m1 + log2f(l1)) * kLn2 : -INFINITY;
  }
  if (!merge.out) return;
  __threadfence();
  __syncwarp();
  if (lane == 0) {
    int32_t* counter = merge.counters + int64_t(blockIdx.x) * gridDim.y + kvh;
    last = atomicAdd(counter, 1) == splits - 1;
    if (last) *counter = 0;
  }
  __syncwarp();
  if (!last) return;
  __threadfence();
  for (int e = lane; e < group * HD; e += 32) {
    const int h = kvh * group + e / HD, d = e % HD;
    float mx = -INFINITY;
    for (int sl = 0; sl < merge.slots; ++sl) mx = fmaxf(mx, __ldcg(lse_part + (int64_t(sl) * S.rows + r) * S.heads + h));
    float z = 0, out = 0;
    if (mx != -INFINITY)
      for (int sl = 0; sl < merge.slots; ++sl) {
        const int64_t idx = (int64_t(sl) * S.rows + r) * S.heads + h;
        const float w = expf(__ldcg(lse_part + idx) - mx);
        if (w == 0) continue;
        z += w, out += w * __ldcg(o_part + idx * HD + d);
      }
    merge.out[(int64_t(r) * S.heads + h) * HD + d] = dev::float_to_bf(z > 0 ? out / z : 0.f);
  }
}

}  // namespace

bool decode_mma_enabled() {
  static const bool on = !std::getenv("CHUNKWISE_ATTENTION_SIMT");
  return on;
}

bool paged_decode_mma(const float* q, const int32_t* q_pos, const AttnLevel& level, const int32_t* tile_item,
                      const int32_t* tile_row0, int num_tiles, const AttnShape& S, const uint16_t* k_cache,
                      const uint16_t* v_cache, int splits, int slot0, float* o_part, float* lse_part,
                      const AttnMerge& merge, cudaStream_t s) {
  const int group = S.heads / S.kv_heads;
  if (!decode_mma_enabled() || group > 16 || (S.head_dim != 64 && S.head_dim != 128)) return false;
  if (num_tiles == 0) return true;
  dim3 grid(num_tiles, S.kv_heads, splits);
  if (S.head_dim == 64)
    dev::launch_pdl(paged_decode_mma_kernel<64>, grid, 32, 0, s, "paged decode (tensor cores)", q, q_pos, level, tile_item,
                    tile_row0, S, k_cache, v_cache, splits, slot0, o_part, lse_part, merge);
  else
    dev::launch_pdl(paged_decode_mma_kernel<128>, grid, 32, 0, s, "paged decode (tensor cores)", q, q_pos, level, tile_item,
                    tile_row0, S, k_cache, v_cache, splits, slot0, o_part, lse_part, merge);
  return true;
}

}  // namespace cw::kern::cuda
