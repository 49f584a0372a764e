// Implementation of models/rat.h.
#include "models/rat.h"

#include <cmath>

#include "common/error.h"

namespace cw {

namespace {

// The dtype the recurrence and the attention run in: the gate's (fp32 in training, fp64 in tests).
torch::ScalarType math_dtype(const RatInputs& in) { return in.g.scalar_type(); }

// RoPE tables for the chunk index of tokens [0, T): [B, T, dh].
std::pair<torch::Tensor, torch::Tensor> chunk_rope(int64_t B, int64_t T, int64_t L, int64_t dh, double theta,
                                                   const torch::Device& device) {
  auto pos = torch::arange(T, torch::TensorOptions().dtype(torch::kInt64).device(device)).div(L, "floor");
  return rope_tables(pos.unsqueeze(0).expand({B, T}), dh, theta);
}

// Softmax over the earlier chunks' final states (KF, VF [B, H, n, dh], entries where VALID [T, n]; every one
// when VALID is undefined) and the token's own state (K, V [B, H, T, dh]) for queries Q [B, H, T, dh]:
// y [B, H, T, dh].
torch::Tensor attend_states(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                            const torch::Tensor& kf, const torch::Tensor& vf, const torch::Tensor& valid) {
  const double scale = 1.0 / std::sqrt(double(q.size(-1)));
  auto own = (q * k).sum(-1, true) * scale;
  if (!kf.defined() || kf.size(2) == 0) return v;  // nothing earlier: the softmax of one score is 1
  auto prev = torch::matmul(q, kf.transpose(-2, -1)) * scale;
  if (valid.defined()) prev = prev.masked_fill(valid.logical_not(), -std::numeric_limits<double>::infinity());
  auto p = torch::softmax(torch::cat({prev, own}, -1), -1);
  const int64_t n = kf.size(2);
  return torch::matmul(p.narrow(-1, 0, n), vf) + p.narrow(-1, n, 1) * v;
}

}  // namespace

torch::Tensor rat_mix(const RatInputs& in, int64_t L, double theta) {
  const int64_t B = in.q.size(0), T = in.q.size(1), H = in.q.size(2), dh = in.q.size(3);
  const auto dt = math_dtype(in);
  const int64_t C = (T + L - 1) / L, Tp = C * L;
  auto chunked = [&](const torch::Tensor& x) {  // [B, T, H, dh] -> [B, C, L, H, dh], zeros past T
    auto y = x.to(dt);
    if (Tp > T) y = torch::constant_pad_nd(y, {0, 0, 0, 0, 0, Tp - T});
    return y.reshape({B, C, L, H, dh});
  };
  auto g = chunked(in.g);
  // The gated recurrence: the chunks in parallel, the L positions of a chunk in order, reset at each start.
  auto scan = [&](const torch::Tensor& x5) {
    std::vector<torch::Tensor> states;
    torch::Tensor s;
    for (int64_t l = 0; l < L; ++l) {
      auto gl = g.select(2, l), xl = x5.select(2, l);
      s = l == 0 ? (1 - gl) * xl : gl * s + (1 - gl) * xl;
      states.push_back(s);
    }
    return torch::stack(states, 2).reshape({B, Tp, H, dh}).narrow(1, 0, T);
  };
  auto kt = scan(chunked(in.k)), vt = scan(chunked(in.v));
  auto [cos, sin] = chunk_rope(B, T, L, dh, theta, in.q.device());
  auto q = apply_rope(in.q.to(dt).transpose(1, 2), cos, sin), k = apply_rope(kt.transpose(1, 2), cos, sin);
  auto v = vt.transpose(1, 2);
  const int64_t full = T / L;  // chunks whose final state later tokens see
  torch::Tensor kf, vf, valid;
  if (full > 0) {
    auto opts = torch::TensorOptions().dtype(torch::kInt64).device(in.q.device());
    auto last = torch::arange(full, opts) * L + (L - 1);
    kf = k.index_select(2, last), vf = v.index_select(2, last);
    valid = torch::arange(full, opts).unsqueeze(0) < torch::arange(T, opts).div(L, "floor").unsqueeze(1);
  }
  auto y = attend_states(q, k, v, kf, vf, valid);
  return y.transpose(1, 2).reshape({B, T, H * dh}).to(in.v.scalar_type());
}

torch::Tensor rat_mix_reference(const RatInputs& in, int64_t L, double theta) {
  const int64_t B = in.q.size(0), T = in.q.size(1), H = in.q.size(2), dh = in.q.size(3);
  const auto dt = math_dtype(in);
  // The recurrence token by token.
  std::vector<torch::Tensor> ks, vs;
  torch::Tensor sk, sv;
  for (int64_t t = 0; t < T; ++t) {
    auto g = in.g.select(1, t).to(dt), k = in.k.select(1, t).to(dt), v = in.v.select(1, t).to(dt);
    if (t % L == 0) sk = (1 - g) * k, sv = (1 - g) * v;
    else sk = g * sk + (1 - g) * k, sv = g * sv + (1 - g) * v;
    ks.push_back(sk), vs.push_back(sv);
  }
  auto [cos, sin] = chunk_rope(B, T, L, dh, theta, in.q.device());
  auto q = apply_rope(in.q.to(dt).transpose(1, 2), cos, sin);
  auto k = apply_rope(torch::stack(ks, 1).transpose(1, 2), cos, sin), v = torch::stack(vs, 1).transpose(1, 2);
  // Token t sees key s when s is t itself, or the last token of a chunk before t's.
  auto allowed = torch::zeros({T, T}, torch::kBool);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t s = 0; s <= t; ++s) allowed[t][s] = s == t || (s % L == L - 1 && s / L < t / L);
  auto scores = torch::matmul(q, k.transpose(-2, -1)) / std::sqrt(double(dh));
  scores = scores.masked_fill(allowed.to(q.device()).logical_not(), -std::numeric_limits<double>::infinity());
  auto y = torch::matmul(torch::softmax(scores, -1), v);
  return y.transpose(1, 2).reshape({B, T, H * dh}).to(in.v.scalar_type());
}

