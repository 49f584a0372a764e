// Embedding gather on the GPU: x[t] = float(table[tokens[t]]). Reference: embedding_ref.cpp.
#include "kernels/common/device.cuh"
#include "kernels/common/launch.cuh"
#include "kernels/cuda.h"

namespace cw::kern::cuda {

__global__ void embedding_kernel(const uint16_t* table, const int32_t* tokens, int d, float* x) {
  dev::pdl_trigger();
  const uint16_t* row = table + int64_t(tokens[blockIdx.x]) * d;
  dev::pdl_wait();
  for (int i = threadIdx.x; i < d; i += blockDim.x) x[int64_t(blockIdx.x) * d + i] = dev::bf_to_float(row[i]);
}

void embedding(const uint16_t* table, const int32_t* tokens, int T, int d, float* x, cudaStream_t s) {
  if (T == 0) return;
  dev::launch_pdl(embedding_kernel, T, 256, 0, s, "embedding kernel", table, tokens, d, x);
}

}  // namespace cw::kern::cuda
