// Where a training step's time goes: runs a function under LibTorch's Kineto profiler and sums the time per
// operation name — GPU kernel time when CUDA is on, inclusive CPU op time otherwise — and per category
// (matrix products, attention, norms, elementwise, loss, optimizer, communication, other).
// Must not: change what the function computes, or stay enabled after it returns.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace cw {

struct OpTime {
  std::string name;
  double ms = 0;  // summed over the profiled runs, divided by their count
  int64_t calls = 0;
};

// Idle time of the device between two of its operations, summed per (operation before -> operation after).
struct DeviceGap {
  std::string before, after;
  double ms = 0;  // per run
  int64_t count = 0;
};

struct StepProfile {
  std::vector<OpTime> ops;         // largest first
  std::vector<OpTime> categories;  // largest first
  double total_ms = 0;             // sum of ops (per run)
  bool device_time = false;        // GPU kernel time (else CPU op time, nested ops overlap)
  double idle_ms = 0;              // GPU: time with no operation running between the first and the last (per run)
  std::vector<DeviceGap> gaps;     // GPU: the largest idle stretches by neighbours, largest first (at most 12)
};

StepProfile profile_step(const std::function<void()>& step, int runs, bool cuda);

// The device's idle stretches between operations given as [start, end) nanoseconds with names, in any order
// (they may overlap: concurrent kernels): every stretch no operation covers, between the earliest start and
// the latest end, with the operation that ended last before it and the one that starts it. Sums per pair,
// divided by RUNS; all pairs, largest first. idle_ms receives the total per run.
struct DeviceInterval {
  uint64_t start = 0, end = 0;
  std::string name;
};
std::vector<DeviceGap> device_gaps(std::vector<DeviceInterval> intervals, int runs, double& idle_ms);
std::string op_category(const std::string& name);

}  // namespace cw
