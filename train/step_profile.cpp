// Implementation of train/step_profile.h.
#include "train/step_profile.h"

#include <torch/csrc/autograd/profiler_kineto.h>
#include <torch/torch.h>

#include <algorithm>
#include <map>
#include <regex>

namespace cw {

std::string op_category(const std::string& name) {
  static const std::vector<std::pair<std::regex, std::string>> rules = {
      {std::regex("nccl|allreduce|all_reduce|broadcast", std::regex::icase), "communication"},
      {std::regex("flash|fmha|attention|sdpa|softmax_warp", std::regex::icase), "attention"},
      {std::regex("adam", std::regex::icase), "optimizer"},
      {std::regex("cross_entropy|nll_loss|log_softmax", std::regex::icase), "loss"},
      {std::regex("norm", std::regex::icase), "norms"},
      {std::regex("rope_qkv|swiglu", std::regex::icase), "fused RoPE, SwiGLU"},
      {std::regex("gemm|matmul|cutlass|xmma|nvjet|aten::mm|aten::bmm|aten::addmm|aten::linear", std::regex::icase),
       "matrix products"},
      {std::regex("elementwise|vectorized|reduce|copy|cat|fill|index|gather|scatter|aten::", std::regex::icase),
       "elementwise, copies, reductions"},
  };
  for (auto& [re, cat] : rules)
    if (std::regex_search(name, re)) return cat;
  return "other";
}

StepProfile profile_step(const std::function<void()>& step, int runs, bool cuda) {
  namespace prof = torch::autograd::profiler;
  namespace impl = torch::profiler::impl;
  std::set<impl::ActivityType> activities = {impl::ActivityType::CPU};
  if (cuda) activities.insert(impl::ActivityType::CUDA);
  prof::prepareProfiler(impl::ProfilerConfig(impl::ProfilerState::KINETO), activities);
  prof::enableProfiler(impl::ProfilerConfig(impl::ProfilerState::KINETO), activities);
  for (int i = 0; i < runs; ++i) step();
  if (cuda) torch::cuda::synchronize();
  auto result = prof::disableProfiler();
  std::map<std::string, OpTime> by_name;
  for (const auto& e : result->events()) {
    const bool on_device = e.deviceType() == c10::DeviceType::CUDA;
    if (cuda != on_device) continue;
    OpTime& o = by_name[e.name()];
    o.name = e.name();
    o.ms += double(e.durationNs()) / 1e6 / runs;
    ++o.calls;
  }
  StepProfile p;
  p.device_time = cuda;
  std::map<std::string, double> cats;
  for (auto& [n, o] : by_name) {
    o.calls = (o.calls + runs - 1) / runs;
    p.ops.push_back(o);
    p.total_ms += o.ms;
    cats[op_category(n)] += o.ms;
  }
  for (auto& [c, ms] : cats) p.categories.push_back({c, ms, 0});
  auto larger = [](const OpTime& a, const OpTime& b) { return a.ms > b.ms; };
  std::sort(p.ops.begin(), p.ops.end(), larger);
  std::sort(p.categories.begin(), p.categories.end(), larger);
  return p;
}

}  // namespace cw
