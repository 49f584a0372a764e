// Definitions shared by every kernel and its CPU reference: bf16 storage as uint16_t, the layout of the paged
// KV cache, the parameters of an attention launch and of sampling, and the counter-based random numbers that
// make GPU and CPU sampling pick the same token. Compiles as plain C++ and as CUDA.
// Must not: include CUDA headers (serve/'s CPU build includes this file) or allocate.
#pragma once
#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define CW_HD __host__ __device__ __forceinline__
#else
#define CW_HD inline
#endif

namespace cw::kern {

// ---- bf16 as raw bits (round to nearest even; NaN stays NaN) ----
CW_HD float bf16_to_float(uint16_t h) {
  uint32_t bits = uint32_t(h) << 16;
  float f;
  memcpy(&f, &bits, 4);
  return f;
}
CW_HD uint16_t float_to_bf16(float f) {
  uint32_t bits;
  memcpy(&bits, &f, 4);
  if ((bits & 0x7f800000u) == 0x7f800000u && (bits & 0x7fffffu)) return uint16_t((bits >> 16) | 0x40);
  bits += 0x7fffu + ((bits >> 16) & 1u);
  return uint16_t(bits >> 16);
}

// Element access for kernels templated on storage: float, or bf16 bits (uint16_t); arithmetic in fp32.
CW_HD float load_f(const float* p, int64_t i) { return p[i]; }
CW_HD float load_f(const uint16_t* p, int64_t i) { return bf16_to_float(p[i]); }
CW_HD void store_f(float* p, int64_t i, float v) { p[i] = v; }
CW_HD void store_f(uint16_t* p, int64_t i, float v) { p[i] = float_to_bf16(v); }

// ---- Paged KV cache ----
// Per layer, K and V each hold [num_pages][page_size][n_kv_heads][head_dim]. A token's slot is
// page * page_size + offset. A sequence's pages are listed in a block table (CSR: kv_indptr/kv_pages).

// One attention launch ("level"): every query row belongs to exactly one item. Item i owns query rows
// [q_indptr[i], q_indptr[i+1]) and the KV tokens listed by pages kv_pages[kv_indptr[i] .. kv_indptr[i+1]),
// of which the first kv_len[i] are valid; KV token t sits at absolute position kv_pos0[i] + t. Query row r at
// absolute position q_pos[r] sees KV tokens whose position is <= q_pos[r] (bottom-right causal for a chunk
// over its cached prefix). The KV range is cut into `splits` equal parts (multiples of 32 tokens); part s of
// the launch writes partial state slot `slot0 + s`: o_part[slot][row][head][dim] (normalised) and
// lse_part[slot][row][head] (natural log-sum-exp of the scaled scores; -inf and o = 0 when it saw no key).
struct AttnLevel {
  int num_items = 0;
  const int32_t* q_indptr = nullptr;
  const int32_t* kv_indptr = nullptr;
  const int32_t* kv_pages = nullptr;
  const int32_t* kv_len = nullptr;
  const int32_t* kv_pos0 = nullptr;
};

struct AttnShape {
  int rows = 0, heads = 0, kv_heads = 0, head_dim = 0, page_size = 16;
  int q_stride = 0;  // floats between consecutive query rows (q of row r, head h at q + r*q_stride + h*head_dim)
  float scale = 0;   // 1/sqrt(head_dim)
};

CW_HD int split_size(int kv_len, int splits) {  // tokens per part, a multiple of 32
  int per = (kv_len + splits - 1) / splits;
  return (per + 31) / 32 * 32;
}

// Query rows one CUDA block handles: heads of one KV group times rows, up to 16 warps.
CW_HD int attention_rows_per_tile(int heads, int kv_heads) {
  int group = heads / kv_heads;
  return group >= 16 ? 1 : 16 / group;
}

// ---- Sampling ----
struct SampleParams {
  float temperature = 0;  // <= 0: greedy (lowest index among equal maxima)
  int32_t top_k = 0;      // 0 or >= vocab: off
  float top_p = 1;        // >= 1: off
  uint64_t seed = 0, counter = 0;  // the draw is a pure function of (seed, counter, token id)
};

CW_HD uint64_t mix64(uint64_t z) {  // splitmix64 finaliser
  z += 0x9e3779b97f4a7c15ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}
// Uniform in (0, 1) for token `i` of draw (seed, counter).
CW_HD float uniform01(uint64_t seed, uint64_t counter, uint32_t i) {
  uint64_t h = mix64(mix64(seed ^ mix64(counter)) ^ (uint64_t(i) * 0xd1b54a32d192ed03ull));
  return (float(uint32_t(h >> 40)) + 0.5f) * (1.0f / 16777216.0f);
}
// Order-preserving map of a float to uint32 (larger float -> larger key).
CW_HD uint32_t float_key(float f) {
  uint32_t b;
  memcpy(&b, &f, 4);
  return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

}  // namespace cw::kern
