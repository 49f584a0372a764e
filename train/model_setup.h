// Recipe -> model configuration and device: the one place where [model] keys become a ModelConfig.
// Must not: build optimizers or read data.
#pragma once
#include <torch/torch.h>

#include "models/model_config.h"
#include "train/recipe.h"

namespace cw {

ModelConfig model_config_from_recipe(const Recipe& r, int64_t tokenizer_vocab);
void set_lora_from_recipe(ModelConfig& c, const Recipe& r);  // the [lora] section
torch::Device resolve_device(const std::string& name);  // auto | cpu | cuda
// The shape of a bundle's model ([init] from = a Hugging Face directory). [model] keys the recipe sets
// explicitly must agree with it; the error lists those that do not.
ModelConfig model_config_from_bundle(const Recipe& r, const ModelConfig& bundle, int64_t tokenizer_vocab,
                                     const std::string& what);
// The model a checkpoint holds: the config saved in its state.json (which also covers runs started from a
// bundle), else the one its recipe describes.
ModelConfig model_config_of_checkpoint(const std::string& state_json, const Recipe& saved_recipe, int64_t tokenizer_vocab);

}  // namespace cw
