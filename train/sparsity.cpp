// Implementation of train/sparsity.h.
#include "train/sparsity.h"

#include <cmath>

#include "common/error.h"

namespace cw {

bool is_sparsifiable(const std::string& name, const torch::Tensor& p) {
  return p.dim() >= 2 && name.find("embed") == std::string::npos && name != "lm_head.weight" &&
         name.find("norm") == std::string::npos;
}

SparsityMasks SparsityMasks::create(const NamedTensors& params, double level, uint64_t seed) {
  check(level >= 0 && level < 1, "[sparsity] level must be in [0, 1), got ", level);
  SparsityMasks m;
  if (level == 0) return m;
  auto gen = at::detail::createCPUGenerator(seed);
  for (auto& [name, p] : params) {
    if (!is_sparsifiable(name, p)) continue;
    const int64_t n = p.numel(), keep = std::llround((1.0 - level) * double(n));
    auto noise = at::rand({n}, gen, torch::kFloat64);
    auto idx = std::get<1>(noise.topk(keep));
    auto mask = torch::zeros({n}, torch::kFloat32).index_fill_(0, idx, 1.0).view(p.sizes());
    m.entries_.push_back({name, p, mask.to(p.options())});
  }
  m.apply_to_weights();
  return m;
}

SparsityMasks SparsityMasks::from_tensors(const NamedTensors& params, const std::map<std::string, torch::Tensor>& saved,
                                          const std::string& what) {
  SparsityMasks m;
  for (auto& [name, p] : params) {
    auto it = saved.find("mask." + name);
    if (it == saved.end()) continue;
    check(it->second.sizes() == p.sizes(), what, ": mask for ", name, " has shape ", it->second.sizes(),
          " but the weight has ", p.sizes());
    m.entries_.push_back({name, p, it->second.to(p.options())});
  }
  check(m.entries_.size() == saved.size(), what, ": holds masks for weights this model does not have");
  return m;
}

void SparsityMasks::apply_to_weights() const {
  torch::NoGradGuard ng;
  for (auto& e : entries_) e.param.mul_(e.mask);
}

void SparsityMasks::apply_to_grads() const {
  for (auto& e : entries_) {
    auto& g = e.param.mutable_grad();
    if (g.defined()) g = torch::where(e.mask.to(torch::kBool), g, torch::zeros_like(g));  // drops NaN too
  }
}

void SparsityMasks::apply_to_optimizer(const AdamW& opt) const {
  torch::NoGradGuard ng;
  size_t j = 0;
  for (auto& e : entries_) {
    while (j < opt.slots().size() && opt.slots()[j].name != e.name) ++j;
    if (j == opt.slots().size()) throw std::logic_error("mask for a parameter the optimizer does not hold");
    if (!opt.slots()[j].exp_avg.defined()) continue;  // another rank's shard (ZeRO-1)
    opt.slots()[j].exp_avg.mul_(e.mask);
    opt.slots()[j].exp_avg_sq.mul_(e.mask);
  }
}

NamedTensors SparsityMasks::tensors() const {
  NamedTensors out;
  for (auto& e : entries_) out.emplace_back("mask." + e.name, e.mask.to(torch::kUInt8));
  return out;
}

int64_t SparsityMasks::kept(const std::string& name) const {
  for (auto& e : entries_)
    if (e.name == name) return e.mask.sum().item<int64_t>();
  return -1;
}

double SparsityMasks::density() const {
  double kept = 0, total = 0;
  for (auto& e : entries_) kept += e.mask.sum().item<double>(), total += double(e.mask.numel());
  return total > 0 ? kept / total : 1.0;
}

double spdf_train_flops_per_token(double n_sparsifiable, int64_t d, int64_t L, int64_t n_ctx, int64_t V, double s) {
  double forward = 2.0 * (1.0 - s) * n_sparsifiable + 2.0 * double(d) * double(V) + 4.0 * double(L) * double(n_ctx) * double(d);
  return 3.0 * forward;
}

}  // namespace cw
