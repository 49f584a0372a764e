// RMSNorm on the GPU: one block per row, fp32 input, bf16 output for the next matrix product.
// Reference: rmsnorm_ref.cpp.
#include "kernels/common/device.cuh"
#include "kernels/common/launch.cuh"
#include "kernels/cuda.h"

namespace cw::kern::cuda {

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

void rmsnorm(const float* x, const int32_t* row_map, int rows, int d, const uint16_t* w, float eps, uint16_t* y,
             cudaStream_t s) {
  if (rows == 0) return;
  dev::launch_pdl(rmsnorm_kernel, rows, 256, 0, s, "rmsnorm kernel", x, row_map, d, w, eps, y);
}

}  // namespace cw::kern::cuda
