// Learning-rate schedules. Steps count from 1 (the first optimizer update is step 1):
// warmup_cosine: lr = peak * t / warmup for t < warmup, then cosine from peak (t = warmup) to min_lr (t = total).
// constant: lr = peak after the same linear warmup.
// Must not: keep state (the rate is a pure function of the step, so resumed runs follow the same curve).
#pragma once
#include <cstdint>
#include <memory>
#include <string>

namespace cw {

class Recipe;

class LrSchedule {
 public:
  virtual ~LrSchedule() = default;
  virtual double lr(int64_t step) const = 0;
};

struct WarmupCosine : LrSchedule {
  double peak, min_lr;
  int64_t warmup, total;
  WarmupCosine(double p, double m, int64_t w, int64_t t) : peak(p), min_lr(m), warmup(w), total(t) {}
  double lr(int64_t step) const override;
};

struct WarmupConstant : LrSchedule {
  double peak;
  int64_t warmup;
  WarmupConstant(double p, int64_t w) : peak(p), warmup(w) {}
  double lr(int64_t step) const override;
};

std::unique_ptr<LrSchedule> make_schedule(const Recipe& r);

}  // namespace cw
