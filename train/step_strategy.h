// A training step as a strategy: given the model and the step's micro-batches, fill every parameter's
// .grad and return the step's mean loss. The standard strategy accumulates micro-batches; SeCO/SpaCO
// (chunk-wise backprop) are train/chunkwise_step.h. The loss is normalised by the target tokens of the whole step,
// so accumulation gives the same gradient as one big batch.
// Must not: step the optimizer, clip, or skip steps (the trainer owns that).
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "data/batch.h"
#include "models/causal_lm.h"

namespace cw {

struct StepResult {
  double loss = 0;           // mean token cross-entropy over the step (NaN when the read-back is deferred)
  torch::Tensor loss_value;  // the same as an fp64 scalar on the model's device
  int64_t tokens = 0;        // input tokens processed
  int64_t target_tokens = 0;
};

// What a data-parallel run adds to a step: the loss is normalised by the whole global batch's target tokens
// (so summing gradients over ranks gives the global mean), and the gradient sync is armed before the last
// micro-batch's backward pass.
struct StepContext {
  int64_t target_tokens = 0;                 // 0: the micro-batches' own count
  std::function<void()> before_last_backward;  // may be empty
  bool defer_readback = false;               // leave the loss on the device (StepResult::loss_value only)
  torch::Tensor normaliser;                  // defined: the target-token count as a device scalar (CUDA graphs)
  uint64_t seed = 0;                         // random draws of the step (SpaCO's chunks): run seed, step, rank
};

class StepStrategy {
 public:
  virtual ~StepStrategy() = default;
  virtual StepResult run(CausalLM& model, const std::vector<Batch>& micro_batches, const StepContext& ctx = {}) = 0;
};

class StandardStep : public StepStrategy {
 public:
  StepResult run(CausalLM& model, const std::vector<Batch>& micro_batches, const StepContext& ctx = {}) override;
};

class Recipe;
// The recipe's strategy: [chunkwise] mode = off (standard), seco or spaco.
std::unique_ptr<StepStrategy> make_step_strategy(const Recipe& r);

}  // namespace cw
