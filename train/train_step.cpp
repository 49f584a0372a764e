// Implementation of train/train_step.h.
#include "train/train_step.h"

#include <cmath>

#include "train/grad_clip.h"
#include "train/precision.h"

namespace cw {

StepResult run_under_autocast(StepStrategy& strategy, CausalLM& model, const std::vector<Batch>& batches,
                              const StepContext& ctx, const torch::Device& device, const std::string& precision) {
  AutocastScope autocast(device, precision);
  return strategy.run(model, batches, ctx);
}

StepTensors clip_and_step(const std::vector<torch::Tensor>& params, double max_norm, AdamW& opt,
                          const torch::Tensor& loss, double lr, const torch::Tensor& lr_tensor) {
  // The fused optimizer divides the gradients by the clipping factor as it reads them: no pass of its own.
  const bool fold = opt.fused() && std::isfinite(max_norm);
  auto norm = fold ? grad_norm(params) : clip_grad_norm(params, max_norm);
  const auto divisor = fold ? clip_divisor(norm, max_norm) : torch::Tensor();
  const auto skip = nonfinite_flag(loss, norm);
  if (lr_tensor.defined()) opt.step(lr_tensor, skip, divisor);
  else opt.step(lr, skip, divisor);
  return StepTensors{loss, norm};
}

StepTensors deferred_step(StepStrategy& strategy, CausalLM& model, const std::vector<Batch>& batches,
                          const torch::Tensor& lr_tensor, const torch::Tensor& normaliser,
                          const std::vector<torch::Tensor>& params, double max_norm, AdamW& opt,
                          const torch::Device& device, const std::string& precision) {
  StepContext ctx;
  ctx.defer_readback = true;
  ctx.normaliser = normaliser;
  StepResult sr = run_under_autocast(strategy, model, batches, ctx, device, precision);
  return clip_and_step(params, max_norm, opt, sr.loss_value, 0.0, lr_tensor);
}

}  // namespace cw
