// SeCO and SpaCO (Li et al. 2025, "Training Long-Context LLMs Efficiently via Chunk-wise Optimization"): a
// step strategy that back-propagates a long sequence one chunk at a time, so only one chunk's graph is alive.
//   stage 1: without gradients, run the chunks in order, each attending to the earlier chunks' keys/values,
//            and keep every layer's keys/values (after RoPE) in one buffer per layer;
//   stage 2: from the last chunk to the first, re-run the chunk with gradients against those buffers (leaves
//            that collect the gradient of every later chunk), add the collected gradient of the chunk's own
//            keys/values to the chunk's loss, and back-propagate.
// SeCO's gradient equals full-sequence training's. SpaCO back-propagates each chunk with probability
// p = budget / chunks (independent draws, seeded per step and rank) and scales that chunk's backward by 1/p,
// which keeps the gradient unbiased; the step's loss is still the whole sequence's (the chunks left out
// report theirs from stage 1).
// Must not: step the optimizer or touch anything but .grad (the trainer owns the rest of the step).
#pragma once
#include <cstdint>
#include <vector>

#include "train/step_strategy.h"

namespace cw {

struct ChunkwiseOptions {
  int64_t chunk = 128;          // tokens per chunk (the last chunk of a sequence may be shorter)
  int64_t budget = 0;           // SpaCO: expected chunks back-propagated per sequence; 0 or >= chunks: SeCO
  double max_compensation = 0;  // SpaCO: cap on the 1/p factor (0 = none, unbiased; the paper used 2)
};

class ChunkwiseStep : public StepStrategy {
 public:
  explicit ChunkwiseStep(ChunkwiseOptions o);
  StepResult run(CausalLM& model, const std::vector<Batch>& micro_batches, const StepContext& ctx = {}) override;
  // One micro-batch with the chunks to back-propagate given (SELECTED, one flag per chunk, each pass scaled by
  // SCALE): adds the estimate of the gradient of loss / NORMALISER to .grad and returns that loss (fp64, the
  // whole sequence's). run() is this with SpaCO's draws.
  torch::Tensor run_selected(CausalLM& model, const Batch& b, const std::vector<bool>& selected, double scale,
                             double normaliser);
  // Of the last run: chunks back-propagated, and chunks in all (summed over its micro-batches).
  int64_t last_backpropagated() const { return backpropagated_; }
  int64_t last_chunks() const { return chunks_; }

 private:
  // One micro-batch: fills .grad (scaled by 1/NORMALISER) and returns its loss sum (fp64, detached).
  torch::Tensor run_sequence(CausalLM& model, const Batch& b, const std::vector<bool>& selected, double scale,
                             const StepContext& ctx, double normaliser, bool arm_before_last);
  ChunkwiseOptions opt_;
  int64_t backpropagated_ = 0, chunks_ = 0;
};

// The sum of B's token cross-entropies computed chunk by chunk without gradients: stage 1 alone, so evaluating
// a long sequence holds its keys/values and one chunk's activations, not the whole sequence's logits.
torch::Tensor chunked_loss_sum(CausalLM& model, const Batch& b, int64_t chunk);

// SpaCO's draws: which of K chunks are back-propagated (each with probability BUDGET / K) for SEED, and the
// factor their backward passes are scaled by. BUDGET 0 or >= K selects every chunk with factor 1 (SeCO).
std::vector<bool> spaco_selection(int64_t k, int64_t budget, uint64_t seed);
double spaco_scale(int64_t k, int64_t budget, double max_compensation);

}  // namespace cw
