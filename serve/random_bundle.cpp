// Implementation of serve/random_bundle.h.
#include "serve/random_bundle.h"

#include <algorithm>
#include <cmath>
#include <thread>
#include <vector>

#include "kernels/common/common.h"

namespace cw::serve {

ModelConfig tinyllama_config() {
  ModelConfig c;
  c.vocab_size = 32000, c.d_model = 2048, c.n_layers = 22, c.n_heads = 32, c.n_kv_heads = 4, c.d_ff = 5632;
  c.max_seq_len = 2048, c.norm_eps = 1e-5, c.rope_theta = 10000;
  return c;
}

static void fill(std::vector<float>& v, uint64_t seed, float std) {
  const size_t n = v.size();
  const unsigned threads = std::max(1u, std::min(16u, std::thread::hardware_concurrency()));
  auto work = [&](size_t a, size_t b) {
    for (size_t i = a; i < b; ++i) {  // sum of 4 uniforms: near-normal, variance 4/12
      float s = 0;
      for (uint32_t k = 0; k < 4; ++k) s += kern::uniform01(seed, i, k);
      v[i] = (s - 2.f) * std * 1.7320508f;
    }
  };
  std::vector<std::thread> pool;
  const size_t per = (n + threads - 1) / threads;
  for (unsigned t = 0; t < threads; ++t) pool.emplace_back(work, std::min(n, t * per), std::min(n, (t + 1) * per));
  for (auto& th : pool) th.join();
}

Bundle random_bundle(const ModelConfig& c, uint64_t seed, float std) {
  Bundle b;
  b.config = c;
  uint64_t k = seed * 1000003;
  for (auto& [name, shape] : llama_tensor_shapes(c)) {
    Weight w;
    w.shape = shape;
    int64_t n = 1;
    for (auto d : shape) n *= d;
    w.data.resize(size_t(n));
    if (shape.size() == 1) std::fill(w.data.begin(), w.data.end(), 1.f);  // norm gains
    else fill(w.data, ++k, std);
    b.weights[name] = std::move(w);
  }
  return b;
}

}  // namespace cw::serve
