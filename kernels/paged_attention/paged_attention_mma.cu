// Paged attention on tensor cores (flash-attention style) for decode rows and prefill chunks alike.
// A block of four warps handles one tile of query rows of one item, one KV head and one split. The query
// rows of a tile are (token, head of the KV group) pairs, token-major, in mma.sync m16n8k16 tiles of 16.
// K/V tiles of 64 keys are copied from the pages into shared memory with cp.async, two stages deep, so the
// next tile's loads overlap this tile's products. Shapes by QW, the warps over query rows (the other 4 / QW
// warps split each key tile):
//   QW = 4, wide   (prefill chunks): each warp owns 16 query rows and walks every key of the tile;
//   QW = 2, medium (short chunks):   32 query rows, two warps on each 16, each taking 32 keys of every tile;
//   QW = 1, narrow (decode rows):    the block's 16 query rows are shared and each warp takes 16 keys of a tile.
// Where warps split the keys, their partial softmax states are combined in shared memory at the end. A block
// copies the same K/V tiles whatever its rows, so more rows per block means fewer copies from L2.
// Scores: S = Q K^T (q pre-scaled to base 2, rounded to bf16), online softmax per row, O += P V with P in
// bf16; everything accumulates in fp32. Writes the partial state of paged_attention (o, lse per split slot)
// and, when asked, merges all slots in the last block of a (tile, KV head), every thread at once; with a
// single slot (one level, one split) and a merge output it writes the bf16 output directly.
// ROPE (decode steps, paged_attention_mma_decode_rope): q and this step's k arrive unrotated in the qkv rows;
// the block rotates its q rows as it loads them, and the block whose keys include a row's own position
// rotates that k, rounds k and v to bf16, writes both to the cache and puts them into the tile in place of
// the cache's row: rope_append and its launch are not needed. The same arithmetic as rope_append
// (rope_math.cuh), so the outputs and the cache are those of the separate kernels.
// ROPE PHASE (steps with chunks, paged_attention_mma_rope_phase): every step row's k and v are rotated, rounded
// and cached once, in units of (row, KV head) that the launch's blocks claim from a counter: two by each block
// of a one-row item (decodes, whose blocks read fewer keys than a chunk's) as it starts, while its first key
// tile is copied, and the rest by any block before it waits. A block waits for all units only before it copies
// a tile holding one of this step's keys, which come last in an item's keys. A unit is claimed only by a
// running block that finishes it without waiting, so no block waits on one that has not started. q rows are
// rotated as they are loaded. The counters end at zero (the last block out resets them), so graph replays
// start from zero. Held to 96 registers for head dimension 64, so that five blocks fit an SM as with the plain
// narrow kernel (at 116 a mixed step's launch took two waves: +0.29 ms per step on an H200).
// Must not: read keys past a row's causal limit (they are masked to -inf, and keys past the block's range
// are zero-filled so that P V never sees stale shared memory).
// Reference: paged_attention_ref.cpp (bf16 tolerance).
#include <algorithm>
#include <cstring>
#include <type_traits>

#include "common/error.h"
#include "kernels/common/device.cuh"
#include "kernels/common/launch.cuh"
#include "kernels/cuda.h"
#include "kernels/rope_append/rope_math.cuh"

namespace cw::kern::cuda {

namespace {

constexpr int kKeys = 64, kWarps = 4;
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
__device__ __forceinline__ uint32_t ld_shared32(const uint16_t* p) { return *reinterpret_cast<const uint32_t*>(p); }
__device__ __forceinline__ void cp_async16(void* dst, const void* src) {
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(s), "l"(src) : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }
template <int N>
__device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory"); }
// A counter that other blocks raise after writing: what they wrote before is visible after this load.
__device__ __forceinline__ int ld_acquire(const int32_t* p) {
  int v;
  asm volatile("ld.acquire.gpu.global.b32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
  return v;
}
// Four 8x8 bf16 matrices, transposed: the B fragments of two n-tiles of P V from V stored [key][dim].
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t* r, const uint16_t* p) {
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(p));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(s));
}

template <int HD>
constexpr size_t smem_bytes() {
  const size_t tiles = size_t(2) * 2 * kKeys * (HD + 8) * 2;  // two stages of K and V, rows padded by 8
  const size_t reduce = size_t(kWarps) * 16 * (HD + 2) * 4;    // the narrow shape's partial states
  return tiles > reduce ? tiles : reduce;
}

// The fused merge of one tile, by all of the block's threads at once: each (row, head) pair of the tile gets
// TPP threads, each combining HD / TPP dimensions over every slot, the loads of up to four slots in flight
// (16 float4s per thread at most), so a tile's merge costs a few memory round trips rather than one per pair.
// Empty slots (lse -inf) are not read.
template <int HD, int PAIRS>
__device__ __forceinline__ void merge_tile(const float* o_part, const float* lse_part, const AttnMerge& merge,
                                           const AttnShape& S, int row0, int n_pairs, int group, int kvh) {
  constexpr int TPP = kWarps * 32 / PAIRS, DPT = HD / TPP, U = DPT >= 64 ? 1 : DPT >= 32 ? 2 : 4;
  static_assert(DPT % 4 == 0, "a thread's slice is whole float4s");
  const int pair = threadIdx.x / TPP, part = threadIdx.x % TPP;
  if (pair >= n_pairs) return;
  const int r = row0 + pair / group, h = kvh * group + pair % group;
  auto at = [&](int s) { return (int64_t(s) * S.rows + r) * S.heads + h; };
  float m = -INFINITY;
  for (int s = 0; s < merge.slots; ++s) m = fmaxf(m, __ldcg(lse_part + at(s)));
  float acc[DPT], z = 0;
#pragma unroll
  for (int i = 0; i < DPT; ++i) acc[i] = 0;
  if (m != -INFINITY)
    for (int s0 = 0; s0 < merge.slots; s0 += U) {
      float w[U];
      float4 v[U][DPT / 4];
#pragma unroll
      for (int u = 0; u < U; ++u) {
        w[u] = s0 + u < merge.slots ? expf(__ldcg(lse_part + at(s0 + u)) - m) : 0.f;
        const float4* o = reinterpret_cast<const float4*>(o_part + (s0 + u < merge.slots ? at(s0 + u) : 0) * HD + part * DPT);
#pragma unroll
        for (int i = 0; i < DPT / 4; ++i) v[u][i] = w[u] != 0 ? __ldcg(o + i) : make_float4(0, 0, 0, 0);
      }
#pragma unroll
      for (int u = 0; u < U; ++u) {
        z += w[u];
#pragma unroll
        for (int i = 0; i < DPT / 4; ++i) {
          acc[4 * i] += w[u] * v[u][i].x, acc[4 * i + 1] += w[u] * v[u][i].y;
          acc[4 * i + 2] += w[u] * v[u][i].z, acc[4 * i + 3] += w[u] * v[u][i].w;
        }
      }
    }
  const float inv = z > 0 ? 1.f / z : 0.f;
  uint32_t* out = reinterpret_cast<uint32_t*>(merge.out + (int64_t(r) * S.heads + h) * HD + part * DPT);
#pragma unroll
  for (int i = 0; i < DPT; i += 2) out[i / 2] = pack_bf16(acc[i] * inv, acc[i + 1] * inv);
}

