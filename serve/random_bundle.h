// Random weights of a given shape as a serve::Bundle, for benchmarks and tests that need a model without
// files (e.g. the TinyLlama shape of the serving benchmark). Values ~ N(0, std) from a counter-based hash,
// so a bundle is a pure function of (config, seed) and builds on all cores.
// Must not: be used as a trained model.
#pragma once
#include <cstdint>

#include "serve/bundle.h"

namespace cw::serve {

Bundle random_bundle(const ModelConfig& config, uint64_t seed, float std = 0.02f);
ModelConfig tinyllama_config();  // d 2048, 22 layers, 32 heads, 4 KV heads, FFN 5632, vocab 32000, context 2048

}  // namespace cw::serve
