// CPU reference of kernels/swiglu: silu(gate) * up over a fused [gate | up] row.
#include <cmath>

#include "kernels/reference.h"

namespace cw::kern::ref {

void swiglu(const float* gate_up, int T, int ff, float* out) {
  for (int t = 0; t < T; ++t)
    for (int i = 0; i < ff; ++i) {
      const float g = gate_up[int64_t(t) * 2 * ff + i], u = gate_up[int64_t(t) * 2 * ff + ff + i];
      out[int64_t(t) * ff + i] = g / (1.f + std::exp(-g)) * u;
    }
}

}  // namespace cw::kern::ref
