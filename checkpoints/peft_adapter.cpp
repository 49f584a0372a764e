// Implementation of checkpoints/peft_adapter.h.
#include "checkpoints/peft_adapter.h"

#include "checkpoints/tensor_io.h"
#include "common/error.h"
#include "common/files.h"
#include "common/json.h"
#include "models/lora.h"

namespace cw {

namespace fs = std::filesystem;

void export_peft_adapter(const std::map<std::string, torch::Tensor>& weights, const ModelConfig& c,
                         const std::string& base_model, const fs::path& out, const std::string& dtype) {
  check(c.lora_rank > 0, "--adapter: the checkpoint holds no LoRA adapters (its [lora] rank is 0); export the "
        "merged bundle instead (without --adapter)");
  check(dtype == "bf16" || dtype == "fp32", "--dtype must be bf16 or fp32");
  const bool ours = fs::exists(out / "adapter_config.json") || (fs::is_directory(out) && list_dir(out).empty());
  check(!fs::exists(out) || ours, out.string(), " exists and is not an adapter folder: choose a new folder (an ",
        "existing adapter folder is replaced, anything else is kept)");
  NamedTensors adapters;
  for (auto& [name, t] : weights)
    if (is_lora_parameter(name))
      adapters.emplace_back("base_model.model." + name,
                            t.to(dtype == "bf16" ? torch::kBFloat16 : torch::kFloat32).contiguous());
  check(!adapters.empty(), "--adapter: the checkpoint's model config has LoRA rank ", c.lora_rank,
        " but its weights hold no adapters");
  json config = {{"peft_type", "LORA"},
                 {"task_type", "CAUSAL_LM"},
                 {"r", c.lora_rank},
                 {"lora_alpha", c.lora_alpha},
                 {"lora_dropout", c.lora_dropout},
                 {"target_modules", c.lora_targets},
                 {"bias", "none"},
                 {"fan_in_fan_out", false},
                 {"use_rslora", false},
                 {"use_dora", false},
                 {"inference_mode", true},
                 {"init_lora_weights", true},
                 {"modules_to_save", nullptr},
                 {"base_model_name_or_path", base_model.empty() ? json(nullptr) : json(base_model)}};
  fs::path tmp = out;
  tmp += ".tmp";
  remove_tree(tmp);
  fs::create_directories(tmp);
  save_tensors(tmp / "adapter_model.safetensors", adapters, {{"format", "pt"}});
  write_file_atomic(tmp / "adapter_config.json", config.dump(2) + "\n");
  fsync_path(tmp);
  remove_tree(out);
  fs::rename(tmp, out);
}

}  // namespace cw
