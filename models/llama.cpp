// Implementation of models/llama.h and of the model registry.
#include "models/llama.h"

#include <cmath>
#include <map>
#include <mutex>

#include "common/error.h"
#include "models/activation_checkpoint.h"
#include "models/chunk_kv.h"
#include "models/fused_ops.h"
#include "models/lact.h"
#include "models/linear_cross_entropy.h"
#include "models/mixed_linear.h"
#include "models/rat.h"

namespace cw {

// ---- registry ----
static std::map<std::string, ModelBuilder>& registry() {
  static std::map<std::string, ModelBuilder> r = {
      {"llama", [](const ModelConfig& c) { return std::static_pointer_cast<CausalLM>(std::make_shared<Llama>(c)); }},
      {"rat", [](const ModelConfig& c) { return std::static_pointer_cast<CausalLM>(std::make_shared<Rat>(c)); }},
      {"lact", [](const ModelConfig& c) { return std::static_pointer_cast<CausalLM>(std::make_shared<Lact>(c)); }}};
  return r;
}
void register_model_family(const std::string& family, ModelBuilder builder) { registry()[family] = std::move(builder); }
std::shared_ptr<CausalLM> build_model(const ModelConfig& config) {
  config.validate();
  auto it = registry().find(config.family);
  check(it != registry().end(), "[model] family '", config.family, "' is not built into this binary");
  return it->second(config);
}

bool fused_kernels_wanted(const std::string& setting, const torch::Device& device) {
  if (setting == "auto") return device.is_cuda();
  check(setting == "true" || setting == "false", "train.fused_kernels = '", setting, "': use auto, true or false");
  return setting == "true";
}

// Low-precision activations are promoted to fp32 for norms and losses; fp32 and fp64 stay as they are.
static torch::Tensor at_least_fp32(const torch::Tensor& x) {
  return x.scalar_type() == torch::kFloat64 ? x : x.to(torch::kFloat32);
}

// Sum of the token cross-entropies of logits LG against TARGETS (fused: no fp32 logits, the gradient
// overwrites LG).
static torch::Tensor logits_loss_sum(const torch::Tensor& lg, const torch::Tensor& targets, bool fused) {
  if (fused && fused_ops_support(lg))
    return fused_cross_entropy_sum(lg.reshape({-1, lg.size(-1)}), targets.reshape({-1}), /*overwrite_logits=*/true);
  return torch::nn::functional::cross_entropy(
      at_least_fp32(lg.reshape({-1, lg.size(-1)})), targets.reshape({-1}),
      torch::nn::functional::CrossEntropyFuncOptions().ignore_index(kIgnoreIndex).reduction(torch::kSum));
}

torch::Tensor CausalLM::loss_sum(const Batch& b) {
  return logits_loss_sum(logits(b.tokens, b.positions, b.has_segments ? b.segments : torch::Tensor()), b.targets,
                         fused_kernels);
}

torch::Tensor CausalLM::decode_step(const torch::Tensor&, DecodeState&) {
  throw UserError("[model] family '" + config().family + "' has no one-token decoding state");
}

torch::Tensor CausalLM::chunk_loss_sum(const Batch&, ChunkForward&, bool) {
  throw UserError("[model] family '" + config().family + "' does not support chunk-wise training (SeCO/SpaCO); "
                  "set [chunkwise] mode = off");
}

// ---- modules ----
RMSNormImpl::RMSNormImpl(int64_t d, double e) : eps(e) { weight = register_parameter("weight", torch::ones({d})); }
torch::Tensor RMSNormImpl::forward(const torch::Tensor& x) {
  if (x.is_cuda()) return at::rms_norm(x, {x.size(-1)}, weight, eps);  // ATen's fused kernel, fp32 statistics
  auto xf = at_least_fp32(x);
  auto y = xf * torch::rsqrt(xf.pow(2).mean(-1, true) + eps);
  return weight * y.to(x.scalar_type());
}

std::pair<torch::Tensor, torch::Tensor> rope_tables(const torch::Tensor& positions, int64_t head_dim, double theta) {
  auto opts = torch::TensorOptions().dtype(torch::kFloat32).device(positions.device());
  auto inv_freq = 1.0 / torch::pow(theta, torch::arange(0, head_dim, 2, opts) / double(head_dim));
  auto freqs = positions.to(torch::kFloat32).unsqueeze(-1) * inv_freq;  // [B, T, D/2]
  auto emb = torch::cat({freqs, freqs}, -1);
  return {emb.cos(), emb.sin()};
}

torch::Tensor apply_rope(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin) {
  const int64_t half = x.size(-1) / 2;
  auto rotated = torch::cat({-x.narrow(-1, half, half), x.narrow(-1, 0, half)}, -1);
  auto c = cos.unsqueeze(1).to(x.scalar_type()), s = sin.unsqueeze(1).to(x.scalar_type());
  return x * c + rotated * s;
}

// The adapters' updates of a product whose output joins PARTS (adapter, width) side by side: zeros where a part
// has no adapter. Undefined when no part has one.
static torch::Tensor joined_lora_delta(const torch::Tensor& x, std::initializer_list<std::pair<const LoraAdapter*, int64_t>> parts,
                                       const torch::Tensor& like, bool training) {
  bool any = false;
  for (auto& [a, w] : parts) any = any || a->defined();
  if (!any) return torch::Tensor();
  std::vector<torch::Tensor> pieces;
  for (auto& [a, w] : parts) {
    auto shape = like.sizes().vec();
    shape.back() = w;
    pieces.push_back(a->defined() ? a->delta(x, training).to(like.scalar_type()) : torch::zeros(shape, like.options()));
  }
  return torch::cat(pieces, -1);
}

static torch::nn::Linear linear(int64_t in, int64_t out) {
  return torch::nn::Linear(torch::nn::LinearOptions(in, out).bias(false));
}

LlamaAttentionImpl::LlamaAttentionImpl(const ModelConfig& c)
    : n_heads(c.n_heads), n_kv_heads(c.n_kv_heads), head_dim(c.head_dim()) {
  q_proj = register_module("q_proj", linear(c.d_model, n_heads * head_dim));
  k_proj = register_module("k_proj", linear(c.d_model, n_kv_heads * head_dim));
  v_proj = register_module("v_proj", linear(c.d_model, n_kv_heads * head_dim));
  o_proj = register_module("o_proj", linear(n_heads * head_dim, c.d_model));
  lora_q = attach_lora(q_proj, "q_proj", c), lora_k = attach_lora(k_proj, "k_proj", c);
  lora_v = attach_lora(v_proj, "v_proj", c), lora_o = attach_lora(o_proj, "o_proj", c);
}

torch::Tensor LlamaAttentionImpl::forward(const torch::Tensor& x, const torch::Tensor& cos,
                                          const torch::Tensor& sin, const AttnMask& mask, bool fused,
                                          const ChunkLayerKV* chunk) {
  const int64_t B = x.size(0), T = x.size(1);
  // One matrix product for q, k and v (the weights stay separate parameters under their export names).
  auto qkv = fused ? mixed_linear(x, {q_proj->weight, k_proj->weight, v_proj->weight})
                   : torch::linear(x, torch::cat({q_proj->weight, k_proj->weight, v_proj->weight}));
  auto lora = joined_lora_delta(x, {{&lora_q, n_heads * head_dim}, {&lora_k, n_kv_heads * head_dim},
                                    {&lora_v, n_kv_heads * head_dim}}, qkv, is_training());
  if (lora.defined()) qkv = qkv + lora;
  torch::Tensor q, k, v;
  if (fused && fused_ops_support(qkv)) {  // one kernel: q and k rotated in place, views [B, T, heads, hd]
    auto qkv4 = fused_rope_qkv(qkv, cos, sin, n_heads, n_kv_heads);
    q = qkv4[0].transpose(1, 2), k = qkv4[1].transpose(1, 2), v = qkv4[2].transpose(1, 2);
  } else {
    auto parts = qkv.split({n_heads * head_dim, n_kv_heads * head_dim, n_kv_heads * head_dim}, -1);
    q = apply_rope(parts[0].view({B, T, n_heads, head_dim}).transpose(1, 2), cos, sin);
    k = apply_rope(parts[1].view({B, T, n_kv_heads, head_dim}).transpose(1, 2), cos, sin);
    v = parts[2].view({B, T, n_kv_heads, head_dim}).transpose(1, 2);
  }
  if (chunk) std::tie(k, v) = chunk_keys_values(*chunk, k, v);
  auto y = attend(q, k, v, mask).transpose(1, 2).reshape({B, T, n_heads * head_dim});
  auto out = fused ? mixed_linear(y, {o_proj->weight}) : o_proj(y);
  return lora_o.defined() ? out + lora_o.delta(y, is_training()).to(out.scalar_type()) : out;
}

LlamaMLPImpl::LlamaMLPImpl(const ModelConfig& c) {
  gate_proj = register_module("gate_proj", linear(c.d_model, c.d_ff));
  up_proj = register_module("up_proj", linear(c.d_model, c.d_ff));
  down_proj = register_module("down_proj", linear(c.d_ff, c.d_model));
  lora_gate = attach_lora(gate_proj, "gate_proj", c), lora_up = attach_lora(up_proj, "up_proj", c);
  lora_down = attach_lora(down_proj, "down_proj", c);
}

torch::Tensor LlamaMLPImpl::forward(const torch::Tensor& x, bool fused, bool recompute) {
  auto gate_up = fused ? mixed_linear(x, {gate_proj->weight, up_proj->weight})  // one product
                       : torch::linear(x, torch::cat({gate_proj->weight, up_proj->weight}));
  const int64_t F = gate_proj->weight.size(0);
  auto lora = joined_lora_delta(x, {{&lora_gate, F}, {&lora_up, F}}, gate_up, is_training());
  if (lora.defined()) gate_up = gate_up + lora;
  if (lora_down.defined()) {  // the adapter reads the SwiGLU product, so it is kept
    auto parts = gate_up.chunk(2, -1);
    auto h = fused && fused_ops_support(gate_up) ? fused_swiglu(gate_up) : torch::silu(parts[0]) * parts[1];
    auto out = fused ? mixed_linear(h, {down_proj->weight}) : down_proj(h);
    return out + lora_down.delta(h, is_training()).to(out.scalar_type());
  }
  if (fused && fused_ops_support(gate_up))
    return recompute ? fused_swiglu_down(gate_up, down_proj->weight)
                     : mixed_linear(fused_swiglu(gate_up), {down_proj->weight});
  auto parts = gate_up.chunk(2, -1);
  return down_proj(torch::silu(parts[0]) * parts[1]);
}

LlamaDecoderLayerImpl::LlamaDecoderLayerImpl(const ModelConfig& c) {
  self_attn = register_module("self_attn", LlamaAttention(c));
  mlp = register_module("mlp", LlamaMLP(c));
  input_layernorm = register_module("input_layernorm", RMSNorm(c.d_model, c.norm_eps));
  post_attention_layernorm = register_module("post_attention_layernorm", RMSNorm(c.d_model, c.norm_eps));
}
torch::Tensor LlamaDecoderLayerImpl::forward(const torch::Tensor& x, const torch::Tensor& cos,
                                             const torch::Tensor& sin, const AttnMask& mask, bool fused,
                                             bool recompute_swiglu, const ChunkLayerKV* chunk) {
  auto h = x + self_attn(input_layernorm(x), cos, sin, mask, fused, chunk);
  return h + mlp(post_attention_layernorm(h), fused, recompute_swiglu);
}

LlamaBodyImpl::LlamaBodyImpl(const ModelConfig& c) {
  embed_tokens = register_module("embed_tokens", torch::nn::Embedding(c.vocab_size, c.d_model));
  layers = register_module("layers", torch::nn::ModuleList());
  for (int64_t i = 0; i < c.n_layers; ++i) layers->push_back(LlamaDecoderLayer(c));
  norm = register_module("norm", RMSNorm(c.d_model, c.norm_eps));
}

Llama::Llama(const ModelConfig& c) : cfg_(c) {
  model_ = register_module("model", LlamaBody(c));
  if (!c.tie_embeddings) lm_head_ = register_module("lm_head", linear(c.d_model, c.vocab_size));
  reset_parameters();
}

void Llama::reset_parameters() {
  torch::NoGradGuard ng;
  const double out_std = cfg_.init_std / std::sqrt(2.0 * double(cfg_.n_layers));
  for (auto& p : named_parameters()) {
    const std::string& n = p.key();
    if (is_lora_parameter(n)) continue;
    if (n.find("norm") != std::string::npos) p.value().fill_(1.0);
    else if (n.find("o_proj") != std::string::npos || n.find("down_proj") != std::string::npos)
      p.value().normal_(0.0, out_std);
    else p.value().normal_(0.0, cfg_.init_std);
  }
  for (auto& module : *model_->layers) {
    auto* layer = module->as<LlamaDecoderLayer>();
    auto& a = *layer->self_attn;
    auto& m = *layer->mlp;
    for (LoraAdapter* l : {&a.lora_q, &a.lora_k, &a.lora_v, &a.lora_o, &m.lora_gate, &m.lora_up, &m.lora_down})
      if (l->defined()) reset_lora(*l);
  }
}

torch::Tensor Llama::logits(const torch::Tensor& tokens, const torch::Tensor& positions, const torch::Tensor& segments) {
  return head(hidden(tokens, positions, segments));
}

torch::Tensor Llama::head(const torch::Tensor& h) {
  return fused_kernels ? mixed_linear(h, {head_weight()}) : torch::matmul(h, head_weight().t());
}

const torch::Tensor& Llama::head_weight() const {
  return cfg_.tie_embeddings ? model_->embed_tokens->weight : lm_head_->weight;
}

torch::Tensor Llama::loss_sum(const Batch& b) {
  if (loss_chunk_rows <= 0) return CausalLM::loss_sum(b);
  return loss_from_hidden(hidden(b.tokens, b.positions, b.has_segments ? b.segments : torch::Tensor()), b.targets);
}

// The same losses as loss_sum: chunked through linear_cross_entropy, or over the logits (fused without fp32
// logits where the kernels apply).
torch::Tensor Llama::loss_from_hidden(const torch::Tensor& h, const torch::Tensor& targets) {
  if (loss_chunk_rows > 0)
    return linear_cross_entropy(h.reshape({-1, h.size(-1)}), head_weight(), targets.reshape({-1}), loss_chunk_rows,
                                fused_kernels);
  return logits_loss_sum(head(h), targets, fused_kernels);
}

torch::Tensor Llama::hidden(const torch::Tensor& tokens, const torch::Tensor& positions, const torch::Tensor& segments) {
  AttnMask mask;
  mask.q_offset = 0;
  if (segments.defined()) {
    mask.q_segments = mask.k_segments = segments;
    // Document masks as flash attention's variable-length runs (the packing sampler's segments are runs).
    if (fused_kernels && segments.is_cuda()) attach_segment_runs(mask);
  }
  return layers_forward(model_->embed_tokens(tokens), positions, mask, nullptr);
}

// A chunk after the earlier chunks: bottom-right causal over their keys and its own, document masks over both.
torch::Tensor Llama::chunk_loss_sum(const Batch& chunk, ChunkForward& f, bool with_loss) {
  const int64_t L = cfg_.n_layers;
  check(f.past.empty() || int64_t(f.past.size()) == L, "chunk forward: ", f.past.size(), " layers of past keys for a ",
        L, "-layer model");
  check(!f.buffers || f.total >= f.start + chunk.tokens.size(1), "chunk forward: the chunk at ", f.start,
        " runs past the buffers' ", f.total, " tokens");
  AttnMask mask;  // q_offset -1: the chunk's queries are the last positions
  if (chunk.has_segments) {
    mask.q_segments = chunk.segments;
    mask.k_segments = f.past_segments.defined() ? torch::cat({f.past_segments, chunk.segments}, 1) : chunk.segments;
  }
  f.fresh.assign(size_t(L), LayerKV{});
  auto h = layers_forward(model_->embed_tokens(chunk.tokens), chunk.positions, mask, &f);
  return with_loss ? loss_from_hidden(h, chunk.targets) : torch::Tensor();
}

torch::Tensor Llama::layers_forward(torch::Tensor x, const torch::Tensor& positions, const AttnMask& mask,
                                    ChunkForward* f) {
  auto [cos, sin] = rope_tables(positions, cfg_.head_dim(), cfg_.rope_theta);
  if (checkpoint_layers && !f && torch::GradMode::is_enabled()) {  // per layer, so no add+norm across layers
    for (auto& module : *model_->layers) {
      auto* layer = module->as<LlamaDecoderLayer>();
      x = recompute_in_backward(
          [layer, cos = cos, sin = sin, mask, fused = fused_kernels, rs = recompute_swiglu](const torch::Tensor& in) {
            return layer->forward(in, cos, sin, mask, fused, rs);
          },
          x);
    }
    return model_->norm(x);
  }
  if (fused_kernels && fused_add_rmsnorm_support(x, x, model_->norm->weight)) return hidden_fused(x, cos, sin, mask, f);
  size_t i = 0;
  for (auto& module : *model_->layers) {
    ChunkLayerKV chunk = f ? f->layer(i) : ChunkLayerKV{};
    x = module->as<LlamaDecoderLayer>()->forward(x, cos, sin, mask, fused_kernels, recompute_swiglu,
                                                 f ? &chunk : nullptr);
    ++i;
  }
  return model_->norm(x);
}

// The decoder layers with each residual add joined to the RMSNorm after it (fused_add_rmsnorm): the norms'
// outputs come out in the autocast dtype, so no separate cast or add kernels run.
torch::Tensor Llama::hidden_fused(torch::Tensor x, const torch::Tensor& cos, const torch::Tensor& sin,
                                  const AttnMask& mask, ChunkForward* f) {
  const auto out_dtype = compute_dtype(x);
  auto add_norm = [&](const torch::Tensor& delta, const RMSNorm& norm) {
    auto out = fused_add_rmsnorm(x, delta, norm->weight, norm->eps, out_dtype);
    x = out[0];
    return out[1];
  };
  torch::Tensor pending;  // the previous MLP's output, not yet added to x
  size_t i = 0;
  for (auto& module : *model_->layers) {
    auto* layer = module->as<LlamaDecoderLayer>();
    auto n1 = pending.defined() ? add_norm(pending, layer->input_layernorm) : layer->input_layernorm(x);
    ChunkLayerKV chunk = f ? f->layer(i) : ChunkLayerKV{};
    auto attn = layer->self_attn(n1, cos, sin, mask, /*fused=*/true, f ? &chunk : nullptr);
    ++i;
    auto n2 = add_norm(attn, layer->post_attention_layernorm);
    pending = layer->mlp(n2, /*fused=*/true, recompute_swiglu);
  }
  return pending.defined() ? add_norm(pending, model_->norm) : model_->norm(x);
}

}  // namespace cw
