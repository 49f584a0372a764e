// Matrix-vector products for decode (1 to 4 rows of x): bandwidth-bound, one warp per output row reading
// the bf16 weight row once in 16-byte loads, fp32 accumulation, optional fused residual (beta = 1).
// Reference: matmul_ref.cpp.
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

// One warp per output row: y[t][row] = beta * y + W[row] . x[t], x given as 16-byte pieces (global or shared).
// Before the predecessor finishes (programmatic dependent launch): pull the part of this warp's weight row
// that its first four loads per lane read (2 KiB) into L2.
__device__ __forceinline__ void prefetch_row(const uint16_t* W, int out, int in) {
  const int row = blockIdx.x * 8 + threadIdx.x / 32, lane = threadIdx.x % 32;
  if (row >= out || lane * 128 >= min(in * 2, 2048)) return;
  asm volatile("prefetch.global.L2 [%0];" ::"l"(reinterpret_cast<const char*>(W + int64_t(row) * in) + lane * 128));
}

template <int T>
__device__ __forceinline__ void gemv_rows(const uint16_t* W, int out, int in, const uint4* xv, float beta, float* y) {
  const int row = blockIdx.x * 8 + threadIdx.x / 32, lane = threadIdx.x % 32;
  if (row >= out) return;
  const int nvec = in / 8;
  const uint4* w = reinterpret_cast<const uint4*>(W + int64_t(row) * in);
  float acc[T];
#pragma unroll
  for (int t = 0; t < T; ++t) acc[t] = 0;
  int v = lane;
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
#pragma unroll
  for (int t = 0; t < T; ++t) {
    const float s = dev::warp_sum(acc[t]);
    if (lane == 0) {
      float& dst = y[int64_t(t) * out + row];
      dst = beta == 0.f ? s : s + beta * dst;
    }
  }
}

template <int T>
__global__ void __launch_bounds__(256, 4) gemv_kernel(const uint16_t* W, int out, int in, const uint16_t* x, float beta, float* y) {
  dev::pdl_trigger();
  prefetch_row(W, out, in);
  dev::pdl_wait();
  gemv_rows<T>(W, out, in, reinterpret_cast<const uint4*>(x), beta, y);
}

// The input built per block in shared memory: kNorm = RMSNorm(x) * w, kSwiglu = silu(gate) * up (both as the
// standalone rmsnorm / swiglu kernels compute them, rounded to bf16), then the same product.
enum Prologue { kNorm, kSwiglu };
template <int T, Prologue P>
__global__ void __launch_bounds__(256, 4) gemv_prologue_kernel(const uint16_t* W, int out, int in, const float* x,
                                                            const uint16_t* nw, float eps, float beta, float* y) {
  dev::pdl_trigger();
  prefetch_row(W, out, in);
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
  gemv_rows<T>(W, out, in, xs4, beta, y);
}

template <Prologue P>
static void launch_prologue(const uint16_t* W, int out, int in, const float* x, const uint16_t* nw, float eps, int T,
                            float beta, float* y, cudaStream_t s) {
  check(in % 8 == 0, "gemv: the inner dimension (", in, ") must be a multiple of 8");
  const int blocks = (out + 7) / 8;
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
  const int blocks = (out + 7) / 8;
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
