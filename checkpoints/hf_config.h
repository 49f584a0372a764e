// config.json of a Hugging Face Llama bundle: parse (untrusted input, every field checked) and write.
// Must not: depend on LibTorch (the fuzz target and serve/ link it).
#pragma once
#include <filesystem>
#include <string>

#include "data/tokenizer.h"
#include "models/model_config.h"

namespace cw {

bool is_hf_bundle(const std::filesystem::path& dir);  // has config.json
ModelConfig read_hf_config(const std::filesystem::path& dir);  // UserError for other architectures or bad fields
ModelConfig parse_hf_config(const std::string& text, const std::string& what);
std::string hf_config_json(const ModelConfig& c, const TokenizerIdentity& tok, const std::string& dtype);

}  // namespace cw