// One block's work: tile `tile` of the list, split `split` of `splits`, KV head `kvh`.
// QW: warps over query rows (4 = wide, 2 = medium, 1 = narrow); the other 4 / QW warps split each key tile.
// direct: this tile's rows have one slot in all, so the normalised output goes straight to merge.out.
enum Rope { kRopeNone = 0, kRopeOwnRow = 1, kRopePhase = 2 };
using RopePhase = AttnRopePhase;
// Bytes of dynamic shared memory after smem_bytes<HD>() for a ROPE PHASE block's angle table: rows tokens.
template <int HD>
constexpr size_t qtab_bytes(int rows) { return size_t(rows) * HD * sizeof(float); }

// One unit of the rope phase: row r's k for KV head kvh rotated, k and v rounded to bf16 and cached, exactly as
// rope_append does it.
template <int HD>
__device__ __forceinline__ void rope_unit(const float* qkv, const int32_t* q_pos, const AttnShape& S, const RopePhase& P,
                                          uint16_t* k_cache, uint16_t* v_cache, int u) {
  constexpr int half = HD / 2;
  const int r = u / S.kv_heads, kvh = u % S.kv_heads;
  const float* kr = qkv + int64_t(r) * S.q_stride + (S.heads + kvh) * HD;
  const float* vr = kr + S.kv_heads * HD;
  const int64_t base = (int64_t(P.slot[r]) * S.kv_heads + kvh) * HD;
  const float p = float(q_pos[r]);
  for (int i = threadIdx.x; i < half; i += kWarps * 32) {
    float sn, cs, y1, y2;
    dev::rope_angle(p, i, HD, P.theta, &sn, &cs);
    dev::rope_rotate(kr[i], kr[i + half], sn, cs, &y1, &y2);
    k_cache[base + i] = dev::float_to_bf(y1), k_cache[base + i + half] = dev::float_to_bf(y2);
  }
  for (int e = threadIdx.x; e < HD; e += kWarps * 32) v_cache[base + e] = dev::float_to_bf(vr[e]);
}

// Claims and runs rope-phase units (at most `most`) until none is left; block-uniform. Returns after the units
// it ran are counted as done.
template <int HD>
__device__ __forceinline__ void rope_units(const float* qkv, const int32_t* q_pos, const AttnShape& S, const RopePhase& P,
                                           uint16_t* k_cache, uint16_t* v_cache, int most) {
  __shared__ int claimed;
  const int units = S.rows * S.kv_heads;
  int done = 0;
  for (int n = 0; n < most; ++n) {
    __syncthreads();  // the previous unit's `claimed` has been read by every thread
    if (threadIdx.x == 0) claimed = atomicAdd(P.sync, 1);
    __syncthreads();
    if (claimed >= units) break;
    rope_unit<HD>(qkv, q_pos, S, P, k_cache, v_cache, claimed);
    ++done;
  }
  if (done == 0) return;
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) atomicAdd(P.sync + 1, done);
}

