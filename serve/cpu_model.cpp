// Implementation of serve/cpu_model.h: the Llama forward for one token, written out loop by loop.
#include "serve/cpu_model.h"

#include <algorithm>
#include <cmath>

#include "common/error.h"
#include "kernels/reference.h"

namespace cw::serve {

namespace {

void matvec(const Weight& w, const float* x, float* y) {  // y = W x, W [out, in]
  const int64_t out = w.shape[0], in = w.shape[1];
  for (int64_t o = 0; o < out; ++o) {
    const float* row = w.data.data() + o * in;
    double s = 0;
    for (int64_t i = 0; i < in; ++i) s += double(row[i]) * double(x[i]);
    y[o] = float(s);
  }
}

void rmsnorm(const float* x, const Weight& w, double eps, int64_t d, float* y) {
  double ss = 0;
  for (int64_t i = 0; i < d; ++i) ss += double(x[i]) * double(x[i]);
  const float inv = float(1.0 / std::sqrt(ss / double(d) + eps));
  for (int64_t i = 0; i < d; ++i) y[i] = w.data[size_t(i)] * (x[i] * inv);
}

void rope(float* v, int64_t heads, int64_t hd, int64_t pos, double theta) {  // rotate-half pairs (i, i + hd/2)
  for (int64_t h = 0; h < heads; ++h)
    for (int64_t i = 0; i < hd / 2; ++i) {
      const float freq = float(1.0 / std::pow(theta, double(2 * i) / double(hd)));
      const float angle = float(pos) * freq, c = std::cos(angle), s = std::sin(angle);
      float* a = v + h * hd;
      const float x1 = a[i], x2 = a[i + hd / 2];
      a[i] = x1 * c - x2 * s;
      a[i + hd / 2] = x2 * c + x1 * s;
    }
}

}  // namespace

CpuModel::CpuModel(const Bundle& b) : b_(b) {}

KVCache CpuModel::new_cache() const {
  KVCache c;
  c.k.resize(static_cast<size_t>(b_.config.n_layers));
  c.v.resize(static_cast<size_t>(b_.config.n_layers));
  return c;
}

std::vector<float> CpuModel::step(int32_t token, KVCache& cache) const {
  const ModelConfig& c = b_.config;
  check(token >= 0 && token < c.vocab_size, "token id ", token, " is outside the vocabulary");
  const int64_t d = c.d_model, hd = c.head_dim(), H = c.n_heads, Hkv = c.n_kv_heads, pos = cache.length;
  const auto& emb = b_.at("model.embed_tokens.weight");
  std::vector<float> x(emb.data.begin() + token * d, emb.data.begin() + (token + 1) * d);
  std::vector<float> xn(static_cast<size_t>(d)), q(static_cast<size_t>(H * hd)), k(static_cast<size_t>(Hkv * hd)), v(static_cast<size_t>(Hkv * hd)), att(static_cast<size_t>(H * hd)),
      o(static_cast<size_t>(d)), gate(static_cast<size_t>(c.d_ff)), up(static_cast<size_t>(c.d_ff));
  for (int64_t l = 0; l < c.n_layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    rmsnorm(x.data(), b_.at(p + "input_layernorm.weight"), c.norm_eps, d, xn.data());
    matvec(b_.at(p + "self_attn.q_proj.weight"), xn.data(), q.data());
    matvec(b_.at(p + "self_attn.k_proj.weight"), xn.data(), k.data());
    matvec(b_.at(p + "self_attn.v_proj.weight"), xn.data(), v.data());
    rope(q.data(), H, hd, pos, c.rope_theta);
    rope(k.data(), Hkv, hd, pos, c.rope_theta);
    auto& kc = cache.k[size_t(l)];
    auto& vc = cache.v[size_t(l)];
    kc.insert(kc.end(), k.begin(), k.end());
    vc.insert(vc.end(), v.begin(), v.end());
    const int64_t n = pos + 1, group = H / Hkv;
    std::vector<double> scores(static_cast<size_t>(n));
    for (int64_t h = 0; h < H; ++h) {
      const int64_t g = h / group;
      double mx = -INFINITY;
      for (int64_t t = 0; t < n; ++t) {
        double s = 0;
        for (int64_t i = 0; i < hd; ++i) s += double(q[size_t(h * hd + i)]) * double(kc[size_t((t * Hkv + g) * hd + i)]);
        scores[size_t(t)] = s / std::sqrt(double(hd));
        mx = std::max(mx, scores[size_t(t)]);
      }
      double z = 0;
      for (auto& s : scores) z += (s = std::exp(s - mx));
      for (int64_t i = 0; i < hd; ++i) {
        double acc = 0;
        for (int64_t t = 0; t < n; ++t) acc += scores[size_t(t)] * double(vc[size_t((t * Hkv + g) * hd + i)]);
        att[size_t(h * hd + i)] = float(acc / z);
      }
    }
    matvec(b_.at(p + "self_attn.o_proj.weight"), att.data(), o.data());
    for (int64_t i = 0; i < d; ++i) x[size_t(i)] += o[size_t(i)];
    rmsnorm(x.data(), b_.at(p + "post_attention_layernorm.weight"), c.norm_eps, d, xn.data());
    matvec(b_.at(p + "mlp.gate_proj.weight"), xn.data(), gate.data());
    matvec(b_.at(p + "mlp.up_proj.weight"), xn.data(), up.data());
    for (int64_t i = 0; i < c.d_ff; ++i) gate[size_t(i)] = gate[size_t(i)] / (1.f + std::exp(-gate[size_t(i)])) * up[size_t(i)];
    matvec(b_.at(p + "mlp.down_proj.weight"), gate.data(), o.data());
    for (int64_t i = 0; i < d; ++i) x[size_t(i)] += o[size_t(i)];
  }
  rmsnorm(x.data(), b_.at("model.norm.weight"), c.norm_eps, d, xn.data());
  std::vector<float> logits(static_cast<size_t>(c.vocab_size));
  matvec(b_.at(c.tie_embeddings ? "model.embed_tokens.weight" : "lm_head.weight"), xn.data(), logits.data());
  ++cache.length;
  return logits;
}

int32_t sample_token(const std::vector<float>& logits, const SamplingOptions& opt, std::mt19937_64& rng) {
  kern::SampleParams p;  // the engine's sampling rule (kernels/sampling), one draw of RNG as its seed
  p.temperature = float(opt.temperature), p.top_k = int32_t(opt.top_k), p.top_p = float(opt.top_p), p.seed = rng();
  int32_t out = 0;
  kern::ref::sample(logits.data(), 1, int(logits.size()), &p, &out);
  return out;
}

}  // namespace cw::serve
