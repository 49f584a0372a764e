// Residual add + RMSNorm for training on the GPU (row math: add_rmsnorm_math.h; CPU path and wrapper:
// models/fused_ops.cpp; reference: x + delta, at::rms_norm, cast). Forward: rows whose width is a multiple of
// 128 up to kWarpRowMaxDim go one warp per row, held in registers and moved four elements per access (the
// model widths: 768, 1024). Backward: one block per row, four elements per access when the width is a multiple
// of 4; each thread keeps its share of the weight gradient in registers and each block writes one partial
// row, which the wrapper sums. Other widths: one element per access.
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

// ---- One warp per row: lane l holds columns [4 (32 i + l), +4) for i < d / 128 ----
constexpr int kWarps = kThreads / 32;
constexpr int kWarpRowMaxDim = 1024;

template <typename TD, typename TY, int MAXV>
__global__ void __launch_bounds__(kThreads) add_rmsnorm_forward_warp_kernel(const float* x, const TD* delta,
                                                                            const float* w, int64_t rows, int d,
                                                                            float eps, float* h, TY* y,
                                                                            float* rstd_out) {
  const int lane = threadIdx.x % 32, v = d / 128;
  for (int64_t r = int64_t(blockIdx.x) * kWarps + threadIdx.x / 32; r < rows; r += int64_t(gridDim.x) * kWarps) {
    float hv[MAXV][4];
    float ss = 0.f;
#pragma unroll
    for (int i = 0; i < MAXV; ++i) {
      if (i >= v) break;
      const int64_t o = r * d + (i * 32 + lane) * 4;
      float dv[4];
      dev::load4(x + o, hv[i]);
      dev::load4(delta + o, dv);
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        hv[i][k] += dv[k];
        ss += hv[i][k] * hv[i][k];
      }
    }
    const float rstd = 1.f / sqrtf(dev::warp_sum(ss) / float(d) + eps);
#pragma unroll
    for (int i = 0; i < MAXV; ++i) {
      if (i >= v) break;
      const int c = (i * 32 + lane) * 4;
      float wv[4], yv[4];
      dev::load4(w + c, wv);
#pragma unroll
      for (int k = 0; k < 4; ++k) yv[k] = hv[i][k] * rstd * wv[k];
      dev::store4(h + r * d + c, hv[i]);
      dev::store4(y + r * d + c, yv);
    }
    if (lane == 0) rstd_out[r] = rstd;
  }
}

// Backward pass, one block per row, each thread four columns per access (P accesses: d <= 1024 P). Everything a
// row needs (h, dy, dh_next) is loaded before the block's reduction, so a row costs one trip to memory; rows
// of many blocks are in flight at once (a warp per row would hold 4 x d / 32 values per thread, too many
// registers for the occupancy this pass needs).
template <typename TD, typename TY, int P>
__global__ void __launch_bounds__(kThreads) add_rmsnorm_backward_pack_kernel(const float* h, const float* w,
                                                                             const float* rstd, const TY* dy,
                                                                             const float* dh_next, int64_t rows,
                                                                             int d, float* dx, TD* ddelta,
                                                                             float* dw_partial) {
  float acc[P][4];
#pragma unroll
  for (int p = 0; p < P; ++p)
#pragma unroll
    for (int k = 0; k < 4; ++k) acc[p][k] = 0.f;
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const float rs = rstd[r];
    float hv[P][4], g[P][4], dh[P][4];
    float gh = 0.f;
#pragma unroll
    for (int p = 0; p < P; ++p) {
      const int c = (threadIdx.x + p * kThreads) * 4;
      if (c >= d) break;
      float wv[4];
      dev::load4(h + r * d + c, hv[p]);
      dev::load4(dy + r * d + c, g[p]);
      dev::load4(w + c, wv);
      if (dh_next) dev::load4(dh_next + r * d + c, dh[p]);
      else dh[p][0] = dh[p][1] = dh[p][2] = dh[p][3] = 0.f;
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        gh += g[p][k] * wv[k] * hv[p][k];
        acc[p][k] += g[p][k] * hv[p][k] * rs;
      }
    }
    const float kk = rs * rs * dev::block_sum(gh) / float(d);
#pragma unroll
    for (int p = 0; p < P; ++p) {
      const int c = (threadIdx.x + p * kThreads) * 4;
      if (c >= d) break;
      float wv[4];
      dev::load4(w + c, wv);
#pragma unroll
      for (int k = 0; k < 4; ++k) dh[p][k] += rs * (g[p][k] * wv[k] - hv[p][k] * kk);
      dev::store4(dx + r * d + c, dh[p]);
      dev::store4(ddelta + r * d + c, dh[p]);
    }
  }
#pragma unroll
  for (int p = 0; p < P; ++p) {
    const int c = (threadIdx.x + p * kThreads) * 4;
    if (c < d) dev::store4(dw_partial + int64_t(blockIdx.x) * d + c, acc[p]);
  }
}

// The warp-per-row kernel takes d a multiple of 128 up to kWarpRowMaxDim, the pack kernel d a multiple of 4;
// both need the bases aligned to 16 bytes (d % 4 == 0 then keeps every row aligned to its access: 16 bytes
// for fp32, 8 for bf16).
bool warp_rows_fit(int d, std::initializer_list<const void*> ptrs) {
  return d % 128 == 0 && d <= kWarpRowMaxDim && all_aligned16(ptrs);
}
bool packs_fit(int d, std::initializer_list<const void*> ptrs) { return d % 4 == 0 && all_aligned16(ptrs); }

// Runs f(std::integral_constant<int, MAXV>{}) with MAXV the smallest of 2, 4, 8 covering d / 128.
template <typename F>
void with_row_packs(int d, F&& f) {
  if (d <= 256) f(std::integral_constant<int, 2>{});
  else if (d <= 512) f(std::integral_constant<int, 4>{});
  else f(std::integral_constant<int, 8>{});
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
  const bool warp_rows = warp_rows_fit(d, {x, delta, w, h, y});
  const int blocks = warp_rows ? row_blocks((rows + kWarps - 1) / kWarps, 8192) : row_blocks(rows, 8192);
  with_types(delta_st, y_st, [&](auto td, auto ty) {
    using TD = decltype(td);
    using TY = decltype(ty);
    if (warp_rows) {
      with_row_packs(d, [&](auto maxv) {
        add_rmsnorm_forward_warp_kernel<TD, TY, decltype(maxv)::value><<<blocks, kThreads, 0, s>>>(
            x, static_cast<const TD*>(delta), w, rows, d, eps, h, static_cast<TY*>(y), rstd);
      });
      return;
    }
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
    if (packs_fit(d, {h, w, dy, dh_next, dx, ddelta, dw_partial})) {
      if (d <= 4 * kThreads) args(add_rmsnorm_backward_pack_kernel<TD, TY, 1>);
      else if (d <= 8 * kThreads) args(add_rmsnorm_backward_pack_kernel<TD, TY, 2>);
      else args(add_rmsnorm_backward_pack_kernel<TD, TY, 4>);
      return;
    }
    if (d <= 4 * kThreads) args(add_rmsnorm_backward_kernel<TD, TY, 4>);
    else if (d <= 8 * kThreads) args(add_rmsnorm_backward_kernel<TD, TY, 8>);
    else args(add_rmsnorm_backward_kernel<TD, TY, 16>);
  });
  check_cuda(cudaGetLastError(), "add_rmsnorm backward kernel");
}

}  // namespace cw::kern::cuda
