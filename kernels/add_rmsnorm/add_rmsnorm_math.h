// Residual add fused with RMSNorm for training: h = x + delta (fp32, the residual stream) and
// y = h / rms(h) * w in y's storage (bf16 under autocast), and the backward pass of both. Row functions for
// the CPU path of models/fused_ops.cpp; the CUDA kernel (add_rmsnorm.cu) does the same per row with block
// reductions. The independent reference is x + delta followed by at::rms_norm and a cast.
// Must not: allocate or depend on LibTorch.
#pragma once
#include <math.h>

#include "kernels/common/common.h"

namespace cw::kern {

// One row of d elements. Returns rstd = 1 / sqrt(mean(h^2) + eps).
template <typename TD, typename TY>
inline float add_rmsnorm_forward_row(const float* x, const TD* delta, const float* w, int64_t d, float eps, float* h,
                                     TY* y) {
  float ss = 0.f;
  for (int64_t c = 0; c < d; ++c) {
    h[c] = x[c] + load_f(delta, c);
    ss += h[c] * h[c];
  }
  const float rstd = 1.f / sqrtf(ss / float(d) + eps);
  for (int64_t c = 0; c < d; ++c) store_f(y, c, h[c] * rstd * w[c]);
  return rstd;
}

// dh = dh_next (nullable: h has no other reader) + rstd * (g - h * rstd^2 * mean(g * h)) with g = dy * w;
// dx = dh (fp32) and ddelta = dh in delta's storage. The weight's gradient sum(dy * h * rstd) over rows is
// accumulated by the caller.
template <typename TD, typename TY>
inline void add_rmsnorm_backward_row(const float* h, const float* w, float rstd, const TY* dy, const float* dh_next,
                                     int64_t d, float* dx, TD* ddelta) {
  float gh = 0.f;
  for (int64_t c = 0; c < d; ++c) gh += load_f(dy, c) * w[c] * h[c];
  const float k = rstd * rstd * gh / float(d);
  for (int64_t c = 0; c < d; ++c) {
    const float dh = (dh_next ? dh_next[c] : 0.f) + rstd * (load_f(dy, c) * w[c] - h[c] * k);
    dx[c] = dh;
    store_f(ddelta, c, dh);
  }
}

}  // namespace cw::kern
