// The engine's CUDA backend: bf16 weights and KV pages on the GPU, fp32 accumulation, cuBLAS for matrix
// products of more than four rows (the algorithm per shape chosen by timing at start-up, serve/tuned_gemm.h)
// and kernels/ for everything else. Decode-only steps run as CUDA graphs captured once per padded batch size;
// other steps (chunked prefill beside decodes) once their launch shape repeats (unless graph_mixed_steps is
// off). Results are checked against CpuBackend (same plans, same math).
// Must not: link LibTorch, or expose CUDA types in this header (serve/ users build without CUDA headers).
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "serve/bundle.h"
#include "serve/plan.h"

namespace cw::serve {

struct CudaBackendOptions {
  int page_size = 16;
  int num_pages = 0;         // 0: kv_fraction of the GPU memory left after weights and buffers
  double kv_fraction = 0.6;
  int max_tokens = 1024;     // rows per step
  int max_sample_rows = 256;
  int max_splits = 16;       // split-KV parts per attention item
  bool cuda_graphs = true;   // replay decode-only steps from captured graphs (one per padded batch size)
  // Also replay other steps (chunks beside decodes) whose launch shape repeats, captured on its second sight;
  // single-level steps without chunk attention tiles are padded to few shapes (rows to 32, sample rows to 16,
  // tiles to 16), also when cuda_graphs is off. Faster in bench serve's mixed scenario (docs/BENCHMARKS.md).
  bool graph_mixed_steps = true;
};

class CudaBackend : public Backend {
 public:
  CudaBackend(const Bundle& bundle, CudaBackendOptions opt);
  ~CudaBackend() override;
  const ModelConfig& config() const override;
  int page_size() const override;
  int num_pages() const override;
  int max_tokens() const override;
  std::string name() const override { return "cuda"; }
  std::vector<int32_t> forward(const StepPlan& plan, std::vector<float>* logits) override;

  std::string device_name() const;
  double weight_bytes() const;  // bytes read per decode step for the weights
  int graphs_captured() const;
  // Steps whose attention launches applied RoPE and the KV append themselves (decode steps of more than four
  // rows on tensor cores, and other narrow-tile steps through the rope phase; recorded when a step is launched
  // or captured, not at each replay).
  int64_t rope_in_attention_steps() const;
  std::string tuning_summary() const;  // what choosing the products' algorithms by timing found
  std::string tuning_table_jsonl() const;  // each tuned shape's candidates and choice (TunedGemm::table_jsonl)
  std::vector<float> cached(bool key, int layer, int slot) const;  // for tests
  // Where one step's time goes: the whole forward() (host work included), the graph replay alone (plans that
  // replay), and the GPU time of each operation summed over layers (events between launches, no graph).
  struct StepProfile {
    double forward_ms = 0, graph_ms = 0, ops_total_ms = 0;
    std::vector<std::pair<std::string, double>> ops;
  };
  StepProfile profile(const StepPlan& plan, int reps);
  // Device-to-device copy bandwidth (read + write bytes per second) over buffers of BYTES.
  static double copy_bandwidth(size_t bytes);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace cw::serve
