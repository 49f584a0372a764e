// The one batch type every data strategy produces (fixed windows now; decomposition, packing, SFT later),
// and the sampler interface whose state is saved in checkpoints.
// Must not: know about models or training steps.
#pragma once
#include <torch/torch.h>

#include <string>

namespace cw {

constexpr int64_t kIgnoreIndex = -100;

struct Batch {
  torch::Tensor tokens;     // [B, T] int64 input ids
  torch::Tensor targets;    // [B, T] int64, kIgnoreIndex where no loss
  torch::Tensor positions;  // [B, T] int64, restart at 0 per document when documents are packed
  torch::Tensor segments;   // [B, T] int32 document id within the row (attention only within a segment)
  int64_t n_target_tokens = 0;
  bool has_segments = false;  // false: one segment per row (segments may be left undefined)
  Batch to(const torch::Device& d) const;
};

class Sampler {
 public:
  virtual ~Sampler() = default;
  virtual Batch next() = 0;
  virtual std::string state() const = 0;             // JSON text, enough to continue bitwise
  virtual void restore(const std::string& state) = 0;  // UserError if the state does not fit this sampler
};

}  // namespace cw
