// The engine's CPU backend: the kernels' CPU references (kernels/reference.h) composed into the Llama
// forward over a paged fp32 KV cache, exactly as the CUDA backend composes the kernels. Slow and plain: it is
// what batched, chunked, paged and cascade paths are checked against on machines without a GPU.
// Must not: link LibTorch or CUDA.
#pragma once
#include <vector>

#include "serve/bundle.h"
#include "serve/plan.h"

namespace cw::serve {

struct CpuBackendOptions {
  int page_size = 16;
  int num_pages = 256;
  int max_tokens = 2048;
  int splits = 1;  // KV parts per item (split-KV); results must not depend on it beyond rounding
  bool round_like_cuda = false;  // round the CUDA backend's bf16 tensors (matmul inputs, KV) to bf16 too
};

class CpuBackend : public Backend {
 public:
  CpuBackend(const Bundle& bundle, CpuBackendOptions opt);
  const ModelConfig& config() const override { return c_; }
  int page_size() const override { return opt_.page_size; }
  int num_pages() const override { return opt_.num_pages; }
  int max_tokens() const override { return opt_.max_tokens; }
  std::string name() const override { return "cpu"; }
  std::vector<int32_t> forward(const StepPlan& plan, std::vector<float>* logits) override;
  // The cached K (or V) vector of LAYER at SLOT, for tests.
  std::vector<float> cached(bool key, int layer, int slot) const;

 private:
  struct Layer {
    std::vector<float> ln1, ln2, qkv, o, gate_up, down, k_cache, v_cache;
  };
  ModelConfig c_;
  CpuBackendOptions opt_;
  std::vector<float> embed_, norm_, lm_head_;
  std::vector<Layer> layers_;
};

}  // namespace cw::serve
