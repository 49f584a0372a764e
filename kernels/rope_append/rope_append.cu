// RoPE (rotate-half) on q in place and on k, then k and v appended to the paged KV cache in bf16.
// One block per token, one thread per rotated pair; the token's angles are computed once into shared memory
// before waiting for the qkv product. Reference: rope_append_ref.cpp.
#include "kernels/common/device.cuh"
#include "kernels/common/launch.cuh"
#include "kernels/cuda.h"
#include "kernels/rope_append/rope_math.cuh"

namespace cw::kern::cuda {

__global__ void rope_append_kernel(float* qkv, const int32_t* pos, const int32_t* slot, int H, int Hkv, int hd,
                                   float theta, uint16_t* k_cache, uint16_t* v_cache) {
  dev::pdl_trigger();
  const int t = blockIdx.x, half = hd / 2;
  float* row = qkv + int64_t(t) * (H + 2 * Hkv) * hd;
  const float p = float(pos[t]);
  const int64_t base = int64_t(slot[t]) * Hkv * hd;
  // The token's hd / 2 angles, shared by all its heads, before waiting (they need only the position).
  extern __shared__ float tab[];  // [2][half]: sin, cos
  for (int i = threadIdx.x; i < half; i += blockDim.x) dev::rope_angle(p, i, hd, theta, &tab[i], &tab[half + i]);
  __syncthreads();
  dev::pdl_wait();
  for (int e = threadIdx.x; e < (H + Hkv) * half; e += blockDim.x) {
    const int h = e / half, i = e % half;
    float y1, y2;
    float* a = row + int64_t(h) * hd;
    dev::rope_rotate(a[i], a[i + half], tab[i], tab[half + i], &y1, &y2);
    if (h < H) {
      a[i] = y1, a[i + half] = y2;
    } else {
      const int64_t o = base + int64_t(h - H) * hd;
      k_cache[o + i] = dev::float_to_bf(y1);
      k_cache[o + i + half] = dev::float_to_bf(y2);
    }
  }
  const float* v = row + int64_t(H + Hkv) * hd;
  for (int e = threadIdx.x; e < Hkv * hd; e += blockDim.x) v_cache[base + e] = dev::float_to_bf(v[e]);
}

void rope_append(float* qkv, const int32_t* pos, const int32_t* slot, int T, int H, int Hkv, int hd, float theta,
                 uint16_t* k_cache, uint16_t* v_cache, cudaStream_t s) {
  if (T == 0) return;
  dev::launch_pdl(rope_append_kernel, T, 256, sizeof(float) * hd, s, "rope_append kernel", qkv, pos, slot, H, Hkv, hd, theta, k_cache,
                  v_cache);
}

}  // namespace cw::kern::cuda
