// Device helper shared by merge_states and the CUDA-core attention kernel's fused merge (the tensor-core
// kernel merges a tile with the whole block, paged_attention_mma.cu): one warp combines the partial
// states (o, lse per slot) of one (row, head). Lanes first hold the slots' log-sum-exps (32 at a time), then
// every lane accumulates its dimensions over the non-empty slots: up to 16 slots with every load in flight
// (two memory round trips in all), more with four slots' loads in flight at a time.
// Must not: read o of an empty slot (lse -inf): those may be unwritten.
#pragma once
#include "kernels/common/device.cuh"

namespace cw::kern::dev {

constexpr int kFewSlots = 16;  // up to this many slots merge with all their loads in flight

// out[i] += the weighted o of slots s0 + j .. s0 + j + G - 1, each slot's weight on lane (j + u) % 32 of w
// (slots at or past s0 + n weigh 0 and are not read); all G slots' loads in flight before the additions.
template <int G, int PER>
__device__ __forceinline__ void add_slots(const float* o_part, int rows, int heads, int hd, int r, int h, int s0, int j,
                                          int n, float w, float (&out)[PER]) {
  const int lane = threadIdx.x % 32;
  float wj[G], ov[G][PER];
#pragma unroll
  for (int u = 0; u < G; ++u) {
    wj[u] = __shfl_sync(kFull, w, (j + u) & 31);
    if (j + u >= n) wj[u] = 0;
    const float* o = o_part + ((int64_t(s0 + j + u) * rows + r) * heads + h) * hd + lane;
#pragma unroll
    for (int i = 0; i < PER; ++i) ov[u][i] = wj[u] != 0 && lane + 32 * i < hd ? __ldcg(o + 32 * i) : 0.f;
  }
#pragma unroll
  for (int u = 0; u < G; ++u)
#pragma unroll
    for (int i = 0; i < PER; ++i) out[i] += wj[u] * ov[u][i];
}

// out[i] = dimension lane + 32 i (PER * 32 >= hd); returns the merged lse (natural log), -inf when all empty.
template <int PER>
__device__ __forceinline__ float merge_row(const float* o_part, const float* lse_part, int slots, int rows, int heads,
                                           int hd, int r, int h, float (&out)[PER]) {
  const int lane = threadIdx.x % 32;
#pragma unroll
  for (int i = 0; i < PER; ++i) out[i] = 0;
  auto lse_at = [&](int s) { return __ldcg(lse_part + (int64_t(s) * rows + r) * heads + h); };
  float m = -INFINITY, z = 0;
  if (slots <= kFewSlots) {  // every slot's loads in flight at once: two memory round trips in all
    const float mine = lane < slots ? lse_at(lane) : -INFINITY;
    m = warp_max(mine);
    if (m == -INFINITY) return -INFINITY;
    const float w = lane < slots ? expf(mine - m) : 0.f;
    add_slots<kFewSlots>(o_part, rows, heads, hd, r, h, 0, 0, slots, w, out);
    z = w;
  } else {
    for (int s = lane; s < slots; s += 32) m = fmaxf(m, lse_at(s));
    m = warp_max(m);
    if (m == -INFINITY) return -INFINITY;
    for (int s0 = 0; s0 < slots; s0 += 32) {
      const int n = min(32, slots - s0);
      const float w = lane < n ? expf(lse_at(s0 + lane) - m) : 0.f;
      z += w;
      for (int j = 0; j < n; j += 4) add_slots<4>(o_part, rows, heads, hd, r, h, s0, j, n, w, out);
    }
  }
  z = warp_sum(z);
#pragma unroll
  for (int i = 0; i < PER; ++i) out[i] /= z;
  return m + logf(z);
}

}  // namespace cw::kern::dev
