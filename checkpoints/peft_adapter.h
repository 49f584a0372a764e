// LoRA adapters in PEFT's format, for Hugging Face users who keep the base model and load the adapters with
// peft.PeftModel.from_pretrained(base, DIR): adapter_model.safetensors (the adapters under
// base_model.model.<our name>) and adapter_config.json (peft_type LORA, r, lora_alpha, target_modules, ...).
// Written as OUT.tmp and renamed when complete.
// Must not: merge or change the adapters' values (beyond the requested dtype), or write the base weights.
#pragma once
#include <torch/torch.h>

#include <filesystem>
#include <map>
#include <string>

#include "models/model_config.h"

namespace cw {

// WEIGHTS: a checkpoint's tensors (base and adapters); C: its model config (lora_rank > 0). BASE_MODEL goes into
// base_model_name_or_path (may be empty). DTYPE: bf16 | fp32.
void export_peft_adapter(const std::map<std::string, torch::Tensor>& weights, const ModelConfig& c,
                         const std::string& base_model, const std::filesystem::path& out, const std::string& dtype);

}  // namespace cw