template <int HD, int QW, int ROPE = kRopeNone>
__device__ __forceinline__ void attend_tile(const float* q, const int32_t* q_pos, const AttnLevel& L,
                                            const int32_t* tile_item, const int32_t* tile_row0, int rpt,
                                            const AttnShape& S, const uint16_t* k_cache, const uint16_t* v_cache,
                                            int splits, int slot0, float* o_part, float* lse_part,
                                            const AttnMerge& merge, bool direct, int tile, int split, int kvh,
                                            float rope_theta = 0.f, const RopePhase& phase = RopePhase{}) {
  constexpr int KW = kWarps / QW, KPW = kKeys / KW, NS = KPW / 8, KS = HD / 16, NT = HD / 8, ST = HD + 8;
  extern __shared__ __align__(16) uint16_t smem[];
  __shared__ bool last;
  dev::pdl_trigger();  // step metadata and page tables come from the host: read them before waiting
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane >> 2, tq = lane & 3;
  const int qw = warp % QW, kw = warp / QW;
  const int group = S.heads / S.kv_heads;
  const int item = tile_item[tile], row0 = tile_row0[tile];
  const int row_end = min(row0 + rpt, L.q_indptr[item + 1]);
  const int kv_len = L.kv_len[item], part = split_size(kv_len, splits), begin = split * part;
  const int end = min(kv_len, begin + part), pos0 = L.kv_pos0[item];
  const int32_t* pages = L.kv_pages + L.kv_indptr[item];
  // This lane's two query rows (fragment rows g and g + 8 of the warp's tile).
  const int m_a = qw * 16 + g, m_b = m_a + 8;
  const int r_a = row0 + m_a / group, r_b = row0 + m_b / group;
  const bool ok_a = m_a < rpt * group && r_a < row_end, ok_b = m_b < rpt * group && r_b < row_end;
  const int h_a = kvh * group + m_a % group, h_b = kvh * group + m_b % group;
  const int lim_a = ok_a ? min(end, q_pos[r_a] - pos0 + 1) : begin, lim_b = ok_b ? min(end, q_pos[r_b] - pos0 + 1) : begin;
  int block_end = begin;
  for (int rr = row0; rr < row_end; ++rr) block_end = max(block_end, min(end, q_pos[rr] - pos0 + 1));
  // ROPE: the key of the tile's (single) row's own position, appended by this block if it falls in its range;
  // the angles of that position's HD / 2 pairs, computed before waiting (they need only the position).
  const int t_new = ROPE == kRopeOwnRow ? q_pos[row0] - pos0 : -1;
  const float* rope_sn = nullptr;
  const float* rope_cs = nullptr;
  // ROPE PHASE: this step's keys are the item's last ones (from new_from on); the angles of the tile's rows.
  const int new_from = kv_len - (L.q_indptr[item + 1] - L.q_indptr[item]);
  bool keys_ready = ROPE != kRopePhase;
  // [tile row][sin of the HD / 2 pairs, then cos], after the K/V stages in dynamic shared memory (rpt rows)
  float(*qtab)[HD] = reinterpret_cast<float(*)[HD]>(reinterpret_cast<char*>(smem) + smem_bytes<HD>());
  if constexpr (ROPE == kRopePhase) {
    for (int e = threadIdx.x; e < (row_end - row0) * (HD / 2); e += kWarps * 32) {
      const int rr = e / (HD / 2), i = e % (HD / 2);
      dev::rope_angle(float(q_pos[row0 + rr]), i, HD, rope_theta, &qtab[rr][i], &qtab[rr][HD / 2 + i]);
    }
  }
  if constexpr (ROPE == kRopeOwnRow) {
    __shared__ float tab[2][HD / 2];
    for (int i = threadIdx.x; i < HD / 2; i += kWarps * 32)
      dev::rope_angle(float(q_pos[row0]), i, HD, rope_theta, &tab[0][i], &tab[1][i]);
    rope_sn = tab[0], rope_cs = tab[1];
    __syncthreads();
  }
  int warp_end = max(lim_a, lim_b);
  for (int o = 16; o > 0; o >>= 1) warp_end = max(warp_end, __shfl_xor_sync(dev::kFull, warp_end, o));

  auto load_tile = [&](int t0, int stage) {
    if (ROPE == kRopePhase && !keys_ready && min(t0 + kKeys, block_end) > new_from) {  // block-uniform: new keys
      rope_units<HD>(q, q_pos, S, phase, const_cast<uint16_t*>(k_cache), const_cast<uint16_t*>(v_cache), 1 << 30);
      if (threadIdx.x == 0)
        while (ld_acquire(phase.sync + 1) < S.rows * S.kv_heads) __nanosleep(32);
      __syncthreads();
      keys_ready = true;
    }
    uint16_t* Ks = smem + stage * 2 * kKeys * ST;
    uint16_t* Vs = Ks + kKeys * ST;
    for (int e = threadIdx.x; e < kKeys * (HD / 8); e += kWarps * 32) {
      const int j = e / (HD / 8), d = (e % (HD / 8)) * 8, t = t0 + j;
      if (t < block_end) {
        const int64_t off = ((int64_t(pages[t / S.page_size]) * S.page_size + t % S.page_size) * S.kv_heads + kvh) * HD + d;
        if (ROPE == kRopeOwnRow && t == t_new) {  // this step's key and value: rotated and rounded here, then cached
          const float* kr = q + int64_t(row0) * S.q_stride + (S.heads + kvh) * HD;
          const float* vr = kr + S.kv_heads * HD;
          constexpr int half = HD / 2;
          const int i0 = d % half;  // this piece is dims i0.. of the first half (d < half) or of the second
          uint32_t kp[4], vp[4];  // bf16 pairs, low half first
#pragma unroll
          for (int k = 0; k < 8; ++k) {
            float y1, y2;
            dev::rope_rotate(kr[i0 + k], kr[i0 + k + half], rope_sn[i0 + k], rope_cs[i0 + k], &y1, &y2);
            const uint32_t kb = dev::float_to_bf(d < half ? y1 : y2), vb = dev::float_to_bf(vr[d + k]);
            kp[k / 2] = k % 2 ? kp[k / 2] | kb << 16 : kb, vp[k / 2] = k % 2 ? vp[k / 2] | vb << 16 : vb;
          }
          const uint4 kw = make_uint4(kp[0], kp[1], kp[2], kp[3]), vw = make_uint4(vp[0], vp[1], vp[2], vp[3]);
          *reinterpret_cast<uint4*>(Ks + j * ST + d) = kw, *reinterpret_cast<uint4*>(Vs + j * ST + d) = vw;
          // The cache is written only here, by the one block whose keys include this position (ROPE launches
          // take it writable: paged_attention_mma_decode_rope).
          *reinterpret_cast<uint4*>(const_cast<uint16_t*>(k_cache) + off) = kw;
          *reinterpret_cast<uint4*>(const_cast<uint16_t*>(v_cache) + off) = vw;
        } else {
          cp_async16(Ks + j * ST + d, k_cache + off);
          cp_async16(Vs + j * ST + d, v_cache + off);
        }
      } else {
        *reinterpret_cast<uint4*>(Ks + j * ST + d) = make_uint4(0, 0, 0, 0);
        *reinterpret_cast<uint4*>(Vs + j * ST + d) = make_uint4(0, 0, 0, 0);
      }
    }
    cp_async_commit();
  };

  dev::pdl_wait();  // q and this step's K/V come from the previous kernels
  const int tiles = block_end > begin ? (block_end - begin + kKeys - 1) / kKeys : 0;
  if constexpr (ROPE == kRopePhase) {
    // Blocks of one-row items (decodes: fewer keys than a chunk's tiles, off the launch's longest path) run two
    // units as they start, while their first key tile (when it holds only earlier keys) is copied.
    const bool first_now = tiles > 0 && min(begin + kKeys, block_end) <= new_from;
    if (first_now) load_tile(begin, 0);
    if (L.q_indptr[item + 1] - L.q_indptr[item] == 1)
      rope_units<HD>(q, q_pos, S, phase, const_cast<uint16_t*>(k_cache), const_cast<uint16_t*>(v_cache), 2);
    if (tiles > 0 && !first_now) load_tile(begin, 0);
  } else {
    if (tiles > 0) load_tile(begin, 0);
  }

  // Q fragments (A operand), scaled to base 2 and rounded to bf16; rows outside the tile are zero.
  uint32_t qa[KS][4];
  {
    const float sc = S.scale * kLog2e;
    const float* qra = q + int64_t(r_a) * S.q_stride + h_a * HD;
    const float* qrb = q + int64_t(r_b) * S.q_stride + h_b * HD;
    float fa[KS][4], fb[KS][4];  // this lane's dims ks * 16 + 2 tq + {0, 1, 8, 9} of rows a and b
#pragma unroll
    for (int ks = 0; ks < KS; ++ks) {
      const int d0 = ks * 16 + tq * 2, d1 = d0 + 8;
      const float2 a0 = ok_a ? *reinterpret_cast<const float2*>(qra + d0) : make_float2(0, 0);
      const float2 b0 = ok_b ? *reinterpret_cast<const float2*>(qrb + d0) : make_float2(0, 0);
      const float2 a1 = ok_a ? *reinterpret_cast<const float2*>(qra + d1) : make_float2(0, 0);
      const float2 b1 = ok_b ? *reinterpret_cast<const float2*>(qrb + d1) : make_float2(0, 0);
      fa[ks][0] = a0.x, fa[ks][1] = a0.y, fa[ks][2] = a1.x, fa[ks][3] = a1.y;
      fb[ks][0] = b0.x, fb[ks][1] = b0.y, fb[ks][2] = b1.x, fb[ks][3] = b1.y;
    }
    if constexpr (ROPE == kRopePhase) {  // as below, each row with its own token's angles (rows outside stay zero)
      const float* ta = qtab[ok_a ? m_a / group : 0];
      const float* tb = qtab[ok_b ? m_b / group : 0];
#pragma unroll
      for (int ks = 0; ks < KS / 2; ++ks)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int i = ks * 16 + tq * 2 + (e & 1) + (e >> 1) * 8;
          if (ok_a) dev::rope_rotate(fa[ks][e], fa[ks + KS / 2][e], ta[i], ta[HD / 2 + i], &fa[ks][e], &fa[ks + KS / 2][e]);
          if (ok_b) dev::rope_rotate(fb[ks][e], fb[ks + KS / 2][e], tb[i], tb[HD / 2 + i], &fb[ks][e], &fb[ks + KS / 2][e]);
        }
    }
    if constexpr (ROPE == kRopeOwnRow) {  // dims i and i + HD/2 of a pair sit in k-steps ks and ks + KS/2 of the same lane; every valid
                 // row of a one-row tile is at the tile's position (rows outside are zero and stay zero)
#pragma unroll
      for (int ks = 0; ks < KS / 2; ++ks)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int i = ks * 16 + tq * 2 + (e & 1) + (e >> 1) * 8;
          dev::rope_rotate(fa[ks][e], fa[ks + KS / 2][e], rope_sn[i], rope_cs[i], &fa[ks][e], &fa[ks + KS / 2][e]);
          dev::rope_rotate(fb[ks][e], fb[ks + KS / 2][e], rope_sn[i], rope_cs[i], &fb[ks][e], &fb[ks + KS / 2][e]);
        }
    }
