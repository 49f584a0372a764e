// LaCT, large-chunk test-time training (Zhang et al. 2025, ../shared/specs/architectures.md section 1). Each
// layer has sliding-window attention and a fast-weight SwiGLU network f_W(x) = W1 (silu(W0 x) * (W2 x)) per
// fast head, sharing q, k, v from one product. The fast weights learn while the sequence is read: chunk by
// chunk, the chunk's queries are answered with the weights of the earlier chunks (apply), then the weights take
// one step on the chunk's keys and values (update), in closed form, with optional momentum and Muon, and their
// rows are scaled back to the norms they started with. Three forms, tested against each other: the closed-form
// step against autograd (lact_delta), the whole sequence at once (lact_fast_weight_forward, training) and one
// token at a time (LactState, the decode cache: the last W keys and values, the weights, the current chunk's buffer).
// Must not: see across packed documents (batches with segments are refused) or depend on training code.
#pragma once

#include <torch/torch.h>

#include <vector>

#include "models/causal_lm.h"
#include "models/layer_stack_lm.h"
#include "models/llama.h"

namespace cw {

// One fast-weight network per (row, fast head): w0, w2 [B, Hf, dh, d], w1 [B, Hf, d, dh].
struct FastWeights {
  torch::Tensor w0, w1, w2;
};

// f_W(x) for x [B, Hf, n, d] (tokens as rows): [B, Hf, n, d].
torch::Tensor lact_apply(const FastWeights& w, const torch::Tensor& x);

// The update of one chunk, -grad of the inner loss L = -sum_i lr_i f_W(k_i)^T v_i, in closed form (no
// autograd). k, v [B, Hf, n, d]; lr0, lr1, lr2 [B, Hf, n], the per-token rates of w0, w1, w2.
FastWeights lact_delta(const FastWeights& w, const torch::Tensor& k, const torch::Tensor& v, const torch::Tensor& lr0,
                       const torch::Tensor& lr1, const torch::Tensor& lr2);

// Five Newton-Schulz iterations towards the nearest semi-orthogonal matrix, over the last two dimensions (bf16
// as the spec says; fp64 inputs stay fp64 for the tests). The result has X's dtype.
torch::Tensor newton_schulz5(const torch::Tensor& x);

// The fast-weight branch's inputs over a sequence: q, k, v [B, Hf, T, d]; lr0..2 and momentum [B, Hf, T]
// (momentum undefined = off).
struct LactInputs {
  torch::Tensor q, k, v, lr0, lr1, lr2, momentum;
};

// The learner between chunks: the weights, the momentum (undefined until the first update with it), and the
// row norms N0 every update restores.
struct FastWeightState {
  FastWeights w, m;
  FastWeights norms;  // [.., rows, 1]
  explicit FastWeightState(FastWeights init);
  FastWeightState() = default;
  // One chunk's update: k, v [B, Hf, n, d], rates [B, Hf, n]; momentum [B, Hf, n] or undefined.
  void update(const torch::Tensor& k, const torch::Tensor& v, const torch::Tensor& lr0, const torch::Tensor& lr1,
              const torch::Tensor& lr2, const torch::Tensor& momentum, bool muon);
};

// The branch over a whole sequence in chunks of C tokens: apply, then update, every chunk but the last, which
// is applied only. INIT's weights may have a leading batch of 1 (broadcast). Out [B, Hf, T, d].
torch::Tensor lact_fast_weight_forward(const FastWeights& init, const LactInputs& in, int64_t C, bool muon);

// One layer's decode cache: the attention window's keys/values after RoPE [B, H, <= W, hd], the learner (its
// weights undefined before the first token), and the current chunk's fast inputs waiting for its end.
struct LactState {
  torch::Tensor k_win, v_win;
  FastWeightState learner;
  std::vector<LactInputs> pending;  // one token's each (q unused)
  int64_t t = 0;                    // tokens seen
};

struct LactLayerImpl : torch::nn::Module {
  explicit LactLayerImpl(const ModelConfig& c);
  torch::Tensor forward(const torch::Tensor& x);                 // [B, T, D]
  torch::Tensor step(const torch::Tensor& x, LactState& state);  // [B, 1, D]
  FastWeights initial_weights(torch::ScalarType dtype);          // [1, Hf, ...]: the slow parameters
  void reset_parameters(double init_std, double out_std);

  RMSNorm attn_norm{nullptr}, mlp_norm{nullptr}, ttt_norm{nullptr};
  torch::nn::Linear qkv{nullptr}, o_proj{nullptr}, lr_proj{nullptr}, momentum_proj{nullptr}, gate_proj{nullptr};
  torch::Tensor qk_scale, qk_offset;  // [2, D]: row 0 for q, row 1 for k
  torch::Tensor w0, w1, w2;           // full: [Hf, dh, d], [Hf, d, dh], [Hf, dh, d]
  torch::Tensor w0_left, w0_right, w2_left, w2_right;  // low rank: W = left right + I / 2
  LlamaMLP mlp{nullptr};
  int64_t D, H, hd, Hf, d, dh, C, W, rank;
  double theta;
  bool muon;

 private:
  struct Projected {
    torch::Tensor q, k, v;  // attention [B, H, T, hd] after RoPE (q, k)
    LactInputs fast;
    torch::Tensor gate;  // [B, Hf, T, 1]
  };
  Projected project(const torch::Tensor& h, int64_t t0);  // h: the normed input; t0: its first position
  torch::Tensor finish(const torch::Tensor& x, const torch::Tensor& attn, const torch::Tensor& fast,
                       const torch::Tensor& gate);  // the output projection, the residual and the MLP
};
TORCH_MODULE(LactLayer);

class Lact : public LayerStackLM {
 public:
  explicit Lact(const ModelConfig& c);
  torch::Tensor logits(const torch::Tensor& tokens, const torch::Tensor& positions,
                       const torch::Tensor& segments) override;
  std::unique_ptr<DecodeState> new_decode_state() override;
  torch::Tensor decode_step(const torch::Tensor& tokens, DecodeState& state) override;
  LactLayer layer(size_t i);  // the tests reach the fast weights through it
  void reset_parameters();
};

}  // namespace cw
