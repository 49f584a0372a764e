// Residual add + RMSNorm for training on the GPU (row math: add_rmsnorm_math.h; CPU path and wrapper:
// models/fused_ops.cpp; reference: x + delta, at::rms_norm, cast). Blocks stride over rows; the backward
// pass keeps each thread's share of the weight gradient in registers and writes one partial row per block,
// which the wrapper sums.
#include "kernels/add_rmsnorm/add_rmsnorm_math.h"
#include "kernels/common/train_dispatch.cuh"
#include "kernels/cuda.h"

namespace cw::kern::cuda {

namespace {

constexpr int kThreads = 256;

template <typename TD, typename TY>
__global__ void __launch_bounds__(kThreads) add_rmsnorm_forward_kernel(const float* x, const TD* delta, const float* w,
                                                                       int64_t rows, int d, float eps, float* h, TY* y,
                                                                       float* rstd_out) {
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const float* xr = x + r * d;
    const TD* dr = delta + r * d;
    float* hr = h + r * d;
    float ss = 0.f;
    for (int c = threadIdx.x; c < d; c += kThreads) {
      const float v = xr[c] + load_f(dr, c);
      hr[c] = v;
      ss += v * v;
    }
    const float rstd = 1.f / sqrtf(dev::block_sum(ss) / float(d) + eps);
    TY* yr = y + r * d;
    for (int c = threadIdx.x; c < d; c += kThreads) store_f(yr, c, hr[c] * rstd * w[c]);  // hr[c]: this thread's
    if (threadIdx.x == 0) rstd_out[r] = rstd;
  }
}

template <typename TD, typename TY, int K>
__global__ void __launch_bounds__(kThreads) add_rmsnorm_backward_kernel(const float* h, const float* w,
                                                                        const float* rstd, const TY* dy,
                                                                        const float* dh_next, int64_t rows, int d,
                                                                        float* dx, TD* ddelta, float* dw_partial) {
  float acc[K];
#pragma unroll
  for (int k = 0; k < K; ++k) acc[k] = 0.f;
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const float* hr = h + r * d;
    const TY* dyr = dy + r * d;
    const float rs = rstd[r];
    float gh = 0.f;
#pragma unroll
    for (int k = 0; k < K; ++k) {
      const int c = threadIdx.x + k * kThreads;
      if (c < d) gh += load_f(dyr, c) * w[c] * hr[c];
    }
    const float kk = rs * rs * dev::block_sum(gh) / float(d);
#pragma unroll
    for (int k = 0; k < K; ++k) {
      const int c = threadIdx.x + k * kThreads;
      if (c < d) {
        const float g = load_f(dyr, c), hv = hr[c];
        const float dh = (dh_next ? dh_next[r * d + c] : 0.f) + rs * (g * w[c] - hv * kk);
        dx[r * d + c] = dh;
        store_f(ddelta + r * d, c, dh);
        acc[k] += g * hv * rs;
      }
    }
  }
#pragma unroll
  for (int k = 0; k < K; ++k) {
    const int c = threadIdx.x + k * kThreads;
    if (c < d) dw_partial[int64_t(blockIdx.x) * d + c] = acc[k];
  }
}

// Runs f(TD{}, TY{}) for the storages of delta and y.
template <typename F>
void with_types(Storage a, Storage b, F&& f) {
  with_storage(a, [&](auto ta) { with_storage(b, [&](auto tb) { f(ta, tb); }); });
}

}  // namespace

int add_rmsnorm_backward_blocks(int64_t rows) { return row_blocks(rows, 1024); }

void add_rmsnorm_forward(Storage delta_st, Storage y_st, const float* x, const void* delta, const float* w,
                         int64_t rows, int d, float eps, float* h, void* y, float* rstd, cudaStream_t s) {
  if (rows == 0) return;
  const int blocks = row_blocks(rows, 8192);
  with_types(delta_st, y_st, [&](auto td, auto ty) {
    using TD = decltype(td);
    using TY = decltype(ty);
    add_rmsnorm_forward_kernel<TD, TY><<<blocks, kThreads, 0, s>>>(x, static_cast<const TD*>(delta), w, rows, d, eps,
                                                                    h, static_cast<TY*>(y), rstd);
  });
  check_cuda(cudaGetLastError(), "add_rmsnorm forward kernel");
}

void add_rmsnorm_backward(Storage delta_st, Storage y_st, const float* h, const float* w, const float* rstd,
                          const void* dy, const float* dh_next, int64_t rows, int d, float* dx, void* ddelta,
                          float* dw_partial, cudaStream_t s) {
  if (rows == 0) return;
  if (d > kAddRmsNormMaxDim) check_cuda(cudaErrorInvalidValue, "add_rmsnorm backward: d_model above 4096");
  const int blocks = add_rmsnorm_backward_blocks(rows);
  with_types(delta_st, y_st, [&](auto td, auto ty) {
    using TD = decltype(td);
    using TY = decltype(ty);
    auto args = [&](auto kernel) {
      kernel<<<blocks, kThreads, 0, s>>>(h, w, rstd, static_cast<const TY*>(dy), dh_next, rows, d, dx,
                                         static_cast<TD*>(ddelta), dw_partial);
    };
    if (d <= 4 * kThreads) args(add_rmsnorm_backward_kernel<TD, TY, 4>);
    else if (d <= 8 * kThreads) args(add_rmsnorm_backward_kernel<TD, TY, 8>);
    else args(add_rmsnorm_backward_kernel<TD, TY, 16>);
  });
  check_cuda(cudaGetLastError(), "add_rmsnorm backward kernel");
}

}  // namespace cw::kern::cuda