#pragma unroll
    for (int ks = 0; ks < KS; ++ks) {
      qa[ks][0] = pack_bf16(fa[ks][0] * sc, fa[ks][1] * sc), qa[ks][1] = pack_bf16(fb[ks][0] * sc, fb[ks][1] * sc);
      qa[ks][2] = pack_bf16(fa[ks][2] * sc, fa[ks][3] * sc), qa[ks][3] = pack_bf16(fb[ks][2] * sc, fb[ks][3] * sc);
    }
  }
  float mx_a = -INFINITY, mx_b = -INFINITY, l_a = 0, l_b = 0, acc[NT][4];
#pragma unroll
  for (int n = 0; n < NT; ++n) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0;

  for (int i = 0; i < tiles; ++i) {
    if (i + 1 < tiles) {
      load_tile(begin + (i + 1) * kKeys, (i + 1) & 1);
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    const uint16_t* Ks = smem + (i & 1) * 2 * kKeys * ST;
    const uint16_t* Vs = Ks + kKeys * ST;
    const int t0 = begin + i * kKeys + kw * KPW;  // this warp's first key
    if (t0 < warp_end) {
      float s[NS][4];
#pragma unroll
      for (int nt = 0; nt < NS; ++nt) {
        s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0;
        const uint16_t* kr = Ks + (kw * KPW + nt * 8 + g) * ST + tq * 2;
#pragma unroll
        for (int ks = 0; ks < KS; ++ks) mma_bf16(s[nt], qa[ks], ld_shared32(kr + ks * 16), ld_shared32(kr + ks * 16 + 8));
#pragma unroll
        for (int c = 0; c < 4; ++c)
          if (t0 + nt * 8 + tq * 2 + (c & 1) >= (c < 2 ? lim_a : lim_b)) s[nt][c] = -INFINITY;
      }
      float ta = -INFINITY, tb = -INFINITY;
#pragma unroll
      for (int nt = 0; nt < NS; ++nt) ta = fmaxf(ta, fmaxf(s[nt][0], s[nt][1])), tb = fmaxf(tb, fmaxf(s[nt][2], s[nt][3]));
      ta = fmaxf(ta, __shfl_xor_sync(dev::kFull, ta, 1)), ta = fmaxf(ta, __shfl_xor_sync(dev::kFull, ta, 2));
      tb = fmaxf(tb, __shfl_xor_sync(dev::kFull, tb, 1)), tb = fmaxf(tb, __shfl_xor_sync(dev::kFull, tb, 2));
      const float na = fmaxf(mx_a, ta), nb = fmaxf(mx_b, tb);
      const float ra = na == -INFINITY ? 0.f : na, rb = nb == -INFINITY ? 0.f : nb;  // rows with no key yet
      const float ca = exp2f(mx_a - ra), cb = exp2f(mx_b - rb);
      float sa = 0, sb = 0;
#pragma unroll
      for (int nt = 0; nt < NS; ++nt) {
        s[nt][0] = exp2f(s[nt][0] - ra), s[nt][1] = exp2f(s[nt][1] - ra);
        s[nt][2] = exp2f(s[nt][2] - rb), s[nt][3] = exp2f(s[nt][3] - rb);
        sa += s[nt][0] + s[nt][1], sb += s[nt][2] + s[nt][3];
      }
      sa += __shfl_xor_sync(dev::kFull, sa, 1), sa += __shfl_xor_sync(dev::kFull, sa, 2);
      sb += __shfl_xor_sync(dev::kFull, sb, 1), sb += __shfl_xor_sync(dev::kFull, sb, 2);
      l_a = l_a * ca + sa, l_b = l_b * cb + sb, mx_a = na, mx_b = nb;
#pragma unroll
      for (int n = 0; n < NT; ++n) acc[n][0] *= ca, acc[n][1] *= ca, acc[n][2] *= cb, acc[n][3] *= cb;
#pragma unroll
      for (int kk = 0; kk < NS / 2; ++kk) {  // 16 keys per step: two S n-tiles form P's A fragment
        const uint32_t pa[4] = {pack_bf16(s[2 * kk][0], s[2 * kk][1]), pack_bf16(s[2 * kk][2], s[2 * kk][3]),
                                pack_bf16(s[2 * kk + 1][0], s[2 * kk + 1][1]), pack_bf16(s[2 * kk + 1][2], s[2 * kk + 1][3])};
        const uint16_t* vr = Vs + (kw * KPW + kk * 16 + (lane & 15)) * ST + (lane >> 4) * 8;
#pragma unroll
        for (int np = 0; np < NT / 2; ++np) {
          uint32_t b[4];
          ldmatrix_x4_trans(b, vr + np * 16);
          mma_bf16(acc[2 * np], pa, b[0], b[1]);
          mma_bf16(acc[2 * np + 1], pa, b[2], b[3]);
        }
      }
    }
    __syncthreads();
  }

  if (KW > 1) {  // combine the key-slice warps' states through shared memory (tiles are done)
    float* red = reinterpret_cast<float*>(smem);  // [warp][16 rows][HD + 2]: acc, then m and l
    float* mine = red + warp * 16 * (HD + 2);
#pragma unroll
    for (int n = 0; n < NT; ++n) {
      const int d = n * 8 + tq * 2;
      mine[g * (HD + 2) + d] = acc[n][0], mine[g * (HD + 2) + d + 1] = acc[n][1];
      mine[(g + 8) * (HD + 2) + d] = acc[n][2], mine[(g + 8) * (HD + 2) + d + 1] = acc[n][3];
    }
    if (tq == 0) {
      mine[g * (HD + 2) + HD] = mx_a, mine[g * (HD + 2) + HD + 1] = l_a;
      mine[(g + 8) * (HD + 2) + HD] = mx_b, mine[(g + 8) * (HD + 2) + HD + 1] = l_b;
    }
    __syncthreads();
    if (kw == 0) {  // the first key-slice warp of each query-row group: warps qw, qw + QW, ...
      auto row_of = [&](int w, int m) { return red + ((qw + QW * w) * 16 + m) * (HD + 2); };
      float m_all_a = -INFINITY, m_all_b = -INFINITY;
      for (int w = 0; w < KW; ++w) m_all_a = fmaxf(m_all_a, row_of(w, g)[HD]), m_all_b = fmaxf(m_all_b, row_of(w, g + 8)[HD]);
      float wa[KW], wb[KW];
      l_a = l_b = 0;
      for (int w = 0; w < KW; ++w) {
        wa[w] = m_all_a == -INFINITY ? 0.f : exp2f(row_of(w, g)[HD] - m_all_a);
        wb[w] = m_all_b == -INFINITY ? 0.f : exp2f(row_of(w, g + 8)[HD] - m_all_b);
        l_a += wa[w] * row_of(w, g)[HD + 1], l_b += wb[w] * row_of(w, g + 8)[HD + 1];
      }
#pragma unroll
      for (int n = 0; n < NT; ++n) {
        const int d = n * 8 + tq * 2;
        acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0;
        for (int w = 0; w < KW; ++w) {
          const float* ra = row_of(w, g) + d;
          const float* rb = row_of(w, g + 8) + d;
          acc[n][0] += wa[w] * ra[0], acc[n][1] += wa[w] * ra[1], acc[n][2] += wb[w] * rb[0], acc[n][3] += wb[w] * rb[1];
        }
      }
      mx_a = m_all_a, mx_b = m_all_b;
    }
  }
  if (direct) {  // the only slot: the normalised output is the answer
    if (kw != 0) return;
#pragma unroll
    for (int n = 0; n < NT; ++n) {
      const int d = n * 8 + tq * 2;
      if (ok_a) {
        uint16_t* o = merge.out + (int64_t(r_a) * S.heads + h_a) * HD + d;
        o[0] = dev::float_to_bf(l_a > 0 ? acc[n][0] / l_a : 0.f), o[1] = dev::float_to_bf(l_a > 0 ? acc[n][1] / l_a : 0.f);
      }
      if (ok_b) {
        uint16_t* o = merge.out + (int64_t(r_b) * S.heads + h_b) * HD + d;
        o[0] = dev::float_to_bf(l_b > 0 ? acc[n][2] / l_b : 0.f), o[1] = dev::float_to_bf(l_b > 0 ? acc[n][3] / l_b : 0.f);
      }
    }
    return;
  }
  if (kw == 0) {
    const int64_t base = int64_t(slot0 + split) * S.rows;
#pragma unroll
    for (int n = 0; n < NT; ++n) {
      const int d = n * 8 + tq * 2;
      if (ok_a) {
        float* o = o_part + ((base + r_a) * S.heads + h_a) * HD + d;
        o[0] = l_a > 0 ? acc[n][0] / l_a : 0.f, o[1] = l_a > 0 ? acc[n][1] / l_a : 0.f;
      }
      if (ok_b) {
        float* o = o_part + ((base + r_b) * S.heads + h_b) * HD + d;
        o[0] = l_b > 0 ? acc[n][2] / l_b : 0.f, o[1] = l_b > 0 ? acc[n][3] / l_b : 0.f;
      }
    }
    if (tq == 0) {
      if (ok_a) lse_part[(base + r_a) * S.heads + h_a] = l_a > 0 ? (mx_a + log2f(l_a)) * kLn2 : -INFINITY;
      if (ok_b) lse_part[(base + r_b) * S.heads + h_b] = l_b > 0 ? (mx_b + log2f(l_b)) * kLn2 : -INFINITY;
    }
  }
  if (!merge.out) return;
  // Fused merge: the last block to finish for this (tile, KV head) combines every slot of its rows.
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) {
    int32_t* counter = merge.counters + int64_t(tile) * S.kv_heads + kvh;
    last = atomicAdd(counter, 1) == splits - 1;
    if (last) *counter = 0;  // ready for the next launch (graph replays)
  }
  __syncthreads();
  if (!last) return;
  __threadfence();
  merge_tile<HD, QW * 16>(o_part, lse_part, merge, S, row0, (row_end - row0) * group, group, kvh);
}

