// Implementation of serve/cpu_backend.h.
#include "serve/cpu_backend.h"

#include <cmath>

#include "common/error.h"
#include "kernels/reference.h"

namespace cw::serve {

static std::vector<float> concat(std::initializer_list<const Weight*> parts) {
  std::vector<float> out;
  for (auto* w : parts) out.insert(out.end(), w->data.begin(), w->data.end());
  return out;
}

CpuBackend::CpuBackend(const Bundle& b, CpuBackendOptions opt) : c_(b.config), opt_(opt) {
  check(opt.page_size >= 1 && opt.num_pages >= 2 && opt.max_tokens >= 1 && opt.splits >= 1,
        "cpu backend: page size, pages, max tokens and splits must be positive (at least 2 pages)");
  embed_ = b.at("model.embed_tokens.weight").data;
  norm_ = b.at("model.norm.weight").data;
  lm_head_ = c_.tie_embeddings ? embed_ : b.at("lm_head.weight").data;
  const size_t kv = size_t(opt.num_pages) * opt.page_size * c_.n_kv_heads * c_.head_dim();
  for (int64_t l = 0; l < c_.n_layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    Layer L;
    L.ln1 = b.at(p + "input_layernorm.weight").data;
    L.ln2 = b.at(p + "post_attention_layernorm.weight").data;
    L.qkv = concat({&b.at(p + "self_attn.q_proj.weight"), &b.at(p + "self_attn.k_proj.weight"), &b.at(p + "self_attn.v_proj.weight")});
    L.o = b.at(p + "self_attn.o_proj.weight").data;
    L.gate_up = concat({&b.at(p + "mlp.gate_proj.weight"), &b.at(p + "mlp.up_proj.weight")});
    L.down = b.at(p + "mlp.down_proj.weight").data;
    L.k_cache.assign(kv, 0.f);
    L.v_cache.assign(kv, 0.f);
    layers_.push_back(std::move(L));
  }
}

std::vector<float> CpuBackend::cached(bool key, int layer, int slot) const {
  const auto& cache = key ? layers_[size_t(layer)].k_cache : layers_[size_t(layer)].v_cache;
  const int64_t n = c_.n_kv_heads * c_.head_dim();
  return std::vector<float>(cache.begin() + slot * n, cache.begin() + (slot + 1) * n);
}

namespace {
void round_bf16(float* x, size_t n) {
  for (size_t i = 0; i < n; ++i) x[i] = kern::bf16_to_float(kern::float_to_bf16(x[i]));
}
}  // namespace

std::vector<int32_t> CpuBackend::forward(const StepPlan& plan, std::vector<float>* logits_out) {
  plan.validate(opt_.page_size, opt_.num_pages);
  check(plan.rows() <= opt_.max_tokens, "cpu backend: a step of ", plan.rows(), " rows exceeds max_tokens ", opt_.max_tokens);
  const int T = plan.rows(), d = int(c_.d_model), H = int(c_.n_heads), Hkv = int(c_.n_kv_heads), hd = int(c_.head_dim());
  const int ff = int(c_.d_ff), V = int(c_.vocab_size), nqkv = (H + 2 * Hkv) * hd;
  const float eps = float(c_.norm_eps);
  std::vector<LevelArrays> levels;
  for (const auto& items : plan.levels) levels.push_back(LevelArrays::from(items));
  const int slots = int(levels.size()) * opt_.splits;
  kern::AttnShape shape;
  shape.rows = T, shape.heads = H, shape.kv_heads = Hkv, shape.head_dim = hd, shape.page_size = opt_.page_size;
  shape.q_stride = nqkv, shape.scale = float(1.0 / std::sqrt(double(hd)));

  std::vector<float> x(size_t(T) * d), xn(size_t(T) * d), qkv(size_t(T) * nqkv), att(size_t(T) * H * hd),
      o_part(size_t(slots) * T * H * hd), lse_part(size_t(slots) * T * H), gu(size_t(T) * 2 * ff), h(size_t(T) * ff);
  for (int32_t t : plan.tokens) check(t >= 0 && t < V, "token id ", t, " is outside the vocabulary");
  const bool r16 = opt_.round_like_cuda;
  auto rnd = [&](std::vector<float>& v) {
    if (r16) round_bf16(v.data(), v.size());
  };
  kern::ref::embedding(embed_.data(), plan.tokens.data(), T, d, x.data());
  for (auto& L : layers_) {
    kern::ref::rmsnorm(x.data(), nullptr, T, d, L.ln1.data(), eps, xn.data());
    rnd(xn);
    kern::ref::matmul(xn.data(), T, d, L.qkv.data(), nqkv, 0, qkv.data());
    kern::ref::rope_append(qkv.data(), plan.positions.data(), plan.slots.data(), T, H, Hkv, hd, float(c_.rope_theta),
                           L.k_cache.data(), L.v_cache.data());
    if (r16)
      for (int32_t slot : plan.slots) {
        round_bf16(L.k_cache.data() + size_t(slot) * Hkv * hd, size_t(Hkv) * hd);
        round_bf16(L.v_cache.data() + size_t(slot) * Hkv * hd, size_t(Hkv) * hd);
      }
    for (size_t li = 0; li < levels.size(); ++li)
      kern::ref::paged_attention(qkv.data(), plan.positions.data(), levels[li].view(), shape, L.k_cache.data(),
                                 L.v_cache.data(), opt_.splits, int(li) * opt_.splits, o_part.data(), lse_part.data());
    kern::ref::merge_states(o_part.data(), lse_part.data(), slots, T, H, hd, att.data(), nullptr);
    rnd(att);
    kern::ref::matmul(att.data(), T, H * hd, L.o.data(), d, 1, x.data());
    kern::ref::rmsnorm(x.data(), nullptr, T, d, L.ln2.data(), eps, xn.data());
    rnd(xn);
    kern::ref::matmul(xn.data(), T, d, L.gate_up.data(), 2 * ff, 0, gu.data());
    kern::ref::swiglu(gu.data(), T, ff, h.data());
    rnd(h);
    kern::ref::matmul(h.data(), T, ff, L.down.data(), d, 1, x.data());
  }
  const int R = int(plan.sample_rows.size());
  std::vector<float> xs(size_t(R) * d), logits(size_t(R) * V);
  kern::ref::rmsnorm(x.data(), plan.sample_rows.data(), R, d, norm_.data(), eps, xs.data());
  rnd(xs);
  kern::ref::matmul(xs.data(), R, d, lm_head_.data(), V, 0, logits.data());
  std::vector<int32_t> out(static_cast<size_t>(R));
  kern::ref::sample(logits.data(), R, V, plan.sample_params.data(), out.data());
  if (logits_out) *logits_out = std::move(logits);
  return out;
}

}  // namespace cw::serve
