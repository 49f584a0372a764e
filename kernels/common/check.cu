// cw::kern::cuda::check_cuda: CUDA errors as UserError with what failed (out of memory says so).
#include <string>

#include "common/error.h"
#include "kernels/cuda.h"

namespace cw::kern::cuda {

void check_cuda(cudaError_t e, const char* what) {
  if (e == cudaSuccess) return;
  if (e == cudaErrorMemoryAllocation)
    fail(what, ": out of GPU memory (", cudaGetErrorString(e), "); lower the KV pool (--kv-fraction), the token budget or the batch");
  fail(what, ": CUDA error ", cudaGetErrorName(e), " (", cudaGetErrorString(e), ")");
}

}  // namespace cw::kern::cuda
