// The frame that the families other than llama share: the token embedding, a list of layers, the final RMSNorm and
// the LM head (tied to the embedding or not), registered in that order under the names embed_tokens, layers, norm
// and lm_head, so their checkpoints keep one layout.
// Must not: know what the layers are (each family fills layers_ and runs them) or initialise them.
#pragma once

#include <torch/torch.h>

#include "models/causal_lm.h"
#include "models/llama.h"

namespace cw {

class LayerStackLM : public CausalLM {
 public:
  explicit LayerStackLM(const ModelConfig& c);
  const ModelConfig& config() const override { return cfg_; }

 protected:
  torch::Tensor head(const torch::Tensor& h);  // logits of hidden states h (after norm_)
  ModelConfig cfg_;
  torch::nn::Embedding embed_{nullptr};
  torch::nn::ModuleList layers_;  // empty: the family pushes its layers
  RMSNorm norm_{nullptr};
  torch::nn::Linear lm_head_{nullptr};  // null when tied
};

}  // namespace cw
