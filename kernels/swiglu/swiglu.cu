// SwiGLU on the GPU: silu(gate) * up from the fused [gate | up] product, bf16 out. Reference: swiglu_ref.cpp.
#include <algorithm>

#include "kernels/common/device.cuh"
#include "kernels/common/launch.cuh"
#include "kernels/cuda.h"

namespace cw::kern::cuda {

__global__ void swiglu_kernel(const float* gate_up, int64_t n, int ff, uint16_t* out) {
  dev::pdl_trigger();
  dev::pdl_wait();
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < n; e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t t = e / ff, i = e % ff;
    const float g = gate_up[t * 2 * ff + i], u = gate_up[t * 2 * ff + ff + i];
    out[e] = dev::float_to_bf(g / (1.f + expf(-g)) * u);
  }
}

void swiglu(const float* gate_up, int T, int ff, uint16_t* out, cudaStream_t s) {
  const int64_t n = int64_t(T) * ff;
  if (n == 0) return;
  const int blocks = int(std::min<int64_t>((n + 255) / 256, 4096));
  dev::launch_pdl(swiglu_kernel, blocks, 256, 0, s, "swiglu kernel", gate_up, n, ff, out);
}

}  // namespace cw::kern::cuda
