// LoRA (Hu et al. 2021): a frozen projection W plus a trained low-rank update, y = W x + (alpha / r) B A x,
// with A [r, in] initialised like a Linear layer's weight and B [out, r] at zero (so a fresh adapter changes
// nothing). The adapters live inside the projection they adapt, under PEFT's names
// (model.layers.0.self_attn.q_proj.lora_A.weight), so checkpoints keep them beside the base weights; export
// merges them (W + (alpha / r) B A) into a plain Hugging Face bundle.
// Must not: freeze or select parameters for the optimizer (the trainer does, through is_lora_parameter).
#pragma once
#include <torch/torch.h>

#include <map>
#include <string>

#include "models/model_config.h"

namespace cw {

struct LoraAdapter {
  torch::nn::Linear A{nullptr}, B{nullptr};
  double scale = 0, dropout = 0;
  bool defined() const { return !A.is_empty(); }
  // (alpha / r) B A dropout(x); dropout only in training mode.
  torch::Tensor delta(const torch::Tensor& x, bool training) const;
};

// Registers lora_A and lora_B inside BASE (in -> rank -> out) when C adapts PROJECTION; undefined otherwise.
LoraAdapter attach_lora(torch::nn::Linear& base, const std::string& projection, const ModelConfig& c);
// A: the default Linear initialisation (Kaiming-uniform, a = sqrt(5)); B: zeros.
void reset_lora(LoraAdapter& a);

bool is_lora_parameter(const std::string& name);  // ...lora_A.weight / ...lora_B.weight
void freeze_all_but_adapters(torch::nn::Module& model);  // requires_grad off for every non-adapter parameter
// Stores MODEL's frozen projection weights (*_proj.weight, an untied lm_head.weight) in DTYPE. Embeddings and
// norms keep theirs, so the residual stream's precision does not change; products under autocast read the
// projections in bf16 either way.
void keep_frozen_projections_in(torch::nn::Module& model, torch::ScalarType dtype);
// WEIGHTS with every adapter merged into its projection's weight (in fp64, returned in fp32 or the weight's
// dtype if wider)
// and the adapter tensors dropped; unchanged when C has no adapters.
std::map<std::string, torch::Tensor> merge_lora(const std::map<std::string, torch::Tensor>& weights,
                                                const ModelConfig& c);

}  // namespace cw
