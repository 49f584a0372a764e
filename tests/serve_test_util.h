// Helpers for the engine's tests on CPU and GPU (no LibTorch): small random models, random prompts, a
// dense attention written independently of the paged kernels, and relative error.
// Must not: assert (tests do) or share state between tests.
#pragma once
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <vector>

#include "models/model_config.h"
#include "serve/random_bundle.h"

namespace cw::test {

inline ModelConfig small_serve_config(int64_t heads = 4, int64_t kv_heads = 2, int64_t head_dim = 64) {
  ModelConfig c;
  c.vocab_size = 512, c.n_heads = heads, c.n_kv_heads = kv_heads, c.d_model = heads * head_dim;
  c.n_layers = 2, c.d_ff = 384, c.max_seq_len = 512;
  return c;
}

inline std::vector<float> random_vec(size_t n, std::mt19937_64& rng, float scale = 1.f) {
  std::normal_distribution<float> nd(0.f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = nd(rng);
  return v;
}

inline std::vector<int32_t> random_prompt(int n, int vocab, std::mt19937_64& rng) {
  std::uniform_int_distribution<int32_t> u(0, vocab - 1);
  std::vector<int32_t> p(static_cast<size_t>(n));
  for (auto& t : p) t = u(rng);
  return p;
}

inline double rel_err(const std::vector<float>& got, const std::vector<float>& want) {
  double num = 0, den = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    if (std::isnan(got[i])) return std::numeric_limits<double>::infinity();
    num += (double(got[i]) - want[i]) * (double(got[i]) - want[i]);
    den += double(want[i]) * want[i];
  }
  return std::sqrt(num / std::max(den, 1e-30));
}

// Softmax attention of one query over contiguous keys/values [n][dim] (positions 0..n-1), in double;
// returns the output and (through LSE) the natural log-sum-exp of the scaled scores.
inline std::vector<float> dense_attention(const float* q, const std::vector<const float*>& k,
                                          const std::vector<const float*>& v, int dim, double scale, double* lse) {
  std::vector<double> s(k.size());
  double m = -INFINITY;
  for (size_t t = 0; t < k.size(); ++t) {
    double d = 0;
    for (int i = 0; i < dim; ++i) d += double(q[i]) * k[t][i];
    s[t] = d * scale, m = std::max(m, s[t]);
  }
  double z = 0;
  std::vector<double> acc(static_cast<size_t>(dim), 0.0);
  for (size_t t = 0; t < k.size(); ++t) {
    const double p = std::exp(s[t] - m);
    z += p;
    for (int i = 0; i < dim; ++i) acc[size_t(i)] += p * v[t][i];
  }
  std::vector<float> o(static_cast<size_t>(dim));
  for (int i = 0; i < dim; ++i) o[size_t(i)] = k.empty() ? 0.f : float(acc[size_t(i)] / z);
  if (lse) *lse = k.empty() ? -INFINITY : m + std::log(z);
  return o;
}

}  // namespace cw::test
