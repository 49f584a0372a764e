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
  auto add = [&](const std::string& name, std::vector<int64_t> shape, bool ones = false) {
    Weight w;
    w.shape = shape;
    int64_t n = 1;
    for (auto s : shape) n *= s;
    w.data.resize(size_t(n));
    if (ones) std::fill(w.data.begin(), w.data.end(), 1.f);
    else fill(w.data, ++k, std);
    b.weights[name] = std::move(w);
  };
  const int64_t hd = c.head_dim();
  add("model.embed_tokens.weight", {c.vocab_size, c.d_model});
  add("model.norm.weight", {c.d_model}, true);
  if (!c.tie_embeddings) add("lm_head.weight", {c.vocab_size, c.d_model});
  for (int64_t l = 0; l < c.n_layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    add(p + "self_attn.q_proj.weight", {c.n_heads * hd, c.d_model});
    add(p + "self_attn.k_proj.weight", {c.n_kv_heads * hd, c.d_model});
    add(p + "self_attn.v_proj.weight", {c.n_kv_heads * hd, c.d_model});
    add(p + "self_attn.o_proj.weight", {c.d_model, c.n_heads * hd});
    add(p + "mlp.gate_proj.weight", {c.d_ff, c.d_model});
    add(p + "mlp.up_proj.weight", {c.d_ff, c.d_model});
    add(p + "mlp.down_proj.weight", {c.d_model, c.d_ff});
    add(p + "input_layernorm.weight", {c.d_model}, true);
    add(p + "post_attention_layernorm.weight", {c.d_model}, true);
  }
  return b;
}

}  // namespace cw::serve
