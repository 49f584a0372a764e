// The two halves of a training step that the trainer, its CUDA graph, `bench train` and the GPU tests share:
// the step strategy's forward and backward passes under autocast, then gradient clipping and AdamW, which
// skips the step on the device when the loss or the gradient norm is not finite (nothing is read back).
// Must not: read values back to the host, or touch data-parallel hooks and sparsity masks (the trainer runs
// those between the halves).
#pragma once
#include <torch/torch.h>

#include <string>
#include <vector>

#include "train/adamw.h"
#include "train/step_strategy.h"

namespace cw {

struct StepTensors {
  torch::Tensor loss;       // fp64 scalar: the step's mean loss
  torch::Tensor grad_norm;  // the gradient norm before clipping
};

// STRATEGY over BATCHES with autocast on for PRECISION ("bf16") on DEVICE.
StepResult run_under_autocast(StepStrategy& strategy, CausalLM& model, const std::vector<Batch>& batches,
                              const StepContext& ctx, const torch::Device& device, const std::string& precision);

// Clips the gradients of PARAMS (those without one are left out) to MAX_NORM, then steps OPT with LR, or with
// LR_TENSOR (a one-element fp32 device tensor, what a CUDA graph replays) when defined, unless LOSS or the
// norm is not finite. Returns {LOSS, the norm before clipping}. With the fused optimizer the clipping factor is
// applied inside its kernel (clip_divisor): the same step, one pass over the gradients less.
StepTensors clip_and_step(const std::vector<torch::Tensor>& params, double max_norm, AdamW& opt,
                          const torch::Tensor& loss, double lr, const torch::Tensor& lr_tensor = {});

// Both halves with nothing read back (defer_readback), the body a CUDA graph captures: LR_TENSOR as above,
// NORMALISER a one-element device tensor of the target-token count (undefined: the batches' own count).
StepTensors deferred_step(StepStrategy& strategy, CausalLM& model, const std::vector<Batch>& batches,
                          const torch::Tensor& lr_tensor, const torch::Tensor& normaliser,
                          const std::vector<torch::Tensor>& params, double max_norm, AdamW& opt,
                          const torch::Device& device, const std::string& precision);

}  // namespace cw
