// CPU reference of kernels/merge_states: the cascade / split-KV merge. With m = max lse_j,
// w_j = exp(lse_j - m): o = sum w_j o_j / sum w_j, lse = m + log(sum w_j). Parts with lse = -inf add
// nothing; if every part is empty the output is 0 and lse -inf (never NaN).
#include <cmath>
#include <limits>

#include "kernels/reference.h"

namespace cw::kern::ref {

void merge_states(const float* o_part, const float* lse_part, int slots, int rows, int H, int hd, float* o,
                  float* lse) {
  const double ninf = -std::numeric_limits<double>::infinity();
  for (int r = 0; r < rows; ++r)
    for (int h = 0; h < H; ++h) {
      double m = ninf;
      for (int s = 0; s < slots; ++s) m = std::max(m, double(lse_part[(int64_t(s) * rows + r) * H + h]));
      float* out = o + (int64_t(r) * H + h) * hd;
      if (m == ninf) {
        for (int i = 0; i < hd; ++i) out[i] = 0;
        if (lse) lse[int64_t(r) * H + h] = float(ninf);
        continue;
      }
      double z = 0;
      for (int i = 0; i < hd; ++i) out[i] = 0;
      for (int s = 0; s < slots; ++s) {
        const int64_t idx = (int64_t(s) * rows + r) * H + h;
        const double w = std::exp(double(lse_part[idx]) - m);
        if (w == 0) continue;
        z += w;
        for (int i = 0; i < hd; ++i) out[i] += float(w * o_part[idx * hd + i]);
      }
      for (int i = 0; i < hd; ++i) out[i] = float(out[i] / z);
      if (lse) lse[int64_t(r) * H + h] = float(m + std::log(z));
    }
}

}  // namespace cw::kern::ref