template <int HD, int QW>
__global__ void __launch_bounds__(kWarps * 32)
    paged_attention_mma_kernel(const float* q, const int32_t* q_pos, AttnLevel L, const int32_t* tile_item,
                               const int32_t* tile_row0, int rpt, AttnShape S, const uint16_t* k_cache,
                               const uint16_t* v_cache, int splits, int slot0, float* o_part, float* lse_part,
                               AttnMerge merge) {
  attend_tile<HD, QW>(q, q_pos, L, tile_item, tile_row0, rpt, S, k_cache, v_cache, splits, slot0, o_part, lse_part,
                      merge, merge.out && merge.slots == 1, blockIdx.x, blockIdx.z, blockIdx.y);
}

// Decode rows with RoPE and the KV append inside (narrow tiles of one row each).
template <int HD>
__global__ void __launch_bounds__(kWarps * 32)
    paged_attention_decode_rope_kernel(const float* qkv, const int32_t* q_pos, AttnLevel L, const int32_t* tile_item,
                                       const int32_t* tile_row0, AttnShape S, uint16_t* k_cache, uint16_t* v_cache,
                                       int splits, float* o_part, float* lse_part, AttnMerge merge, float theta) {
  attend_tile<HD, 1, kRopeOwnRow>(qkv, q_pos, L, tile_item, tile_row0, 1, S, k_cache, v_cache, splits, 0, o_part, lse_part,
                           merge, merge.out && merge.slots == 1, blockIdx.x, blockIdx.z, blockIdx.y, theta);
}

