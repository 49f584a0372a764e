// The Hugging Face-compatible bundle: config.json (LlamaConfig fields), model.safetensors (or shards
// model-0000i-of-0000n.safetensors + model.safetensors.index.json) and tokenizer.model. Export writes one
// from a checkpoint; import reads any Llama-architecture directory of that layout.
// Must not: leave a half-written bundle under the final name (it is written as OUT.tmp and renamed).
#pragma once
#include <torch/torch.h>

#include <filesystem>
#include <map>
#include <string>

#include "checkpoints/hf_config.h"

namespace cw {

struct ExportOptions {
  std::string dtype = "bf16";           // bf16 | fp32
  int64_t shard_bytes = 4ll << 30;      // larger bundles are split into shards of about this size
};

std::map<std::string, torch::Tensor> read_hf_weights(const std::filesystem::path& dir);  // fp32, single or sharded
void export_bundle(const std::map<std::string, torch::Tensor>& weights, const ModelConfig& c,
                   const std::filesystem::path& tokenizer_model, const std::filesystem::path& out,
                   const ExportOptions& opt);

}  // namespace cw
