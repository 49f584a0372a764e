// Matrix products for a few rows of x (5 to 64: decode batches) on tensor cores, bound by reading W once:
// y[t][o] = beta * y[t][o] + sum_k x[t][k] W[o][k]. A block computes 64 outputs (rows of W) for all rows of x,
// four warps of 16 outputs each; W is the A operand of mma.sync m16n8k16 and x the B operand. K is split
// across blocks so that the small matrices (q/k/v, o, down) still give every SM several blocks; the parts are
// added with atomics (beta = 0 outputs are zeroed first). W and x tiles of 64 along K are copied with cp.async
// four stages deep, and the first W tiles are requested before the previous kernel ends (they do not depend
// on it; programmatic dependent launch).
// Must not: be used for beta other than 0 or 1 with split K (there is no scaling pass).
// Reference: matmul_ref.cpp (fp32 accumulation; split-K sums are added in a varying order).
#include <algorithm>

#include "common/error.h"
#include "kernels/common/device.cuh"
#include "kernels/common/launch.cuh"
#include "kernels/cuda.h"

namespace cw::kern::cuda {

namespace {

constexpr int kBM = 64, kBK = 64, kStages = 4, kLD = kBK + 8;  // rows padded by 8: conflict-free ldmatrix

__device__ __forceinline__ void mma_bf16(float* c, const uint32_t* a, uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
__device__ __forceinline__ void cp_async16(void* dst, const void* src) {
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(s), "l"(src) : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }
__device__ __forceinline__ void cp_async_wait_stages() { asm volatile("cp.async.wait_group %0;" ::"n"(kStages - 2) : "memory"); }
__device__ __forceinline__ void ldmatrix_x4(uint32_t* r, const uint16_t* p) {
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(p));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(s));
}
__device__ __forceinline__ void ldmatrix_x2(uint32_t* r, const uint16_t* p) {
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(p));
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0,%1}, [%2];" : "=r"(r[0]), "=r"(r[1]) : "r"(s));
}

template <int NT>  // n-tiles of 8 rows of x: T <= 8 * NT
constexpr size_t stage_elems() { return size_t(kBM + NT * 8) * kLD; }

template <int NT>
__global__ void __launch_bounds__(128) gemm_skinny_kernel(const uint16_t* W, int out, int in, const uint16_t* x, int T,
                                                          int steps_per_split, float beta, float* y, bool atomic) {
  extern __shared__ __align__(16) uint16_t smem[];
  dev::pdl_trigger();
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane >> 2, tq = lane & 3;
  const int m0 = blockIdx.x * kBM, nk = (in + kBK - 1) / kBK;
  const int k_begin = blockIdx.y * steps_per_split, steps = max(0, min(nk, k_begin + steps_per_split) - k_begin);
  auto stage = [&](int s) { return smem + size_t(s) * stage_elems<NT>(); };
  auto load_w = [&](int i) {
    uint16_t* Ws = stage(i % kStages);
    const int k0 = (k_begin + i) * kBK;
    for (int e = threadIdx.x; e < kBM * (kBK / 8); e += 128) {
      const int r = e / (kBK / 8), c = (e % (kBK / 8)) * 8;
      uint16_t* dst = Ws + r * kLD + c;
      if (m0 + r < out && k0 + c < in) cp_async16(dst, W + int64_t(m0 + r) * in + k0 + c);
      else *reinterpret_cast<uint4*>(dst) = make_uint4(0, 0, 0, 0);
    }
  };
  auto load_x = [&](int i) {
    uint16_t* Xs = stage(i % kStages) + kBM * kLD;
    const int k0 = (k_begin + i) * kBK;
    for (int e = threadIdx.x; e < NT * 8 * (kBK / 8); e += 128) {
      const int r = e / (kBK / 8), c = (e % (kBK / 8)) * 8;
      uint16_t* dst = Xs + r * kLD + c;
      if (r < T && k0 + c < in) cp_async16(dst, x + int64_t(r) * in + k0 + c);
      else *reinterpret_cast<uint4*>(dst) = make_uint4(0, 0, 0, 0);
    }
  };
  // Prologue: W of the first stages before the predecessor ends, x after it (one commit group per stage; the
  // first group also holds the early W tiles).
  for (int i = 0; i < kStages - 1; ++i)
    if (i < steps) load_w(i);
  dev::pdl_wait();
  for (int i = 0; i < kStages - 1; ++i) {
    if (i < steps) load_x(i);
    cp_async_commit();
  }
  float acc[NT][4];
#pragma unroll
  for (int n = 0; n < NT; ++n) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0;
  for (int i = 0; i < steps; ++i) {
    cp_async_wait_stages();
    __syncthreads();  // stage i has landed for every thread; stage i - 1 is no longer read
    const int next = i + kStages - 1;
    if (next < steps) load_w(next), load_x(next);
    cp_async_commit();
    const uint16_t* Ws = stage(i % kStages);
    const uint16_t* Xs = Ws + kBM * kLD;
#pragma unroll
    for (int kk = 0; kk < kBK / 16; ++kk) {
      uint32_t a[4];
      ldmatrix_x4(a, Ws + (warp * 16 + (lane & 15)) * kLD + kk * 16 + (lane >> 4) * 8);
      const uint16_t* xb = Xs + ((lane & 7) + ((lane >> 4) << 3)) * kLD + kk * 16 + ((lane >> 3) & 1) * 8;
      if constexpr (NT == 1) {
        uint32_t b[2];
        ldmatrix_x2(b, xb);
        mma_bf16(acc[0], a, b[0], b[1]);
      } else {
#pragma unroll
        for (int np = 0; np < NT / 2; ++np) {
          uint32_t b[4];
          ldmatrix_x4(b, xb + np * 16 * kLD);
          mma_bf16(acc[2 * np], a, b[0], b[1]);
          mma_bf16(acc[2 * np + 1], a, b[2], b[3]);
        }
      }
    }
  }
#pragma unroll
  for (int n = 0; n < NT; ++n)
#pragma unroll
    for (int c = 0; c < 4; ++c) {
      const int o = m0 + warp * 16 + g + (c >= 2 ? 8 : 0), t = n * 8 + tq * 2 + (c & 1);
      if (o >= out || t >= T) continue;
      float* p = y + int64_t(t) * out + o;
      if (atomic) atomicAdd(p, acc[n][c]);
      else *p = beta == 0.f ? acc[n][c] : acc[n][c] + beta * *p;
    }
}