torch::Tensor RatState::step(const RatInputs& in, int64_t L, double theta) {
  const int64_t B = in.q.size(0), H = in.q.size(2), dh = in.q.size(3);
  const auto dt = math_dtype(in);
  auto g = in.g.select(1, 0).to(dt), kx = in.k.select(1, 0).to(dt), vx = in.v.select(1, 0).to(dt);
  if (t % L == 0) k = (1 - g) * kx, v = (1 - g) * vx;
  else k = g * k + (1 - g) * kx, v = g * v + (1 - g) * vx;
  auto pos = torch::full({B, 1}, t / L, torch::TensorOptions().dtype(torch::kInt64).device(in.q.device()));
  auto [cos, sin] = rope_tables(pos, dh, theta);
  auto q = apply_rope(in.q.to(dt).transpose(1, 2), cos, sin);     // [B, H, 1, dh]
  auto kr = apply_rope(k.unsqueeze(2), cos, sin), vr = v.unsqueeze(2);
  torch::Tensor kf, vf;  // [B, H, n, dh]: every finished chunk is earlier than this token's
  if (!final_k.empty()) kf = torch::stack(final_k, 2), vf = torch::stack(final_v, 2);
  auto y = attend_states(q, kr, vr, kf, vf, torch::Tensor());
  if (t % L == L - 1) final_k.push_back(kr.squeeze(2)), final_v.push_back(v);
  ++t;
  return y.transpose(1, 2).reshape({B, 1, H * dh}).to(in.v.scalar_type());
}

RatLayerImpl::RatLayerImpl(const ModelConfig& c)
    : H(c.n_heads), dh(c.head_dim()), G(c.rat_groups), L(c.rat_chunk), theta(c.rope_theta) {
  const int64_t D = c.d_model;
  mix_norm = register_module("mix_norm", RMSNorm(D, c.norm_eps));
  in_proj = register_module("in_proj", torch::nn::Linear(torch::nn::LinearOptions(D, 3 * D + 2 * G * dh).bias(false)));
  o_proj = register_module("o_proj", torch::nn::Linear(torch::nn::LinearOptions(D, D).bias(false)));
  gate_bias = register_parameter("gate_bias", torch::zeros({D}));
  mlp_norm = register_module("mlp_norm", RMSNorm(D, c.norm_eps));
  mlp = register_module("mlp", LlamaMLP(c));
}

RatInputs RatLayerImpl::project(const torch::Tensor& h) {
  const int64_t B = h.size(0), T = h.size(1), D = H * dh;
  auto parts = in_proj(h).split({D, D, D, G * dh, G * dh}, -1);
  RatInputs in;
  in.z = parts[0];
  in.v = parts[1].reshape({B, T, H, dh});
  auto gl = parts[2];
  if (gl.scalar_type() != torch::kDouble) gl = gl.to(torch::kFloat);  // the gates in fp32 under autocast
  in.g = torch::sigmoid(gl + gate_bias.to(gl.scalar_type())).reshape({B, T, H, dh});
  auto heads = torch::arange(H, torch::TensorOptions().dtype(torch::kInt64).device(h.device())).remainder(G);
  in.q = parts[3].reshape({B, T, G, dh}).index_select(2, heads);  // head h uses group h mod G
  in.k = parts[4].reshape({B, T, G, dh}).index_select(2, heads);
  return in;
}

torch::Tensor RatLayerImpl::forward(const torch::Tensor& x) {
  RatInputs in = project(mix_norm(x));
  auto h = x + o_proj(torch::sigmoid(in.z) * rat_mix(in, L, theta));
  return h + mlp(mlp_norm(h));
}

torch::Tensor RatLayerImpl::step(const torch::Tensor& x, RatState& state) {
  RatInputs in = project(mix_norm(x));
  auto h = x + o_proj(torch::sigmoid(in.z) * state.step(in, L, theta));
  return h + mlp(mlp_norm(h));
}

