// Implementation of checkpoints/hf_config.h. Every field is type-checked before use: the file is untrusted.
#include "checkpoints/hf_config.h"

#include <set>

#include "common/error.h"
#include "common/files.h"
#include "common/json.h"

namespace cw {

bool is_hf_bundle(const std::filesystem::path& dir) { return fs::exists(dir / "config.json"); }

ModelConfig read_hf_config(const std::filesystem::path& dir) {
  return parse_hf_config(read_file(dir / "config.json"), (dir / "config.json").string());
}

ModelConfig parse_hf_config(const std::string& text, const std::string& what) {
  json j = parse_json_checked(text, what);
  check(j.is_object(), what, ": not a JSON object");
  std::string arch;
  if (j.contains("architectures") && j["architectures"].is_array() && !j["architectures"].empty() &&
      j["architectures"][0].is_string())
    arch = j["architectures"][0].get<std::string>();
  else if (j.contains("model_type") && j["model_type"].is_string())
    arch = j["model_type"].get<std::string>();
  check(arch == "LlamaForCausalLM" || arch == "llama", what, ": architecture '", arch,
        "' is not supported (only LlamaForCausalLM)");
  auto need = [&](const char* key) -> const json& {
    check(j.contains(key) && j[key].is_number_integer() && j[key].get<int64_t>() > 0, what, ": '", key,
          "' is missing or not a positive integer");
    return j[key];
  };
  ModelConfig c;
  c.family = "llama";
  c.vocab_size = need("vocab_size").get<int64_t>();
  c.d_model = need("hidden_size").get<int64_t>();
  c.n_layers = need("num_hidden_layers").get<int64_t>();
  c.n_heads = need("num_attention_heads").get<int64_t>();
  c.n_kv_heads = j.contains("num_key_value_heads") ? need("num_key_value_heads").get<int64_t>() : c.n_heads;
  c.d_ff = need("intermediate_size").get<int64_t>();
  c.max_seq_len = j.value("max_position_embeddings", int64_t(2048));
  c.rope_theta = j.value("rope_theta", 10000.0);
  c.norm_eps = j.value("rms_norm_eps", 1e-6);
  c.tie_embeddings = j.value("tie_word_embeddings", false);
  check(!j.contains("head_dim") || j["head_dim"].is_null() || j["head_dim"].get<int64_t>() == c.d_model / c.n_heads,
        what, ": head_dim other than hidden_size / num_attention_heads is not supported");
  check(!j.contains("rope_scaling") || j["rope_scaling"].is_null(), what, ": rope_scaling is not supported");
  check(!j.value("attention_bias", false) && !j.value("mlp_bias", false), what, ": biases are not supported");
  check(j.value("hidden_act", std::string("silu")) == "silu", what, ": hidden_act must be silu");
  c.validate();
  return c;
}

std::vector<std::filesystem::path> bundle_weight_files(const std::filesystem::path& dir,
                                                       std::vector<std::string>* indexed) {
  if (fs::exists(dir / "model.safetensors")) return {dir / "model.safetensors"};
  fs::path index = dir / "model.safetensors.index.json";
  check(fs::exists(index), dir.string(), ": neither model.safetensors nor model.safetensors.index.json");
  json j = parse_json_checked(read_file(index), index.string());
  check(j.contains("weight_map") && j["weight_map"].is_object(), index.string(), ": no weight_map");
  std::set<std::string> files;
  for (auto it = j["weight_map"].begin(); it != j["weight_map"].end(); ++it) {
    check(it.value().is_string(), index.string(), ": weight_map values must be file names");
    std::string f = it.value().get<std::string>();
    check(f.find('/') == std::string::npos && f.find("..") == std::string::npos, index.string(), ": shard name '", f,
          "' must be a plain file name");
    files.insert(f);
    if (indexed) indexed->push_back(it.key());
  }
  std::vector<fs::path> out;
  for (auto& f : files) out.push_back(dir / f);
  return out;
}

std::string hf_config_json(const ModelConfig& c, const TokenizerIdentity& tok, const std::string& dtype) {
  json j = {{"architectures", {"LlamaForCausalLM"}},
            {"model_type", "llama"},
            {"hidden_size", c.d_model},
            {"intermediate_size", c.d_ff},
            {"num_hidden_layers", c.n_layers},
            {"num_attention_heads", c.n_heads},
            {"num_key_value_heads", c.n_kv_heads},
            {"head_dim", c.head_dim()},
            {"hidden_act", "silu"},
            {"rms_norm_eps", c.norm_eps},
            {"rope_theta", c.rope_theta},
            {"vocab_size", c.vocab_size},
            {"max_position_embeddings", c.max_seq_len},
            {"tie_word_embeddings", c.tie_embeddings},
            {"attention_bias", false},
            {"mlp_bias", false},
            {"bos_token_id", tok.bos_id},
            {"eos_token_id", tok.eos_id},
            {"torch_dtype", dtype == "bf16" ? "bfloat16" : "float32"}};
  return j.dump(2) + "\n";
}

}  // namespace cw
