// Implementation of train/precision.h.
#include "train/precision.h"

#include <ATen/autocast_mode.h>

#include "common/error.h"

namespace cw {

std::string resolve_precision(const std::string& setting, const torch::Device& device) {
  if (setting == "auto") return device.is_cuda() ? "bf16" : "fp32";
  check(setting == "fp32" || setting == "bf16", "[run] precision must be auto, fp32 or bf16");
  return setting;
}

AutocastScope::AutocastScope(const torch::Device& device, const std::string& precision) : type_(device.type()) {
  if (precision != "bf16") return;
  active_ = true;
  at::autocast::set_autocast_enabled(type_, true);
  at::autocast::set_autocast_dtype(type_, at::kBFloat16);
}

AutocastScope::~AutocastScope() {
  if (!active_) return;
  at::autocast::set_autocast_enabled(type_, false);
  at::autocast::clear_cache();
}

void configure_device_math(const torch::Device& device) {
  if (device.is_cuda()) at::globalContext().setFloat32MatmulPrecision("high");
}

}  // namespace cw
