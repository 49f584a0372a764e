// Fused RoPE on the q/k/v product for training, forward and backward (item math: rope_qkv_math.h;
// CPU path: models/fused_ops.cpp; reference: apply_rope in models/llama.cpp). Blocks stride over rows, threads
// over a row's items (rotated pairs, then copied v elements).
#include <algorithm>

#include "kernels/cuda.h"
#include "kernels/train_ops.h"

namespace cw::kern::cuda {

namespace {

int grid_for(int64_t rows) { return int(std::min<int64_t>(rows, 132 * 16)); }

template <typename T>
__global__ void rope_qkv_forward_kernel(const T* qkv, const float* cos, const float* sin, RopeQkvShape shape, T* q,
                                        T* k, T* v) {
  const int per_row = rope_qkv_items_per_row(shape);
  for (int64_t r = blockIdx.x; r < shape.rows; r += gridDim.x)
    for (int j = threadIdx.x; j < per_row; j += blockDim.x) rope_qkv_forward_item(r, j, shape, qkv, cos, sin, q, k, v);
}

template <typename T>
__global__ void rope_qkv_backward_kernel(const T* dq, const T* dk, const T* dv, const float* cos, const float* sin,
                                         RopeQkvShape shape, T* dqkv) {
  const int per_row = rope_qkv_items_per_row(shape);
  for (int64_t r = blockIdx.x; r < shape.rows; r += gridDim.x)
    for (int j = threadIdx.x; j < per_row; j += blockDim.x) rope_qkv_backward_item(r, j, shape, dq, dk, dv, cos, sin, dqkv);
}

}  // namespace

void rope_qkv_forward(Storage st, const void* qkv, const float* cos, const float* sin, const RopeQkvShape& shape,
                      void* q, void* k, void* v, cudaStream_t s) {
  const int64_t n = shape.rows;
  if (n == 0) return;
  if (st == Storage::BF16)
    rope_qkv_forward_kernel<uint16_t><<<grid_for(n), 256, 0, s>>>(static_cast<const uint16_t*>(qkv), cos, sin, shape,
                                                                   static_cast<uint16_t*>(q), static_cast<uint16_t*>(k),
                                                                   static_cast<uint16_t*>(v));
  else
    rope_qkv_forward_kernel<float><<<grid_for(n), 256, 0, s>>>(static_cast<const float*>(qkv), cos, sin, shape,
                                                                static_cast<float*>(q), static_cast<float*>(k),
                                                                static_cast<float*>(v));
  check_cuda(cudaGetLastError(), "rope_qkv forward kernel");
}

void rope_qkv_backward(Storage st, const void* dq, const void* dk, const void* dv, const float* cos, const float* sin,
                       const RopeQkvShape& shape, void* dqkv, cudaStream_t s) {
  const int64_t n = shape.rows;
  if (n == 0) return;
  if (st == Storage::BF16)
    rope_qkv_backward_kernel<uint16_t><<<grid_for(n), 256, 0, s>>>(
        static_cast<const uint16_t*>(dq), static_cast<const uint16_t*>(dk), static_cast<const uint16_t*>(dv), cos, sin,
        shape, static_cast<uint16_t*>(dqkv));
  else
    rope_qkv_backward_kernel<float><<<grid_for(n), 256, 0, s>>>(static_cast<const float*>(dq),
                                                                 static_cast<const float*>(dk),
                                                                 static_cast<const float*>(dv), cos, sin, shape,
                                                                 static_cast<float*>(dqkv));
  check_cuda(cudaGetLastError(), "rope_qkv backward kernel");
}

}  // namespace cw::kern::cuda
