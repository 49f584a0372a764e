// Sampling on the GPU, one block per row, the same rule as sampling_ref.cpp: greedy argmax, or top-k and
// top-p thresholds found by radix selection over order-preserving float keys (counts for top-k, probability
// mass for top-p), then a Gumbel-max draw over the kept tokens with the counter-based uniform01().
#include "kernels/common/device.cuh"
#include "kernels/common/launch.cuh"
#include "kernels/cuda.h"

namespace cw::kern::cuda {

constexpr int kThreads = 1024;

// The largest key v with weight(keys >= v) >= target, among keys >= floor_key. Weights are 1 (count) or
// exp(s - m) (mass). Every thread returns the same key.
template <bool kMass>
__device__ uint32_t radix_select(const float* x, int V, float inv_t, uint32_t floor_key, float m, float target) {
  __shared__ float hist[256];
  __shared__ uint32_t chosen;
  __shared__ float remaining;
  uint32_t prefix = 0, mask = 0;
  if (threadIdx.x == 0) remaining = target;
  for (int shift = 24; shift >= 0; shift -= 8) {
    for (int i = threadIdx.x; i < 256; i += blockDim.x) hist[i] = 0;
    __syncthreads();
    for (int i = threadIdx.x; i < V; i += blockDim.x) {
      const float s = x[i] / inv_t;
      const uint32_t k = float_key(s);
      if (k >= floor_key && (k & mask) == prefix) atomicAdd(&hist[(k >> shift) & 255], kMass ? expf(s - m) : 1.f);
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      int pick = -1, lowest = 0;
      float rem = remaining;
      for (int d = 255; d >= 0; --d) {
        if (hist[d] == 0) continue;
        lowest = d;
        if (hist[d] >= rem) {
          pick = d;
          break;
        }
        rem -= hist[d];
      }
      if (pick < 0) pick = lowest;  // rounding left the target just out of reach: keep everything
      chosen = uint32_t(pick);
      remaining = rem;
    }
    __syncthreads();
    prefix |= chosen << shift;
    mask |= 255u << shift;
    __syncthreads();
  }
  return prefix;
}

__global__ void __launch_bounds__(kThreads) sample_kernel(const float* logits, int V, const SampleParams* params, int32_t* out) {
  dev::pdl_trigger();
  const float* x = logits + int64_t(blockIdx.x) * V;
  const SampleParams p = params[blockIdx.x];
  dev::pdl_wait();
  float best = -INFINITY;
  int arg = 0x7fffffff;
  if (p.temperature <= 0) {
    for (int i = threadIdx.x; i < V; i += blockDim.x)
      if (x[i] > best) best = x[i], arg = i;
    dev::block_argmax(best, arg);
    if (threadIdx.x == 0) out[blockIdx.x] = arg;
    return;
  }
  const float t = p.temperature;  // s = x / t, as the reference divides
  uint32_t floor_key = 0;
  if (p.top_k > 0 && p.top_k < V) floor_key = radix_select<false>(x, V, t, 0, 0.f, float(p.top_k));
  if (p.top_p < 1) {
    float m = -INFINITY;
    for (int i = threadIdx.x; i < V; i += blockDim.x) m = fmaxf(m, x[i] / t);
    m = dev::block_max(m);
    float z = 0;
    for (int i = threadIdx.x; i < V; i += blockDim.x) {
      const float s = x[i] / t;
      if (float_key(s) >= floor_key) z += expf(s - m);
    }
    z = dev::block_sum(z);
    floor_key = radix_select<true>(x, V, t, floor_key, m, p.top_p * z);
  }
  for (int i = threadIdx.x; i < V; i += blockDim.x) {
    const float s = x[i] / t;
    if (float_key(s) < floor_key) continue;
    const float g = s - logf(-logf(uniform01(p.seed, p.counter, uint32_t(i))));
    if (g > best) best = g, arg = i;
  }
  dev::block_argmax(best, arg);
  if (threadIdx.x == 0) out[blockIdx.x] = arg;
}

void sample(const float* logits, int rows, int V, const SampleParams* params, int32_t* out, cudaStream_t s) {
  if (rows == 0) return;
  dev::launch_pdl(sample_kernel, rows, kThreads, 0, s, "sampling kernel", logits, V, params, out);
}

}  // namespace cw::kern::cuda
