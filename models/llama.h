// Llama-style decoder: RMSNorm, RoPE (Hugging Face's rotate-half convention), grouped-query attention
// through attend(), SwiGLU MLP, optional tied embeddings. Module names reproduce Hugging Face's
// LlamaForCausalLM tensor names (model.layers.0.self_attn.q_proj.weight, ...).
// Must not: special-case training strategies; chunked steps reach attention through AttnMask.
#pragma once
#include <torch/torch.h>

#include "models/attention.h"
#include "models/causal_lm.h"
#include "models/lora.h"

namespace cw {

struct RMSNormImpl : torch::nn::Module {
  RMSNormImpl(int64_t d, double eps);
  torch::Tensor forward(const torch::Tensor& x);
  torch::Tensor weight;
  double eps;
};
TORCH_MODULE(RMSNorm);

// cos and sin [B, T, head_dim] for POSITIONS [B, T] (fp32), rotate-half layout.
std::pair<torch::Tensor, torch::Tensor> rope_tables(const torch::Tensor& positions, int64_t head_dim, double theta);
// x [B, H, T, D]; cos/sin [B, T, D].
torch::Tensor apply_rope(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin);

struct LlamaAttentionImpl : torch::nn::Module {
  explicit LlamaAttentionImpl(const ModelConfig& c);
  // fused: RoPE through fused_rope_qkv where the dtype allows it, and the products through mixed_linear
  // (weights cast straight into one buffer, fp32 weight gradients from the products).
  // chunk (may be null): a chunk forward's earlier keys/values the queries also attend to (the mask's offset
  // decides the alignment), joined to this call's through chunk_keys_values, which also hands them out.
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin,
                        const AttnMask& mask, bool fused = false, const ChunkLayerKV* chunk = nullptr);
  torch::nn::Linear q_proj{nullptr}, k_proj{nullptr}, v_proj{nullptr}, o_proj{nullptr};
  LoraAdapter lora_q, lora_k, lora_v, lora_o;  // defined where [lora] targets name them
  int64_t n_heads, n_kv_heads, head_dim;
};
TORCH_MODULE(LlamaAttention);

struct LlamaMLPImpl : torch::nn::Module {
  explicit LlamaMLPImpl(const ModelConfig& c);
  // fused: the products through mixed_linear and fused_swiglu (its product kept for the down projection's
  // backward), or with recompute fused_swiglu_down (only gate_up kept; the product recomputed in the backward pass).
  torch::Tensor forward(const torch::Tensor& x, bool fused = false, bool recompute = false);
  torch::nn::Linear gate_proj{nullptr}, up_proj{nullptr}, down_proj{nullptr};
  LoraAdapter lora_gate, lora_up, lora_down;
};
TORCH_MODULE(LlamaMLP);

struct LlamaDecoderLayerImpl : torch::nn::Module {
  explicit LlamaDecoderLayerImpl(const ModelConfig& c);
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin,
                        const AttnMask& mask, bool fused = false, bool recompute_swiglu = false,
                        const ChunkLayerKV* chunk = nullptr);
  RMSNorm input_layernorm{nullptr}, post_attention_layernorm{nullptr};
  LlamaAttention self_attn{nullptr};
  LlamaMLP mlp{nullptr};
};
TORCH_MODULE(LlamaDecoderLayer);

struct LlamaBodyImpl : torch::nn::Module {
  explicit LlamaBodyImpl(const ModelConfig& c);
  torch::nn::Embedding embed_tokens{nullptr};
  torch::nn::ModuleList layers;
  RMSNorm norm{nullptr};
};
TORCH_MODULE(LlamaBody);

class Llama : public CausalLM {
 public:
  explicit Llama(const ModelConfig& c);
  torch::Tensor logits(const torch::Tensor& tokens, const torch::Tensor& positions,
                       const torch::Tensor& segments) override;
  torch::Tensor loss_sum(const Batch& b) override;  // linear_cross_entropy when loss_chunk_rows > 0
  bool supports_chunkwise() const override { return true; }
  bool supports_memory_options() const override { return true; }
  torch::Tensor chunk_loss_sum(const Batch& chunk, ChunkForward& f, bool with_loss) override;
  // Final hidden states [B, T, d_model] (after the last norm) and the LM head's weight.
  torch::Tensor hidden(const torch::Tensor& tokens, const torch::Tensor& positions, const torch::Tensor& segments);
  const torch::Tensor& head_weight() const;
  const ModelConfig& config() const override { return cfg_; }
  // normal(0, init_std); output projections / sqrt(2 n_layers); norms 1; LoRA adapters as models/lora.h says
  void reset_parameters();

 private:
  // The layers and the final norm over embeddings X; F (may be null) gives each layer's earlier keys/values
  // and receives its new ones.
  torch::Tensor layers_forward(torch::Tensor x, const torch::Tensor& positions, const AttnMask& mask, ChunkForward* f);
  torch::Tensor hidden_fused(torch::Tensor x, const torch::Tensor& cos, const torch::Tensor& sin, const AttnMask& mask,
                             ChunkForward* f);
  torch::Tensor head(const torch::Tensor& h);  // logits
  torch::Tensor loss_from_hidden(const torch::Tensor& h, const torch::Tensor& targets);

  ModelConfig cfg_;
  LlamaBody model_{nullptr};
  torch::nn::Linear lm_head_{nullptr};
};

}  // namespace cw
