// What one engine iteration asks a backend to compute (StepPlan), and the Backend interface the CPU
// reference and the CUDA engine both implement. The scheduler (engine.h) builds plans; backends only run them.
// Must not: hold scheduling policy (which sequences run is the engine's business) or LibTorch types.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "kernels/common/common.h"
#include "models/model_config.h"

namespace cw::serve {

// Query rows [q_begin, q_end) attend to the first kv_len tokens listed by `pages`, which start at absolute
// position kv_pos0 (0 for a whole sequence; the shared-prefix length for a suffix under cascade attention).
struct AttnItem {
  int32_t q_begin = 0, q_end = 0;
  std::vector<int32_t> pages;
  int32_t kv_len = 0, kv_pos0 = 0;
};

struct StepPlan {
  // One row per token to run: its id, absolute position, and KV slot (page * page_size + offset).
  std::vector<int32_t> tokens, positions, slots;
  // Attention levels; the items of each level cover rows 0..T-1 in order, each row exactly once. One level is
  // plain paged attention; two are cascade attention (shared prefix, then each request's own suffix).
  std::vector<std::vector<AttnItem>> levels;
  // Rows whose next token is drawn, with their sampling parameters.
  std::vector<int32_t> sample_rows;
  std::vector<kern::SampleParams> sample_params;

  int rows() const { return int(tokens.size()); }
  bool decode_only() const;  // one row per item, every row sampled, one level
  void validate(int page_size, int num_pages) const;  // std::logic_error on a malformed plan (a scheduler bug)
};

// One level's items in the CSR form the kernels take (host memory; view() points into it).
struct LevelArrays {
  std::vector<int32_t> q_indptr{0}, kv_indptr{0}, kv_pages, kv_len, kv_pos0;
  void add(int32_t rows, const std::vector<int32_t>& pages, int32_t kv_len, int32_t kv_pos0);
  static LevelArrays from(const std::vector<AttnItem>& items);
  kern::AttnLevel view() const;
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual const ModelConfig& config() const = 0;
  virtual int page_size() const = 0;
  virtual int num_pages() const = 0;   // page 0 is scratch for padding rows and is never handed out
  virtual int max_tokens() const = 0;  // rows one plan may hold
  virtual std::string name() const = 0;
  // Runs the plan; returns one token per sample row. LOGITS, when given, receives [sample rows][vocab] fp32.
  virtual std::vector<int32_t> forward(const StepPlan& plan, std::vector<float>* logits = nullptr) = 0;
};

}  // namespace cw::serve
