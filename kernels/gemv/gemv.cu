// Matrix-vector products for decode (1 to 4 rows of x): bandwidth-bound, warps over output rows reading
// each bf16 weight row once in 16-byte loads, fp32 accumulation, optional fused residual (beta = 1).
// Reference: matmul_ref.cpp.
#include <algorithm>

#include "kernels/common/device.cuh"
#include "kernels/common/launch.cuh"
#include "common/error.h"
#include "kernels/cuda.h"

namespace cw::kern::cuda {

__device__ __forceinline__ float dot8(uint4 a, uint4 b) {
  float2 a0 = dev::bf2_to_float2(a.x), a1 = dev::bf2_to_float2(a.y), a2 = dev::bf2_to_float2(a.z), a3 = dev::bf2_to_float2(a.w);
  float2 b0 = dev::bf2_to_float2(b.x), b1 = dev::bf2_to_float2(b.y), b2 = dev::bf2_to_float2(b.z), b3 = dev::bf2_to_float2(b.w);
  return a0.x * b0.x + a0.y * b0.y + a1.x * b1.x + a1.y * b1.y + a2.x * b2.x + a2.y * b2.y + a3.x * b3.x + a3.y * b3.y;
}

__device__ __forceinline__ uint4 load_streaming(const uint4* p) {
  uint4 v;
  asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "l"(p));
  return v;
}

// Warps stride over output rows: y[t][row] = beta * y + W[row] . x[t], x given as 16-byte pieces (global or
// shared). Each warp holds the first kPre 16-byte pieces per lane of its next row in registers: the first
// row's are loaded before the predecessor finishes (weights do not depend on it; programmatic dependent
// launch), later rows' while the current row is reduced. With one row of x a 2,048-wide row is read whole
// that way; with more rows of x half of it (registers).
constexpr int kWarpsPerBlock = 8, kBlocksPerSm = 3;

template <int kPre>
struct RowPieces {
  uint4 w[kPre];
  __device__ __forceinline__ void load(const uint16_t* W, int row, int out, int nvec, int in) {
    const int lane = threadIdx.x % 32;
    if (row >= out) return;
    const uint4* wr = reinterpret_cast<const uint4*>(W + int64_t(row) * in);
#pragma unroll
    for (int i = 0; i < kPre; ++i)
      if (lane + 32 * i < nvec) w[i] = load_streaming(wr + lane + 32 * i);
  }
};

template <int T, int kPre>
__device__ __forceinline__ void gemv_rows(const uint16_t* W, int out, int in, const uint4* xv, float beta, float* y,
                                          RowPieces<kPre>& pre) {
  const int lane = threadIdx.x % 32, stride = gridDim.x * kWarpsPerBlock;
  const int nvec = in / 8;
  for (int row = blockIdx.x * kWarpsPerBlock + threadIdx.x / 32; row < out; row += stride) {
    const uint4* w = reinterpret_cast<const uint4*>(W + int64_t(row) * in);
    float acc[T];
#pragma unroll
    for (int t = 0; t < T; ++t) acc[t] = 0;
#pragma unroll
    for (int i = 0; i < kPre; ++i) {
      const int v = lane + 32 * i;
      if (v < nvec)
#pragma unroll
        for (int t = 0; t < T; ++t) acc[t] += dot8(pre.w[i], xv[t * nvec + v]);
    }
    int v = lane + 32 * kPre;
    for (; v + 96 < nvec; v += 128) {  // four loads in flight per lane
      uint4 w0 = load_streaming(w + v), w1 = load_streaming(w + v + 32), w2 = load_streaming(w + v + 64),
            w3 = load_streaming(w + v + 96);
#pragma unroll
      for (int t = 0; t < T; ++t)
        acc[t] += dot8(w0, xv[t * nvec + v]) + dot8(w1, xv[t * nvec + v + 32]) + dot8(w2, xv[t * nvec + v + 64]) +
                  dot8(w3, xv[t * nvec + v + 96]);
    }
    for (; v < nvec; v += 32) {
      uint4 w0 = load_streaming(w + v);
#pragma unroll
      for (int t = 0; t < T; ++t) acc[t] += dot8(w0, xv[t * nvec + v]);
    }
    pre.load(W, row + stride, out, nvec, in);  // the next row's first pieces, in flight during the reductions
#pragma unroll
    for (int t = 0; t < T; ++t) {
      const float s = dev::warp_sum(acc[t]);
      if (lane == 0) {
        float& dst = y[int64_t(t) * out + row];
        dst = beta == 0.f ? s : s + beta * dst;
      }
    }
  }
}

template <int T>
__global__ void __launch_bounds__(kWarpsPerBlock * 32, kBlocksPerSm) gemv_kernel(const uint16_t* W, int out, int in, const uint16_t* x, float beta, float* y) {
  dev::pdl_trigger();
  RowPieces<T == 1 ? 8 : (T == 2 ? 4 : 2)> pre;
  pre.load(W, blockIdx.x * kWarpsPerBlock + threadIdx.x / 32, out, in / 8, in);
  dev::pdl_wait();
  gemv_rows<T, T == 1 ? 8 : (T == 2 ? 4 : 2)>(W, out, in, reinterpret_cast<const uint4*>(x), beta, y, pre);
}

