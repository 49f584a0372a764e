// AdamW over many fp32 tensors in few launches: each launch takes up to kAdamWTensors tensors, whose pointers
// and sizes travel in the kernel's parameters (nothing to copy to the device first, so a CUDA graph can capture
// it), and every thread strides over each tensor in turn, four elements per access where the tensor's four
// pointers are 16-byte aligned. One read of p, g, m, v and one write of p, m, v per element: the gradient is
// divided by the clipping divisor as it is read and never written back. The learning rate, the step count,
// the skip flag and the divisor are read on the device. Where a tensor has a bf16 copy (the weights the forward
// pass reads, models/weight_copies.h), the updated value is also written there, rounded to nearest even as a
// cast would. Element arithmetic: adamw_math.h.
// Must not: write anything when the skip flag is set.
#include <algorithm>

#include "kernels/adamw/adamw_math.h"
#include "kernels/common/device.cuh"
#include "kernels/common/train_dispatch.cuh"
#include "kernels/cuda.h"

namespace cw::kern::cuda {

namespace {

struct AdamWList {
  float* p[kAdamWTensors];
  const float* g[kAdamWTensors];
  float* m[kAdamWTensors];
  float* v[kAdamWTensors];
  uint16_t* copy[kAdamWTensors];  // bf16 copy of p, or null
  int64_t n[kAdamWTensors];
  int count;
};

__global__ void adamw_kernel(AdamWList L, AdamWDevice d, double beta1, double beta2, float eps, float weight_decay) {
  if (d.skip && *d.skip != 0.f) return;
  const AdamWScalars s = adamw_scalars(*d.lr, *d.step, beta1, beta2, eps, weight_decay, d.divisor ? *d.divisor : 1.f);
  const int64_t first = int64_t(blockIdx.x) * blockDim.x + threadIdx.x, stride = int64_t(gridDim.x) * blockDim.x;
  for (int t = 0; t < L.count; ++t) {
    float *p = L.p[t], *m = L.m[t], *v = L.v[t];
    const float* g = L.g[t];
    uint16_t* copy = L.copy[t];
    const int64_t n = L.n[t];
    int64_t done = 0;
    if (dev::aligned16(p) && dev::aligned16(g) && dev::aligned16(m) && dev::aligned16(v) &&
        reinterpret_cast<uintptr_t>(copy) % 8 == 0) {
      const int64_t n4 = n / 4;
      for (int64_t i = first; i < n4; i += stride) {
        float4 P = reinterpret_cast<float4*>(p)[i], M = reinterpret_cast<float4*>(m)[i],
               V = reinterpret_cast<float4*>(v)[i];
        const float4 G = reinterpret_cast<const float4*>(g)[i];
        adamw_element(P.x, G.x, M.x, V.x, s);
        adamw_element(P.y, G.y, M.y, V.y, s);
        adamw_element(P.z, G.z, M.z, V.z, s);
        adamw_element(P.w, G.w, M.w, V.w, s);
        reinterpret_cast<float4*>(p)[i] = P, reinterpret_cast<float4*>(m)[i] = M, reinterpret_cast<float4*>(v)[i] = V;
        if (copy) {
          const float updated[4] = {P.x, P.y, P.z, P.w};
          dev::store4(copy + 4 * i, updated);
        }
      }
      done = n4 * 4;
    }
    for (int64_t i = done + first; i < n; i += stride) {
      adamw_element(p[i], g[i], m[i], v[i], s);
      if (copy) copy[i] = float_to_bf16(p[i]);
    }
  }
}

}  // namespace

void adamw_update(int count, float* const* params, const float* const* grads, float* const* exp_avg,
                  float* const* exp_avg_sq, uint16_t* const* bf16_copies, const int64_t* sizes,
                  const AdamWDevice& scalars, double beta1, double beta2, float eps, float weight_decay,
                  cudaStream_t s) {
  for (int at = 0; at < count; at += kAdamWTensors) {
    AdamWList L{};
    L.count = std::min(kAdamWTensors, count - at);
    int64_t largest = 0;
    for (int i = 0; i < L.count; ++i) {
      L.p[i] = params[at + i], L.g[i] = grads[at + i], L.m[i] = exp_avg[at + i], L.v[i] = exp_avg_sq[at + i];
      L.copy[i] = bf16_copies ? bf16_copies[at + i] : nullptr;
      L.n[i] = sizes[at + i];
      largest = std::max(largest, sizes[at + i]);
    }
    adamw_kernel<<<pack_blocks((largest + 3) / 4), 256, 0, s>>>(L, scalars, beta1, beta2, eps, weight_decay);
    check_cuda(cudaGetLastError(), "AdamW kernel");
  }
}

}  // namespace cw::kern::cuda
