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
  // Optional fields, type-checked (a number too large for an integer must not reach get<int64_t>()).
  auto opt_int = [&](const char* key, int64_t fallback) -> int64_t {
    if (!j.contains(key) || j[key].is_null()) return fallback;
    check(j[key].is_number_integer() && j[key].get<int64_t>() > 0, what, ": '", key, "' must be a positive integer");
    return j[key].get<int64_t>();
  };
  auto opt_float = [&](const char* key, double fallback) -> double {
    if (!j.contains(key) || j[key].is_null()) return fallback;
    check(j[key].is_number(), what, ": '", key, "' must be a number");
    return j[key].get<double>();
  };
  auto opt_bool = [&](const char* key, bool fallback) -> bool {
    if (!j.contains(key) || j[key].is_null()) return fallback;
    check(j[key].is_boolean(), what, ": '", key, "' must be true or false");
    return j[key].get<bool>();
  };
  ModelConfig c;
  c.family = "llama";
  c.vocab_size = need("vocab_size").get<int64_t>();
  c.d_model = need("hidden_size").get<int64_t>();
  c.n_layers = need("num_hidden_layers").get<int64_t>();
  c.n_heads = need("num_attention_heads").get<int64_t>();
  c.n_kv_heads = j.contains("num_key_value_heads") ? need("num_key_value_heads").get<int64_t>() : c.n_heads;
  c.d_ff = need("intermediate_size").get<int64_t>();
  c.max_seq_len = opt_int("max_position_embeddings", 2048);
  c.rope_theta = opt_float("rope_theta", 10000.0);
  c.norm_eps = opt_float("rms_norm_eps", 1e-6);
  c.tie_embeddings = opt_bool("tie_word_embeddings", false);
  check(opt_int("head_dim", c.d_model / c.n_heads) == c.d_model / c.n_heads, what,
        ": head_dim other than hidden_size / num_attention_heads is not supported");
  check(!j.contains("rope_scaling") || j["rope_scaling"].is_null(), what, ": rope_scaling is not supported");
  check(!opt_bool("attention_bias", false) && !opt_bool("mlp_bias", false), what, ": biases are not supported");
  check(!j.contains("hidden_act") || (j["hidden_act"].is_string() && j["hidden_act"].get<std::string>() == "silu"), what,
        ": hidden_act must be silu");
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