// The end of every block of a ROPE PHASE launch, by thread 0 once it is past every read of the counters: the
// last block out sets them back to zero.
__device__ __forceinline__ void rope_phase_block_done(int32_t* sync) {
  if (threadIdx.x != 0) return;
  __threadfence();
  const int blocks = int(gridDim.x * gridDim.y * gridDim.z);
  if (atomicAdd(sync + 2, 1) == blocks - 1) {
    sync[0] = 0, sync[1] = 0;
    __threadfence();
    sync[2] = 0;
  }
}

// Narrow tiles of one level with the rope phase inside (decode rows beside short chunks); the last block out
// resets the phase's counters.
template <int HD>
__global__ void __launch_bounds__(kWarps * 32, HD == 64 ? 5 : 3)  // 5: the plain narrow kernel's 96 registers
    paged_attention_rope_phase_kernel(const float* qkv, const int32_t* q_pos, AttnLevel L, const int32_t* tile_item,
                                      const int32_t* tile_row0, int rpt, AttnShape S, uint16_t* k_cache,
                                      uint16_t* v_cache, int splits, float* o_part, float* lse_part, AttnMerge merge,
                                      RopePhase phase) {
  attend_tile<HD, 1, kRopePhase>(qkv, q_pos, L, tile_item, tile_row0, rpt, S, k_cache, v_cache, splits, 0, o_part,
                                 lse_part, merge, merge.out && merge.slots == 1, blockIdx.x, blockIdx.z, blockIdx.y,
                                 phase.theta, phase);
  rope_phase_block_done(phase.sync);
}

// Decode tiles (narrow) and chunk tiles (WQW warps over their rows: 2 or 4) of one level in one launch, each
// kind split over the keys its own number of times (grid z: the larger count; a block past its kind's splits
// has nothing to do). Blocks past the narrow tiles take the chunk ones; tiles fastest, so the chunk blocks are
// spread over the launch among the decode blocks. Every tile is merged by its last block (or, with one split,
// written directly), its own kind's slots only.
template <int HD, int WQW>
__global__ void __launch_bounds__(kWarps * 32)
    paged_attention_mixed_kernel(const float* q, const int32_t* q_pos, AttnLevel L, const int32_t* tile_item,
                                 const int32_t* tile_row0, int narrow_tiles, int narrow_rpt, int wide_rpt, AttnShape S,
                                 const uint16_t* k_cache, const uint16_t* v_cache, int splits, int wide_splits,
                                 float* o_part, float* lse_part, AttnMerge merge) {
  const bool narrow = int(blockIdx.x) < narrow_tiles;
  AttnMerge m = merge;
  m.slots = narrow ? splits : wide_splits;
  if (int(blockIdx.z) >= m.slots) return;
  if (narrow)
    attend_tile<HD, 1>(q, q_pos, L, tile_item, tile_row0, narrow_rpt, S, k_cache, v_cache, splits, 0, o_part, lse_part,
                       m, splits == 1, blockIdx.x, blockIdx.z, blockIdx.y);
  else
    attend_tile<HD, WQW>(q, q_pos, L, tile_item, tile_row0, wide_rpt, S, k_cache, v_cache, wide_splits, 0, o_part,
                         lse_part, m, wide_splits == 1, blockIdx.x, blockIdx.z, blockIdx.y);
}

// The same with the rope phase inside (decode rows beside chunks in medium tiles): five blocks per SM for head
// dimension 64, as the narrow phase kernel.
template <int HD, int WQW>
__global__ void __launch_bounds__(kWarps * 32, HD == 64 ? 5 : 3)
    paged_attention_mixed_rope_phase_kernel(const float* qkv, const int32_t* q_pos, AttnLevel L,
                                            const int32_t* tile_item, const int32_t* tile_row0, int narrow_tiles,
                                            int narrow_rpt, int wide_rpt, AttnShape S, uint16_t* k_cache,
                                            uint16_t* v_cache, int splits, int wide_splits, float* o_part,
                                            float* lse_part, AttnMerge merge, RopePhase phase) {
  const bool narrow = int(blockIdx.x) < narrow_tiles;
  AttnMerge m = merge;
  m.slots = narrow ? splits : wide_splits;
  if (int(blockIdx.z) < m.slots) {
    if (narrow)
      attend_tile<HD, 1, kRopePhase>(qkv, q_pos, L, tile_item, tile_row0, narrow_rpt, S, k_cache, v_cache, splits, 0,
                                     o_part, lse_part, m, splits == 1, blockIdx.x, blockIdx.z, blockIdx.y, phase.theta,
                                     phase);
    else
      attend_tile<HD, WQW, kRopePhase>(qkv, q_pos, L, tile_item, tile_row0, wide_rpt, S, k_cache, v_cache,
                                       wide_splits, 0, o_part, lse_part, m, wide_splits == 1, blockIdx.x, blockIdx.z,
                                       blockIdx.y, phase.theta, phase);
  }
  rope_phase_block_done(phase.sync);
}

