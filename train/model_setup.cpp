// Implementation of train/model_setup.h.
#include "train/model_setup.h"

#include <algorithm>
#include <sstream>

#include "common/error.h"
#include "common/json.h"

namespace cw {

ModelConfig model_config_from_recipe(const Recipe& r, int64_t tokenizer_vocab) {
  ModelConfig c;
  c.family = r.s("model.family");
  c.vocab_size = r.i("model.vocab_size") > 0 ? r.i("model.vocab_size") : tokenizer_vocab;
  check(c.vocab_size >= tokenizer_vocab, "[model] vocab_size ", c.vocab_size, " is smaller than the tokenizer's ",
        tokenizer_vocab);
  c.d_model = r.i("model.d_model");
  c.n_layers = r.i("model.n_layers");
  c.n_heads = r.i("model.n_heads");
  c.n_kv_heads = r.i("model.n_kv_heads") > 0 ? r.i("model.n_kv_heads") : c.n_heads;
  c.d_ff = r.i("model.d_ff") > 0 ? r.i("model.d_ff") : ((8 * c.d_model / 3 + 63) / 64) * 64;
  c.max_seq_len = r.i("model.max_seq_len") > 0 ? r.i("model.max_seq_len") : r.i("data.seq_len");
  check(c.max_seq_len >= r.i("data.seq_len"), "[model] max_seq_len ", c.max_seq_len, " is below data.seq_len ",
        r.i("data.seq_len"));
  c.rope_theta = r.f("model.rope_theta");
  c.norm_eps = r.f("model.norm_eps");
  c.tie_embeddings = r.b("model.tie_embeddings");
  c.init_std = r.f("model.init_std");
  c.rat_chunk = r.i("model.rat_chunk"), c.rat_groups = r.i("model.rat_groups");
  c.rat_attention_every = r.i("model.rat_attention_every"), c.rat_window = r.i("model.rat_window");
  c.lact_chunk = r.i("model.lact_chunk"), c.lact_window = r.i("model.lact_window");
  c.lact_heads = r.i("model.lact_heads");
  c.lact_hidden_mult = r.i("model.lact_hidden_mult"), c.lact_low_rank = r.i("model.lact_low_rank");
  c.lact_momentum = r.b("model.lact_momentum"), c.lact_muon = r.b("model.lact_muon");
  set_lora_from_recipe(c, r);
  c.validate();
  return c;
}

void set_lora_from_recipe(ModelConfig& c, const Recipe& r) {
  c.lora_rank = r.i("lora.rank");
  c.lora_alpha = r.f("lora.alpha");
  c.lora_dropout = r.f("lora.dropout");
  c.lora_targets.clear();
  std::string item;
  std::istringstream in(r.s("lora.targets"));
  while (std::getline(in, item, ',')) {
    const auto first = item.find_first_not_of(" \t"), last = item.find_last_not_of(" \t");
    if (first != std::string::npos) c.lora_targets.push_back(item.substr(first, last - first + 1));
  }
}

torch::Device resolve_device(const std::string& name) {
  check(name == "auto" || name == "cpu" || name == "cuda", "device '", name, "': use auto, cpu or cuda");
  if (name == "cpu") return torch::kCPU;
  bool cuda = torch::cuda::is_available();
  if (name == "cuda") {
    check(cuda, "device cuda ([run] device or --device) was asked for, but this build sees no CUDA device (a "
          "CPU-only build, or no GPU visible); use cpu or auto");
    return torch::kCUDA;
  }
  return cuda ? torch::Device(torch::kCUDA) : torch::Device(torch::kCPU);
}

}  // namespace cw

namespace cw {

ModelConfig model_config_from_bundle(const Recipe& r, const ModelConfig& b, int64_t tokenizer_vocab,
                                     const std::string& what) {
  check(b.vocab_size >= tokenizer_vocab, "[init] from = ", what, ": the bundle's vocabulary (", b.vocab_size,
        ") is smaller than the tokenizer's (", tokenizer_vocab, "); use the tokenizer the bundle was trained with");
  std::string diff;
  auto agree = [&](const char* key, const std::string& bundle_value) {
    if (r.origin(key) != "default" && r.i(key) != 0 && r.s(key) != bundle_value)  // 0 = "take it from elsewhere"
      diff += std::string("\n  ") + key + " = " + r.s(key) + " in the recipe, " + bundle_value + " in the bundle";
  };
  agree("model.d_model", std::to_string(b.d_model));
  agree("model.n_layers", std::to_string(b.n_layers));
  agree("model.n_heads", std::to_string(b.n_heads));
  agree("model.n_kv_heads", std::to_string(b.n_kv_heads));
  agree("model.d_ff", std::to_string(b.d_ff));
  agree("model.vocab_size", std::to_string(b.vocab_size));
  if (r.origin("model.family") != "default" && r.s("model.family") != b.family)
    diff += "\n  model.family = " + r.s("model.family") + " in the recipe, " + b.family + " in the bundle";
  check(diff.empty(), "[init] from = ", what, ": the recipe's [model] disagrees with the bundle's config.json:", diff,
        "\nRemove those keys (the bundle decides the shape) or pick another bundle.");
  ModelConfig c = b;
  c.max_seq_len = std::max(b.max_seq_len, r.i("data.seq_len"));
  c.init_std = r.f("model.init_std");
  set_lora_from_recipe(c, r);
  c.validate();
  return c;
}

ModelConfig model_config_of_checkpoint(const std::string& state_json, const Recipe& saved, int64_t tokenizer_vocab) {
  json st = parse_json_checked(state_json, "state.json");
  if (st.contains("model_config") && st["model_config"].contains("d_model"))
    return ModelConfig::from_json(st["model_config"].dump());
  return model_config_from_recipe(saved, tokenizer_vocab);
}

}  // namespace cw
