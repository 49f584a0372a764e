// CPU reference of kernels/sampling. Greedy: the lowest index among equal maxima. Otherwise, on s = logits/T:
// keep tokens whose s is >= the k-th largest (top-k), then those whose s is >= the value at which the sorted
// probability mass first reaches top_p (top-p), and draw by Gumbel-max over the kept tokens with
// uniform01(seed, counter, i) -- the same draw as sampling from the renormalised softmax of the kept set.
#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "kernels/reference.h"

namespace cw::kern::ref {

void sample(const float* logits, int rows, int V, const SampleParams* params, int32_t* out) {
  std::vector<float> s(static_cast<size_t>(V)), sorted;
  for (int r = 0; r < rows; ++r) {
    const float* x = logits + int64_t(r) * V;
    const SampleParams& p = params[r];
    if (p.temperature <= 0) {
      out[r] = int32_t(std::max_element(x, x + V) - x);
      continue;
    }
    for (int i = 0; i < V; ++i) s[size_t(i)] = x[i] / p.temperature;
    sorted = s;
    std::sort(sorted.begin(), sorted.end(), std::greater<float>());
    float threshold = sorted.back();
    if (p.top_k > 0 && p.top_k < V) threshold = sorted[size_t(p.top_k - 1)];
    if (p.top_p < 1) {
      const float m = sorted[0];
      double z = 0;
      for (float v : sorted)
        if (v >= threshold) z += std::exp(double(v) - m);
      double mass = 0;
      for (float v : sorted) {
        if (v < threshold) break;
        mass += std::exp(double(v) - m);
        if (mass >= double(p.top_p) * z) {
          threshold = v;
          break;
        }
      }
    }
    float best = -INFINITY;
    int32_t pick = 0;
    for (int i = 0; i < V; ++i) {
      if (s[size_t(i)] < threshold) continue;
      const float g = s[size_t(i)] - std::log(-std::log(uniform01(p.seed, p.counter, uint32_t(i))));
      if (g > best) best = g, pick = i;
    }
    out[r] = pick;
  }
}

}  // namespace cw::kern::ref
