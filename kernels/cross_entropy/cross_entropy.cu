// Cross-entropy on the GPU without fp32 logits (row math and merge rule: cross_entropy_math.h; CPU path:
// models/fused_ops.cpp; reference: torch's cross_entropy on fp32 logits). One block per row: the forward
// pass reads the row once (online max and sum, 16-byte loads where the row allows), the backward pass reads
// it again and writes (softmax - onehot) * scale, possibly over the logits themselves.
#include "kernels/common/train_dispatch.cuh"
#include "kernels/cross_entropy/cross_entropy_math.h"
#include "kernels/cuda.h"

namespace cw::kern::cuda {

namespace {

constexpr int kThreads = 256;

using dev::load_pack;
using dev::store_pack;

__device__ SoftmaxStat block_merge(SoftmaxStat st) {
  __shared__ float sm[kThreads / 32], ss[kThreads / 32];
  for (int o = 16; o > 0; o >>= 1) {
    SoftmaxStat other{__shfl_xor_sync(0xffffffffu, st.m, o), __shfl_xor_sync(0xffffffffu, st.s, o)};
    st = softmax_merge(st, other);
  }
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) sm[warp] = st.m, ss[warp] = st.s;
  __syncthreads();
  if (warp == 0) {
    st = lane < kThreads / 32 ? SoftmaxStat{sm[lane], ss[lane]} : SoftmaxStat{};
    for (int o = 16; o > 0; o >>= 1) {
      SoftmaxStat other{__shfl_xor_sync(0xffffffffu, st.m, o), __shfl_xor_sync(0xffffffffu, st.s, o)};
      st = softmax_merge(st, other);
    }
  }
  return st;  // valid in thread 0
}

template <typename T, int N>
__global__ void __launch_bounds__(kThreads) ce_forward_kernel(const T* logits, int64_t V, int64_t stride,
                                                              const int64_t* targets, int64_t ignore_index,
                                                              float* loss, float* lse) {
  const int64_t r = blockIdx.x;
  const T* x = logits + r * stride;
  SoftmaxStat st;
  for (int64_t c = int64_t(threadIdx.x) * N; c < V; c += int64_t(kThreads) * N) {
    float v[N];
    load_pack<T, N>(x + c, v);
    float m = v[0];
#pragma unroll
    for (int k = 1; k < N; ++k) m = fmaxf(m, v[k]);
    SoftmaxStat part{m, 0.f};
#pragma unroll
    for (int k = 0; k < N; ++k) part.s += expf(v[k] - m);
    st = softmax_merge(st, part);
  }
  st = block_merge(st);
  if (threadIdx.x == 0) {
    const float l = st.m + logf(st.s);
    const int64_t t = targets[r];
    lse[r] = l;
    loss[r] = ce_ignored(t, ignore_index) ? 0.f : (t < 0 || t >= V) ? NAN : l - load_f(x, t);
  }
}

template <typename T, int N>
__global__ void __launch_bounds__(kThreads) ce_backward_kernel(const T* logits, int64_t V, int64_t stride,
                                                               const int64_t* targets, int64_t ignore_index,
                                                               const float* lse, const float* scale, T* grad,
                                                               int64_t grad_stride) {
  const int64_t r = blockIdx.x;
  const T* x = logits + r * stride;
  T* gr = grad + r * grad_stride;
  const int64_t t = targets[r];
  const float g = ce_ignored(t, ignore_index) ? 0.f : *scale, l = lse[r];
  for (int64_t c = int64_t(threadIdx.x) * N; c < V; c += int64_t(kThreads) * N) {
    float v[N];
    load_pack<T, N>(x + c, v);
#pragma unroll
    for (int k = 0; k < N; ++k) {
      v[k] = expf(v[k] - l) * g;
      if (c + k == t) v[k] -= g;
    }
    store_pack<T, N>(gr + c, v);
  }
}

}  // namespace

// 16-byte packs when every row starts on a 16-byte boundary and holds whole packs; else one element.
void cross_entropy_forward(Storage st, const void* logits, int64_t rows, int64_t V, int64_t stride,
                           const int64_t* targets, int64_t ignore_index, float* loss, float* lse, cudaStream_t s) {
  if (rows == 0) return;
  const auto fits = [&](int n) { return all_aligned16({logits}) && V % n == 0 && stride % n == 0; };
  with_storage_pack(st, fits, [&](auto tag, auto n) {
    using T = decltype(tag);
    ce_forward_kernel<T, decltype(n)::value><<<unsigned(rows), kThreads, 0, s>>>(
        static_cast<const T*>(logits), V, stride, targets, ignore_index, loss, lse);
  });
  check_cuda(cudaGetLastError(), "cross_entropy forward kernel");
}

void cross_entropy_backward(Storage st, const void* logits, int64_t rows, int64_t V, int64_t stride,
                            const int64_t* targets, int64_t ignore_index, const float* lse, const float* scale,
                            void* grad, int64_t grad_stride, cudaStream_t s) {
  if (rows == 0) return;
  const auto fits = [&](int n) {
    return all_aligned16({logits, grad}) && V % n == 0 && stride % n == 0 && grad_stride % n == 0;
  };
  with_storage_pack(st, fits, [&](auto tag, auto n) {
    using T = decltype(tag);
    ce_backward_kernel<T, decltype(n)::value><<<unsigned(rows), kThreads, 0, s>>>(
        static_cast<const T*>(logits), V, stride, targets, ignore_index, lse, scale, static_cast<T*>(grad), grad_stride);
  });
  check_cuda(cudaGetLastError(), "cross_entropy backward kernel");
}

}  // namespace cw::kern::cuda