Rat::Rat(const ModelConfig& c) : LayerStackLM(c) {
  for (int64_t i = 0; i < c.n_layers; ++i) {
    if (c.rat_attention_layer(i)) layers_->push_back(LlamaDecoderLayer(c));  // the hybrid's local attention
    else layers_->push_back(RatLayer(c));
  }
  reset_parameters();
}

void Rat::reset_parameters() {
  torch::NoGradGuard ng;
  const double out_std = cfg_.init_std / std::sqrt(2.0 * double(cfg_.n_layers));
  for (auto& p : named_parameters()) {
    const std::string& n = p.key();
    if (n.find("norm") != std::string::npos) p.value().fill_(1.0);
    else if (n.find("gate_bias") != std::string::npos)  // log U(1, L - 1): forget gates between 1/2 and (L-1)/L
      p.value().uniform_(1.0, std::max<double>(1.0, double(cfg_.rat_chunk - 1))).log_();
    else if (n.find("o_proj") != std::string::npos || n.find("down_proj") != std::string::npos)
      p.value().normal_(0.0, out_std);
    else p.value().normal_(0.0, cfg_.init_std);
  }
}

torch::Tensor Rat::logits(const torch::Tensor& tokens, const torch::Tensor& positions, const torch::Tensor& segments) {
  check(!segments.defined(), "[model] family 'rat' runs its recurrence across packed documents; use [data] strategy "
        "= concat (its chunks are counted from each sequence's start, so POSITIONS are not read)");
  auto x = embed_(tokens);
  torch::Tensor cos, sin;
  AttnMask local;  // the hybrid's attention layers: causal over the last rat_window tokens, RoPE by token index
  local.q_offset = 0, local.window = cfg_.rat_window;
  if (hybrid()) {
    auto pos = torch::arange(tokens.size(1), torch::TensorOptions().dtype(torch::kInt64).device(tokens.device()));
    std::tie(cos, sin) = rope_tables(pos.unsqueeze(0).expand({tokens.size(0), tokens.size(1)}), cfg_.head_dim(),
                                     cfg_.rope_theta);
  }
  for (auto& layer : *layers_) {
    if (auto* rat = layer->as<RatLayer>()) x = rat->forward(x);
    else x = layer->as<LlamaDecoderLayer>()->forward(x, cos, sin, local);
  }
  return head(norm_(x));
}

torch::Tensor Rat::step_logits(const torch::Tensor& tokens, std::vector<RatState>& states) {
  if (states.empty()) states.resize(size_t(cfg_.n_layers));
  check(int64_t(states.size()) == cfg_.n_layers, "rat step: ", states.size(), " states for ", cfg_.n_layers, " layers");
  auto x = embed_(tokens.reshape({-1, 1}));
  size_t i = 0;
  for (auto& layer : *layers_) {
    RatState& s = states[i++];
    if (auto* rat = layer->as<RatLayer>()) x = rat->step(x, s);
    else x = attention_step(*layer->as<LlamaDecoderLayer>(), x, s);
  }
  return head(norm_(x)).squeeze(1);
}

torch::Tensor Rat::attention_step(LlamaDecoderLayerImpl& layer, const torch::Tensor& x, RatState& s) {
  auto& a = *layer.self_attn;
  const int64_t B = x.size(0);
  auto h = layer.input_layernorm(x);
  auto heads = [&](const torch::Tensor& y, int64_t n) { return y.view({B, 1, n, a.head_dim}).transpose(1, 2); };
  auto pos = torch::full({B, 1}, s.t, torch::TensorOptions().dtype(torch::kInt64).device(x.device()));
  auto [cos, sin] = rope_tables(pos, a.head_dim, cfg_.rope_theta);  // by token index, as logits() does
  auto q = apply_rope(heads(a.q_proj(h), a.n_heads), cos, sin);
  s.window_k = append_to_window(s.window_k, apply_rope(heads(a.k_proj(h), a.n_kv_heads), cos, sin), cfg_.rat_window);
  s.window_v = append_to_window(s.window_v, heads(a.v_proj(h), a.n_kv_heads), cfg_.rat_window);
  AttnMask all;  // the one query sees every key the window kept
  all.causal = false;
  auto y = attend(q, s.window_k, s.window_v, all).transpose(1, 2).reshape({B, 1, a.n_heads * a.head_dim});
  ++s.t;
  auto r = x + a.o_proj(y);
  return r + layer.mlp(layer.post_attention_layernorm(r));
}

namespace {
struct RatDecodeState : DecodeState {
  std::vector<RatState> layers;
};
}  // namespace

std::unique_ptr<DecodeState> Rat::new_decode_state() { return std::make_unique<RatDecodeState>(); }

torch::Tensor Rat::decode_step(const torch::Tensor& tokens, DecodeState& state) {
  auto* s = dynamic_cast<RatDecodeState*>(&state);
  check(s != nullptr, "rat decode: a state made by another family");
  return step_logits(tokens, s->layers);
}

}  // namespace cw
