// Matrix-vector products for decode (1 to 4 rows of x): bandwidth-bound, one warp per output row reading
// the bf16 weight row once in 16-byte loads, fp32 accumulation, optional fused residual (beta = 1).
// Reference: matmul_ref.cpp.
#include "kernels/common/device.cuh"
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

template <int T>
__global__ void __launch_bounds__(256) gemv_kernel(const uint16_t* W, int out, int in, const uint16_t* x, float beta, float* y) {
  const int row = blockIdx.x * 8 + threadIdx.x / 32, lane = threadIdx.x % 32;
  if (row >= out) return;
  const int nvec = in / 8;
  const uint4* w = reinterpret_cast<const uint4*>(W + int64_t(row) * in);
  const uint4* xv = reinterpret_cast<const uint4*>(x);
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

void gemv(const uint16_t* W, int out, int in, const uint16_t* x, int T, float beta, float* y, cudaStream_t s) {
  check(in % 8 == 0, "gemv: the inner dimension (", in, ") must be a multiple of 8");
  const int blocks = (out + 7) / 8;
  switch (T) {
    case 1: gemv_kernel<1><<<blocks, 256, 0, s>>>(W, out, in, x, beta, y); break;
    case 2: gemv_kernel<2><<<blocks, 256, 0, s>>>(W, out, in, x, beta, y); break;
    case 3: gemv_kernel<3><<<blocks, 256, 0, s>>>(W, out, in, x, beta, y); break;
    case 4: gemv_kernel<4><<<blocks, 256, 0, s>>>(W, out, in, x, beta, y); break;
    default: fail("gemv: ", T, " rows; 1 to 4 are built (use cuBLAS above)");
  }
  check_cuda(cudaGetLastError(), "gemv kernel");
}

}  // namespace cw::kern::cuda
