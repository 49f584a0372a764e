// The CPU reference backend of the inference engine: fp32, one token at a time, with a contiguous KV cache
// per sequence. Slow and obviously correct: the twin that CUDA kernels and batched paths are tested against.
// Must not: link LibTorch; or change results with the order in which tokens arrive (prefill = decode steps).
#pragma once
#include <cstdint>
#include <random>
#include <vector>

#include "serve/bundle.h"

namespace cw::serve {

struct KVCache {
  std::vector<std::vector<float>> k, v;  // per layer: [position][kv_head][head_dim]
  int64_t length = 0;
};

class CpuModel {
 public:
  explicit CpuModel(const Bundle& b);
  KVCache new_cache() const;
  // Appends TOKEN at position cache.length and returns the logits for the next token.
  std::vector<float> step(int32_t token, KVCache& cache) const;
  const ModelConfig& config() const { return b_.config; }

 private:
  const Bundle& b_;
};

struct SamplingOptions {
  double temperature = 0;  // 0 = greedy
  int64_t top_k = 0;       // 0 = off
  double top_p = 1.0;      // 1 = off
};

// One token by the engine's sampling rule (kern::ref::sample), seeded from RNG.
int32_t sample_token(const std::vector<float>& logits, const SamplingOptions& opt, std::mt19937_64& rng);

}  // namespace cw::serve
