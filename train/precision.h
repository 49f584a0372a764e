// Mixed precision for training: `[run] precision = auto | fp32 | bf16` (auto: bf16 on CUDA, fp32 on CPU).
// bf16 means autocast: weights, gradients and AdamW moments stay fp32 (the master copy); matrix products
// and attention run in bf16 with fp32 accumulation; norms, softmax statistics and the loss are computed
// in fp32. On CUDA, fp32 matrix products may use TF32.
// Must not: change parameter dtypes.
#pragma once
#include <torch/torch.h>

#include <string>

namespace cw {

std::string resolve_precision(const std::string& setting, const torch::Device& device);  // "fp32" | "bf16"

class AutocastScope {  // enables autocast for DEVICE while alive when PRECISION is bf16
 public:
  AutocastScope(const torch::Device& device, const std::string& precision);
  ~AutocastScope();
  AutocastScope(const AutocastScope&) = delete;

 private:
  bool active_ = false;
  c10::DeviceType type_;
};

void configure_device_math(const torch::Device& device);  // TF32 for fp32 matrix products on CUDA

}  // namespace cw
