// Implementation of models/model_config.h.
#include "models/model_config.h"

#include <algorithm>

#include "common/error.h"
#include "common/json.h"

namespace cw {

void ModelConfig::validate() const {
  check(vocab_size > 0, "[model] vocab_size must be positive");
  check(d_model > 0 && n_layers > 0 && n_heads > 0 && n_kv_heads > 0 && d_ff > 0 && max_seq_len > 0,
        "[model] sizes must be positive");
  check(d_model % n_heads == 0, "[model] d_model (", d_model, ") must be a multiple of n_heads (", n_heads, ")");
  check(head_dim() % 2 == 0, "[model] head size d_model/n_heads = ", head_dim(), " must be even for RoPE");
  check(n_heads % n_kv_heads == 0, "[model] n_heads (", n_heads, ") must be a multiple of n_kv_heads (",
        n_kv_heads, ")");
  check(family == "llama" || family == "rat" || family == "lact", "[model] family '", family,
        "': use llama, rat or lact");
  check(family == "llama" || lora_rank <= 0,
        "[lora] adapters are built for the llama family only; set [lora] rank = 0");
  if (family == "rat") {
    check(rat_chunk >= 1, "[model] rat_chunk must be at least 1 token");
    check(rat_groups >= 1 && rat_groups <= n_heads, "[model] rat_groups must be between 1 and n_heads (", n_heads, ")");
    check(rat_attention_every >= 0 && rat_window >= 1, "[model] rat_attention_every must be at least 0 and "
          "rat_window at least 1");
  }
  if (family == "lact") {
    check(lact_chunk >= 1 && lact_window >= lact_chunk, "[model] lact_window (", lact_window, ") must be at least "
          "lact_chunk (", lact_chunk, "): a token sees the rest of its chunk through the window only");
    check(lact_heads >= 1 && d_model % lact_heads == 0, "[model] d_model (", d_model, ") must be a multiple of "
          "lact_heads (", lact_heads, ")");
    check(lact_hidden_mult >= 1 && lact_low_rank >= 0, "[model] lact_hidden_mult must be at least 1 and "
          "lact_low_rank at least 0");
    check(n_kv_heads == n_heads, "[model] family 'lact' shares q, k, v between its branches: set n_kv_heads = ",
          n_heads, " (or 0)");
  }
  if (lora_rank <= 0) return;
  static const std::vector<std::string> known = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                                 "down_proj"};
  check(!lora_targets.empty(), "[lora] targets is empty: name the projections to adapt, e.g. q_proj,v_proj");
  for (auto& t : lora_targets)
    check(std::find(known.begin(), known.end(), t) != known.end(), "[lora] targets: '", t, "' is not a projection ",
          "of the model; use q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj or down_proj");
  check(lora_alpha > 0 && lora_dropout >= 0 && lora_dropout < 1, "[lora] alpha must be positive and dropout in [0, 1)");
}

bool ModelConfig::lora_on(const std::string& projection) const {
  return lora_rank > 0 && std::find(lora_targets.begin(), lora_targets.end(), projection) != lora_targets.end();
}

int64_t ModelConfig::non_embedding_params() const {
  int64_t hd = head_dim();
  int64_t attn = d_model * n_heads * hd * 2 + d_model * n_kv_heads * hd * 2;
  int64_t mlp = 3 * d_model * d_ff;
  int64_t attention_layer = attn + mlp + 2 * d_model, layers = n_layers * attention_layer;
  if (family == "rat") {  // [z, v, g, q, k] projection, gate bias, output projection, SwiGLU, two norms
    const int64_t rat_layer = d_model * (3 * d_model + 2 * rat_groups * hd) + d_model + d_model * d_model + mlp +
                              2 * d_model;
    layers = 0;
    for (int64_t i = 0; i < n_layers; ++i) layers += rat_attention_layer(i) ? attention_layer : rat_layer;
  }
  if (family == "lact") {  // see models/lact.h: two branches over one q/k/v product, then SwiGLU
    const int64_t d = d_model / lact_heads, dh = d * lact_hidden_mult;
    const int64_t fast_w0w2 = lact_low_rank > 0 ? 2 * lact_heads * lact_low_rank * (dh + d) : 2 * lact_heads * dh * d;
    const int64_t lact_layer = 4 * d_model * d_model + 4 * d_model                   // q/k/v, o, q/k scale and shift
                               + (d_model + 1) * 3 * lact_heads                      // rates
                               + (lact_momentum ? (d_model + 1) * lact_heads : 0)   // momentum
                               + (d_model + 1) * lact_heads                          // output gate
                               + fast_w0w2 + lact_heads * d * dh + d                 // fast weights, their norm
                               + mlp + 2 * d_model;
    layers = n_layers * lact_layer;
  }
  return layers + d_model + (tie_embeddings ? 0 : vocab_size * d_model);
}

