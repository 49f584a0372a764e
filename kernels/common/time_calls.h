// Host-side timing of a few back-to-back launches on one stream, for the product tuners that choose an
// algorithm by measuring it (serve/tuned_gemm.cpp, models/tuned_matmul.cpp).
// Must not: be called while the stream is being captured into a CUDA graph (it synchronises).
#pragma once
#include <cuda_runtime_api.h>

namespace cw::kern::cuda {

// Microseconds per call of F (which enqueues one call on STREAM and returns false if it could not): two calls
// first, then REPS timed back to back between two events. Negative when a call fails.
template <class F>
float time_calls_us(F&& f, cudaStream_t stream, int reps) {
  for (int i = 0; i < 2; ++i)
    if (!f()) return -1.f;
  cudaEvent_t e0, e1;
  if (cudaEventCreate(&e0) != cudaSuccess) return -1.f;
  if (cudaEventCreate(&e1) != cudaSuccess) return cudaEventDestroy(e0), -1.f;
  bool ok = cudaEventRecord(e0, stream) == cudaSuccess;
  for (int i = 0; i < reps && ok; ++i) ok = f();
  ok = ok && cudaEventRecord(e1, stream) == cudaSuccess && cudaEventSynchronize(e1) == cudaSuccess;
  float ms = 0;
  ok = ok && cudaEventElapsedTime(&ms, e0, e1) == cudaSuccess;
  cudaEventDestroy(e0), cudaEventDestroy(e1);
  return ok ? ms * 1e3f / float(reps) : -1.f;
}

}  // namespace cw::kern::cuda
