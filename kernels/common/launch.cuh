// Kernel launches with programmatic dependent launch (Hopper): a kernel may start while its predecessor in
// the stream finishes, run what does not depend on it (weights, step metadata), then wait. Kernels launched
// this way must call pdl_wait() before reading anything an earlier kernel wrote and before writing anything.
// Must not: be used for kernels that skip pdl_wait() (they could race with their predecessor).
#pragma once
#include <cuda_runtime.h>

#include <utility>

#include "kernels/cuda.h"

namespace cw::kern::dev {

// Let the next kernel in the stream launch as soon as every block of this one has started.
__device__ __forceinline__ void pdl_trigger() { asm volatile("griddepcontrol.launch_dependents;" ::: "memory"); }
// Wait until the previous kernel in the stream has completed and its writes are visible.
__device__ __forceinline__ void pdl_wait() { asm volatile("griddepcontrol.wait;" ::: "memory"); }

template <typename... KernelArgs, typename... Args>
void launch_pdl(void (*kernel)(KernelArgs...), dim3 grid, dim3 block, size_t smem, cudaStream_t s, const char* what,
                Args&&... args) {
  cudaLaunchConfig_t cfg{};
  cfg.gridDim = grid, cfg.blockDim = block, cfg.dynamicSmemBytes = smem, cfg.stream = s;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  cfg.attrs = attr, cfg.numAttrs = 1;
  cuda::check_cuda(cudaLaunchKernelEx(&cfg, kernel, std::forward<Args>(args)...), what);
}

}  // namespace cw::kern::dev
