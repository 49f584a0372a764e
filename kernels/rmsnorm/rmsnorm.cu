// RMSNorm on the GPU: one block per row, fp32 input, bf16 output for the next matrix product.
// Two kernels: rows of up to 4,096 elements (a multiple of four, 16-byte aligned) are read once as float4
// into registers, the norm weights are loaded before waiting for the previous kernel, and the row is scaled
// from registers (one round trip after the wait); other rows take the plain loop. The same expression per
// element in both (w * (x * inv)), so they round alike.
// Must not: read the row map or x before waiting for the previous kernel (both may be its output).
// Reference: rmsnorm_ref.cpp.
#include <cstdint>

#include "kernels/common/device.cuh"
#include "kernels/common/launch.cuh"
#include "kernels/cuda.h"

namespace cw::kern::cuda {

namespace {

constexpr int kVecThreads = 128;  // four warps; V float4 per thread

__global__ void rmsnorm_kernel(const float* x, const int32_t* row_map, int d, const uint16_t* w, float eps,
                               uint16_t* y) {
  dev::pdl_trigger();
  const int r = blockIdx.x;
  dev::pdl_wait();
  const float* xr = x + int64_t(row_map ? row_map[r] : r) * d;
  float ss = 0;
  for (int i = threadIdx.x; i < d; i += blockDim.x) ss += xr[i] * xr[i];
  ss = dev::block_sum(ss);
  const float inv = rsqrtf(ss / d + eps);
  for (int i = threadIdx.x; i < d; i += blockDim.x)
    y[int64_t(r) * d + i] = dev::float_to_bf(dev::bf_to_float(w[i]) * (xr[i] * inv));
}

template <int V>
__global__ void __launch_bounds__(kVecThreads)
    rmsnorm_vec_kernel(const float* x, const int32_t* row_map, int d, const uint16_t* w, float eps, uint16_t* y) {
  dev::pdl_trigger();
  const int r = blockIdx.x, n4 = d / 4;
  uint2 wv[V];  // four bf16 weights per piece: they do not depend on the previous kernel
#pragma unroll
  for (int v = 0; v < V; ++v) {
    const int i = threadIdx.x + v * kVecThreads;
    wv[v] = i < n4 ? reinterpret_cast<const uint2*>(w)[i] : make_uint2(0, 0);
  }
  dev::pdl_wait();
  const float4* xr = reinterpret_cast<const float4*>(x + int64_t(row_map ? row_map[r] : r) * d);
  float4 xv[V];
  float ss = 0;
#pragma unroll
  for (int v = 0; v < V; ++v) {
    const int i = threadIdx.x + v * kVecThreads;
    xv[v] = i < n4 ? xr[i] : make_float4(0, 0, 0, 0);
  }
#pragma unroll
  for (int v = 0; v < V; ++v) ss += xv[v].x * xv[v].x + xv[v].y * xv[v].y + xv[v].z * xv[v].z + xv[v].w * xv[v].w;
  ss = dev::block_sum(ss);
  const float inv = rsqrtf(ss / d + eps);
  uint2* yr = reinterpret_cast<uint2*>(y + int64_t(r) * d);
#pragma unroll
  for (int v = 0; v < V; ++v) {
    const int i = threadIdx.x + v * kVecThreads;
    if (i >= n4) break;
    const float2 w01 = dev::bf2_to_float2(wv[v].x), w23 = dev::bf2_to_float2(wv[v].y);
    const uint32_t a = dev::float_to_bf(w01.x * (xv[v].x * inv)), b = dev::float_to_bf(w01.y * (xv[v].y * inv));
    const uint32_t c = dev::float_to_bf(w23.x * (xv[v].z * inv)), e = dev::float_to_bf(w23.y * (xv[v].w * inv));
    yr[i] = make_uint2(a | b << 16, c | e << 16);
  }
}

}  // namespace

void rmsnorm(const float* x, const int32_t* row_map, int rows, int d, const uint16_t* w, float eps, uint16_t* y,
             cudaStream_t s) {
  if (rows == 0) return;
  const int n4 = d / 4, per = (n4 + kVecThreads - 1) / kVecThreads;
  if (d % 4 == 0 && per <= 8 && dev::aligned16(x) && dev::aligned(w, 8) && dev::aligned(y, 8)) {
    auto go = [&](auto kernel) {
      dev::launch_pdl(kernel, rows, kVecThreads, 0, s, "rmsnorm kernel", x, row_map, d, w, eps, y);
    };
    if (per <= 1) go(rmsnorm_vec_kernel<1>);
    else if (per <= 2) go(rmsnorm_vec_kernel<2>);
    else if (per <= 4) go(rmsnorm_vec_kernel<4>);
    else go(rmsnorm_vec_kernel<8>);
    return;
  }
  dev::launch_pdl(rmsnorm_kernel, rows, 256, 0, s, "rmsnorm kernel", x, row_map, d, w, eps, y);
}

}  // namespace cw::kern::cuda
