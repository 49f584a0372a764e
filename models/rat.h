// RAT (Wei et al. 2025, ../shared/specs/architectures.md section 3): recurrence within chunks of L tokens,
// attention across chunks. Per layer: [z, v, g, q, k] from one projection; a gated recurrence over v and k,
// reset at each chunk start; RoPE with the chunk index as position; each token attends to the chunk-final
// states of the earlier chunks and to its own running state; output x + W_o(sigmoid(z) * y), then a SwiGLU
// block. Three forms of the mixing, tested against each other: rat_mix (chunks in parallel, a loop over the L
// positions of a chunk, attention over T x chunks), rat_mix_reference (explicit per-token recurrence and a
// T x T masked softmax) and RatState (one token at a time: the decode cache, one slot per finished chunk).
// Must not: see across packed documents (batches with segments are refused) or depend on training code.
#pragma once

#include <torch/torch.h>

#include "models/causal_lm.h"
#include "models/layer_stack_lm.h"
#include "models/llama.h"

namespace cw {

// The projected inputs of one RAT layer's mixing, heads already tiled from the key/query groups:
// q, k, v, g [B, T, H, dh] (g the forget gate in (0, 1), fp32), z [B, T, H * dh] (the output gate's input).
struct RatInputs {
  torch::Tensor q, k, v, g, z;
};

// y [B, T, H * dh] before the output gate, for chunks of L tokens and RoPE base THETA.
torch::Tensor rat_mix(const RatInputs& in, int64_t L, double theta);
torch::Tensor rat_mix_reference(const RatInputs& in, int64_t L, double theta);

// One layer's decode cache: the chunk-final keys (after RoPE) and values of every finished chunk, and the
// running state of the current chunk; for the hybrid's attention layers, the last rat_window keys (after RoPE)
// and values instead. step() takes one token's inputs ([B, 1, ...]) and returns its y.
struct RatState {
  std::vector<torch::Tensor> final_k, final_v;  // each [B, H, dh]
  torch::Tensor k, v;                           // running states [B, H, dh] (undefined at a chunk start)
  torch::Tensor window_k, window_v;             // attention layers: [B, Hkv, <= rat_window, hd]
  int64_t t = 0;                                // tokens seen
  torch::Tensor step(const RatInputs& in, int64_t L, double theta);
};

struct RatLayerImpl : torch::nn::Module {
  explicit RatLayerImpl(const ModelConfig& c);
  RatInputs project(const torch::Tensor& h);  // h: the normed input [B, T, D]
  torch::Tensor forward(const torch::Tensor& x);                // [B, T, D]
  torch::Tensor step(const torch::Tensor& x, RatState& state);  // [B, 1, D]
  RMSNorm mix_norm{nullptr}, mlp_norm{nullptr};
  torch::nn::Linear in_proj{nullptr}, o_proj{nullptr};
  torch::Tensor gate_bias;  // [D], log U(1, L - 1) at init: gates start between 1/2 and (L-1)/L
  LlamaMLP mlp{nullptr};
  int64_t H, dh, G, L;
  double theta;
};
TORCH_MODULE(RatLayer);

class Rat : public LayerStackLM {
 public:
  explicit Rat(const ModelConfig& c);
  torch::Tensor logits(const torch::Tensor& tokens, const torch::Tensor& positions,
                       const torch::Tensor& segments) override;
  // Logits [B, V] of one more token per row, through the layers' decode caches (STATES: one per layer).
  torch::Tensor step_logits(const torch::Tensor& tokens, std::vector<RatState>& states);
  std::unique_ptr<DecodeState> new_decode_state() override;  // the layers' caches, for generate()
  torch::Tensor decode_step(const torch::Tensor& tokens, DecodeState& state) override;
  void reset_parameters();

 private:
  bool hybrid() const { return cfg_.rat_attention_every > 0; }
  // One token [B, 1, D] through a hybrid attention layer, its window in STATE.
  torch::Tensor attention_step(LlamaDecoderLayerImpl& layer, const torch::Tensor& x, RatState& state);
};

}  // namespace cw
