// Attention of one item with many query rows (a prefill chunk, or a group's rows over a shared prefix) on
// tensor cores: gather the item's K/V pages and the KV group's queries into contiguous bf16, S = Q K^T per
// KV head (one batched cuBLAS product), causal softmax per row, O = P V (a second batched product), then
// write the same partial state as paged_attention into slot0 (and -inf into the item's other split slots).
// Reference: paged_attention_ref.cpp (the same answer, bf16 tolerance).
#include <cublas_v2.h>

#include "common/error.h"
#include "kernels/common/device.cuh"
#include "kernels/cuda.h"

namespace cw::kern::cuda {

namespace {

struct Layout {
  size_t kc, vc, qg, s, p, o, lse, total;
};
Layout layout(int rows, int kv_len, const AttnShape& S) {
  const size_t group = size_t(S.heads / S.kv_heads), M = size_t(rows) * group, kvp = size_t((kv_len + 7) / 8 * 8);
  const size_t Hkv = size_t(S.kv_heads), hd = size_t(S.head_dim);
  Layout L{};
  size_t off = 0;
  auto take = [&](size_t bytes) { size_t o = off; off += (bytes + 255) / 256 * 256; return o; };
  L.kc = take(Hkv * kvp * hd * 2), L.vc = take(Hkv * kvp * hd * 2), L.qg = take(Hkv * M * hd * 2);
  L.s = take(Hkv * M * kvp * 4), L.p = take(Hkv * M * kvp * 2), L.o = take(Hkv * M * hd * 4), L.lse = take(Hkv * M * 4);
  L.total = off;
  return L;
}

__global__ void gather_kv(const int32_t* pages, int kv_len, int kvp, int page, int Hkv, int hd, const uint16_t* kc,
                          const uint16_t* vc, uint16_t* K, uint16_t* V) {
  const int t = blockIdx.x;
  for (int e = threadIdx.x; e < Hkv * hd; e += blockDim.x) {
    const int kvh = e / hd, d = e % hd;
    uint16_t k = 0, v = 0;
    if (t < kv_len) {
      const int64_t off = ((int64_t(pages[t / page]) * page + t % page) * Hkv + kvh) * hd + d;
      k = kc[off], v = vc[off];
    }
    K[(int64_t(kvh) * kvp + t) * hd + d] = k;
    V[(int64_t(kvh) * kvp + t) * hd + d] = v;
  }
}

__global__ void gather_q(const float* q, int q_stride, int row_begin, int H, int Hkv, int hd, float scale, int M, uint16_t* Qg) {
  const int r = blockIdx.x, group = H / Hkv;
  for (int e = threadIdx.x; e < H * hd; e += blockDim.x) {
    const int h = e / hd, d = e % hd;
    Qg[(int64_t(h / group) * M + int64_t(r) * group + h % group) * hd + d] =
        dev::float_to_bf(q[int64_t(row_begin + r) * q_stride + e] * scale);
  }
}

__global__ void causal_softmax(const float* S, uint16_t* P, float* lse, const int32_t* q_pos, int row_begin, int group,
                               int M, int kvp, int kv_len, int kv_pos0) {
  const int row = blockIdx.x, r = (row % M) / group;
  const int limit = min(kv_len, q_pos[row_begin + r] - kv_pos0 + 1);
  const float* s = S + int64_t(row) * kvp;
  uint16_t* p = P + int64_t(row) * kvp;
  float m = -INFINITY;
  for (int t = threadIdx.x; t < limit; t += blockDim.x) m = fmaxf(m, s[t]);
  m = dev::block_max(m);
  float z = 0;
  for (int t = threadIdx.x; t < limit; t += blockDim.x) z += expf(s[t] - m);
  z = dev::block_sum(z);
  const float inv = z > 0 ? 1.f / z : 0.f;
  for (int t = threadIdx.x; t < kvp; t += blockDim.x) p[t] = dev::float_to_bf(t < limit ? expf(s[t] - m) * inv : 0.f);
  if (threadIdx.x == 0) lse[row] = z > 0 ? m + logf(z) : -INFINITY;
}

__global__ void scatter(const float* O, const float* lse_g, int M, int H, int Hkv, int hd, int row_begin, int rows_total,
                        int splits, int slot0, float* o_part, float* lse_part) {
  const int r = blockIdx.x, group = H / Hkv, row = row_begin + r;
  for (int e = threadIdx.x; e < H * hd; e += blockDim.x) {
    const int h = e / hd, d = e % hd;
    o_part[((int64_t(slot0) * rows_total + row) * H + h) * hd + d] = O[(int64_t(h / group) * M + int64_t(r) * group + h % group) * hd + d];
  }
  for (int h = threadIdx.x; h < H; h += blockDim.x) {
    lse_part[(int64_t(slot0) * rows_total + row) * H + h] = lse_g[int64_t(h / group) * M + int64_t(r) * group + h % group];
    for (int s = 1; s < splits; ++s) lse_part[(int64_t(slot0 + s) * rows_total + row) * H + h] = -INFINITY;
  }
}

void blas(cublasStatus_t st, const char* what) { check(st == CUBLAS_STATUS_SUCCESS, "attention ", what, ": cuBLAS status ", int(st)); }

}  // namespace

size_t paged_prefill_workspace(int rows, int kv_len, const AttnShape& shape) { return layout(rows, kv_len, shape).total; }

void paged_prefill(cublasHandle_t handle, const float* q, const int32_t* q_pos, int row_begin, int rows,
                   const int32_t* pages, int kv_len, int kv_pos0, const AttnShape& S, const uint16_t* k_cache,
                   const uint16_t* v_cache, int splits, int slot0, float* o_part, float* lse_part, void* workspace,
                   cudaStream_t s) {
  check(kv_len >= 1 && rows >= 1, "paged prefill: needs rows and keys");
  const Layout L = layout(rows, kv_len, S);
  char* ws = static_cast<char*>(workspace);
  uint16_t *K = reinterpret_cast<uint16_t*>(ws + L.kc), *V = reinterpret_cast<uint16_t*>(ws + L.vc);
  uint16_t *Qg = reinterpret_cast<uint16_t*>(ws + L.qg), *P = reinterpret_cast<uint16_t*>(ws + L.p);
  float *Sc = reinterpret_cast<float*>(ws + L.s), *O = reinterpret_cast<float*>(ws + L.o), *lse = reinterpret_cast<float*>(ws + L.lse);
  const int group = S.heads / S.kv_heads, M = rows * group, kvp = (kv_len + 7) / 8 * 8, hd = S.head_dim;
  gather_kv<<<kvp, 256, 0, s>>>(pages, kv_len, kvp, S.page_size, S.kv_heads, hd, k_cache, v_cache, K, V);
  gather_q<<<rows, 256, 0, s>>>(q, S.q_stride, row_begin, S.heads, S.kv_heads, hd, S.scale, M, Qg);
  check_cuda(cudaGetLastError(), "paged prefill gathers");
  blas(cublasSetStream(handle, s), "stream");
  const float one = 1, zero = 0;
  // S^T (kvp x M, column-major) = K (kvp x hd) * Qg^T, per KV head.
  blas(cublasGemmStridedBatchedEx(handle, CUBLAS_OP_T, CUBLAS_OP_N, kvp, M, hd, &one, K, CUDA_R_16BF, hd,
                                  int64_t(kvp) * hd, Qg, CUDA_R_16BF, hd, int64_t(M) * hd, &zero, Sc, CUDA_R_32F, kvp,
                                  int64_t(M) * kvp, S.kv_heads, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
       "scores");
  causal_softmax<<<S.kv_heads * M, 256, 0, s>>>(Sc, P, lse, q_pos, row_begin, group, M, kvp, kv_len, kv_pos0);
  check_cuda(cudaGetLastError(), "paged prefill softmax");
  // O^T (hd x M) = V^T (hd x kvp) * P^T (kvp x M), per KV head.
  blas(cublasGemmStridedBatchedEx(handle, CUBLAS_OP_N, CUBLAS_OP_N, hd, M, kvp, &one, V, CUDA_R_16BF, hd,
                                  int64_t(kvp) * hd, P, CUDA_R_16BF, kvp, int64_t(M) * kvp, &zero, O, CUDA_R_32F, hd,
                                  int64_t(M) * hd, S.kv_heads, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
       "values");
  scatter<<<rows, 256, 0, s>>>(O, lse, M, S.heads, S.kv_heads, hd, row_begin, S.rows, splits, slot0, o_part, lse_part);
  check_cuda(cudaGetLastError(), "paged prefill scatter");
}

}  // namespace cw::kern::cuda
