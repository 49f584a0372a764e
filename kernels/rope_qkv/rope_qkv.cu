// Fused RoPE on the q/k/v product for training, forward and backward (unit functions: rope_qkv_math.h; CPU
// path: models/fused_ops.cpp; reference: apply_rope in models/llama.cpp). Threads stride over the units of all
// rows (rotated pairs, and in the backward dv copies: rope_qkv_math.h; no thread idles at a row's end), moved
// as 16-byte packs (the fp32 tables as 2 x 16 bytes under bf16); N = 1 when head_dim/2, the row stride or a
// pointer does not allow it.
#include "kernels/common/train_dispatch.cuh"
#include "kernels/cuda.h"

namespace cw::kern::cuda {

namespace {

template <typename T, int N>
__global__ void rope_qkv_forward_kernel(const T* qkv, const float* cos, const float* sin, RopeQkvShape s, T* out) {
  dev::for_each_row_item(s.rows, rope_qkv_forward_units_per_row<N>(s), [&](int64_t r, int64_t j) {
    rope_qkv_forward_unit<T, N, dev::PackIo>(r, int(j), s, qkv, cos, sin, out);
  });
}

template <typename T, int N>
__global__ void rope_qkv_backward_kernel(const T* dq, const T* dk, const T* dv, const float* cos, const float* sin,
                                         RopeQkvShape s, T* dqkv) {
  dev::for_each_row_item(s.rows, rope_qkv_backward_units_per_row<N>(s), [&](int64_t r, int64_t j) {
    rope_qkv_backward_unit<T, N, dev::PackIo>(r, int(j), s, dq, dk, dv, cos, sin, dqkv);
  });
}

}  // namespace

void rope_qkv_forward(Storage st, const void* qkv, const float* cos, const float* sin, const RopeQkvShape& shape,
                      void* out, cudaStream_t s) {
  if (shape.rows == 0) return;
  const auto fits = [&](int n) {
    return all_aligned16({qkv, out, cos, sin}) && rope_qkv_pack(st == Storage::BF16, shape, shape.qkv_stride) == n;
  };
  with_storage_pack(st, fits, [&](auto tag, auto n) {
    using T = decltype(tag);
    const int64_t units = shape.rows * rope_qkv_forward_units_per_row<decltype(n)::value>(shape);
    rope_qkv_forward_kernel<T, decltype(n)::value><<<pack_blocks(units), 256, 0, s>>>(
        static_cast<const T*>(qkv), cos, sin, shape, static_cast<T*>(out));
  });
  check_cuda(cudaGetLastError(), "rope_qkv forward kernel");
}

void rope_qkv_backward(Storage st, const void* dq, const void* dk, const void* dv, const float* cos, const float* sin,
                       const RopeQkvShape& shape, void* dqkv, cudaStream_t s) {
  if (shape.rows == 0) return;
  const int64_t stride = int64_t(shape.heads + 2 * shape.kv_heads) * shape.head_dim;
  const auto fits = [&](int n) {
    return all_aligned16({dq, dk, dv, dqkv, cos, sin}) && rope_qkv_pack(st == Storage::BF16, shape, stride) == n;
  };
  with_storage_pack(st, fits, [&](auto tag, auto n) {
    using T = decltype(tag);
    const int64_t units = shape.rows * rope_qkv_backward_units_per_row<decltype(n)::value>(shape);
    rope_qkv_backward_kernel<T, decltype(n)::value><<<pack_blocks(units), 256, 0, s>>>(
        static_cast<const T*>(dq), static_cast<const T*>(dk), static_cast<const T*>(dv), cos, sin, shape,
        static_cast<T*>(dqkv));
  });
  check_cuda(cudaGetLastError(), "rope_qkv backward kernel");
}

}  // namespace cw::kern::cuda
