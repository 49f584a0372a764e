// A bundle loaded for inference without LibTorch: the model config and every weight as fp32 (bf16 and f16
// files are widened on load), read with the shared safetensors parser (single file or shards + index).
// Must not: link LibTorch.
#pragma once
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "models/model_config.h"

namespace cw::serve {

struct Weight {
  std::vector<int64_t> shape;
  std::vector<float> data;
};

struct Bundle {
  ModelConfig config;
  std::map<std::string, Weight> weights;
  const Weight& at(const std::string& name) const;  // UserError naming a missing tensor
};

Bundle load_bundle(const std::filesystem::path& dir);

// Every tensor a Llama bundle of config C holds, with its shape (Hugging Face names; lm_head unless tied).
std::vector<std::pair<std::string, std::vector<int64_t>>> llama_tensor_shapes(const ModelConfig& c);

}  // namespace cw::serve
