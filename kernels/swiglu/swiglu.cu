// SwiGLU on the GPU: silu(gate) * up from the fused [gate | up] product, bf16 out. Reference: swiglu_ref.cpp.
// Widths that are a multiple of four (and under 2^31 / 4 pieces in all) take four elements per thread as
// float4 with 32-bit index arithmetic; others the plain loop. The same expression per element in both.
// Must not: read gate_up before waiting for the previous kernel (it is that product's output).
#include <algorithm>
#include <cstdint>

#include "kernels/common/device.cuh"
#include "kernels/common/launch.cuh"
#include "kernels/cuda.h"

namespace cw::kern::cuda {

namespace {

__device__ __forceinline__ float silu_mul(float g, float u) { return g / (1.f + expf(-g)) * u; }

__global__ void swiglu_kernel(const float* gate_up, int64_t n, int ff, uint16_t* out) {
  dev::pdl_trigger();
  dev::pdl_wait();
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < n; e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t t = e / ff, i = e % ff;
    out[e] = dev::float_to_bf(silu_mul(gate_up[t * 2 * ff + i], gate_up[t * 2 * ff + ff + i]));
  }
}

// Piece e = four outputs of row e / (ff / 4).
__global__ void swiglu_vec_kernel(const float* gate_up, int pieces, int ff4, uint16_t* out) {
  dev::pdl_trigger();
  dev::pdl_wait();
  for (int e = blockIdx.x * blockDim.x + threadIdx.x; e < pieces; e += gridDim.x * blockDim.x) {
    const int t = e / ff4, i = e - t * ff4;
    const float4* row = reinterpret_cast<const float4*>(gate_up) + int64_t(t) * 2 * ff4;
    const float4 g = row[i], u = row[ff4 + i];
    const uint32_t a = dev::float_to_bf(silu_mul(g.x, u.x)), b = dev::float_to_bf(silu_mul(g.y, u.y));
    const uint32_t c = dev::float_to_bf(silu_mul(g.z, u.z)), d = dev::float_to_bf(silu_mul(g.w, u.w));
    reinterpret_cast<uint2*>(out)[e] = make_uint2(a | b << 16, c | d << 16);
  }
}

}  // namespace

void swiglu(const float* gate_up, int T, int ff, uint16_t* out, cudaStream_t s) {
  const int64_t n = int64_t(T) * ff;
  if (n == 0) return;
  if (ff % 4 == 0 && n / 4 < (int64_t(1) << 31) - 1024 && dev::aligned16(gate_up) &&
      dev::aligned(out, 8)) {
    const int pieces = int(n / 4), blocks = int(std::min<int64_t>((pieces + 255) / 256, 4096));
    dev::launch_pdl(swiglu_vec_kernel, blocks, 256, 0, s, "swiglu kernel", gate_up, pieces, ff / 4, out);
    return;
  }
  const int blocks = int(std::min<int64_t>((n + 255) / 256, 4096));
  dev::launch_pdl(swiglu_kernel, blocks, 256, 0, s, "swiglu kernel", gate_up, n, ff, out);
}

}  // namespace cw::kern::cuda
