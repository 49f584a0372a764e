// Text generation for checking a trained model by eye (`chunkwise sample`): recomputes the whole window
// each step, so it is simple and slow (families with a decoding state, RAT, step through it instead); the
// inference engine in serve/ is the fast path.
// Must not: touch global random state (its generator is seeded from the options).
#pragma once
#include <torch/torch.h>

#include <cstdint>
#include <functional>
#include <vector>

#include "models/causal_lm.h"

namespace cw {

struct GenerateOptions {
  int64_t max_new_tokens = 100;
  double temperature = 0.8;  // 0 = greedy
  int64_t top_k = 40;        // 0 = off
  double top_p = 0.95;       // 1 = off
  uint64_t seed = 1;
  int64_t stop_id = -1;      // stop after emitting this id (e.g. EOS)
  // Families with a one-token decoding state (RAT) decode through it, the prompt token by token, instead of
  // re-running the window each step; false forces the re-run (the reference).
  bool decode_state = true;
};

// Picks the next id from LOGITS [V] (fp32); the reference of the engine's sampler.
int64_t sample_next(const torch::Tensor& logits, const GenerateOptions& opt, torch::Generator& gen);

std::vector<int64_t> generate(CausalLM& model, const std::vector<int64_t>& prompt, const GenerateOptions& opt,
                              const std::function<void(int64_t)>& on_token = {});

}  // namespace cw
