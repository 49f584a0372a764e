// CPU reference of kernels/rmsnorm: y = w * x / sqrt(mean(x^2) + eps), sum of squares in double.
#include <cmath>

#include "kernels/reference.h"

namespace cw::kern::ref {

void rmsnorm(const float* x, const int32_t* row_map, int rows, int d, const float* w, float eps, float* y) {
  for (int r = 0; r < rows; ++r) {
    const float* xr = x + int64_t(row_map ? row_map[r] : r) * d;
    double ss = 0;
    for (int i = 0; i < d; ++i) ss += double(xr[i]) * xr[i];
    const float inv = float(1.0 / std::sqrt(ss / d + eps));
    for (int i = 0; i < d; ++i) y[int64_t(r) * d + i] = w[i] * (xr[i] * inv);
  }
}

}  // namespace cw::kern::ref
