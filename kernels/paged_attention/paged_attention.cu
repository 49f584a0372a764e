// Paged attention on the GPU for decode rows and prefill chunks alike (see AttnLevel in common.h).
// Block (tile, kv head, split): the heads of one KV group times up to 16/group query rows, one warp per
// (row, head). K/V tiles of 32 tokens are gathered from the pages into shared memory; lane j scores token j,
// then the warp folds the tile into an online softmax (base 2) and accumulates V with lanes over dimensions.
// Splits ("flash-decoding") give long KV lists more blocks; merge_states combines the parts.
// Decode steps (earlier_keys_ready): the keys before an item's first query row of this step were written by
// earlier steps, so the block copies its first tile's share of them into shared memory before waiting for
// the previous kernel; only q and this step's own key/value are read after the wait.
// Reference: paged_attention_ref.cpp.
#include <algorithm>

#include "kernels/common/device.cuh"
#include "kernels/common/launch.cuh"
#include "common/error.h"
#include "kernels/cuda.h"
#include "kernels/merge_states/merge_row.cuh"

namespace cw::kern::cuda {

constexpr int kTile = 32;
constexpr float kLog2e = 1.4426950408889634f, kLn2 = 0.6931471805599453f;

template <int HD>
__global__ void __launch_bounds__(512)
    paged_attention_kernel(const float* q, const int32_t* q_pos, AttnLevel L, const int32_t* tile_item,
                           const int32_t* tile_row0, int rpt, AttnShape S, const uint16_t* k_cache,
                           const uint16_t* v_cache, int splits, int slot0, float* o_part, float* lse_part,
                           AttnMerge merge, bool earlier_keys_ready) {
  constexpr int PER = HD / 32, KS = HD + 4;  // padded K rows: lane j reads row j in 16-byte pieces without conflicts
  extern __shared__ float smem[];
  dev::pdl_trigger();  // step metadata and page tables come from the host: read them before waiting
  const int group = S.heads / S.kv_heads;
  const int item = tile_item[blockIdx.x], row0 = tile_row0[blockIdx.x], kvh = blockIdx.y, split = blockIdx.z;
  const int row_end = min(row0 + rpt, L.q_indptr[item + 1]);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int r = row0 + warp / group, h = kvh * group + warp % group;
  const bool active = r < row_end;
  const int kv_len = L.kv_len[item], part = split_size(kv_len, splits), begin = split * part;
  const int end = min(kv_len, begin + part), pos0 = L.kv_pos0[item];
  const int row_lim = active ? min(end, q_pos[r] - pos0 + 1) : begin;
  int block_end = begin;
  for (int rr = row0; rr < row_end; ++rr) block_end = max(block_end, min(end, q_pos[rr] - pos0 + 1));

  float* Ks = smem;                          // [kTile][KS]
  float* Vs = Ks + kTile * KS;               // [kTile][HD]
  float* Qs = Vs + kTile * HD + warp * HD;   // this warp's query, pre-scaled to base 2
  const int32_t* pages = L.kv_pages + L.kv_indptr[item];
  // One 16-byte piece e of tile t0 (key t0 + e / (HD / 8)) into shared memory as floats; zero past block_end.
  auto load_piece = [&](int t0, int e) {
    const int j = e / (HD / 8), d = (e % (HD / 8)) * 8, t = t0 + j;
    uint4 kb = make_uint4(0, 0, 0, 0), vb = kb;
    if (t < block_end) {
      const int64_t off = ((int64_t(pages[t / S.page_size]) * S.page_size + t % S.page_size) * S.kv_heads + kvh) * HD + d;
      kb = *reinterpret_cast<const uint4*>(k_cache + off);
      vb = *reinterpret_cast<const uint4*>(v_cache + off);
    }
    float4* kd = reinterpret_cast<float4*>(Ks + j * KS + d);
    float4* vd = reinterpret_cast<float4*>(Vs + j * HD + d);
    float2 a = dev::bf2_to_float2(kb.x), b = dev::bf2_to_float2(kb.y), c = dev::bf2_to_float2(kb.z), e2 = dev::bf2_to_float2(kb.w);
    kd[0] = make_float4(a.x, a.y, b.x, b.y), kd[1] = make_float4(c.x, c.y, e2.x, e2.y);
    a = dev::bf2_to_float2(vb.x), b = dev::bf2_to_float2(vb.y), c = dev::bf2_to_float2(vb.z), e2 = dev::bf2_to_float2(vb.w);
    vd[0] = make_float4(a.x, a.y, b.x, b.y), vd[1] = make_float4(c.x, c.y, e2.x, e2.y);
  };
  // Keys [begin, ready) of the first tile need nothing from the previous kernels (earlier_keys_ready).
  const int ready = earlier_keys_ready ? min(min(block_end, begin + kTile), q_pos[L.q_indptr[item]] - pos0) : begin;
  for (int e = threadIdx.x; e < kTile * (HD / 8); e += blockDim.x)
    if (begin + e / (HD / 8) < ready) load_piece(begin, e);
  for (int e = threadIdx.x; e < kTile && begin + e < block_end; e += blockDim.x) {  // the rest of the tile into L2
    const int t = begin + e;
    if (t < ready) continue;
    const uint16_t* kp = k_cache + ((int64_t(pages[t / S.page_size]) * S.page_size + t % S.page_size) * S.kv_heads + kvh) * HD;
    const uint16_t* vp = v_cache + (kp - k_cache);
    asm volatile("prefetch.global.L2 [%0];" ::"l"(kp));
    asm volatile("prefetch.global.L2 [%0];" ::"l"(vp));
  }
  dev::pdl_wait();  // q and this step's K/V come from the previous kernels
  if (active)
    for (int i = lane; i < HD; i += 32) Qs[i] = q[int64_t(r) * S.q_stride + h * HD + i] * (S.scale * kLog2e);
  float m = -INFINITY, l = 0, acc[PER];
#pragma unroll
  for (int i = 0; i < PER; ++i) acc[i] = 0;

  for (int t0 = begin; t0 < block_end; t0 += kTile) {
    if (t0 != begin) __syncthreads();  // the previous tile is done (the first tile may hold keys loaded early)
    for (int e = threadIdx.x; e < kTile * (HD / 8); e += blockDim.x)  // 16-byte pieces of K and V
      if (t0 != begin || t0 + e / (HD / 8) >= ready) load_piece(t0, e);
    __syncthreads();
    if (!active) continue;
    const int t = t0 + lane;
    float s = -INFINITY;
    if (t < row_lim) {
      const float4* k4 = reinterpret_cast<const float4*>(Ks + lane * KS);
      const float4* q4 = reinterpret_cast<const float4*>(Qs);
      float a0 = 0, a1 = 0;
#pragma unroll
      for (int i = 0; i < HD / 4; i += 2) {
        const float4 ka = k4[i], qa = q4[i], kb = k4[i + 1], qb = q4[i + 1];
        a0 += ka.x * qa.x + ka.y * qa.y + ka.z * qa.z + ka.w * qa.w;
        a1 += kb.x * qb.x + kb.y * qb.y + kb.z * qb.z + kb.w * qb.w;
      }
      s = a0 + a1;
    }
    const float m_new = fmaxf(m, dev::warp_max(s));
    if (m_new == -INFINITY) continue;
    const float p = t < row_lim ? exp2f(s - m_new) : 0.f, corr = exp2f(m - m_new);
    l = l * corr + dev::warp_sum(p);
#pragma unroll
    for (int i = 0; i < PER; ++i) acc[i] *= corr;
    const int n = min(kTile, row_lim - t0);
    for (int j = 0; j < n; ++j) {
      const float pj = __shfl_sync(dev::kFull, p, j);
#pragma unroll
      for (int i = 0; i < PER; ++i) acc[i] += pj * Vs[j * HD + lane + 32 * i];
    }
    m = m_new;
  }
  if (active) {
    const int64_t idx = (int64_t(slot0 + split) * S.rows + r) * S.heads + h;
#pragma unroll
    for (int i = 0; i < PER; ++i) o_part[idx * HD + lane + 32 * i] = l > 0 ? acc[i] / l : 0.f;
    if (lane == 0) lse_part[idx] = l > 0 ? (m + log2f(l)) * kLn2 : -INFINITY;
  }
  if (!merge.out) return;
  // Fused merge: the last block to finish for this (tile, kv head) combines every slot of its rows.
  __shared__ bool last;
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) {
    int32_t* counter = merge.counters + int64_t(blockIdx.x) * gridDim.y + kvh;
    last = atomicAdd(counter, 1) == splits - 1;
    if (last) *counter = 0;  // ready for the next launch (graph replays)
  }
  __syncthreads();
  if (!last || !active) return;
  __threadfence();
  float out[PER];
  const float lse = dev::merge_row<PER>(o_part, lse_part, merge.slots, S.rows, S.heads, HD, r, h, out);
#pragma unroll
  for (int i = 0; i < PER; ++i)
    merge.out[(int64_t(r) * S.heads + h) * HD + lane + 32 * i] = dev::float_to_bf(lse == -INFINITY ? 0.f : out[i]);
}

