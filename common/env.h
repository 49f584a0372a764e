// Integer settings read from the environment for measurements (kernel and launch switches that benchmarks
// sweep; docs/BENCHMARKS.md names them).
// Must not: be used for anything a recipe or CLI flag should carry; read recipe files or validate ranges.
#pragma once
#include <algorithm>
#include <atomic>
#include <cstdlib>

namespace cw {

// NAME's value as a non-negative integer (negative values read as 0), or fallback when unset or empty.
inline int env_int(const char* name, int fallback) {
  const char* v = std::getenv(name);
  return v && *v ? std::max(0, std::atoi(v)) : fallback;
}

// An on/off switch read from NAME once (on unless it reads 0; FALLBACK when unset or empty), which tests may set.
class EnvSwitch {
 public:
  constexpr EnvSwitch(const char* name, bool fallback) : name_(name), fallback_(fallback) {}
  bool on() {
    if (state_.load() < 0) state_.store(env_int(name_, fallback_ ? 1 : 0) != 0 ? 1 : 0);
    return state_.load() == 1;
  }
  void set(bool on) { state_.store(on ? 1 : 0); }

 private:
  const char* name_;
  bool fallback_;
  std::atomic<int> state_{-1};  // -1: not read yet
};

}  // namespace cw