template <typename Kernel>
void allow_smem(Kernel kernel, size_t bytes) {
  check_cuda(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes)),
             "paged attention (tensor cores): shared memory size");
}

template <int HD, int QW>
void launch(const float* q, const int32_t* q_pos, const AttnLevel& L, const int32_t* tile_item, const int32_t* tile_row0,
            int num_tiles, int rpt, const AttnShape& S, const uint16_t* kc, const uint16_t* vc, int splits, int slot0,
            float* o_part, float* lse_part, const AttnMerge& merge, cudaStream_t s) {
  constexpr size_t smem = smem_bytes<HD>();
  static const bool configured = (allow_smem(paged_attention_mma_kernel<HD, QW>, smem), true);  // above 48 KiB: opt in
  (void)configured;
  dim3 grid(num_tiles, S.kv_heads, splits);
  dev::launch_pdl(paged_attention_mma_kernel<HD, QW>, grid, kWarps * 32, smem, s, "paged attention (tensor cores)", q,
                  q_pos, L, tile_item, tile_row0, rpt, S, kc, vc, splits, slot0, o_part, lse_part, merge);
}

template <int HD, int WQW>
void launch_mixed(const float* q, const int32_t* q_pos, const AttnLevel& L, const int32_t* tile_item,
                  const int32_t* tile_row0, int narrow_tiles, int narrow_rpt, int wide_tiles, int wide_rpt,
                  const AttnShape& S, const uint16_t* kc, const uint16_t* vc, int splits, int wide_splits,
                  float* o_part, float* lse_part, const AttnMerge& merge, const RopePhase* phase, cudaStream_t s) {
  dim3 grid(narrow_tiles + wide_tiles, S.kv_heads, std::max(splits, wide_splits));
  if (phase) {
    // The angle table holds a tile's tokens: up to 16 * WQW of them (one head per KV head).
    constexpr size_t most = smem_bytes<HD>() + qtab_bytes<HD>(16 * WQW);
    static const bool configured = (allow_smem(paged_attention_mixed_rope_phase_kernel<HD, WQW>, most), true);
    (void)configured;
    const size_t smem = smem_bytes<HD>() + qtab_bytes<HD>(std::max(narrow_rpt, wide_rpt));
    dev::launch_pdl(paged_attention_mixed_rope_phase_kernel<HD, WQW>, grid, kWarps * 32, smem, s,
                    "paged attention with the rope phase (tensor cores)", q, q_pos, L, tile_item, tile_row0,
                    narrow_tiles, narrow_rpt, wide_rpt, S, const_cast<uint16_t*>(kc), const_cast<uint16_t*>(vc),
                    splits, wide_splits, o_part, lse_part, merge, *phase);
    return;
  }
  constexpr size_t smem = smem_bytes<HD>();
  static const bool configured = (allow_smem(paged_attention_mixed_kernel<HD, WQW>, smem), true);
  (void)configured;
  dev::launch_pdl(paged_attention_mixed_kernel<HD, WQW>, grid, kWarps * 32, smem, s, "paged attention (tensor cores)",
                  q, q_pos, L, tile_item, tile_row0, narrow_tiles, narrow_rpt, wide_rpt, S, kc, vc, splits,
                  wide_splits, o_part, lse_part, merge);
}

}  // namespace

bool attention_mma_supported(const AttnShape& shape) {
  const int group = shape.heads / shape.kv_heads;
  return group >= 1 && group <= 16 && (shape.head_dim == 64 || shape.head_dim == 128);
}

int attention_mma_rows_per_tile(int heads, int kv_heads, int query_warps) {
  check(query_warps == 1 || query_warps == 2 || query_warps == 4, "paged attention (tensor cores): ", query_warps,
        " warps over query rows are not built (1, 2 or 4)");
  return std::max(1, query_warps * 16 / (heads / kv_heads));
}

namespace {

void check_built(const AttnShape& shape) {
  check(attention_mma_supported(shape), "paged attention (tensor cores): head dimension ", shape.head_dim, " and ",
        shape.heads / shape.kv_heads, " heads per KV head are not built (64 or 128; at most 16)");
}

void check_qkv_rows(const AttnShape& shape) {  // RoPE inside reads each row's k and v beside its q
  check(shape.q_stride >= (shape.heads + 2 * shape.kv_heads) * shape.head_dim,
        "paged attention with RoPE: q must be the qkv rows (q, k and v of each row)");
}

}  // namespace

void paged_attention_mma(const float* q, const int32_t* q_pos, const AttnLevel& level, const int32_t* tile_item,
                         const int32_t* tile_row0, int num_tiles, int rows_per_tile, int query_warps, const AttnShape& shape,
                         const uint16_t* k_cache, const uint16_t* v_cache, int splits, int slot0, float* o_part,
                         float* lse_part, const AttnMerge& merge, cudaStream_t s) {
  if (num_tiles == 0) return;
  check_built(shape);
  check(rows_per_tile >= 1 && rows_per_tile <= attention_mma_rows_per_tile(shape.heads, shape.kv_heads, query_warps),
        "paged attention (tensor cores): ", rows_per_tile, " rows per tile do not fit the block");
  auto go = [&](auto kernel_launch) {
    kernel_launch(q, q_pos, level, tile_item, tile_row0, num_tiles, rows_per_tile, shape, k_cache, v_cache, splits,
                  slot0, o_part, lse_part, merge, s);
  };
  const int key = shape.head_dim * 8 + query_warps;
  switch (key) {
    case 64 * 8 + 1: go(launch<64, 1>); break;
    case 64 * 8 + 2: go(launch<64, 2>); break;
    case 64 * 8 + 4: go(launch<64, 4>); break;
    case 128 * 8 + 1: go(launch<128, 1>); break;
    case 128 * 8 + 2: go(launch<128, 2>); break;
    default: go(launch<128, 4>); break;
  }
  check_cuda(cudaGetLastError(), "paged attention (tensor cores)");
}