void attention_tiles(const std::vector<int32_t>& q_indptr, int rows_per_tile, std::vector<int32_t>& tile_item,
                     std::vector<int32_t>& tile_row0) {
  tile_item.clear(), tile_row0.clear();
  for (size_t i = 0; i + 1 < q_indptr.size(); ++i)
    for (int r = q_indptr[i]; r < q_indptr[i + 1]; r += rows_per_tile) {
      tile_item.push_back(int32_t(i));
      tile_row0.push_back(r);
    }
}

template <int HD>
static void launch(const float* q, const int32_t* q_pos, const AttnLevel& L, const int32_t* tile_item,
                   const int32_t* tile_row0, int num_tiles, int rpt, const AttnShape& S, const uint16_t* kc,
                   const uint16_t* vc, int splits, int slot0, float* o_part, float* lse_part, const AttnMerge& merge,
                   cudaStream_t s, bool earlier_keys_ready) {
  const int warps = rpt * (S.heads / S.kv_heads);
  const size_t smem = sizeof(float) * (kTile * (HD + 4) + kTile * HD + warps * HD);
  dim3 grid(num_tiles, S.kv_heads, splits);
  dev::launch_pdl(paged_attention_kernel<HD>, grid, warps * 32, smem, s, "paged_attention kernel", q, q_pos, L, tile_item,
                  tile_row0, rpt, S, kc, vc, splits, slot0, o_part, lse_part, merge, earlier_keys_ready);
}

