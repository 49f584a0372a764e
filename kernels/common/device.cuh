// Device-side helpers shared by the .cu files: warp and block reductions, bf16 loads, 16-byte packs.
// Must not: hold state or be included from host-only C++.
#pragma once
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/common/common.h"

namespace cw::kern::dev {

constexpr unsigned kFull = 0xffffffffu;

__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(kFull, v, o);
  return v;
}
__device__ __forceinline__ float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(kFull, v, o));
  return v;
}
// (value, index) with the larger value, the lower index on ties.
__device__ __forceinline__ void warp_argmax(float& v, int& i) {
  for (int o = 16; o > 0; o >>= 1) {
    float ov = __shfl_xor_sync(kFull, v, o);
    int oi = __shfl_xor_sync(kFull, i, o);
    if (ov > v || (ov == v && oi < i)) v = ov, i = oi;
  }
}

// Block-wide reductions for blockDim.x a multiple of 32 (<= 1024); every thread gets the result.
template <float (*WarpOp)(float)>
__device__ __forceinline__ float block_reduce(float v, float identity) {
  __shared__ float buf[32];
  const int lane = threadIdx.x % 32, w = threadIdx.x / 32, n = blockDim.x / 32;
  v = WarpOp(v);
  __syncthreads();
  if (lane == 0) buf[w] = v;
  __syncthreads();
  return WarpOp(lane < n ? buf[lane] : identity);
}
__device__ __forceinline__ float block_sum(float v) { return block_reduce<warp_sum>(v, 0.f); }
__device__ __forceinline__ float block_max(float v) { return block_reduce<warp_max>(v, -INFINITY); }
__device__ __forceinline__ void block_argmax(float& v, int& i) {
  __shared__ float bv[32];
  __shared__ int bi[32];
  const int lane = threadIdx.x % 32, w = threadIdx.x / 32, n = blockDim.x / 32;
  warp_argmax(v, i);
  __syncthreads();
  if (lane == 0) bv[w] = v, bi[w] = i;
  __syncthreads();
  v = lane < n ? bv[lane] : -INFINITY;
  i = lane < n ? bi[lane] : 0x7fffffff;
  warp_argmax(v, i);
}

__device__ __forceinline__ float2 bf2_to_float2(uint32_t bits) {
  __nv_bfloat162 b;
  memcpy(&b, &bits, 4);
  return __bfloat1622float2(b);
}
__device__ __forceinline__ float bf_to_float(uint16_t bits) {
  return __uint_as_float(uint32_t(bits) << 16);
}
__device__ __forceinline__ uint16_t float_to_bf(float f) {
  __nv_bfloat16 b = __float2bfloat16_rn(f);
  uint16_t u;
  memcpy(&u, &b, 2);
  return u;
}

// N elements of T moved as 16-byte accesses (N * sizeof(T) a multiple of 16, address 16-byte aligned), as fp32.
template <typename T, int N>
struct alignas(16) Pack {
  T v[N];
};
template <typename T, int N>
__device__ __forceinline__ void load_pack(const T* p, float (&out)[N]) {
  if constexpr (N == 1) {
    out[0] = load_f(p, 0);
  } else {
    const Pack<T, N> pk = *reinterpret_cast<const Pack<T, N>*>(p);
#pragma unroll
    for (int k = 0; k < N; ++k) out[k] = load_f(pk.v, k);
  }
}
template <typename T, int N>
__device__ __forceinline__ void store_pack(T* p, const float (&in)[N]) {
  if constexpr (N == 1) {
    store_f(p, 0, in[0]);
  } else {
    Pack<T, N> pk;
#pragma unroll
    for (int k = 0; k < N; ++k) store_f(pk.v, k, in[k]);
    *reinterpret_cast<Pack<T, N>*>(p) = pk;
  }
}
// The Io policy of the unit functions in kernels/*_math.h: one 16-byte access per N elements.
struct PackIo {
  template <int N, typename T>
  static __device__ __forceinline__ void load(const T* p, float (&out)[N]) {
    load_pack<T, N>(p, out);
  }
  template <int N, typename T>
  static __device__ __forceinline__ void store(T* p, const float (&in)[N]) {
    store_pack<T, N>(p, in);
  }
};
// Grid-stride loop over rows x per_row items, calling f(row, item) for this thread's items. The (row, item)
// pair is carried from step to step instead of divided out of a flat index each time (no 64-bit division per
// item in kernels that move only a few 16-byte packs per item).
template <typename F>
__device__ __forceinline__ void for_each_row_item(int64_t rows, int64_t per_row, F&& f) {
  const int64_t start = int64_t(blockIdx.x) * blockDim.x + threadIdx.x, stride = int64_t(gridDim.x) * blockDim.x;
  const int64_t stride_rows = stride / per_row, stride_items = stride - stride_rows * per_row;
  int64_t r = start / per_row, j = start - r * per_row;
  while (r < rows) {
    f(r, j);
    r += stride_rows;
    j += stride_items;
    if (j >= per_row) j -= per_row, ++r;
  }
}

// Four consecutive elements in one access: 16 bytes of fp32 or 8 bytes of bf16 (p aligned to that size).
__device__ __forceinline__ void load4(const float* p, float (&out)[4]) {
  const float4 v = *reinterpret_cast<const float4*>(p);
  out[0] = v.x, out[1] = v.y, out[2] = v.z, out[3] = v.w;
}
__device__ __forceinline__ void load4(const uint16_t* p, float (&out)[4]) {
  const uint2 v = *reinterpret_cast<const uint2*>(p);
  const float2 a = bf2_to_float2(v.x), b = bf2_to_float2(v.y);
  out[0] = a.x, out[1] = a.y, out[2] = b.x, out[3] = b.y;
}
__device__ __forceinline__ void store4(float* p, const float (&in)[4]) {
  *reinterpret_cast<float4*>(p) = make_float4(in[0], in[1], in[2], in[3]);
}
__device__ __forceinline__ void store4(uint16_t* p, const float (&in)[4]) {
  const uint32_t lo = uint32_t(float_to_bf16(in[0])) | uint32_t(float_to_bf16(in[1])) << 16;
  const uint32_t hi = uint32_t(float_to_bf16(in[2])) | uint32_t(float_to_bf16(in[3])) << 16;
  *reinterpret_cast<uint2*>(p) = make_uint2(lo, hi);
}
__host__ __device__ __forceinline__ bool aligned(const void* p, int bytes) { return reinterpret_cast<uintptr_t>(p) % bytes == 0; }
__host__ __device__ __forceinline__ bool aligned16(const void* p) { return aligned(p, 16); }

}  // namespace cw::kern::dev
