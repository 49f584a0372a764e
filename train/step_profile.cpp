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

std::vector<DeviceGap> device_gaps(std::vector<DeviceInterval> intervals, int runs, double& idle_ms) {
  std::sort(intervals.begin(), intervals.end(),
            [](const DeviceInterval& a, const DeviceInterval& b) { return a.start < b.start; });
  std::map<std::pair<std::string, std::string>, DeviceGap> by_pair;
  double idle_ns = 0;
  uint64_t covered = 0;       // the latest end so far
  const std::string* last = nullptr;  // the operation that ends at `covered`
  for (const auto& iv : intervals) {
    if (last && iv.start > covered) {
      auto& g = by_pair[{*last, iv.name}];
      g.before = *last, g.after = iv.name;
      g.ms += double(iv.start - covered) / 1e6;
      ++g.count;
      idle_ns += double(iv.start - covered);
    }
    if (!last || iv.end > covered) covered = iv.end, last = &iv.name;
  }
  const double n = std::max(1, runs);
  idle_ms = idle_ns / 1e6 / n;
  std::vector<DeviceGap> out;
  for (auto& [k, g] : by_pair) {
    g.ms /= n;
    g.count = int64_t((double(g.count) + n - 1) / n);
    out.push_back(g);
  }
  std::sort(out.begin(), out.end(), [](const DeviceGap& a, const DeviceGap& b) { return a.ms > b.ms; });
  return out;
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
  std::vector<DeviceInterval> intervals;
  for (const auto& e : result->events()) {
    const bool on_device = e.deviceType() == c10::DeviceType::CUDA;
    if (cuda != on_device) continue;
    if (cuda) intervals.push_back({e.startNs(), e.endNs(), e.name().substr(0, 80)});
    OpTime& o = by_name[e.name()];
    o.name = e.name();
    o.ms += double(e.durationNs()) / 1e6 / runs;
    ++o.calls;
  }
  StepProfile p;
  p.device_time = cuda;
  if (cuda) {
    p.gaps = device_gaps(std::move(intervals), runs, p.idle_ms);
    if (p.gaps.size() > 12) p.gaps.resize(12);
  }
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
