// Integer settings read from the environment for measurements (kernel and launch switches that benchmarks
// sweep; docs/BENCHMARKS.md names them).
// Must not: be used for anything a recipe or CLI flag should carry; read recipe files or validate ranges.
#pragma once
#include <algorithm>
#include <cstdlib>

namespace cw {

// NAME's value as a non-negative integer (negative values read as 0), or fallback when unset or empty.
inline int env_int(const char* name, int fallback) {
  const char* v = std::getenv(name);
  return v && *v ? std::max(0, std::atoi(v)) : fallback;
}

}  // namespace cw
