// Where a training step's time goes: runs a function under LibTorch's Kineto profiler and sums the time per
// operation name — GPU kernel time when CUDA is on, inclusive CPU op time otherwise — and per category
// (matrix products, attention, norms, elementwise, loss, optimizer, communication, other).
// Must not: change what the function computes, or stay enabled after it returns.
#pragma once
#include <functional>
#include <string>
#include <vector>

namespace cw {

struct OpTime {
  std::string name;
  double ms = 0;  // summed over the profiled runs, divided by their count
  int64_t calls = 0;
};

struct StepProfile {
  std::vector<OpTime> ops;         // largest first
  std::vector<OpTime> categories;  // largest first
  double total_ms = 0;             // sum of ops (per run)
  bool device_time = false;        // GPU kernel time (else CPU op time, nested ops overlap)
};

StepProfile profile_step(const std::function<void()>& step, int runs, bool cuda);
std::string op_category(const std::string& name);

}  // namespace cw
