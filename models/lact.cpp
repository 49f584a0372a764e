// Implementation of models/lact.h.
#include "models/lact.h"

#include <cmath>

#include "common/error.h"

namespace cw {

namespace {

// [.., a, b] -> [.., b, a]
torch::Tensor tr(const torch::Tensor& x) { return x.transpose(-2, -1); }

// The derivative of silu at G: sigma(G) (1 + G (1 - sigma(G))).
torch::Tensor silu_grad(const torch::Tensor& g) {
  auto s = torch::sigmoid(g);
  return s * (1 + g * (1 - s));
}

// Rows of X scaled to unit length (the spec's 1e-5 keeps zero rows finite).
torch::Tensor l2_normalize(const torch::Tensor& x) { return x / (x.norm(2, -1, true) + 1e-5); }

torch::Tensor row_norms(const torch::Tensor& w) { return w.norm(2, -1, true); }

// W scaled back, row by row, to the norms N0.
torch::Tensor renormalize(const torch::Tensor& w, const torch::Tensor& n0) { return w / (row_norms(w) + 1e-5) * n0; }

// The fast branch's arithmetic type: fp64 for fp64 models (tests), fp32 otherwise (the reference's fast weights).
torch::ScalarType fast_dtype(const torch::Tensor& like) {
  return like.scalar_type() == torch::kDouble ? torch::kDouble : torch::kFloat;
}

const double kBaseLr = 1e-3;
double inverse_softplus(double y) { return y + std::log(-std::expm1(-y)); }

}  // namespace

torch::Tensor lact_apply(const FastWeights& w, const torch::Tensor& x) {
  auto g = torch::matmul(x, tr(w.w0)), h = torch::matmul(x, tr(w.w2));
  return torch::matmul(torch::silu(g) * h, tr(w.w1));
}

FastWeights lact_delta(const FastWeights& w, const torch::Tensor& k, const torch::Tensor& v, const torch::Tensor& lr0,
                       const torch::Tensor& lr1, const torch::Tensor& lr2) {
  // Tokens are rows here: G = K W0^T, Hh = K W2^T [n, dh]; the spec writes the same with tokens as columns.
  auto g = torch::matmul(k, tr(w.w0)), hh = torch::matmul(k, tr(w.w2));
  auto sg = torch::silu(g);
  auto a = sg * hh;
  auto da = torch::matmul(v, w.w1);  // dL/dA up to the sign and the rate: (W1^T V)^T
  auto dhh = da * sg;
  auto dg = da * hh * silu_grad(g);
  FastWeights d;
  d.w1 = torch::matmul(tr(v), a * lr1.unsqueeze(-1));   // [d, dh]
  d.w0 = torch::matmul(tr(dg), k * lr0.unsqueeze(-1));  // [dh, d]
  d.w2 = torch::matmul(tr(dhh), k * lr2.unsqueeze(-1));
  return d;
}

torch::Tensor newton_schulz5(const torch::Tensor& x) {
  static const double coefficients[5][3] = {{4.0848, -6.8946, 2.9270}, {3.9505, -6.3029, 2.6377},
                                            {3.7418, -5.5913, 2.3037}, {2.8769, -3.1427, 1.2046},
                                            {2.8366, -3.0525, 1.2012}};
  const bool tall = x.size(-2) > x.size(-1);
  auto X = x.scalar_type() == torch::kDouble ? x : x.to(torch::kBFloat16);
  if (tall) X = tr(X);
  X = X / (torch::linalg_vector_norm(X, 2, {-2, -1}, true) + 1e-7);
  for (auto& c : coefficients) {
    auto A = torch::matmul(X, tr(X));
    auto Bm = c[1] * A + c[2] * torch::matmul(A, A);
    X = c[0] * X + torch::matmul(Bm, X);
  }
  if (tall) X = tr(X);
  return X.to(x.scalar_type());
}

FastWeightState::FastWeightState(FastWeights init) : w(std::move(init)) {
  norms = {row_norms(w.w0), row_norms(w.w1), row_norms(w.w2)};
}

void FastWeightState::update(const torch::Tensor& k, const torch::Tensor& v, const torch::Tensor& lr0,
                             const torch::Tensor& lr1, const torch::Tensor& lr2, const torch::Tensor& momentum,
                             bool muon) {
  FastWeights delta = lact_delta(w, k, v, lr0, lr1, lr2);
  if (momentum.defined()) {  // M = delta + mean(m over the chunk) M, per row and fast head
    auto mc = momentum.mean(-1).unsqueeze(-1).unsqueeze(-1);
    if (m.w0.defined()) delta = {delta.w0 + mc * m.w0, delta.w1 + mc * m.w1, delta.w2 + mc * m.w2};
    m = delta;
  }
  if (muon) delta = {newton_schulz5(delta.w0), newton_schulz5(delta.w1), newton_schulz5(delta.w2)};
  w = {renormalize(w.w0 + delta.w0, norms.w0), renormalize(w.w1 + delta.w1, norms.w1),
       renormalize(w.w2 + delta.w2, norms.w2)};
}

torch::Tensor lact_fast_weight_forward(const FastWeights& init, const LactInputs& in, int64_t C, bool muon) {
  const int64_t T = in.q.size(2);
  FastWeightState learner(init);
  std::vector<torch::Tensor> outs;
  for (int64_t s = 0; s < T; s += C) {
    const int64_t n = std::min(C, T - s);
    outs.push_back(lact_apply(learner.w, in.q.narrow(2, s, n)));  // the weights of the chunks before this one
    if (s + C >= T) break;                                         // the last chunk: applied only
    auto part = [&](const torch::Tensor& x) { return x.defined() ? x.narrow(2, s, n) : x; };
    learner.update(part(in.k), part(in.v), part(in.lr0), part(in.lr1), part(in.lr2), part(in.momentum), muon);
  }
  return torch::cat(outs, 2);
}

LactLayerImpl::LactLayerImpl(const ModelConfig& c)
    : D(c.d_model), H(c.n_heads), hd(c.head_dim()), Hf(c.lact_heads), d(c.d_model / c.lact_heads),
      dh(c.d_model / c.lact_heads * c.lact_hidden_mult), C(c.lact_chunk), W(c.lact_window), rank(c.lact_low_rank),
      theta(c.rope_theta), muon(c.lact_muon) {
  using torch::nn::Linear, torch::nn::LinearOptions;
  attn_norm = register_module("attn_norm", RMSNorm(D, c.norm_eps));
  qkv = register_module("qkv", Linear(LinearOptions(D, 3 * D).bias(false)));
  o_proj = register_module("o_proj", Linear(LinearOptions(D, D).bias(false)));
  lr_proj = register_module("lr_proj", Linear(LinearOptions(D, 3 * Hf)));
  if (c.lact_momentum) momentum_proj = register_module("momentum_proj", Linear(LinearOptions(D, Hf)));
  gate_proj = register_module("gate_proj", Linear(LinearOptions(D, Hf)));
  qk_scale = register_parameter("qk_scale", torch::ones({2, D}));
  qk_offset = register_parameter("qk_offset", torch::zeros({2, D}));
  if (rank > 0) {
    w0_left = register_parameter("w0_left", torch::zeros({Hf, dh, rank}));
    w0_right = register_parameter("w0_right", torch::zeros({Hf, rank, d}));
    w2_left = register_parameter("w2_left", torch::zeros({Hf, dh, rank}));
    w2_right = register_parameter("w2_right", torch::zeros({Hf, rank, d}));
  } else {
    w0 = register_parameter("w0", torch::zeros({Hf, dh, d}));
    w2 = register_parameter("w2", torch::zeros({Hf, dh, d}));
  }
  w1 = register_parameter("w1", torch::zeros({Hf, d, dh}));
  ttt_norm = register_module("ttt_norm", RMSNorm(d, c.norm_eps));
  mlp_norm = register_module("mlp_norm", RMSNorm(D, c.norm_eps));
  mlp = register_module("mlp", LlamaMLP(c));
}

void LactLayerImpl::reset_parameters(double init_std, double out_std) {
  torch::NoGradGuard ng;
  for (auto* n : {&attn_norm, &mlp_norm, &ttt_norm}) (*n)->weight.fill_(1.0);
  for (auto* l : {&qkv, &lr_proj, &gate_proj, &momentum_proj}) {
    if (!*l) continue;
    (*l)->weight.normal_(0.0, init_std);
    if ((*l)->bias.defined()) (*l)->bias.zero_();
  }
  o_proj->weight.normal_(0.0, out_std);
  mlp->gate_proj->weight.normal_(0.0, init_std), mlp->up_proj->weight.normal_(0.0, init_std);
  mlp->down_proj->weight.normal_(0.0, out_std);
  qk_scale.fill_(1.0), qk_offset.zero_();
  // Fast weights as the reference initialises them: N(0, 1/fan_in); low rank: factors of gain 1/2 around I/2.
  if (rank > 0) {
    for (auto* l : {&w0_left, &w2_left}) l->normal_(0.0, 0.5 / std::sqrt(double(rank)));
    for (auto* r : {&w0_right, &w2_right}) r->normal_(0.0, 0.5 / std::sqrt(double(d)));
  } else {
    w0.normal_(0.0, 1.0 / std::sqrt(double(d))), w2.normal_(0.0, 1.0 / std::sqrt(double(d)));
  }
  w1.normal_(0.0, 1.0 / std::sqrt(double(dh)));
}

FastWeights LactLayerImpl::initial_weights(torch::ScalarType dtype) {
  auto low_rank = [&](const torch::Tensor& l, const torch::Tensor& r) {
    return torch::matmul(l, r) + 0.5 * torch::eye(dh, d, l.options());
  };
  auto first = [&](const torch::Tensor& w) { return w.to(dtype).unsqueeze(0); };
  return {first(rank > 0 ? low_rank(w0_left, w0_right) : w0), first(w1),
          first(rank > 0 ? low_rank(w2_left, w2_right) : w2)};
}

LactLayerImpl::Projected LactLayerImpl::project(const torch::Tensor& h, int64_t t0) {
  const int64_t B = h.size(0), T = h.size(1);
  auto parts = qkv(h).chunk(3, -1);
  auto pos = torch::arange(t0, t0 + T, torch::TensorOptions().dtype(torch::kInt64).device(h.device()));
  auto [cos, sin] = rope_tables(pos.unsqueeze(0).expand({B, T}), hd, theta);
  auto heads = [&](const torch::Tensor& x) { return x.reshape({B, T, H, hd}).transpose(1, 2); };  // [B, H, T, hd]
  Projected p;
  p.q = apply_rope(heads(parts[0]), cos, sin), p.k = apply_rope(heads(parts[1]), cos, sin), p.v = heads(parts[2]);

  const auto dt = fast_dtype(h);
  auto fast_heads = [&](const torch::Tensor& x) {  // [B, T, D] -> [B, Hf, T, d]
    return x.reshape({B, T, Hf, d}).transpose(1, 2);
  };
  // Per-channel scale and shift, silu, unit length per fast head, then RoPE over the attention heads' layout.
  auto fast_qk = [&](const torch::Tensor& x, int64_t row) {
    auto y = torch::silu(x.to(dt) * qk_scale[row].to(dt) + qk_offset[row].to(dt));
    y = l2_normalize(y.reshape({B, T, Hf, d})).reshape({B, T, D});
    y = apply_rope(heads(y), cos.to(dt), sin.to(dt)).transpose(1, 2).reshape({B, T, D});
    return fast_heads(y);
  };
  p.fast.q = fast_qk(parts[0], 0), p.fast.k = fast_qk(parts[1], 1);
  p.fast.v = fast_heads(torch::silu(parts[2].to(dt)));
  auto lr = torch::softplus(lr_proj(h).to(dt) + inverse_softplus(kBaseLr)).reshape({B, T, Hf, 3});
  p.fast.lr0 = lr.select(-1, 0).transpose(1, 2), p.fast.lr1 = lr.select(-1, 1).transpose(1, 2);
  p.fast.lr2 = lr.select(-1, 2).transpose(1, 2);
  if (momentum_proj) p.fast.momentum = torch::sigmoid(momentum_proj(h).to(dt)).transpose(1, 2);
  p.gate = torch::silu(gate_proj(h).to(dt)).transpose(1, 2).unsqueeze(-1);
  return p;
}

torch::Tensor LactLayerImpl::finish(const torch::Tensor& x, const torch::Tensor& attn, const torch::Tensor& fast,
                                    const torch::Tensor& gate) {
  const int64_t B = x.size(0), T = x.size(1);
  auto y = (ttt_norm(fast) * gate).transpose(1, 2).reshape({B, T, D});
  auto a = attn.transpose(1, 2).reshape({B, T, D});
  auto h = x + o_proj(a + y.to(a.scalar_type()));
  return h + mlp(mlp_norm(h));
}

torch::Tensor LactLayerImpl::forward(const torch::Tensor& x) {
  Projected p = project(attn_norm(x), 0);
  AttnMask local;  // causal over the last W tokens
  local.q_offset = 0, local.window = W;
  auto attn = attend(p.q, p.k, p.v, local);
  return finish(x, attn, lact_fast_weight_forward(initial_weights(fast_dtype(x)), p.fast, C, muon), p.gate);
}

torch::Tensor LactLayerImpl::step(const torch::Tensor& x, LactState& s) {
  Projected p = project(attn_norm(x), s.t);
  s.k_win = append_to_window(s.k_win, p.k, W), s.v_win = append_to_window(s.v_win, p.v, W);
  AttnMask last;  // the one query sees every key the window kept
  last.causal = false;
  auto attn = attend(p.q, s.k_win, s.v_win, last);
  if (!s.learner.w.w0.defined()) s.learner = FastWeightState(initial_weights(fast_dtype(x)));
  auto fast = lact_apply(s.learner.w, p.fast.q);
  s.pending.push_back(p.fast);
  if (int64_t(s.pending.size()) == C) {  // the chunk is complete: the tokens after it see its update
    auto joined = [&](torch::Tensor LactInputs::*field) {  // the chunk's tokens side by side (undefined: off)
      std::vector<torch::Tensor> parts;
      for (auto& in : s.pending) parts.push_back(in.*field);
      return parts.front().defined() ? torch::cat(parts, 2) : torch::Tensor();
    };
    s.learner.update(joined(&LactInputs::k), joined(&LactInputs::v), joined(&LactInputs::lr0),
                     joined(&LactInputs::lr1), joined(&LactInputs::lr2), joined(&LactInputs::momentum), muon);
    s.pending.clear();
  }
  ++s.t;
  return finish(x, attn, fast, p.gate);
}

Lact::Lact(const ModelConfig& c) : LayerStackLM(c) {
  for (int64_t i = 0; i < c.n_layers; ++i) layers_->push_back(LactLayer(c));
  reset_parameters();
}

void Lact::reset_parameters() {
  torch::NoGradGuard ng;
  const double out_std = cfg_.init_std / std::sqrt(2.0 * double(cfg_.n_layers));
  embed_->weight.normal_(0.0, cfg_.init_std);
  if (lm_head_) lm_head_->weight.normal_(0.0, cfg_.init_std);
  norm_->weight.fill_(1.0);
  for (size_t i = 0; i < layers_->size(); ++i) layer(i)->reset_parameters(cfg_.init_std, out_std);
}

LactLayer Lact::layer(size_t i) { return layers_->ptr<LactLayerImpl>(i); }

torch::Tensor Lact::logits(const torch::Tensor& tokens, const torch::Tensor&, const torch::Tensor& segments) {
  check(!segments.defined(), "[model] family 'lact' carries its fast weights across packed documents; use [data] "
        "strategy = concat (positions are counted from each sequence's start, so POSITIONS are not read)");
  auto x = embed_(tokens);
  for (size_t i = 0; i < layers_->size(); ++i) x = layer(i)->forward(x);
  return head(norm_(x));
}

namespace {
struct LactDecodeState : DecodeState {
  std::vector<LactState> layers;
};
}  // namespace

std::unique_ptr<DecodeState> Lact::new_decode_state() {
  auto s = std::make_unique<LactDecodeState>();
  s->layers.resize(layers_->size());
  return s;
}

torch::Tensor Lact::decode_step(const torch::Tensor& tokens, DecodeState& state) {
  auto* s = dynamic_cast<LactDecodeState*>(&state);
  check(s != nullptr && s->layers.size() == layers_->size(), "lact decode: a state made by another model");
  auto x = embed_(tokens.reshape({-1, 1}));
  for (size_t i = 0; i < layers_->size(); ++i) x = layer(i)->step(x, s->layers[i]);
  return head(norm_(x)).squeeze(1);
}

}  // namespace cw