template <int NT>
void launch(const uint16_t* W, int out, int in, const uint16_t* x, int T, float beta, float* y, cudaStream_t s) {
  static const int sms = [] {
    int dev = 0, n = 0;
    check_cuda(cudaGetDevice(&dev), "gemm_skinny: reading the device");
    check_cuda(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev), "gemm_skinny: reading the SM count");
    return n;
  }();
  constexpr size_t smem = kStages * stage_elems<NT>() * 2;
  static const bool configured = [] {
    check_cuda(cudaFuncSetAttribute(gemm_skinny_kernel<NT>, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)),
               "gemm_skinny: shared memory size");
    return true;
  }();
  (void)configured;
  // Split K until there are about two blocks per SM, keeping at least 4 tiles of K per block.
  const int blocks_m = (out + kBM - 1) / kBM, nk = (in + kBK - 1) / kBK;
  int splits = std::min(std::max(1, (2 * sms + blocks_m - 1) / blocks_m), std::max(1, nk / 4));
  const int per = (nk + splits - 1) / splits;
  splits = (nk + per - 1) / per;
  const bool atomic = splits > 1;
  if (atomic && beta == 0.f) check_cuda(cudaMemsetAsync(y, 0, size_t(T) * out * 4, s), "gemm_skinny: zeroing y");
  dev::launch_pdl(gemm_skinny_kernel<NT>, dim3(blocks_m, splits), 128, smem, s, "gemm_skinny kernel", W, out, in, x, T,
                  per, beta, y, atomic);
}

}  // namespace

void gemm_skinny(const uint16_t* W, int out, int in, const uint16_t* x, int T, float beta, float* y, cudaStream_t s) {
  check(in % 8 == 0, "gemm_skinny: the inner dimension (", in, ") must be a multiple of 8");
  check(T >= 1 && T <= 64, "gemm_skinny: ", T, " rows; 1 to 64 are built (use cuBLAS above)");
  check(beta == 0.f || beta == 1.f, "gemm_skinny: beta must be 0 or 1");
  if (T <= 8) launch<1>(W, out, in, x, T, beta, y, s);
  else if (T <= 16) launch<2>(W, out, in, x, T, beta, y, s);
  else if (T <= 32) launch<4>(W, out, in, x, T, beta, y, s);
  else launch<8>(W, out, in, x, T, beta, y, s);
  check_cuda(cudaGetLastError(), "gemm_skinny kernel");
}

}  // namespace cw::kern::cuda
