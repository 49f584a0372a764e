// Implementation of models/lora.h.
#include "models/lora.h"

#include <cmath>

#include "common/error.h"

namespace cw {

torch::Tensor LoraAdapter::delta(const torch::Tensor& x, bool training) const {
  auto in = dropout > 0 && training ? torch::dropout(x, dropout, /*train=*/true) : x;
  return torch::linear(torch::linear(in, A->weight), B->weight) * scale;
}

LoraAdapter attach_lora(torch::nn::Linear& base, const std::string& projection, const ModelConfig& c) {
  LoraAdapter a;
  if (!c.lora_on(projection)) return a;
  const int64_t in = base->weight.size(1), out = base->weight.size(0);
  a.A = base->register_module("lora_A", torch::nn::Linear(torch::nn::LinearOptions(in, c.lora_rank).bias(false)));
  a.B = base->register_module("lora_B", torch::nn::Linear(torch::nn::LinearOptions(c.lora_rank, out).bias(false)));
  a.scale = c.lora_scale(), a.dropout = c.lora_dropout;
  reset_lora(a);
  return a;
}

void reset_lora(LoraAdapter& a) {
  torch::NoGradGuard ng;
  const double bound = 1.0 / std::sqrt(double(a.A->weight.size(1)));  // kaiming_uniform with a = sqrt(5)
  a.A->weight.uniform_(-bound, bound);
  a.B->weight.zero_();
}

static bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

bool is_lora_parameter(const std::string& name) {
  return ends_with(name, ".lora_A.weight") || ends_with(name, ".lora_B.weight");
}

void freeze_all_but_adapters(torch::nn::Module& model) {
  for (auto& p : model.named_parameters())
    if (!is_lora_parameter(p.key())) p.value().requires_grad_(false);
}

void keep_frozen_projections_in(torch::nn::Module& model, torch::ScalarType dtype) {
  torch::NoGradGuard ng;
  for (auto& p : model.named_parameters()) {
    const std::string& n = p.key();
    const bool projection = ends_with(n, "_proj.weight") || n == "lm_head.weight";
    if (projection && !p.value().requires_grad() && p.value().scalar_type() != dtype)
      p.value().set_data(p.value().to(dtype));
  }
}

std::map<std::string, torch::Tensor> merge_lora(const std::map<std::string, torch::Tensor>& weights,
                                                const ModelConfig& c) {
  std::map<std::string, torch::Tensor> out;
  for (auto& [name, t] : weights)
    if (!is_lora_parameter(name)) out[name] = t;
  for (auto& [name, a] : weights) {
    if (!ends_with(name, ".lora_A.weight")) continue;
    const std::string prefix = name.substr(0, name.size() - std::string(".lora_A.weight").size());
    auto b = weights.find(prefix + ".lora_B.weight");
    auto w = out.find(prefix + ".weight");
    check(b != weights.end() && w != out.end(), "LoRA adapter ", prefix, " lacks its lora_B or base weight");
    check(c.lora_rank > 0, "the weights hold LoRA adapters (", prefix, ") but the model config has none");
    auto merged = w->second.to(torch::kFloat64) +
                  c.lora_scale() * torch::matmul(b->second.to(torch::kFloat64), a.to(torch::kFloat64));
    w->second = merged.to(w->second.scalar_type() == torch::kFloat64 ? torch::kFloat64 : torch::kFloat32);
  }
  return out;
}

}  // namespace cw
