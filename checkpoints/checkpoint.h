// Training checkpoints: <run>/checkpoints/step-N/ with model.safetensors (export names), optimizer.safetensors,
// rng.safetensors, masks.safetensors (sparsity masks; empty when dense), state.json (the trainer's step, data position and counters), recipe.ini (fully resolved)
// and manifest.json (format version, every file's size and CRC-32). Written as step-N.tmp/, fsynced,
// renamed; the manifest is written last, so a folder without one is incomplete and never resumed from.
// Must not: hand out a checkpoint whose files fail their checks, or know what the trainer's state means.
#pragma once
#include <torch/torch.h>

#include <filesystem>
#include <map>
#include <optional>
#include <string>

#include "checkpoints/tensor_io.h"
#include "models/model_config.h"

namespace cw {

constexpr int kCheckpointVersion = 1;

struct CheckpointContents {
  NamedTensors model, optimizer, rng, masks;
  std::string state_json;  // the trainer's own state
  std::string recipe_ini;
};

struct LoadedCheckpoint {
  std::filesystem::path dir;
  int64_t step = 0;
  std::map<std::string, torch::Tensor> model, optimizer, rng, masks;
  std::string state_json, recipe_ini;
};

std::filesystem::path checkpoints_dir(const std::filesystem::path& run_dir);
// Writes step-STEP and deletes all but the newest KEEP complete checkpoints (and stale .tmp folders).
std::filesystem::path save_checkpoint(const std::filesystem::path& run_dir, int64_t step,
                                      const CheckpointContents& c, int64_t keep);
// Newest step-N folder that has a manifest; incomplete ones are skipped.
std::optional<std::filesystem::path> latest_checkpoint(const std::filesystem::path& run_dir);
// Verifies the manifest and every file's size and CRC-32, then reads everything.
LoadedCheckpoint load_checkpoint(const std::filesystem::path& dir);
// A run folder or a checkpoint folder -> the checkpoint folder to read.
std::filesystem::path resolve_checkpoint(const std::filesystem::path& run_or_checkpoint);

// Weights to start a new run from ([init] from): a run folder (its newest checkpoint), a checkpoint folder,
// or a bundle folder holding model.safetensors (Hugging Face layout). MASKS and OPTIMIZER (optional) are
// filled when the source is a checkpoint.
struct InitSource {
  std::string description;
  std::filesystem::path path;                     // the checkpoint folder or bundle read (a run resolved)
  std::map<std::string, torch::Tensor> model, masks, optimizer;
  int64_t optimizer_steps = -1;                   // -1: the source holds no optimizer state
  std::optional<ModelConfig> bundle_config;       // set when the source is a bundle with config.json
  std::optional<ModelConfig> checkpoint_config;   // set when the source is a checkpoint that saved its config
  std::filesystem::path bundle_tokenizer;         // its tokenizer.model, when present
};
InitSource load_init_source(const std::filesystem::path& path);

// LoRA runs started from other weights save only their adapters; state.json's "lora_base" names the base
// ("from": the checkpoint folder or bundle [init] from resolved to) and its fingerprint. These give every
// weight of such a checkpoint (the base read again, checked against the fingerprint) or of any other.
uint32_t weights_fingerprint(const std::map<std::string, torch::Tensor>& weights);  // CRC-32 of names and fp32 values
std::map<std::string, torch::Tensor> checkpoint_weights(const LoadedCheckpoint& ck);

}  // namespace cw