void paged_attention(const float* q, const int32_t* q_pos, const AttnLevel& level, const int32_t* tile_item,
                     const int32_t* tile_row0, int num_tiles, int rows_per_tile, const AttnShape& shape,
                     const uint16_t* k_cache, const uint16_t* v_cache, int splits, int slot0, float* o_part,
                     float* lse_part, const AttnMerge& merge, cudaStream_t s, bool earlier_keys_ready) {
  if (num_tiles == 0) return;
  const int group = shape.heads / shape.kv_heads;
  check(shape.heads % shape.kv_heads == 0 && rows_per_tile >= 1 && rows_per_tile * group <= 16,
        "paged attention: heads per KV head times rows per tile must be at most 16");
  switch (shape.head_dim) {
    case 32: launch<32>(q, q_pos, level, tile_item, tile_row0, num_tiles, rows_per_tile, shape, k_cache, v_cache, splits, slot0, o_part, lse_part, merge, s, earlier_keys_ready); break;
    case 64: launch<64>(q, q_pos, level, tile_item, tile_row0, num_tiles, rows_per_tile, shape, k_cache, v_cache, splits, slot0, o_part, lse_part, merge, s, earlier_keys_ready); break;
    case 128: launch<128>(q, q_pos, level, tile_item, tile_row0, num_tiles, rows_per_tile, shape, k_cache, v_cache, splits, slot0, o_part, lse_part, merge, s, earlier_keys_ready); break;
    default: fail("paged attention: head dimension ", shape.head_dim, " is not built (32, 64 or 128)");
  }
  check_cuda(cudaGetLastError(), "paged_attention kernel");
}

}  // namespace cw::kern::cuda
