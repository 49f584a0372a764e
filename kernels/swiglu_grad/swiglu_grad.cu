// SwiGLU for training on the GPU, forward and backward (item math: swiglu_grad_math.h; CPU path:
// models/fused_ops.cpp; reference: torch::silu(g) * u under autograd). Blocks stride over rows, threads over
// a row's elements.
#include <algorithm>

#include "kernels/cuda.h"
#include "kernels/swiglu_grad/swiglu_grad_math.h"
#include "kernels/train_ops.h"

namespace cw::kern::cuda {

namespace {

int grid_for(int64_t rows) { return int(std::min<int64_t>(rows, 132 * 16)); }

template <typename T>
__global__ void swiglu_forward_kernel(const T* gate_up, int64_t rows, int64_t ff, T* h) {
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x)
    for (int64_t i = threadIdx.x; i < ff; i += blockDim.x) swiglu_forward_item(r, i, ff, gate_up, h);
}

template <typename T>
__global__ void swiglu_backward_kernel(const T* gate_up, const T* dh, int64_t rows, int64_t ff, T* dgate_up) {
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x)
    for (int64_t i = threadIdx.x; i < ff; i += blockDim.x) swiglu_backward_item(r, i, ff, gate_up, dh, dgate_up);
}

}  // namespace

void swiglu_forward(Storage st, const void* gate_up, int64_t rows, int64_t ff, void* h, cudaStream_t s) {
  if (rows * ff == 0) return;
  if (st == Storage::BF16)
    swiglu_forward_kernel<uint16_t><<<grid_for(rows), 256, 0, s>>>(static_cast<const uint16_t*>(gate_up), rows, ff,
                                                                 static_cast<uint16_t*>(h));
  else
    swiglu_forward_kernel<float><<<grid_for(rows), 256, 0, s>>>(static_cast<const float*>(gate_up), rows, ff,
                                                              static_cast<float*>(h));
  check_cuda(cudaGetLastError(), "swiglu forward kernel");
}

void swiglu_backward(Storage st, const void* gate_up, const void* dh, int64_t rows, int64_t ff, void* dgate_up,
                     cudaStream_t s) {
  if (rows * ff == 0) return;
  if (st == Storage::BF16)
    swiglu_backward_kernel<uint16_t><<<grid_for(rows), 256, 0, s>>>(static_cast<const uint16_t*>(gate_up),
                                                                  static_cast<const uint16_t*>(dh), rows, ff,
                                                                  static_cast<uint16_t*>(dgate_up));
  else
    swiglu_backward_kernel<float><<<grid_for(rows), 256, 0, s>>>(static_cast<const float*>(gate_up),
                                                               static_cast<const float*>(dh), rows, ff,
                                                               static_cast<float*>(dgate_up));
  check_cuda(cudaGetLastError(), "swiglu backward kernel");
}

}  // namespace cw::kern::cuda