std::string ModelConfig::to_json() const {
  json j{{"family", family}, {"vocab_size", vocab_size}, {"d_model", d_model}, {"n_layers", n_layers},
         {"n_heads", n_heads}, {"n_kv_heads", n_kv_heads}, {"d_ff", d_ff}, {"max_seq_len", max_seq_len},
         {"rope_theta", rope_theta}, {"norm_eps", norm_eps}, {"init_std", init_std},
         {"tie_embeddings", tie_embeddings}};
  if (family == "rat")
    j["rat_chunk"] = rat_chunk, j["rat_groups"] = rat_groups, j["rat_attention_every"] = rat_attention_every,
    j["rat_window"] = rat_window;
  if (family == "lact")
    j["lact"] = {{"chunk", lact_chunk}, {"window", lact_window}, {"heads", lact_heads},
                 {"hidden_mult", lact_hidden_mult}, {"low_rank", lact_low_rank}, {"momentum", lact_momentum},
                 {"muon", lact_muon}};
  if (lora_rank > 0)
    j["lora"] = {{"rank", lora_rank}, {"alpha", lora_alpha}, {"dropout", lora_dropout}, {"targets", lora_targets}};
  return j.dump();
}

ModelConfig ModelConfig::from_json(const std::string& text) {
  json j = parse_json_checked(text, "model config");
  ModelConfig c;
  try {
    c.family = j.at("family").get<std::string>();
    c.vocab_size = j.at("vocab_size"), c.d_model = j.at("d_model"), c.n_layers = j.at("n_layers");
    c.n_heads = j.at("n_heads"), c.n_kv_heads = j.at("n_kv_heads"), c.d_ff = j.at("d_ff");
    c.max_seq_len = j.at("max_seq_len"), c.rope_theta = j.at("rope_theta"), c.norm_eps = j.at("norm_eps");
    c.init_std = j.at("init_std"), c.tie_embeddings = j.at("tie_embeddings");
    if (j.contains("rat_chunk")) c.rat_chunk = j.at("rat_chunk"), c.rat_groups = j.at("rat_groups");
    if (j.contains("rat_attention_every")) c.rat_attention_every = j.at("rat_attention_every"), c.rat_window = j.at("rat_window");
    if (j.contains("lact")) {
      const json& l = j.at("lact");
      c.lact_chunk = l.at("chunk"), c.lact_window = l.at("window"), c.lact_heads = l.at("heads");
      c.lact_hidden_mult = l.at("hidden_mult"), c.lact_low_rank = l.at("low_rank");
      c.lact_momentum = l.at("momentum"), c.lact_muon = l.at("muon");
    }
    if (j.contains("lora")) {
      const json& l = j.at("lora");
      c.lora_rank = l.at("rank"), c.lora_alpha = l.at("alpha"), c.lora_dropout = l.at("dropout");
      c.lora_targets = l.at("targets").get<std::vector<std::string>>();
    }
  } catch (const json::exception& e) {
    fail("model config: ", e.what());
  }
  c.validate();
  return c;
}

double ModelConfig::train_flops_per_token(int64_t T) const {
  double head = tie_embeddings ? double(vocab_size * d_model) : 0.0;  // tied head still costs FLOPs
  // Attention's term: a RAT token attends to one state per earlier chunk, T / rat_chunk of them.
  // LaCT's attention sees at most its window, and its fast weights also take the chunk's update: 12 d d_h FLOPs
  // per token and fast head forward (twice the application's 6, which the parameters count), 3x with the backward.
  double keys = double(T), update = 0;
  if (family == "rat") keys = double(T) / double(rat_chunk);
  if (family == "lact") {
    keys = double(std::min(T, lact_window));
    const double d = double(d_model / lact_heads);
    update = 3.0 * 12.0 * d * d * double(lact_hidden_mult) * double(lact_heads) * double(n_layers);
  }
  return 6.0 * (double(non_embedding_params()) + head) + 6.0 * double(n_layers) * double(d_model) * keys + update;
}

}  // namespace cw
