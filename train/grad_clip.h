// Gradient clipping by the global L2 norm with multi-tensor kernels and no host synchronisation: the norm and
// the scale min(1, max_norm / (norm + 1e-6)) stay on the device (LibTorch's clip_grad_norm_ launches two
// kernels per parameter and reads the norm back before scaling). Same arithmetic as clip_grad_norm_.
// Must not: read values back to the host (the caller decides when to pay for that).
#pragma once
#include <torch/torch.h>

#include <vector>

namespace cw {

// PARAMS' gradients (undefined ones skipped) scaled in place when MAX_NORM is finite; returns the norm
// before scaling as a 0-dim fp32 tensor on the gradients' device (0 when no gradient is defined).
torch::Tensor clip_grad_norm(const std::vector<torch::Tensor>& params, double max_norm);

// The same norm without scaling anything.
torch::Tensor grad_norm(const std::vector<torch::Tensor>& params);

// What clipping divides the gradients by: max(1, (NORM + 1e-6) / MAX_NORM), a one-element fp32 tensor on
// NORM's device (MAX_NORM finite). For optimizers that divide while they read the gradients (AdamW's fused
// kernel, grad_scale), so that clipping costs no pass of its own over the gradients.
torch::Tensor clip_divisor(const torch::Tensor& norm, double max_norm);

// 1.0 (fp32, one element, on the device) when LOSS or GRAD_NORM is not finite, else 0.0: AdamW's skip flag.
torch::Tensor nonfinite_flag(const torch::Tensor& loss, const torch::Tensor& grad_norm);

}  // namespace cw
