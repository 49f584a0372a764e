// Implementation of models/layer_stack_lm.h.
#include "models/layer_stack_lm.h"

namespace cw {

LayerStackLM::LayerStackLM(const ModelConfig& c) : cfg_(c) {
  embed_ = register_module("embed_tokens", torch::nn::Embedding(c.vocab_size, c.d_model));
  layers_ = register_module("layers", torch::nn::ModuleList());
  norm_ = register_module("norm", RMSNorm(c.d_model, c.norm_eps));
  if (!c.tie_embeddings)
    lm_head_ = register_module("lm_head",
                               torch::nn::Linear(torch::nn::LinearOptions(c.d_model, c.vocab_size).bias(false)));
}

torch::Tensor LayerStackLM::head(const torch::Tensor& h) {
  return cfg_.tie_embeddings ? torch::linear(h, embed_->weight) : lm_head_(h);
}

}  // namespace cw
