// CPU reference of kernels/rope_append: rotate-half RoPE on q (in place) and k, then k and v into the paged
// cache. The angle is float(pos) * theta^(-2i/hd) computed in float, as the kernel does.
#include <cmath>

#include "kernels/reference.h"

namespace cw::kern::ref {

static void rotate(float* v, int hd, int pos, float theta) {
  for (int i = 0; i < hd / 2; ++i) {
    const float inv_freq = std::pow(theta, -float(2 * i) / float(hd));
    const float a = float(pos) * inv_freq, c = std::cos(a), s = std::sin(a);
    const float x1 = v[i], x2 = v[i + hd / 2];
    v[i] = x1 * c - x2 * s;
    v[i + hd / 2] = x2 * c + x1 * s;
  }
}

void rope_append(float* qkv, const int32_t* pos, const int32_t* slot, int T, int H, int Hkv, int hd, float theta,
                 float* k_cache, float* v_cache) {
  const int64_t stride = int64_t(H + 2 * Hkv) * hd;
  for (int t = 0; t < T; ++t) {
    float* row = qkv + t * stride;
    for (int h = 0; h < H + Hkv; ++h) rotate(row + int64_t(h) * hd, hd, pos[t], theta);
    float* kc = k_cache + int64_t(slot[t]) * Hkv * hd;
    float* vc = v_cache + int64_t(slot[t]) * Hkv * hd;
    for (int i = 0; i < Hkv * hd; ++i) {
      kc[i] = row[int64_t(H) * hd + i];
      vc[i] = row[int64_t(H + Hkv) * hd + i];
    }
  }
}

}  // namespace cw::kern::ref