void paged_attention_mma_decode_rope(const float* qkv, const int32_t* q_pos, const AttnLevel& level,
                                     const int32_t* tile_item, const int32_t* tile_row0, int num_tiles,
                                     const AttnShape& shape, uint16_t* k_cache, uint16_t* v_cache, int splits,
                                     float* o_part, float* lse_part, const AttnMerge& merge, float rope_theta,
                                     cudaStream_t s) {
  if (num_tiles == 0) return;
  check_built(shape);
  check_qkv_rows(shape);
  auto go = [&](auto kernel) {
    constexpr size_t smem = smem_bytes<decltype(kernel)::value>();
    static const bool configured = (allow_smem(paged_attention_decode_rope_kernel<decltype(kernel)::value>, smem), true);
    (void)configured;
    dim3 grid(num_tiles, shape.kv_heads, splits);
    dev::launch_pdl(paged_attention_decode_rope_kernel<decltype(kernel)::value>, grid, kWarps * 32, smem, s,
                    "paged attention with RoPE (tensor cores)", qkv, q_pos, level, tile_item, tile_row0, shape, k_cache,
                    v_cache, splits, o_part, lse_part, merge, rope_theta);
  };
  if (shape.head_dim == 64) go(std::integral_constant<int, 64>{});
  else go(std::integral_constant<int, 128>{});
  check_cuda(cudaGetLastError(), "paged attention with RoPE (tensor cores)");
}

void paged_attention_mma_rope_phase(const float* qkv, const int32_t* q_pos, const AttnLevel& level,
                                    const int32_t* tile_item, const int32_t* tile_row0, int num_tiles, int rows_per_tile,
                                    const AttnShape& shape, uint16_t* k_cache, uint16_t* v_cache, int splits,
                                    float* o_part, float* lse_part, const AttnMerge& merge, const AttnRopePhase& phase,
                                    cudaStream_t s) {
  if (num_tiles == 0) return;
  check_built(shape);
  check_qkv_rows(shape);
  check(rows_per_tile >= 1 && rows_per_tile <= attention_mma_rows_per_tile(shape.heads, shape.kv_heads, 1),
        "paged attention (tensor cores): ", rows_per_tile, " rows per tile do not fit the block");
  check(phase.slot && phase.sync, "paged attention with the rope phase: the rows' slots and three zeroed counters are needed");
  auto go = [&](auto kernel) {
    constexpr int HD = decltype(kernel)::value;
    constexpr size_t most = smem_bytes<HD>() + qtab_bytes<HD>(16);
    static const bool configured = (allow_smem(paged_attention_rope_phase_kernel<HD>, most), true);
    (void)configured;
    dim3 grid(num_tiles, shape.kv_heads, splits);
    dev::launch_pdl(paged_attention_rope_phase_kernel<HD>, grid, kWarps * 32,
                    smem_bytes<HD>() + qtab_bytes<HD>(rows_per_tile), s,
                    "paged attention with the rope phase (tensor cores)", qkv, q_pos, level, tile_item, tile_row0,
                    rows_per_tile, shape, k_cache, v_cache, splits, o_part, lse_part, merge, phase);
  };
  if (shape.head_dim == 64) go(std::integral_constant<int, 64>{});
  else go(std::integral_constant<int, 128>{});
  check_cuda(cudaGetLastError(), "paged attention with the rope phase (tensor cores)");
}

void paged_attention_mma_mixed(const float* q, const int32_t* q_pos, const AttnLevel& level, const int32_t* tile_item,
                               const int32_t* tile_row0, int narrow_tiles, int narrow_rpt, int wide_tiles,
                               int wide_query_warps, const AttnShape& shape, const uint16_t* k_cache,
                               const uint16_t* v_cache, int splits, int wide_splits, float* o_part, float* lse_part,
                               const AttnMerge& merge, cudaStream_t s, const AttnRopePhase* phase) {
  if (narrow_tiles + wide_tiles == 0) return;
  check_built(shape);
  if (phase) {
    check_qkv_rows(shape);
    check(phase->slot && phase->sync, "paged attention with the rope phase: the rows' slots and three zeroed counters are needed");
  }
  check(splits >= 1 && wide_splits >= 1, "paged attention (tensor cores): splits must be positive");
  check(merge.out && merge.slots >= std::max(splits, wide_splits) && (std::max(splits, wide_splits) == 1 || merge.counters),
        "paged attention (tensor cores): a mixed launch merges its own rows (one level: slots for either kind's splits)");
  check(narrow_rpt >= 1 && narrow_rpt <= attention_mma_rows_per_tile(shape.heads, shape.kv_heads, 1),
        "paged attention (tensor cores): ", narrow_rpt, " rows per tile do not fit the block");
  check(wide_query_warps == 2 || wide_query_warps == 4, "paged attention (tensor cores): chunk tiles of ",
        wide_query_warps, " warps over query rows are not built in the mixed launch (2 or 4)");
  const int wide_rpt = attention_mma_rows_per_tile(shape.heads, shape.kv_heads, wide_query_warps);
  auto go = [&](auto kernel_launch) {
    kernel_launch(q, q_pos, level, tile_item, tile_row0, narrow_tiles, narrow_rpt, wide_tiles, wide_rpt, shape,
                  k_cache, v_cache, splits, wide_splits, o_part, lse_part, merge, phase, s);
  };
  const int key = shape.head_dim * 8 + wide_query_warps;
  switch (key) {
    case 64 * 8 + 2: go(launch_mixed<64, 2>); break;
    case 64 * 8 + 4: go(launch_mixed<64, 4>); break;
    case 128 * 8 + 2: go(launch_mixed<128, 2>); break;
    default: go(launch_mixed<128, 4>); break;
  }
  check_cuda(cudaGetLastError(), "paged attention (tensor cores)");
}

}  // namespace cw::kern::cuda
