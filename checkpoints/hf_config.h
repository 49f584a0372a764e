// config.json of a Hugging Face Llama bundle: parse (untrusted input, every field checked) and write.
// Must not: depend on LibTorch (the fuzz target and serve/ link it).
#pragma once
#include <filesystem>
#include <string>
#include <vector>

#include "data/tokenizer.h"
#include "models/model_config.h"

namespace cw {

bool is_hf_bundle(const std::filesystem::path& dir);  // has config.json
ModelConfig read_hf_config(const std::filesystem::path& dir);  // UserError for other architectures or bad fields
ModelConfig parse_hf_config(const std::string& text, const std::string& what);
// The weight files of a bundle: model.safetensors, or the shards named by model.safetensors.index.json
// (plain file names only). INDEXED receives the tensor names the index promises (empty for one file).
std::vector<std::filesystem::path> bundle_weight_files(const std::filesystem::path& dir,
                                                       std::vector<std::string>* indexed = nullptr);
std::string hf_config_json(const ModelConfig& c, const TokenizerIdentity& tok, const std::string& dtype);

}  // namespace cw
