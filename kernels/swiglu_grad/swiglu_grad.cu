// SwiGLU for training on the GPU, forward and backward (value math: swiglu_grad_math.h; CPU path:
// models/fused_ops.cpp; reference: torch::silu(g) * u under autograd). Threads stride over all packs of all rows
// (16-byte packs when the row width and pointers allow it, else one element at a time), so no thread idles at
// a row's end when the width is not a multiple of the block's span (2,816 = 1.375 x 256 packs of 8). In the
// forward pass an item is two 16-byte packs per tensor when the width allows it, so each thread has more loads
// in flight (156 against 167 us per 350M layer); the backward pass keeps one (with two it used 72 registers
// against 50 and was no faster: branch experiment/swiglu-backward-wide, docs/BENCHMARKS.md).
#include "kernels/common/train_dispatch.cuh"
#include "kernels/cuda.h"
#include "kernels/swiglu_grad/swiglu_grad_math.h"

namespace cw::kern::cuda {

namespace {

template <typename T, int N>
__global__ void swiglu_forward_kernel(const T* gate_up, int64_t rows, int64_t ff, T* h) {
  dev::for_each_row_item(rows, ff / N, [&](int64_t r, int64_t j) {
    const int64_t c = j * N;
    const T* g_row = gate_up + r * 2 * ff;
    float g[N], u[N], out[N];
    dev::load_pack<T, N>(g_row + c, g);
    dev::load_pack<T, N>(g_row + ff + c, u);
#pragma unroll
    for (int k = 0; k < N; ++k) out[k] = swiglu_value(g[k], u[k]);
    dev::store_pack<T, N>(h + r * ff + c, out);
  });
}

template <typename T, int N>
__global__ void swiglu_backward_kernel(const T* gate_up, const T* dh, int64_t rows, int64_t ff, T* dgate_up) {
  dev::for_each_row_item(rows, ff / N, [&](int64_t r, int64_t j) {
    const int64_t c = j * N;
    const T* g_row = gate_up + r * 2 * ff;
    T* d_row = dgate_up + r * 2 * ff;
    float g[N], u[N], d[N], dg[N], du[N];
    dev::load_pack<T, N>(g_row + c, g);
    dev::load_pack<T, N>(g_row + ff + c, u);
    dev::load_pack<T, N>(dh + r * ff + c, d);
#pragma unroll
    for (int k = 0; k < N; ++k) swiglu_grads(g[k], u[k], d[k], dg[k], du[k]);
    dev::store_pack<T, N>(d_row + c, dg);
    dev::store_pack<T, N>(d_row + ff + c, du);
  });
}

}  // namespace

void swiglu_forward(Storage st, const void* gate_up, int64_t rows, int64_t ff, void* h, cudaStream_t s) {
  if (rows * ff == 0) return;
  const auto fits = [&](int n) { return all_aligned16({gate_up, h}) && ff % n == 0; };
  with_storage_wide_pack(st, fits, [&](auto tag, auto n) {
    using T = decltype(tag);
    swiglu_forward_kernel<T, decltype(n)::value>
        <<<pack_blocks(rows * (ff / decltype(n)::value)), 256, 0, s>>>(static_cast<const T*>(gate_up), rows, ff,
                                                                        static_cast<T*>(h));
  });
  check_cuda(cudaGetLastError(), "swiglu forward kernel");
}

void swiglu_backward(Storage st, const void* gate_up, const void* dh, int64_t rows, int64_t ff, void* dgate_up,
                     cudaStream_t s) {
  if (rows * ff == 0) return;
  const auto fits = [&](int n) { return all_aligned16({gate_up, dh, dgate_up}) && ff % n == 0; };
  with_storage_pack(st, fits, [&](auto tag, auto n) {
    using T = decltype(tag);
    swiglu_backward_kernel<T, decltype(n)::value><<<pack_blocks(rows * (ff / decltype(n)::value)), 256, 0, s>>>(
        static_cast<const T*>(gate_up), static_cast<const T*>(dh), rows, ff, static_cast<T*>(dgate_up));
  });
  check_cuda(cudaGetLastError(), "swiglu backward kernel");
}

}  // namespace cw::kern::cuda
