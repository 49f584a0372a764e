// Implementation of serve/bundle.h.
#include "serve/bundle.h"

#include <cstring>

#include "checkpoints/hf_config.h"
#include "checkpoints/safetensors.h"
#include "common/error.h"
#include "common/files.h"
#include "kernels/common/common.h"

namespace cw::serve {

const Weight& Bundle::at(const std::string& name) const {
  auto it = weights.find(name);
  check(it != weights.end(), "bundle: tensor '", name, "' is missing");
  return it->second;
}

static float f16_bits_to_float(uint16_t h) {
  uint32_t sign = uint32_t(h >> 15) << 31, exp = (h >> 10) & 0x1f, mant = h & 0x3ff, bits;
  if (exp == 0) {
    if (mant == 0) bits = sign;
    else {  // subnormal
      exp = 127 - 15 + 1;
      while (!(mant & 0x400)) mant <<= 1, --exp;
      bits = sign | (exp << 23) | ((mant & 0x3ff) << 13);
    }
  } else if (exp == 31) bits = sign | 0x7f800000u | (mant << 13);
  else bits = sign | ((exp + 127 - 15) << 23) | (mant << 13);
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

static void add_file(Bundle& b, const fs::path& file) {
  st::File f = st::read(file);
  for (auto& [name, t] : f.tensors) {
    Weight w;
    w.shape = t.shape;
    const int64_t n = t.numel();
    w.data.resize(size_t(n));
    const char* p = f.data(t);
    switch (t.dtype) {
      case st::DType::F32: std::memcpy(w.data.data(), p, size_t(n) * 4); break;
      case st::DType::BF16:
      case st::DType::F16:
        for (int64_t i = 0; i < n; ++i) {
          uint16_t h;
          std::memcpy(&h, p + 2 * i, 2);
          w.data[size_t(i)] = t.dtype == st::DType::BF16 ? kern::bf16_to_float(h) : f16_bits_to_float(h);
        }
        break;
      default: fail(file.string(), ": tensor '", name, "' has dtype ", st::dtype_name(t.dtype), "; weights must be F32, BF16 or F16");
    }
    check(b.weights.emplace(name, std::move(w)).second, file.string(), ": tensor '", name, "' appears twice");
  }
}

Bundle load_bundle(const fs::path& dir) {
  Bundle b;
  b.config = read_hf_config(dir);
  for (auto& f : bundle_weight_files(dir)) add_file(b, f);
  // Shapes the engine relies on.
  for (auto& [name, shape] : llama_tensor_shapes(b.config))
    check(b.at(name).shape == shape, dir.string(), ": tensor '", name, "' has the wrong shape for config.json");
  return b;
}

std::vector<std::pair<std::string, std::vector<int64_t>>> llama_tensor_shapes(const ModelConfig& c) {
  const int64_t hd = c.head_dim();
  std::vector<std::pair<std::string, std::vector<int64_t>>> out = {{"model.embed_tokens.weight", {c.vocab_size, c.d_model}},
                                                                   {"model.norm.weight", {c.d_model}}};
  if (!c.tie_embeddings) out.push_back({"lm_head.weight", {c.vocab_size, c.d_model}});
  for (int64_t l = 0; l < c.n_layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    out.push_back({p + "self_attn.q_proj.weight", {c.n_heads * hd, c.d_model}});
    out.push_back({p + "self_attn.k_proj.weight", {c.n_kv_heads * hd, c.d_model}});
    out.push_back({p + "self_attn.v_proj.weight", {c.n_kv_heads * hd, c.d_model}});
    out.push_back({p + "self_attn.o_proj.weight", {c.d_model, c.n_heads * hd}});
    out.push_back({p + "mlp.gate_proj.weight", {c.d_ff, c.d_model}});
    out.push_back({p + "mlp.up_proj.weight", {c.d_ff, c.d_model}});
    out.push_back({p + "mlp.down_proj.weight", {c.d_model, c.d_ff}});
    out.push_back({p + "input_layernorm.weight", {c.d_model}});
    out.push_back({p + "post_attention_layernorm.weight", {c.d_model}});
  }
  return out;
}

}  // namespace cw::serve