// The input built per block in shared memory: kNorm = RMSNorm(x) * w, kSwiglu = silu(gate) * up (both as the
// standalone rmsnorm / swiglu kernels compute them, rounded to bf16), then the same product.
enum Prologue { kNorm, kSwiglu };
template <int T, Prologue P>
__global__ void __launch_bounds__(kWarpsPerBlock * 32, kBlocksPerSm) gemv_prologue_kernel(const uint16_t* W, int out, int in, const float* x,
                                                            const uint16_t* nw, float eps, float beta, float* y) {
  dev::pdl_trigger();
  RowPieces<T == 1 ? 8 : (T == 2 ? 4 : 2)> pre;
  pre.load(W, blockIdx.x * kWarpsPerBlock + threadIdx.x / 32, out, in / 8, in);
  dev::pdl_wait();
  extern __shared__ uint4 xs4[];
  uint16_t* xs = reinterpret_cast<uint16_t*>(xs4);
  for (int t = 0; t < T; ++t) {
    if (P == kNorm) {
      const float* xr = x + int64_t(t) * in;
      float ss = 0;
      for (int i = threadIdx.x; i < in; i += blockDim.x) ss += xr[i] * xr[i];
      ss = dev::block_sum(ss);
      const float inv = rsqrtf(ss / in + eps);
      for (int i = threadIdx.x; i < in; i += blockDim.x) xs[t * in + i] = dev::float_to_bf(dev::bf_to_float(nw[i]) * (xr[i] * inv));
    } else {
      const float* g = x + int64_t(t) * 2 * in;
      for (int i = threadIdx.x; i < in; i += blockDim.x) xs[t * in + i] = dev::float_to_bf(g[i] / (1.f + expf(-g[i])) * g[in + i]);
    }
  }
  __syncthreads();
  gemv_rows<T, T == 1 ? 8 : (T == 2 ? 4 : 2)>(W, out, in, xs4, beta, y, pre);
}

// Blocks: one warp per row up to kBlocksPerSm resident blocks per SM, then warps take several rows.
static int gemv_blocks(int out) {
  static const int sms = [] {
    int dev = 0, n = 0;
    cuda::check_cuda(cudaGetDevice(&dev), "gemv: reading the device");
    cuda::check_cuda(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev), "gemv: reading the SM count");
    return n;
  }();
  return std::max(1, std::min((out + kWarpsPerBlock - 1) / kWarpsPerBlock, sms * kBlocksPerSm));
}

template <Prologue P>
static void launch_prologue(const uint16_t* W, int out, int in, const float* x, const uint16_t* nw, float eps, int T,
                            float beta, float* y, cudaStream_t s) {
  check(in % 8 == 0, "gemv: the inner dimension (", in, ") must be a multiple of 8");
  const int blocks = gemv_blocks(out);
  const size_t smem = size_t(T) * in * 2;
  check(smem <= 48 * 1024, "gemv: ", T, " rows of ", in, " do not fit in shared memory");
  switch (T) {
    case 1: dev::launch_pdl(gemv_prologue_kernel<1, P>, blocks, 256, smem, s, "gemv kernel", W, out, in, x, nw, eps, beta, y); break;
    case 2: dev::launch_pdl(gemv_prologue_kernel<2, P>, blocks, 256, smem, s, "gemv kernel", W, out, in, x, nw, eps, beta, y); break;
    case 3: dev::launch_pdl(gemv_prologue_kernel<3, P>, blocks, 256, smem, s, "gemv kernel", W, out, in, x, nw, eps, beta, y); break;
    case 4: dev::launch_pdl(gemv_prologue_kernel<4, P>, blocks, 256, smem, s, "gemv kernel", W, out, in, x, nw, eps, beta, y); break;
    default: fail("gemv: ", T, " rows; 1 to 4 are built (use cuBLAS above)");
  }
  check_cuda(cudaGetLastError(), "gemv kernel");
}

void gemv_rmsnorm(const uint16_t* W, int out, int in, const float* x, const uint16_t* norm_w, float eps, int T,
                  float beta, float* y, cudaStream_t s) {
  launch_prologue<kNorm>(W, out, in, x, norm_w, eps, T, beta, y, s);
}

void gemv_swiglu(const uint16_t* W, int out, int in, const float* gate_up, int T, float beta, float* y, cudaStream_t s) {
  launch_prologue<kSwiglu>(W, out, in, gate_up, nullptr, 0.f, T, beta, y, s);
}

void gemv(const uint16_t* W, int out, int in, const uint16_t* x, int T, float beta, float* y, cudaStream_t s) {
  check(in % 8 == 0, "gemv: the inner dimension (", in, ") must be a multiple of 8");
  const int blocks = gemv_blocks(out);
  switch (T) {
    case 1: dev::launch_pdl(gemv_kernel<1>, blocks, 256, 0, s, "gemv kernel", W, out, in, x, beta, y); break;
    case 2: dev::launch_pdl(gemv_kernel<2>, blocks, 256, 0, s, "gemv kernel", W, out, in, x, beta, y); break;
    case 3: dev::launch_pdl(gemv_kernel<3>, blocks, 256, 0, s, "gemv kernel", W, out, in, x, beta, y); break;
    case 4: dev::launch_pdl(gemv_kernel<4>, blocks, 256, 0, s, "gemv kernel", W, out, in, x, beta, y); break;
    default: fail("gemv: ", T, " rows; 1 to 4 are built (use cuBLAS above)");
  }
  check_cuda(cudaGetLastError(), "gemv kernel");
}

}  // namespace cw::kern::cuda
