// AdamW's update of one fp32 element (decoupled weight decay, bias-corrected moments), shared by the CUDA
// kernel (adamw.cu) and the CPU loop of train/adamw.cpp, so the CPU suite tests the arithmetic the GPU runs.
// The independent reference is AdamW's per-parameter loop in train/adamw.cpp (itself tested against
// torch::optim::AdamW). Compiles as plain C++ and as CUDA.
// Must not: allocate or depend on LibTorch.
#pragma once
#include <cmath>

#include "kernels/common/common.h"

namespace cw::kern {

// One step's constants, computed from the learning rate, the step count (this step included), the betas and
// the divisor of the gradients (clipping; 1 when none).
struct AdamWScalars {
  float beta1 = 0.9f, beta2 = 0.95f, eps = 1e-8f;
  float one_minus_beta1 = 0.1f, one_minus_beta2 = 0.05f;  // rounded from double, as the reference loop does
  float decay = 0;           // lr * weight_decay: p -= decay * p before the update
  float step_size = 0;       // lr / (1 - beta1^step)
  float bias2_sqrt = 1;      // sqrt(1 - beta2^step)
  float divisor = 1;         // the gradient is divided by this
};

CW_HD AdamWScalars adamw_scalars(float lr, float step, double beta1, double beta2, float eps, float weight_decay,
                                 float divisor) {
  AdamWScalars s;
  s.beta1 = float(beta1), s.beta2 = float(beta2), s.eps = eps, s.divisor = divisor;
  s.one_minus_beta1 = float(1.0 - beta1), s.one_minus_beta2 = float(1.0 - beta2);
  s.decay = lr * weight_decay;
  s.step_size = lr / (1.f - powf(s.beta1, step));
  s.bias2_sqrt = sqrtf(1.f - powf(s.beta2, step));
  return s;
}

// p, m (first moment), v (second moment) updated in place from the gradient g.
CW_HD void adamw_element(float& p, float g, float& m, float& v, const AdamWScalars& s) {
  g = g / s.divisor;
  p -= s.decay * p;
  m = s.beta1 * m + s.one_minus_beta1 * g;
  v = s.beta2 * v + s.one_minus_beta2 * g * g;
  p -= s.step_size * m / (sqrtf(v) / s.bias2_sqrt + s.eps);
}

}  // namespace cw::kern
