// Model hyper-parameters shared by every family, and the derived counts (parameters, FLOPs per token).
// Must not: depend on recipes or training (train/ fills it from a recipe; checkpoints/ from config.json).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace cw {

struct ModelConfig {
  std::string family = "llama";
  int64_t vocab_size = 0, d_model = 256, n_layers = 4, n_heads = 4, n_kv_heads = 4, d_ff = 704;
  int64_t max_seq_len = 256;
  double rope_theta = 10000, norm_eps = 1e-5, init_std = 0.02;
  bool tie_embeddings = false;
  // family "rat" (models/rat.h): tokens per chunk of the recurrence, and key/query groups tiled over the heads.
  int64_t rat_chunk = 16, rat_groups = 2;
  // The hybrid: every rat_attention_every-th layer is a llama layer with sliding-window attention over
  // rat_window tokens (0 = RAT layers only).
  int64_t rat_attention_every = 0, rat_window = 256;
  bool rat_attention_layer(int64_t i) const { return rat_attention_every > 0 && i % rat_attention_every == rat_attention_every - 1; }
  // family "lact" (models/lact.h): tokens per fast-weight chunk (C) and per attention window (W >= C), fast
  // heads, the fast network's hidden width as a multiple of its head size, W0/W2 as low rank + I/2 (0 = full),
  // momentum and Muon in the fast-weight update.
  int64_t lact_chunk = 2048, lact_window = 2048, lact_heads = 4, lact_hidden_mult = 1, lact_low_rank = 0;
  bool lact_momentum = false, lact_muon = false;
  // LoRA adapters (models/lora.h) on the named projections; rank 0 = none.
  int64_t lora_rank = 0;
  double lora_alpha = 16, lora_dropout = 0;
  std::vector<std::string> lora_targets;  // of q_proj k_proj v_proj o_proj gate_proj up_proj down_proj
  double lora_scale() const { return lora_rank > 0 ? lora_alpha / double(lora_rank) : 0.0; }
  bool lora_on(const std::string& projection) const;

  int64_t head_dim() const { return d_model / n_heads; }
  void validate() const;  // UserError naming the [model] key to change
  int64_t embedding_params() const { return vocab_size * d_model; }
  int64_t non_embedding_params() const;  // everything but the input embedding (LM head included)
  // Training FLOPs per token at context T: 6 * non-embedding params + 6 * layers * d_model * T.
  double train_flops_per_token(int64_t T) const;
  std::string to_json() const;                             // saved in checkpoints' state.json (LoRA fields when on)
  static ModelConfig from_json(const std::string& text);  // UserError on missing fields
};

}  // namespace cw
